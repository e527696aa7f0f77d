"""The one model factory of the workflows: recognizers and mask detectors by registry name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def create_model(name: str, device: str = "auto") -> Any:
    """A recognizer or mask detector by registry name (the registry picks the device of each model)."""
    from ..models import registry

    return registry.create(name)


class Models:
    """Models by registry name, created once per run (``factory`` defaults to the model registry)."""

    def __init__(self, factory: Callable[[str], Any] | None = None):
        self.factory = factory
        self._made: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        """The model called ``name`` (created on first use)."""
        if name not in self._made:
            self._made[name] = (self.factory or create_model)(name)
        return self._made[name]

    def identity(self, name: str) -> str:
        """Name and weights hash of a model (part of the cache keys: new weights → new results)."""
        model = self.get(name)
        return f"{model.name}:{model.weights_hash()}"
