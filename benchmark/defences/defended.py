"""Models behind a defence: a recognizer or mask detector whose input passes through the defence's transform
(or which the defence replaces), with its own identity hash so caches never mix defended and plain results."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ..models.base import MaskDetector, Recognizer
from .api import Defence, InputTransform, ReplacementMaskDetector, ReplacementRecognizer, check_faces


def _combined_hash(inner_hash: str, defence: Defence) -> str:
    return hashlib.sha256(f"{inner_hash}|{defence.digest()}".encode()).hexdigest()


class _Defended:
    """What a defended recognizer and a defended mask detector share: identity and the torch pipeline."""

    inner: Any
    defence: Defence
    transform: InputTransform | None

    def _wrap(self, inner: Any, defence: Defence, transform: InputTransform | None) -> None:
        self.inner, self.defence, self.transform = inner, defence, transform
        self.name = f"{inner.name}+{defence.tag}"
        self.differentiable = inner.differentiable

    def _defended(self, faces: np.ndarray) -> np.ndarray:
        faces = check_faces(faces)
        return self.transform.apply(faces) if self.transform else faces

    def torch_module(self, device: str = "cpu") -> Any:
        """The transform's straight-through module followed by the inner model's module."""
        from torch import nn

        inner = self.inner.torch_module(device)
        return nn.Sequential(self.transform.torch_module(), inner) if self.transform else inner

    def weights_hash(self) -> str:
        """SHA-256 of the inner model's hash and the defence's name and parameters."""
        return _combined_hash(self.inner.weights_hash(), self.defence)

    def identity(self) -> dict[str, Any]:
        """The inner model's identity, renamed, with the defence record."""
        return {
            **self.inner.identity(),
            "name": self.name,
            "sha256": self.weights_hash(),
            "base_model": self.inner.identity(),
            "defence": self.defence.record(),
        }


class DefendedRecognizer(_Defended, Recognizer):
    """``inner`` behind an input transform (or a renamed replacement): a distinct model identity."""

    def __init__(self, inner: Recognizer, defence: Defence, transform: InputTransform | None = None):
        self._wrap(inner, defence, transform)
        self.dim = inner.dim
        self.preprocessing = inner.preprocessing

    def embed(self, faces: np.ndarray) -> np.ndarray:
        """Features of the defended faces."""
        return self.inner.embed(self._defended(faces))


class DefendedMaskDetector(_Defended, MaskDetector):
    """A mask detector behind an input transform (or a renamed replacement)."""

    def __init__(self, inner: MaskDetector, defence: Defence, transform: InputTransform | None = None):
        self._wrap(inner, defence, transform)

    def p_masked(self, faces: np.ndarray) -> np.ndarray:
        """P(masked) of the defended faces."""
        return self.inner.p_masked(self._defended(faces))


def defend(
    defence: Defence, recognizer: Recognizer | None, mask_detector: MaskDetector | None, device: str = "auto"
) -> tuple[Recognizer | None, MaskDetector | None]:
    """The ``(recognizer, mask_detector)`` a system protected by ``defence`` uses.

    Models the defence does not touch are returned unchanged (same object, same identity).
    """
    impl = defence.impl
    if isinstance(impl, InputTransform):
        rec = (
            DefendedRecognizer(recognizer, defence, impl)
            if recognizer is not None and impl.affects_recognition
            else recognizer
        )
        md = (
            DefendedMaskDetector(mask_detector, defence, impl)
            if mask_detector is not None and impl.affects_detection
            else mask_detector
        )
        return rec, md
    if isinstance(impl, ReplacementRecognizer):
        return DefendedRecognizer(impl.create(device), defence), mask_detector
    if isinstance(impl, ReplacementMaskDetector):
        return recognizer, DefendedMaskDetector(impl.create(device), defence)
    raise ValueError(f"defence {defence.name!r} has an unknown kind {defence.kind!r}")
