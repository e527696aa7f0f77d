"""Raw outputs of a leaderboard: one folder per cell, and the leaderboard files re-rendered from them.

Layout under the leaderboard's ``out/``::

    cells/NN-<defence>-<attack>-<mode>/metrics.json   the cell's metrics and counts (no clean cost)
    cells/NN-<defence>-<attack>-<mode>/per_probe.csv  key, identity, source, positive pairs, rank-1 hits,
                                                      best mate score, mate scores, best distractor score,
                                                      rank of the best mate, P(masked), PSNR, SSIM
    leaderboard.json                                  manifest: config, models, meta, cells (each with "raw")

:func:`benchmark.report.leaderboard.rerender` rebuilds ``leaderboard.csv``, ``.md`` and ``.html`` from ``leaderboard.json``'s meta
and the cells' ``metrics.json`` (the clean cost is re-derived), so a committed leaderboard can be
checked byte for byte against the raw numbers it was rendered from. :func:`data_record` describes the
pool's data set without the machine's path (kind, folder name and a hash of its file listing).
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

PER_PROBE_FIELDS = (
    "key",
    "identity",
    "source",
    "positive_pairs",
    "rank1_hits",
    "best_mate_score",
    "mate_scores",
    "best_distractor_score",
    "rank",
    "p_masked",
    "psnr",
    "ssim",
)
#: row fields that are re-derived when rendering (not stored in a cell's metrics.json)
DERIVED = ("clean_cost_rank1", "clean_cost_tar", "clean_cost_auc", "clean_cost_mask_rate")


def data_record(spec: str) -> dict[str, Any]:
    """A portable description of dataset ``spec``: ``{spec, kind, name, items, identities, listing_sha256}``.

    ``spec`` is rewritten as ``KIND:$DATA/<folder name>`` (``$DATA``: the folder that holds the data set on
    the machine that ran it); the hash covers every listed item's key and identity, so two machines with the
    same copy of the data set record the same value.
    """
    from ..data.datasets import load_dataset, parse_spec

    kind, path, options = parse_spec(spec)
    dataset = load_dataset(spec)
    listing = "\n".join(f"{it.key}\t{it.identity}" for it in sorted(dataset.items, key=lambda it: it.key))
    query = ("?" + "&".join(f"{k}={v}" for k, v in sorted(options.items()))) if options else ""
    name = Path(path).resolve().name
    return {
        "spec": f"{kind}:$DATA/{name}{query}",
        "kind": kind,
        "name": name,
        "items": len(dataset.items),
        "identities": len(dataset.identities),
        "listing_sha256": hashlib.sha256(listing.encode("utf-8")).hexdigest(),
    }


def cell_folder(index: int, row: dict[str, Any]) -> str:
    """The cell's folder, relative to the leaderboard's ``out`` (index keeps names unique and ordered)."""
    parts = [row["defence"], row["attack"], "clean" if row["mode"] == "—" else row["mode"]]
    name = "-".join(re.sub(r"[^A-Za-z0-9.]+", "_", p).strip("_") for p in parts)
    return f"cells/{index:02d}-{name[:80]}"


def per_probe_csv(
    keys: Sequence[str],
    ids: Sequence[str],
    outcomes,
    p_masked: np.ndarray | None,
    attack_rows: dict[str, dict[str, Any]] | None = None,
) -> str:
    """CSV of each probe's outcome (:class:`.bootstrap.ProbeOutcomes`); scores as exact float ``repr``.

    ``attack_rows`` (the attack's ``rows.jsonl`` by key) give the source key and the PSNR/SSIM against the
    attack's base image; without them (clean probes) the source is the key and PSNR/SSIM are empty.
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PER_PROBE_FIELDS)
    for i, (key, ident) in enumerate(zip(keys, ids)):
        mates = np.sort(np.asarray(outcomes.pos_scores[i], np.float64))[::-1]
        neg = outcomes.neg_scores[i]
        best = float(mates[0]) if len(mates) else None
        rank = int((neg > best).sum()) + 1 if best is not None else None
        made = (attack_rows or {}).get(key) or {}
        w.writerow(
            [
                key,
                ident,
                made.get("source") or key,
                int(outcomes.n_pos[i]),
                int(outcomes.rank1_hits[i]),
                "" if best is None else repr(best),
                ";".join(repr(float(s)) for s in mates),
                repr(float(neg.max())),
                "" if rank is None else rank,
                "" if p_masked is None else repr(float(p_masked[i])),
                *("" if made.get(m) is None else repr(float(made[m])) for m in ("psnr", "ssim")),
            ]
        )
    return buf.getvalue()


def write_cell(
    out: Path,
    index: int,
    row: dict[str, Any],
    keys: Sequence[str],
    ids: Sequence[str],
    outcomes,
    p_masked: np.ndarray | None,
    attack_rows: dict[str, dict[str, Any]] | None = None,
) -> str:
    """Write one cell's ``metrics.json`` and ``per_probe.csv``; returns its folder (relative to ``out``)."""
    from ..atomic import write_json, write_text

    folder = cell_folder(index, row)
    write_json(out / folder / "metrics.json", {k: v for k, v in row.items() if k not in DERIVED})
    write_text(out / folder / "per_probe.csv", per_probe_csv(keys, ids, outcomes, p_masked, attack_rows))
    return folder


def read_per_probe(path: Path) -> list[dict[str, Any]]:
    """A cell's ``per_probe.csv`` with numbers parsed (``mate_scores`` as a list of floats)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            rows.append(
                {
                    **r,
                    "positive_pairs": int(r["positive_pairs"]),
                    "rank1_hits": int(r["rank1_hits"]),
                    "mate_scores": [float(s) for s in r["mate_scores"].split(";") if s],
                    "best_distractor_score": float(r["best_distractor_score"]),
                    "p_masked": float(r["p_masked"]) if r["p_masked"] else None,
                    **{m: float(r[m]) if r[m] else None for m in ("psnr", "ssim")},
                }
            )
    return rows
