"""One plug-in mechanism: a named registry per kind of component, open to other packages through entry points.

Built-in components are registered with :meth:`Registry.register` (as a decorator or with a
``"module:attribute"`` string, imported only when first used); third-party packages declare theirs
in the entry-point group of the registry, e.g. in their ``pyproject.toml``::

    [project.entry-points."mf2m.attacks"]
    my-attack = "my_package.attacks:MyAttack"

Listing names never imports a component; :meth:`Registry.load` imports the one asked for. Importing
this module is cheap (``importlib.metadata`` only).

Examples::

    >>> reg = Registry("widget", group="mf2m.widgets")
    >>> @reg.register("square", sides=4)
    ... class Square: ...
    >>> reg.names(), reg.info("square")["sides"]
    (['square'], 4)
"""

from __future__ import annotations

import difflib
import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Entry", "Registry", "entry_points_of"]


def entry_points_of(group: str) -> dict[str, Any]:
    """Installed entry points of ``group``: name → ``importlib.metadata.EntryPoint`` (first one wins)."""
    from importlib.metadata import entry_points

    found: dict[str, Any] = {}
    for ep in entry_points(group=group):
        found.setdefault(ep.name, ep)
    return found


@dataclass
class Entry:
    """One registered component: its name, the object (or where to import it from) and its declared info."""

    name: str
    target: Any  # the object, a "module:attribute" string, or an EntryPoint
    info: dict[str, Any] = field(default_factory=dict)
    origin: str = "built-in"  # "built-in", or "entry point (DISTRIBUTION)"

    def load(self) -> Any:
        """The component itself (imported on first use)."""
        if isinstance(self.target, str):
            module, _, attr = self.target.partition(":")
            obj: Any = importlib.import_module(module)
            for part in attr.split(".") if attr else ():
                obj = getattr(obj, part)
            self.target = obj
        elif hasattr(self.target, "load") and hasattr(self.target, "group"):  # an EntryPoint
            self.target = self.target.load()
        return self.target


class Registry:
    """Components of one ``kind`` by name: built-ins registered in code, others found through ``group``."""

    def __init__(self, kind: str, group: str | None = None):
        self.kind = kind
        self.group = group
        self._entries: dict[str, Entry] = {}
        self._scanned = False
        self._lock = threading.RLock()

    def register(self, name: str, target: Any = None, *, replace: bool = False, **info: Any) -> Callable:
        """Register ``target`` (an object or ``"module:attribute"``) under ``name``; without ``target``, a decorator.

        A second registration of a name is an error unless ``replace``. ``info`` is kept with the entry
        (e.g. ``base="dm"`` for an attack).
        """

        def add(obj: Any) -> Any:
            with self._lock:
                if name in self._entries and not replace:
                    raise ValueError(f"{self.kind} {name!r} is already registered ({self._entries[name].origin})")
                self._entries[name] = Entry(name, obj, dict(info))
            return obj

        if target is None:
            return add
        add(target)
        return lambda obj: obj

    def _scan(self) -> None:
        """Add the installed entry points of the group (once; a built-in of the same name wins)."""
        with self._lock:
            if self._scanned or not self.group:
                self._scanned = True
                return
            for name, ep in entry_points_of(self.group).items():
                if name not in self._entries:
                    dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
                    self._entries[name] = Entry(name, ep, {}, f"entry point ({dist})")
            self._scanned = True

    def copy(self) -> Registry:
        """A registry with the same entries (to register components temporarily, e.g. in tests)."""
        other = Registry(self.kind, self.group)
        with self._lock:
            other._entries, other._scanned = dict(self._entries), self._scanned
        return other

    def rescan(self) -> None:
        """Look for entry points again (after installing a package in a running interpreter)."""
        with self._lock:
            self._entries = {k: e for k, e in self._entries.items() if e.origin == "built-in"}
            self._scanned = False

    def names(self, builtin_only: bool = False) -> list[str]:
        """Registered names: built-ins in registration order, then entry points sorted by name."""
        self._scan()
        builtin = [n for n, e in self._entries.items() if e.origin == "built-in"]
        if builtin_only:
            return builtin
        return builtin + sorted(n for n, e in self._entries.items() if e.origin != "built-in")

    def __contains__(self, name: object) -> bool:
        self._scan()
        return name in self._entries

    def entry(self, name: str) -> Entry:
        """The entry of ``name``; an unknown name is a ``ValueError`` listing the known ones."""
        self._scan()
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown {self.kind} {name!r}{hint}; choose from {', '.join(self.names())}")
        return self._entries[name]

    def load(self, name: str) -> Any:
        """The component registered as ``name`` (imported on first use)."""
        return self.entry(name).load()

    def info(self, name: str) -> dict[str, Any]:
        """What was declared with ``name`` at registration."""
        return self.entry(name).info
