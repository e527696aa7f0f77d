"""The record of model-file hashes in a models folder: ``<models dir>/mf2m-hashes.json``.

Each fetched file has an entry ``{sha256, size, mtime, source, pinned, recorded}``; ``pinned`` says the
hash was checked against a published one (directly, or through the archive it came in). ``verified``
re-hashes a file only when its size or modification time changed since it was recorded.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from ..atomic import write_json
from ..manifest import sha256_file

STORE = "mf2m-hashes.json"
FORMAT = "mf2m.model-hashes.v1"
_LOCK = threading.Lock()


def store_path(models_dir: str | os.PathLike) -> Path:
    """Path of the hash record in ``models_dir``."""
    return Path(models_dir) / STORE


def load(models_dir: str | os.PathLike) -> dict[str, dict]:
    """All entries (relative path → entry); empty when there is no record."""
    path = store_path(models_dir)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RuntimeError(f"{path} is not a valid hash record ({exc}); move it away to start a new one") from None
    return dict(data.get("files", {}))


def recorded(models_dir: str | os.PathLike, rel: str) -> dict | None:
    """The entry of one file, or None."""
    return load(models_dir).get(rel)


def record(models_dir: str | os.PathLike, rel: str, sha256: str, *, source: str, pinned: bool) -> None:
    """Write (or replace) the entry of ``rel``, with the file's current size and mtime."""
    path = Path(models_dir) / rel
    st = path.stat() if path.exists() else None
    with _LOCK:
        files = load(models_dir)
        files[rel] = {
            "sha256": sha256,
            "size": st.st_size if st else None,
            "mtime": st.st_mtime if st else None,
            "source": source,
            "pinned": bool(pinned),
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json(store_path(models_dir), {"format": FORMAT, "files": dict(sorted(files.items()))})


def verified(models_dir: str | os.PathLike, rel: str) -> tuple[str, str]:
    """``(sha256, state)`` of a file in ``models_dir``: state is ``pinned`` (matches a published hash),
    ``recorded`` (matches the hash recorded on first download), ``unrecorded`` (never fetched) or
    ``changed`` (differs from the record)."""
    path = Path(models_dir) / rel
    entry = recorded(models_dir, rel)
    st = path.stat()
    if entry is not None and entry.get("size") == st.st_size and entry.get("mtime") == st.st_mtime:
        digest = entry["sha256"]
    else:
        digest = sha256_file(path)
    if entry is None:
        return digest, "unrecorded"
    if digest != entry["sha256"]:
        return digest, "changed"
    return digest, "pinned" if entry.get("pinned") else "recorded"


def file_hash(path: str | os.PathLike, models_dir: str | os.PathLike | None) -> tuple[str, str]:
    """``verified`` for a file inside ``models_dir``; a plain SHA-256 (state ``unrecorded``) elsewhere."""
    path = Path(path)
    if models_dir is not None:
        try:
            rel = path.resolve().relative_to(Path(models_dir).resolve()).as_posix()
        except ValueError:
            rel = None
        if rel is not None:
            return verified(models_dir, rel)
    return sha256_file(path), "unrecorded"
