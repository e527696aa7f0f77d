"""Keys and names that become file paths under an output folder: refused when they could leave it.

Keys come from users' CSVs, folder names and feature files.  A stage that writes ``OUT/<key>.png`` (or any
path built from a key, an identity name or a method name) checks it here first, so that ``..``, absolute
paths, Windows drive or ``\\`` separators and control characters can never place a file outside ``OUT``.
The error names the offending key and where it came from.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafePathError(ValueError):
    """A key or name would make a stage write outside its output folder (the message names it)."""


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be a relative path below an output folder, or None when it can."""
    if not isinstance(key, str) or not key:
        return "is empty"
    if _CONTROL.search(key):
        return "holds a control character"
    if "\\" in key:
        return "holds a backslash (a Windows path separator)"
    if key.startswith("/") or _DRIVE.match(key):
        return "is an absolute path"
    parts = key.split("/")
    if any(p == ".." for p in parts):
        return "holds a '..' component"
    if any(p in ("", ".") for p in parts):
        return "holds an empty or '.' component"
    return None


def check_key(key: str, what: str = "key", where: str = "") -> str:
    """``key`` unchanged when it is a safe relative path (``a/b.png``); else ``UnsafePathError`` naming it."""
    why = key_problem(key)
    if why:
        place = f"{where}: " if where else ""
        raise UnsafePathError(f"{place}{what} {key!r} {why}; refusing it (it could write outside the output folder)")
    return key


def check_name(name: str, what: str = "name", where: str = "") -> str:
    """``name`` unchanged when it is one safe path component (no ``/``); else ``UnsafePathError``."""
    check_key(name, what, where)
    if "/" in name:
        place = f"{where}: " if where else ""
        raise UnsafePathError(f"{place}{what} {name!r} holds '/'; it must be a single file or folder name")
    return name


def join_under(root: str | os.PathLike, key: str, what: str = "key", where: str = "") -> Path:
    """``root/key`` after checking ``key`` and that the result (symbolic links resolved) stays inside ``root``."""
    check_key(key, what, where)
    root = Path(root)
    path = root / key
    base = root.resolve()
    if not path.resolve().is_relative_to(base):
        place = f"{where}: " if where else ""
        raise UnsafePathError(f"{place}{what} {key!r} leads outside {root} (through a symbolic link)")
    return path
