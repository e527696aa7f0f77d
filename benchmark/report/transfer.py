"""Transferability in the report: ``mf2m transfer`` outputs as source × target tables and heatmaps.

A ``--runs`` folder holding ``transfer.json`` (the manifest ``mf2m transfer`` writes, with every cell)
becomes, per attack, one table (rows: white-box sources; columns: Rank-1 and TAR at the lowest
resolved FAR for every target, then the mask rate) and one heatmap figure (Rank-1 and TAR matrices and
the mask-rate column). Only the manifest is read; nothing is recomputed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_path
from .tables import Column, Table

METRICS = (("rank1", "Rank-1"), ("tar", "TAR"))


def is_transfer(folder: str | Path) -> bool:
    """Whether ``folder`` is an ``mf2m transfer`` output (it holds ``transfer.json``)."""
    return (Path(folder) / "transfer.json").is_file()


def load(folder: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(cells, meta)`` of a transfer output folder."""
    record = json.loads((Path(folder) / "transfer.json").read_text(encoding="utf-8"))
    if record.get("stage") != "transfer" or not isinstance(record.get("cells"), list):
        raise ValueError(f"{folder}/transfer.json is not an mf2m transfer manifest (stage/cells missing)")
    return record["cells"], record.get("meta") or {}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


def attacks_of(cells: Sequence[dict[str, Any]]) -> list[str]:
    """Attack names in order of appearance, without the ``clean`` baseline."""
    return [a for a in dict.fromkeys(c["attack"] for c in cells) if a != "clean"]


def grid(cells: Sequence[dict[str, Any]], attack: str) -> tuple[list[str], list[str], dict[tuple[str, str], dict]]:
    """``(sources, targets, {(source, target): cell})`` of one attack."""
    sel = [c for c in cells if c["attack"] == attack]
    sources = list(dict.fromkeys(c["source"] for c in sel))
    targets = list(dict.fromkeys(c["target"] for c in sel))
    return sources, targets, {(c["source"], c["target"]): c for c in sel}


def tables(cells: Sequence[dict[str, Any]], meta: dict[str, Any], name: str) -> list[Table]:
    """One table per attack: source rows; Rank-1 and TAR per target; mask rate; plus the clean baseline row."""
    far = meta.get("far")
    far_text = f"{far:.2g}" if isinstance(far, (int, float)) else "?"
    clean = {c["target"]: c for c in cells if c["attack"] == "clean"}
    out = []
    for attack in attacks_of(cells):
        sources, targets, by = grid(cells, attack)
        cols = [Column("Source (white-box)", "source", "text")]
        cols += [Column(t, f"rank1@{t}") for t in targets]
        cols += [Column(t, f"tar@{t}") for t in targets]
        cols.append(Column("Mask rate", "mask_rate"))
        rows = []
        for s in sources:
            row: dict[str, Any] = {
                "method": attack,
                "source": s,
                "mask_rate": next((by[(s, t)]["mask_rate"] for t in targets if (s, t) in by), None),
            }
            for t in targets:
                for metric, _ in METRICS:
                    row[f"{metric}@{t}"] = (by.get((s, t)) or {}).get(metric)
            rows.append(row)
        if clean:
            base = {
                "method": "clean",
                "source": "clean (no attack)",
                "mask_rate": next(iter(clean.values())).get("mask_rate"),
            }
            for t in targets:
                for metric, _ in METRICS:
                    base[f"{metric}@{t}"] = (clean.get(t) or {}).get(metric)
            rows.append(base)
        notes = [
            f"Pool: {meta.get('pool', '?')}.",
            f"TAR at FAR = {far_text}: the lowest FAR the probe × distractor negatives resolve. Diagonal "
            "(source = target) cells are white-box; the others are black-box transfer. Mask rate: "
            f"{meta.get('mask_detector', 'the mask detector')} on the attacked images (one per source).",
        ]
        out.append(
            Table(
                f"transfer-{_slug(name)}-{_slug(attack)}",
                f"Transferability of {attack} ({name}): source × target recognizer",
                cols,
                rows,
                notes,
                groups=[("", 1), ("Rank-1", len(targets)), (f"TAR@{far_text}", len(targets)), ("", 1)],
            )
        )
    return out


def heatmaps(cells: Sequence[dict[str, Any]], meta: dict[str, Any], folder: Path, name: str) -> list[tuple[Path, str]]:
    """One PNG per attack: Rank-1 and TAR source × target matrices and the mask-rate column;
    returns ``[(png, caption)]``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    far = meta.get("far")
    figs = []
    for attack in attacks_of(cells):
        sources, targets, by = grid(cells, attack)
        panels = [
            (
                f"TAR@{far:.2g}" if metric == "tar" and isinstance(far, (int, float)) else title,
                np.array([[_num((by.get((s, t)) or {}).get(metric)) for t in targets] for s in sources]),
                targets,
            )
            for metric, title in METRICS
        ]
        rates = np.array(
            [[_num(next((by[(s, t)]["mask_rate"] for t in targets if (s, t) in by), None))] for s in sources]
        )
        panels.append(("Mask rate", rates, ["mask detector"]))
        widths = [len(cols) for _, _, cols in panels]
        fig, axes = plt.subplots(
            1,
            3,
            figsize=(2.0 + 1.4 * sum(widths), 1.6 + 0.6 * len(sources)),
            gridspec_kw={"width_ratios": widths},
            squeeze=False,
        )
        for ax, (title, values, cols) in zip(axes[0], panels):
            im = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
            ax.set_xticks(range(len(cols)), [_plain(c) for c in cols], rotation=30, ha="right")
            ax.set_yticks(
                range(len(sources)), [_plain(s) for s in sources] if ax is axes[0][0] else [""] * len(sources)
            )
            ax.set_title(title)
            for i in range(values.shape[0]):
                for j in range(values.shape[1]):
                    v = values[i, j]
                    ax.text(
                        j,
                        i,
                        "n/a" if math.isnan(v) else f"{v:.2f}",
                        ha="center",
                        va="center",
                        color="white" if math.isnan(v) or v < 0.6 else "black",
                    )
        axes[0][0].set_ylabel("source (white-box)")
        fig.colorbar(im, ax=list(axes[0]), fraction=0.03)
        fig.suptitle(f"{_plain(attack)}: source × target", y=1.06)
        path = folder / f"transfer_{_slug(name)}_{_slug(attack)}.png"
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        figs.append(
            (
                path,
                f"Transferability of {attack} ({name}): Rank-1 and TAR by source × target, and the "
                "mask rate per source",
            )
        )
    return figs


def _plain(text: str) -> str:
    """``text`` for a matplotlib label, shown literally (no mathtext from ``$``)."""
    return str(text).replace("$", r"\$")


def _num(v: Any) -> float:
    return float("nan") if v is None or v == "" else float(v)


def collect(runs: Sequence[str], plots: Path) -> tuple[list[Table], list[tuple[Path, str]]]:
    """Tables and heatmaps of every transfer output among ``runs`` (PNG files under ``plots``)."""
    out_tables: list[Table] = []
    figs: list[tuple[Path, str]] = []
    for spec in runs:
        if is_transfer(spec):
            cells, meta = load(spec)
            name = Path(spec).resolve().name
            out_tables += tables(cells, meta, name)
            figs += heatmaps(cells, meta, plots, name)
    return out_tables, figs
