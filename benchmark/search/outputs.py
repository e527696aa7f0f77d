"""Files written by ``mf2m search``: metrics.json, cmc.csv, roc.csv, topk.csv, per_probe.csv, cmc.png, roc.png,
manifest.json."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from benchmark.atomic import atomic_path, write_json, write_text
from benchmark.manifest import build_manifest, sha256_file


def _csv(rows, header: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_curves(out: Path, metrics: dict, curves: dict) -> None:
    """cmc.csv (every rank where the CMC steps, so CMC(k) is exact for every k) and roc.csv (``resolved``
    0 for a FAR below 1/N_neg, whose threshold is just the highest negative score)."""
    steps, rates = curves["cmc"]
    n_d = metrics["counts"]["distractors"]
    rows = [[1, "0"]] if steps[0] != 1 else []
    rows += [[int(k), f"{r:.9g}"] for k, r in zip(steps, rates)]
    if steps[-1] != n_d + 1:
        rows.append([n_d + 1, f"{1.0:.9g}"])
    write_text(out / "cmc.csv", _csv(rows, ["rank", "identification_rate"]))
    write_text(
        out / "roc.csv",
        _csv(
            [[f"{r['far']:.6g}", f"{r['tar']:.9g}", repr(r["threshold"]), int(r["resolved"])] for r in curves["roc"]],
            ["far", "tar", "threshold", "resolved"],
        ),
    )


def write_matches(out: Path, curves: dict, arrays: dict) -> None:
    """topk.csv: probe key, rank, gallery key, role, same-identity flag, exact score."""
    idx, scores = curves["matches"]
    p, m, d = arrays["probes"], arrays["mates"], arrays["distractors"]
    n_m = len(m.keys)
    rows, cols = np.nonzero(np.isfinite(scores))  # row-major: probes in order, ranks ascending
    g = idx[rows, cols].astype(np.int64)
    is_mate = g < n_m
    mi, di = np.where(is_mate, g, 0), np.where(is_mate, 0, g - n_m)
    keys = np.where(is_mate, m.keys[mi] if n_m else "", d.keys[di])
    labels = np.where(is_mate, m.labels[mi] if n_m else -1, d.labels[di])
    same = ((labels >= 0) & (labels == p.labels[rows])).astype(int)
    table = zip(
        p.keys[rows].tolist(),
        (cols + 1).tolist(),
        keys.tolist(),
        np.where(is_mate, "mate", "distractor").tolist(),
        same.tolist(),
        [repr(float(x)) for x in scores[rows, cols]],
    )
    write_text(out / "topk.csv", _csv(table, ["probe", "rank", "gallery", "role", "same_identity", "score"]))


PER_PROBE_HEADER = ["key", "identity", "source", "best_mate_score", "best_mate", "rank"]


def write_per_probe(out: Path, curves: dict, arrays: dict) -> None:
    """per_probe.csv: probe key, identity name, source key, exact score to its best mate, that mate, its rank.

    A probe with no mate (after noise lists, or ``allow_missing_mates``) has empty score and mate, rank 0;
    a feature set without per-row names or sources (``mf2m.features.v1``) leaves those columns empty.
    """
    best, mate, rank = curves["per_probe"]
    p, m = arrays["probes"], arrays["mates"]
    n = len(p.keys)
    names = p.identities if p.identities is not None else np.full(n, "", dtype=str)  # v1 sets: no names
    sources = p.sources if p.sources is not None else np.full(n, "", dtype=str)
    rows = (
        (
            str(p.keys[i]),
            str(names[i]),
            str(sources[i]),
            repr(float(best[i])) if mate[i] >= 0 else "",
            str(m.keys[mate[i]]) if mate[i] >= 0 else "",
            int(rank[i]),
        )
        for i in range(n)
    )
    write_text(out / "per_probe.csv", _csv(rows, PER_PROBE_HEADER))


def plot(out: Path, metrics: dict, curves: dict) -> None:
    """cmc.png (rank on a log axis) and roc.png (FAR on a log axis), as Fig. 5 of the paper."""
    from matplotlib.figure import Figure  # object API: no pyplot, no GUI backend

    steps, rates = curves["cmc"]
    n_d = metrics["counts"]["distractors"]
    x = np.concatenate([[1], steps, [n_d + 1]])
    y = np.concatenate([[rates[0] if steps[0] == 1 else 0.0], rates, [1.0]])
    fig = Figure(figsize=(5, 4), layout="tight")
    ax = fig.subplots()
    ax.step(x, y, where="post")
    ax.set_xscale("log")
    ax.set(
        xlabel="rank",
        ylabel="identification rate",
        ylim=(0, 1.01),
        title=f"CMC ({n_d:,} distractors), rank-1 {metrics['rank1']:.4f}",
    )
    ax.grid(True, which="both", alpha=0.3)
    with atomic_path(out / "cmc.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)

    roc = [r for r in curves["roc"] if r.get("resolved", True)]  # never below FAR = 1/N_neg
    n_neg = metrics["counts"]["negative_pairs"]
    fig = Figure(figsize=(5, 4), layout="tight")
    ax = fig.subplots()
    ax.plot([r["far"] for r in roc], [r["tar"] for r in roc], marker=".")
    ax.set_xscale("log")
    unresolved = sorted(r["far"] for r in curves["roc"] if not r.get("resolved", True))
    if unresolved:
        ax.axvspan(unresolved[0], 1.0 / n_neg, color="0.85", zorder=0)
        ax.text(
            0.02,
            0.04,
            f"FAR < 1/N_neg = {1.0 / n_neg:.2g}: not resolved",
            transform=ax.transAxes,
            fontsize=8,
            color="0.3",
        )
    ax.set(
        xlabel="false accept rate", ylabel="true accept rate", ylim=(0, 1.01), title=f"ROC, AUC {metrics['auc']:.6f}"
    )
    ax.grid(True, which="both", alpha=0.3)
    with atomic_path(out / "roc.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def write_all(
    out: Path,
    cfg,
    metrics: dict,
    curves: dict,
    arrays: dict,
    model: str,
    dim: int,
    device: str,
    world: int,
    timings: dict,
) -> None:
    """Every output of the stage; metrics.json and manifest.json are written last."""
    from benchmark.features import FeatureSet
    from benchmark.search.run import config_dict

    out.mkdir(parents=True, exist_ok=True)
    write_curves(out, metrics, curves)
    write_matches(out, curves, arrays)
    write_per_probe(out, curves, arrays)
    plot(out, metrics, curves)
    write_json(out / "metrics.json", metrics)
    inputs = {}
    for role in ("probes", "mates", "distractors"):
        fs = FeatureSet(getattr(cfg, role), verify_checksums=False)
        inputs[role] = {
            "path": str(fs.path),
            "count": fs.count,
            "shards": [
                {"path": str(s.path), "count": s.count, "sha256": s.sha256 or sha256_file(s.path)} for s in fs.shards
            ],
        }
    write_json(
        out / "manifest.json",
        build_manifest(
            "search",
            config_dict(cfg),
            inputs=inputs,
            model=model,
            dim=dim,
            device=device,
            processes=world,
            timings=timings,
            outputs=["metrics.json", "cmc.csv", "roc.csv", "topk.csv", "per_probe.csv", "cmc.png", "roc.png"],
        ),
    )
