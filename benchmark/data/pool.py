"""Probe-pool builder, like the paper's FaceScrub subset (80 identities, 3,530 images).

Picks ``n_identities`` identities at random (seeded) among those with at least ``min_images`` images,
keeps up to ``max_images`` images of each (seeded sample), and puts every other image in the *rest*
(usable as distractors or mask templates). Writes ``probes.csv`` and ``rest.csv`` (columns
``identity,path,key,aligned``: readable back with the ``csv:`` dataset spec, keys unchanged) and
``pool.json`` (a manifest with the counts, seed and chosen identities).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_json, write_text
from ..manifest import build_manifest
from .datasets import Dataset, Item


@dataclass
class Pool:
    """A probe pool and the rest of its source dataset."""

    probes: list[Item]
    rest: list[Item]
    identities: list[str]  # chosen identity names, sorted


def build_pool(
    dataset: Dataset, n_identities: int, max_images: int | None = None, seed: int = 0, min_images: int = 2
) -> Pool:
    """Choose ``n_identities`` identities (≥ ``min_images`` images each) and up to ``max_images`` of theirs."""
    if n_identities < 1:
        raise ValueError("the pool needs at least one identity")
    if min_images < 1 or (max_images is not None and max_images < min_images):
        raise ValueError("need 1 ≤ min_images ≤ max_images")
    by_identity: dict[str, list[Item]] = {}
    for item in dataset.items:
        if item.label >= 0:
            by_identity.setdefault(item.identity, []).append(item)
    eligible = sorted(name for name, items in by_identity.items() if len(items) >= min_images)
    if len(eligible) < n_identities:
        raise ValueError(
            f"{dataset.spec}: only {len(eligible)} identities have ≥ {min_images} images, {n_identities} were asked for"
        )
    rng = np.random.default_rng(seed)
    chosen = sorted(eligible[i] for i in rng.choice(len(eligible), size=n_identities, replace=False))
    picked: set[str] = set()
    for name in chosen:
        items = by_identity[name]  # already sorted by key
        if max_images is not None and len(items) > max_images:
            idx = np.sort(rng.choice(len(items), size=max_images, replace=False))
            items = [items[i] for i in idx]
        picked.update(item.key for item in items)
    probes = [item for item in dataset.items if item.key in picked]
    rest = [item for item in dataset.items if item.key not in picked]
    return Pool(probes=probes, rest=rest, identities=chosen)


def items_csv(items: list[Item]) -> str:
    """CSV text (``identity,path,key,aligned``) for items, readable by the ``csv:`` spec."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["identity", "path", "key", "aligned"])
    for item in items:
        writer.writerow([item.identity, str(Path(item.path).resolve()), item.key, 0 if item.needs_alignment else 1])
    return buf.getvalue()


def write_pool(pool: Pool, out_dir: str | Path, config: dict[str, Any]) -> dict[str, Any]:
    """Write ``probes.csv``, ``rest.csv`` and ``pool.json`` atomically; returns the manifest."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "probes.csv", items_csv(pool.probes))
    write_text(out / "rest.csv", items_csv(pool.rest))
    manifest = build_manifest(
        "pool",
        config,
        counts={"identities": len(pool.identities), "probes": len(pool.probes), "rest": len(pool.rest)},
        identities=pool.identities,
        files={"probes": "probes.csv", "rest": "rest.csv"},
    )
    write_json(out / "pool.json", manifest)
    return manifest
