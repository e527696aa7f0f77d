"""Several search processes: torch.distributed collectives under torchrun, fingerprinted partial files otherwise.

* **torchrun** (``MASTER_ADDR``/``MASTER_PORT`` set, ``WORLD_SIZE`` > 1): a process group is created (gloo on
  CPU, NCCL on CUDA) with a timeout; every rank serialises its additive partial and ``gather_object`` brings
  them to rank 0, after a ``monitored_barrier`` (gloo) that names the ranks that never arrive. A rank that
  dies or hangs makes the others fail with an error naming it within the timeout.
* **independent jobs** (``RANK``/``WORLD_SIZE`` set by hand, e.g. SLURM array tasks sharing ``--out``): each
  rank writes ``OUT/partials/rank-R-of-W.npz`` holding a fingerprint of its inputs (shard checksums), its
  settings and the search code; rank 0 merges only partials with its own fingerprint and refuses a stale or
  foreign one by name.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import time
from pathlib import Path

import numpy as np

from benchmark.search import engine

DEFAULT_TIMEOUT_MIN = 10.0


def env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's (or the user's) environment."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))


def under_torchrun() -> bool:
    """True when a torch.distributed rendezvous is configured (torchrun sets MASTER_ADDR/MASTER_PORT)."""
    return env()[1] > 1 and bool(os.environ.get("MASTER_ADDR")) and bool(os.environ.get("MASTER_PORT"))


class ProcessGroup:
    """``with ProcessGroup(device, timeout_min):`` the default process group for the duration of a search."""

    def __init__(self, device: str, timeout_min: float):
        self.device, self.timeout = device, datetime.timedelta(minutes=timeout_min)
        self.backend = "nccl" if device.startswith("cuda") else "gloo"

    def __enter__(self) -> ProcessGroup:
        import torch
        import torch.distributed as dist

        if self.backend == "nccl":
            torch.cuda.set_device(torch.device(self.device))
        rank, world, _ = env()
        try:
            dist.init_process_group(self.backend, timeout=self.timeout)
        except Exception as exc:  # noqa: BLE001  (store/backend errors have several types)
            raise RuntimeError(
                f"search rank {rank} of {world}: the {self.backend} process group did not form "
                f"within {self.timeout.total_seconds() / 60:g} min (--dist-timeout); a rank died or "
                f"never started: {exc}"
            ) from None
        return self

    def __exit__(self, *exc) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


# ------------------------------------------------------------------------------------- (de)serialising


def partial_arrays(part: engine.Partial) -> dict[str, np.ndarray]:
    """A partial as named numpy arrays (the inverse of ``partial_from_arrays``)."""
    arrays = {
        "n_cols": np.int64(part.n_cols),
        "rank_hist": part.rank_hist,
        "n_below": np.int64(part.n_below),
        "neg_hist": part.neg_hist,
        "first_beater": part.first_beater,
        "match_vals": part.match_vals,
        "match_idx": part.match_idx,
        "match_bound": part.match_bound,
        "n_refined": np.int64(part.n_refined),
        "dense": np.array([part.auc_num2, part.dense_cols, part.auc_refined], dtype=np.int64),
        "neg_hist_lp": part.neg_hist_lp,
        "screen": np.array([part.n_below_lp, part.lp_cols, part.lp_rescored], dtype=np.int64),
        "screen_err": np.float64(part.lp_err),
        "screen_out": np.array(part.lp_out),
        "screen_note": np.array(part.lp_note),
    }
    for size, top in part.tops.items():
        top.flush()
        arrays.update(
            {
                f"top{size}_vals": top.vals,
                f"top{size}_probe": top.probe,
                f"top{size}_dist": top.dist,
                f"top{size}_meta": np.array([top.k, top.cut, top.eps]),
            }
        )
    return arrays


def partial_from_arrays(z) -> engine.Partial:
    """Rebuild a partial from ``partial_arrays``' arrays (a dict or an opened .npz)."""
    tops = {}
    for name in z.keys() if isinstance(z, dict) else z.files:
        if name.startswith("top") and name.endswith("_meta"):
            size = int(name[3:-5])
            k, cut, eps = z[name]
            tops[size] = engine.NegTopK(
                int(k), float(eps), z[f"top{size}_vals"], z[f"top{size}_probe"], z[f"top{size}_dist"], float(cut)
            )
    num2, dense_cols, auc_refined = (int(x) for x in z["dense"])
    below_lp, lp_cols, lp_rescored = (int(x) for x in z["screen"])
    return engine.Partial(
        int(z["n_cols"]),
        z["rank_hist"],
        int(z["n_below"]),
        z["neg_hist"],
        z["first_beater"],
        tops,
        z["match_vals"],
        z["match_idx"],
        z["match_bound"],
        int(z["n_refined"]),
        num2,
        dense_cols,
        auc_refined,
        z["neg_hist_lp"],
        below_lp,
        float(z["screen_err"]),
        str(z["screen_out"]),
        lp_cols,
        lp_rescored,
        str(z["screen_note"]),
    )


def to_bytes(part: engine.Partial, fingerprint: str = "") -> bytes:
    """A partial as .npz bytes (with its fingerprint)."""
    buf = io.BytesIO()
    np.savez(buf, fingerprint=np.array(fingerprint), **partial_arrays(part))
    return buf.getvalue()


def from_bytes(blob: bytes) -> tuple[engine.Partial, str]:
    """(partial, fingerprint) from ``to_bytes`` output (no pickles are loaded)."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        fp = str(z["fingerprint"]) if "fingerprint" in z.files else ""
        return partial_from_arrays({k: z[k] for k in z.files}), fp


# --------------------------------------------------------------------------------------- torchrun


def gather(part: engine.Partial, rank: int, world: int, timeout_min: float) -> engine.Partial | None:
    """Merge every rank's partial on rank 0 with torch.distributed (None on the other ranks).

    Raises ``RuntimeError`` naming the rank(s) that did not arrive within ``timeout_min`` minutes."""
    import torch.distributed as dist

    timeout = datetime.timedelta(minutes=timeout_min)
    where = f"search rank {rank} of {world}"
    if dist.get_backend() == "gloo":
        try:  # names the ranks that never arrive (died or hung) instead of a bare connection error
            dist.monitored_barrier(timeout=timeout, wait_all_ranks=True)
        except RuntimeError as exc:
            raise RuntimeError(
                f"{where}: not every rank reached the merge within {timeout_min:g} min (--dist-timeout): {exc}"
            ) from None
    blob = to_bytes(part)
    received = [None] * world if rank == 0 else None
    try:
        dist.gather_object(blob, received, dst=0)
    except Exception as exc:  # noqa: BLE001  (backend errors have several types)
        raise RuntimeError(
            f"{where}: gathering the partial results failed — a rank died or did not answer "
            f"within {timeout_min:g} min (--dist-timeout): {exc}"
        ) from None
    if rank != 0:
        return None
    merged = part
    for r in range(1, world):
        merged = engine.merge(merged, from_bytes(received[r])[0])
    return merged


# ----------------------------------------------------------------------------------- partial files


def fingerprint(cfg_dict: dict, inputs: dict[str, list[str]], world: int, code: str) -> str:
    """SHA-256 of the inputs' shard checksums, the settings that change a partial, the world size and code."""
    settings = {k: v for k, v in cfg_dict.items() if k not in ("out", "progress", "device", "dist_timeout")}
    blob = json.dumps(
        {"inputs": inputs, "settings": settings, "world": world, "code": code}, sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def partial_path(folder: Path, rank: int, world: int) -> Path:
    return folder / f"rank-{rank:04d}-of-{world:04d}.npz"


def save(part: engine.Partial, path: Path, fp: str) -> None:
    """Write a partial with its fingerprint (atomically)."""
    from benchmark.atomic import atomic_path

    with atomic_path(path, suffix=".npz") as tmp:
        Path(tmp).write_bytes(to_bytes(part, fp))


def load(path: Path, fp: str | None = None) -> engine.Partial:
    """Read a partial file; with ``fp``, refuse one whose fingerprint differs (naming the file)."""
    part, have = from_bytes(Path(path).read_bytes())
    if fp is not None and have != fp:
        what = (
            "has no fingerprint (written by an older mf2m)"
            if not have
            else f"was made from other inputs, settings or code (fingerprint {have[:12]}… ≠ {fp[:12]}…)"
        )
        raise RuntimeError(
            f"{path} {what}: a stale or foreign partial is never merged; delete it (or use a "
            f"fresh --out) and rerun that rank"
        )
    return part


def gather_files(folder: Path, world: int, own: engine.Partial, fp: str, timeout_min: float) -> engine.Partial:
    """Rank 0: wait (up to ``timeout_min``) for the other ranks' partial files and merge them into ``own``."""
    deadline = time.time() + timeout_min * 60
    paths = [partial_path(folder, r, world) for r in range(1, world)]
    while True:
        missing = [r for r, path in zip(range(1, world), paths) if not path.exists()]
        for path in paths:
            if path.exists():
                load(path, fp)  # refuse a stale or foreign partial as soon as it is seen
        if not missing:
            break
        if time.time() > deadline:
            raise RuntimeError(
                f"search rank 0 of {world}: rank(s) {', '.join(map(str, missing))} wrote no partial "
                f"({partial_path(folder, missing[0], world)}) within {timeout_min:g} min "
                f"(--dist-timeout); run them, then rerun rank 0 to merge"
            )
        time.sleep(0.5)
    merged = own
    for path in paths:  # in rank order, as torchrun's gather
        merged = engine.merge(merged, load(path, fp))
    return merged
