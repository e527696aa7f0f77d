"""The embed stage: dataset spec + recognizer → a feature-set directory (``manifest.json`` + HDF5 shards).

Streaming and batched (DataLoader workers decode while the model runs), resumable (completed shards are
skipped, a partial one is redone: the result is byte-identical to an uninterrupted run), split over
ranks for many GPUs (``torchrun``), and tolerant of bad input: every skipped image is recorded with its
reason, and the run stops with an error when more than ``max_failure_fraction`` of the images fail.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_json, write_text
from . import shards as S

log = logging.getLogger(__name__)


@dataclass
class EmbedConfig:
    """Settings of one ``mf2m embed`` run."""

    data: str
    model: str
    out: str
    flip: bool = False
    batch_size: int = 128
    workers: int = -1  # -1: choose from the CPU count
    device: str = "auto"
    shard_size: int = 100_000
    max_failure_fraction: float = 0.05
    dtype: str = "float32"
    prepared_dir: str | None = None  # where photos needing alignment are prepared (default OUT/prepared)
    weights: str | None = None  # weight file of the model (default: the registry's)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (benchmark.precision)
    progress: bool = True


@dataclass
class RankInfo:
    """This process's place in a (possibly) distributed run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised: bool = False  # torch.distributed process group set up by us


def rank_info() -> RankInfo:
    """Rank/world from the torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad RANK={rank} / WORLD_SIZE={world} in the environment")
    return RankInfo(rank=rank, world=world, local_rank=local)


def _init_distributed(info: RankInfo, device: str) -> RankInfo:
    """Join the torchrun process group when one is advertised (``MASTER_ADDR``); else run standalone."""
    if info.world > 1 and os.environ.get("MASTER_ADDR"):
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
            info.initialised = True
    return info


def _barrier(info: RankInfo) -> None:
    if info.initialised:
        import torch.distributed as dist

        dist.barrier()


def default_workers() -> int:
    """Decoding workers: all cores but the ones the model needs (at least 1, at most 16)."""
    from ..device import usable_cpus

    return max(1, min(16, usable_cpus() - 1))


def run_embed(cfg: EmbedConfig, recognizer: Any = None) -> dict[str, Any] | None:
    """Run (or resume) an embedding; returns the merged manifest (None on ranks that do not merge)."""
    from ..data.datasets import load_dataset
    from ..device import resolve_device
    from ..models.registry import create
    from .runtime import Forward

    if cfg.shard_size < 1 or cfg.batch_size < 1:
        raise ValueError("--shard-size and --batch-size must be ≥ 1")
    if not 0.0 <= cfg.max_failure_fraction <= 1.0:
        raise ValueError("--max-failure-fraction must be within [0, 1]")
    if cfg.dtype not in ("float32", "float16"):
        raise ValueError("--dtype must be float32 or float16")
    info = rank_info()
    device = resolve_device(cfg.device)
    if device == "cuda" and info.world > 1:
        device = f"cuda:{info.local_rank}"
    info = _init_distributed(info, device)
    from ..precision import plan

    plan(cfg.precision, device)  # unknown names and fp16 on a CPU fail before any work, with the reason
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    dataset = load_dataset(cfg.data)
    items = dataset.items
    if not items:
        raise ValueError(f"{cfg.data}: the dataset holds no images")
    recognizer = recognizer or create(cfg.model, weights=cfg.weights, device=device)
    forward = Forward(recognizer, device=device, flip=cfg.flip, precision=cfg.precision)
    log.info(
        "embed %s: %s runtime, %s (--precision %s: %s)",
        recognizer.name,
        forward.runtime,
        forward.precision.form if forward.module is not None else "its own float32 runtime",
        cfg.precision,
        forward.precision.reason,
    )
    total = S.n_shards(len(items), cfg.shard_size)
    fingerprint = {
        "data": cfg.data,
        "model": recognizer.name,
        "weights_sha256": recognizer.weights_hash(),
        "flip": cfg.flip,
        "dtype": cfg.dtype,
        "shard_size": cfg.shard_size,
        "batch_size": cfg.batch_size,
        "runtime": forward.runtime,
        "precision": forward.precision.precision,
        "items": len(items),
        "items_sha256": S.items_digest([it.key for it in items], [it.path for it in items]),
    }
    S.check_run_config(out, fingerprint)
    mine = S.rank_shards(total, info.rank, info.world)
    todo = [i for i in mine if S.read_record(out, i) is None]
    S.remove_stale_temps(out, todo)
    if len(todo) < len(mine):
        log.info("rank %d: %d of %d shards already complete, resuming", info.rank, len(mine) - len(todo), len(mine))

    if todo:
        sources, known = _sources(
            dataset, cfg, out, [i for s in todo for i in S.shard_range(s, len(items), cfg.shard_size)]
        )
        _embed_shards(cfg, items, todo, sources, known, forward, out, device, recognizer)
    _barrier(info)
    manifest = None
    if info.rank == 0 or not info.initialised:
        if all(S.read_record(out, i) is not None for i in range(total)):
            manifest = merge(out, total, cfg, dataset, recognizer, forward, fingerprint)
        elif not info.initialised:
            log.info(
                "rank %d done; the manifest is written once every rank has finished (run any rank again to merge)",
                info.rank,
            )
    _barrier(info)
    if info.initialised:
        import torch.distributed as dist

        dist.destroy_process_group()
    return manifest


def _sources(dataset, cfg: EmbedConfig, out: Path, indices: Sequence[int]):
    """File to decode per item index (aligned crops; photos are prepared first), and known failures."""
    items = dataset.items
    sources: list[str | None] = [it.path for it in items]
    known: dict[int, tuple[str, str]] = {}
    photos = [i for i in indices if items[i].needs_alignment]
    if photos:
        from ..data.prepare import PrepareItem, crop_path, prepare_faces

        prep_dir = Path(cfg.prepared_dir) if cfg.prepared_dir else out / "prepared"
        safe = {i: _prepare_key(items[i].key) for i in photos}
        prepared = prepare_faces(
            [PrepareItem(key=safe[i], path=items[i].path, identity=items[i].identity) for i in photos],
            prep_dir,
            progress=cfg.progress,
        )
        failed = {f["key"]: f for f in prepared.failures}
        for i in photos:
            if safe[i] in failed:
                sources[i] = None
                known[i] = (failed[safe[i]]["reason"], failed[safe[i]].get("detail", ""))
            else:
                sources[i] = str(crop_path(prep_dir, safe[i]))
    return sources, known


def _prepare_key(key: str) -> str:
    """A preparation-safe key (letters, digits, ``._-/``) for a dataset key."""
    import re

    return re.sub(r"[^A-Za-z0-9._\-/]", "_", key)


def _embed_shards(cfg, items, todo, sources, known, forward, out, device, recognizer) -> None:
    """Embed the shards ``todo`` in order, writing each one as soon as its last batch is done."""
    from tqdm import tqdm

    from .loader import FaceFiles, make_loader

    batches, batch_shard = [], []
    remaining: dict[int, int] = {}
    for s in todo:
        r = S.shard_range(s, len(items), cfg.shard_size)
        for start in range(r.start, r.stop, cfg.batch_size):
            batches.append(range(start, min(r.stop, start + cfg.batch_size)))
            batch_shard.append(s)
            remaining[s] = remaining.get(s, 0) + 1
    workers = default_workers() if cfg.workers < 0 else cfg.workers
    loader = make_loader(FaceFiles(sources, known), batches, workers, pin_memory=device.startswith("cuda"))
    buffers: dict[int, dict[str, list]] = {}
    bar = tqdm(
        total=sum(len(b) for b in batches), desc=f"embed {recognizer.name}", unit="img", disable=not cfg.progress
    )
    stats = {"done": 0, "failed": 0}

    def tagged():
        for k, (indices, faces, failures) in enumerate(loader):
            yield (k, indices, failures), faces

    for (k, indices, failures), feats in forward.stream(tagged()):
        s = batch_shard[k]
        buf = buffers.setdefault(s, {"indices": [], "features": [], "failures": []})
        buf["indices"].append(indices.numpy())
        buf["features"].append(feats)
        buf["failures"].extend(failures)
        stats["done"] += len(batches[k])
        stats["failed"] += len(failures)
        bar.update(len(batches[k]))
        remaining[s] -= 1
        if remaining[s] == 0:
            _write_shard(out, s, items, sources, buffers.pop(s), recognizer, cfg)
            _check_failures(stats, cfg, out)
    bar.close()


def _check_failures(stats: dict[str, int], cfg: EmbedConfig, out: Path) -> None:
    """Stop early once the failures seen so far exceed the allowed fraction (after ≥ 100 images)."""
    if stats["done"] >= 100 and stats["failed"] > cfg.max_failure_fraction * stats["done"]:
        raise RuntimeError(
            f"{stats['failed']} of the first {stats['done']} images failed, more than "
            f"--max-failure-fraction {cfg.max_failure_fraction}; the reasons are in "
            f"{out / S.PROGRESS}/shard-*.json (completed shards are kept for a resume)"
        )


def _write_shard(out: Path, index: int, items, sources, buf, recognizer, cfg: EmbedConfig) -> None:
    """Write one completed shard (temporary name → rename) and then its completion record."""
    from ..features import write_feature_file
    from ..manifest import sha256_file

    idx = np.concatenate(buf["indices"]) if buf["indices"] else np.empty(0, np.int64)
    feats = np.concatenate(buf["features"]) if buf["features"] else np.empty((0, recognizer.dim), np.float32)
    order = np.argsort(idx, kind="stable")
    idx, feats = idx[order], feats[order].astype(cfg.dtype)
    failures = sorted(buf["failures"])
    record: dict[str, Any] = {
        "index": index,
        "path": S.shard_name(index),
        "count": int(len(idx)),
        "failures": [
            {"key": items[i].key, "path": sources[i] or items[i].path, "reason": reason, "detail": detail}
            for i, reason, detail in failures
        ],
    }
    if len(idx):
        path = write_feature_file(
            out / S.shard_name(index),
            feats,
            [items[i].key for i in idx],
            np.asarray([items[i].label for i in idx], np.int64),
            recognizer.name,
            recognizer.dim,
            cfg.dtype,
            identities=[items[i].identity for i in idx],
            sources=[items[i].source for i in idx],
        )
        record["sha256"] = sha256_file(path)
    S.write_record(out, index, record)


def merge(out: Path, total: int, cfg: EmbedConfig, dataset, recognizer, forward, fingerprint) -> dict[str, Any]:
    """Collect every shard's record into ``manifest.json`` (+ ``failures.csv``) and log a summary."""
    import json

    from ..features import write_manifest
    from ..manifest import build_manifest, sha256_file

    records = [S.read_record(out, i) for i in range(total)]
    shards = [r for r in records if r["count"]]
    for r in shards:  # a shard changed on disk since it was written is an error, never merged
        if sha256_file(out / r["path"]) != r["sha256"]:
            raise RuntimeError(
                f"{out / r['path']}: checksum differs from its completion record; delete it and "
                f"{S.record_path(out, r['index'])} and re-run to redo that shard"
            )
    failures = [f for r in records for f in r["failures"]]
    by_reason: dict[str, int] = {}
    for f in failures:
        by_reason[f["reason"]] = by_reason.get(f["reason"], 0) + 1
    count = sum(r["count"] for r in shards)
    extra = build_manifest(
        "embed",
        {k: v for k, v in asdict(cfg).items() if k != "progress"},
        data=dataset.describe(),
        model_identity=recognizer.identity(),
        runtime=forward.describe(),
        precision=forward.precision.describe(),
        identities=dataset.identities,
        items=len(dataset.items),
        failures={"count": len(failures), "by_reason": dict(sorted(by_reason.items())), "items": failures},
        fingerprint=fingerprint,
    )
    path = write_manifest(out, recognizer.name, recognizer.dim, [r["path"] for r in shards])
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest = {**manifest, **{k: v for k, v in extra.items() if k not in manifest}}
    write_json(path, manifest)  # the format's fields plus the provenance, atomically
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["key", "path", "reason", "detail"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(failures)
    write_text(out / "failures.csv", buf.getvalue())
    summary = (
        f"embedded {count} of {len(dataset.items)} images into {len(shards)} shard(s) in {out}; "
        f"{len(failures)} skipped"
        + (
            f" ({', '.join(f'{k}: {v}' for k, v in sorted(by_reason.items()))}; see {out / 'failures.csv'})"
            if failures
            else ""
        )
    )
    log.info(summary)
    print(summary)
    if len(failures) > cfg.max_failure_fraction * len(dataset.items):
        raise RuntimeError(
            f"{len(failures)} of {len(dataset.items)} images failed "
            f"({len(failures) / len(dataset.items):.1%} > --max-failure-fraction "
            f"{cfg.max_failure_fraction}); reasons: {by_reason}; see {out / 'failures.csv'}"
        )
    return manifest
