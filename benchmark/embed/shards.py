"""Shard bookkeeping of the embed stage: the plan, per-shard completion records, resume and merge.

Shard ``i`` always covers items ``[i·S, (i+1)·S)`` of the dataset's (sorted) item list, whatever the
number of ranks, so a run resumed with another number of GPUs, or split over ranks, ends with the same
files. A shard is *complete* when both its HDF5 file and its record ``.progress/shard-NNNNN.json`` exist
(the file is renamed into place first, the record second; both atomically). Rank ``r`` of ``W`` owns the
shards ``i ≡ r (mod W)``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import write_json

PROGRESS = ".progress"


def shard_name(index: int) -> str:
    """File name of shard ``index``."""
    return f"shard-{index:05d}.h5"


def n_shards(n_items: int, shard_size: int) -> int:
    """Number of shards for ``n_items`` (at least one)."""
    return max(1, -(-n_items // shard_size))


def shard_range(index: int, n_items: int, shard_size: int) -> range:
    """Item indices of shard ``index``."""
    return range(index * shard_size, min(n_items, (index + 1) * shard_size))


def rank_shards(total: int, rank: int, world: int) -> list[int]:
    """Shards owned by ``rank`` of ``world`` (round-robin, so ranks get near-equal work)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside world size {world}")
    return list(range(rank, total, world))


def record_path(out_dir: Path, index: int) -> Path:
    """Completion record of shard ``index``."""
    return out_dir / PROGRESS / f"shard-{index:05d}.json"


def read_record(out_dir: Path, index: int) -> dict[str, Any] | None:
    """The record of a complete shard, or None when the shard is missing or incomplete."""
    path = record_path(out_dir, index)
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("count", 0) > 0 and not (out_dir / record["path"]).is_file():
        return None  # record without its file (file deleted by hand): redo the shard
    return record


def write_record(out_dir: Path, index: int, record: dict[str, Any]) -> None:
    """Mark shard ``index`` complete (after its file was renamed into place)."""
    write_json(record_path(out_dir, index), record)


def remove_stale_temps(out_dir: Path, indices: Sequence[int]) -> int:
    """Delete temporary files a killed run left for ``indices`` (only those shards: other ranks may be
    writing theirs); returns how many were removed."""
    removed = 0
    for index in indices:
        for tmp in out_dir.glob(f".{shard_name(index)}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def items_digest(keys: Sequence[str], paths: Sequence[str]) -> str:
    """SHA-256 over the ordered keys and paths: a resume must see the same input list."""
    h = hashlib.sha256()
    for key, path in zip(keys, paths):
        h.update(key.encode("utf-8") + b"\0" + os.fsencode(path) + b"\n")
    return h.hexdigest()


def check_run_config(out_dir: Path, fingerprint: dict[str, Any]) -> None:
    """Store the run's fingerprint on first use; refuse to resume into a folder made with other settings."""
    path = out_dir / PROGRESS / "run.json"
    if path.is_file():
        have = json.loads(path.read_text(encoding="utf-8"))
        diff = {
            k: (have.get(k), fingerprint.get(k))
            for k in sorted(set(have) | set(fingerprint))
            if have.get(k) != fingerprint.get(k)
        }
        if diff:
            raise ValueError(
                f"{out_dir} holds an embedding run with other settings (was, now): {diff}; "
                "use another --out folder or the same settings"
            )
    else:
        write_json(path, fingerprint)
