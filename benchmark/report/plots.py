"""Figures of the report: CMC and ROC curves (semilog, one curve per method, as the paper's Fig. 5/6),
rank-1 against the number of distractors, and example faces per method (as Fig. 1(b)/4).

Curves are read from each search output's ``cmc.csv`` / ``roc.csv``; examples from each attack
output's ``images/``, ``probes.csv`` and template bank. Nothing is recomputed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from .collect import Entry, Metrics, read_csv_rows, read_curve
from .paper_numbers import METHOD_ORDER
from .tables import label

log = logging.getLogger(__name__)

CMC_X = ("rank", "k")
CMC_Y = ("rate", "cmc", "identification_rate", "tpir")
ROC_X = ("far", "fpr")
ROC_Y = ("tar", "tpr")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _order(entries: Sequence[Entry]) -> list[Entry]:
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    return sorted(entries, key=lambda e: (rank.get(e.method, len(rank)), e.method))


#: one colour per method of METHOD_ORDER (tab10, then two more), so no two methods of a plot share a colour
_COLOURS = [f"C{i}" for i in range(10)] + ["black", "goldenrod"]


def _style(method: str) -> dict[str, str]:
    """Line colour and style of ``method``: dashed for the unattacked masks, fixed colour per method."""
    i = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    colour = _COLOURS[i] if i < len(_COLOURS) else "0.5"
    return {"color": colour, "linestyle": "--" if method in ("none", "solid", "dm") else "-"}


def _save(fig, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    _pyplot().close(fig)
    return path


def curve_plot(entries: Sequence[Entry], kind: str, path: Path, title: str = "") -> Path | None:
    """CMC (``kind="cmc"``) or ROC (``"roc"``) of every entry with a curve file; None when there is none."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    drawn, floor, curves = 0, 0.0, 0
    for e in _order(entries):
        f = e.search_dir / f"{kind}.csv" if e.search_dir else None
        if f is None or not f.is_file():
            continue
        names = (CMC_X, CMC_Y) if kind == "cmc" else (ROC_X, ROC_Y)
        x, y = read_curve(f, *names)
        lowest = _lowest_resolved_far(e.search_dir) if kind == "roc" else 0.0
        floor = max(floor, lowest)
        curves += 1
        pts = [(a, b) for a, b in zip(x, y) if a > 0 and a >= lowest]  # no ROC point below FAR = 1/N_neg
        if not pts:
            continue
        xs, ys = zip(*pts)
        ax.plot(
            xs,
            ys,
            label=label(e.method),
            drawstyle="steps-post" if kind == "cmc" else "default",
            **_style(e.method),
        )
        drawn += 1
    if not drawn and not (kind == "roc" and curves and floor > 0):  # an all-unresolved ROC still says so
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, which="both", alpha=0.3)
    if kind == "cmc":
        ax.set_xlabel("rank (number of gallery images considered)")
        ax.set_ylabel("identification rate")
    else:
        ax.set_xlabel("false accept rate (FAR)")
        ax.set_ylabel("true accept rate (TAR)")
        if floor > 0:
            left = min(ax.get_xlim()[0], floor / 30) if drawn else floor / 30
            ax.set_xlim(left=left, right=max(ax.get_xlim()[1], floor * 3) if drawn else 1.0)
            ax.axvspan(left, floor, color="0.9", zorder=0)
            ax.text(
                0.02,
                0.04,
                f"shaded: FAR < 1/N_neg = {floor:.2g}, not resolved",
                transform=ax.transAxes,
                fontsize=7,
                color="0.3",
            )
    ax.set_title(title or kind.upper())
    if drawn:
        ax.legend(fontsize=7, loc="best", ncol=2)
    return _save(fig, path)


def _lowest_resolved_far(search_dir: Path) -> float:
    """1/N_neg of a search output (its metrics.json), or 0 when unknown."""
    try:
        n_neg = json.loads((search_dir / "metrics.json").read_text(encoding="utf-8"))["counts"]["negative_pairs"]
    except (OSError, KeyError, TypeError, ValueError):
        return 0.0
    return 1.0 / n_neg if n_neg else 0.0


def sweep_plot(items: Sequence[tuple[Entry, Metrics]], path: Path, title: str = "") -> Path | None:
    """Rank-1 against the number of distractors (log x) for the entries whose search ran a size sweep."""
    plt = _pyplot()
    rows = [(e, m) for e, m in items if len(m.sweep) >= 2]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for e, m in sorted(rows, key=lambda r: METHOD_ORDER.index(r[0].method) if r[0].method in METHOD_ORDER else 99):
        ax.plot(
            [r["distractors"] for r in m.sweep],
            [r["rank1"] for r in m.sweep],
            marker="o",
            ms=3,
            label=label(e.method),
            **_style(e.method),
        )
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("number of distractors")
    ax.set_ylabel("rank-1 identification rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or "Rank-1 vs distractors")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------
# example faces


def _read_rgb(path: Path) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError):
        return None


def _attack_sources(attack_dir: Path) -> tuple[dict[str, Path], dict[str, np.ndarray]]:
    """Original image paths by key (from the attack manifest's probe list) and template crops by key."""
    import json

    originals: dict[str, Path] = {}
    templates: dict[str, np.ndarray] = {}
    manifest = attack_dir / "manifest.json"
    if manifest.is_file():
        cfg = json.loads(manifest.read_text(encoding="utf-8")).get("config", {})
        if cfg.get("probes") and Path(cfg["probes"]).exists():
            from attacks.templates import list_faces

            try:
                originals = {it.key: it.path for it in list_faces(cfg["probes"])}
            except ValueError as exc:
                log.warning("examples: cannot list the probes of %s: %s", attack_dir, exc)
    bank = attack_dir / "template_bank.npz"
    if bank.is_file():
        with np.load(bank, allow_pickle=False) as z:
            keys = z["keys"].tolist()
            faces = z["faces"]
            templates = {k: faces[i] for i, k in enumerate(keys)}
    return originals, templates


def example_keys(entries: Sequence[Entry], n: int) -> list[str]:
    """The first ``n`` probe keys (sorted) that every attacked entry wrote successfully."""
    common: set[str] | None = None
    for e in entries:
        if e.attack_dir is None or not (e.attack_dir / "probes.csv").is_file():
            continue
        ok = {r["key"] for r in read_csv_rows(e.attack_dir / "probes.csv") if r.get("status") == "ok"}
        common = ok if common is None else common & ok
    return sorted(common or [])[:n]


def examples_figure(entry: Entry, keys: Sequence[str], path: Path) -> Path | None:
    """One figure for a method: per example row the original, the template (DM-based) and the result with PSNR
    (None when the attack's images are not there, e.g. restored from a stage store)."""
    if entry.attack_dir is None or not any((entry.attack_dir / "images" / f"{k}.png").is_file() for k in keys):
        return None
    rows = {r["key"]: r for r in read_csv_rows(entry.attack_dir / "probes.csv")}
    originals, templates = _attack_sources(entry.attack_dir)
    plt = _pyplot()
    has_template = any(rows.get(k, {}).get("template") for k in keys)
    ncols = 3 if has_template else 2
    fig, axes = plt.subplots(len(keys), ncols, figsize=(2.0 * ncols, 2.1 * len(keys)), squeeze=False)
    for i, key in enumerate(keys):
        row = rows.get(key, {})
        panels = [("original", _read_rgb(originals[key]) if key in originals else None)]
        if has_template:
            t = row.get("template") or ""
            panels.append((f"template {t.split('/')[0][:18]}", templates.get(t)))
        psnr = row.get("psnr") or ""
        title = label(entry.method) + (f"\nPSNR {float(psnr):.2f} dB" if psnr not in ("", "inf") else "")
        panels.append((title, _read_rgb(entry.attack_dir / "images" / f"{key}.png")))
        for ax, (text, img) in zip(axes[i], panels):
            ax.axis("off")
            ax.set_title(text, fontsize=7)
            if img is not None:
                ax.imshow(img)
            else:
                ax.text(0.5, 0.5, "not available", ha="center", va="center", fontsize=7)
    fig.suptitle(f"{label(entry.method)} (attacked on {entry.attack_model or entry.eval_model})", fontsize=9)
    return _save(fig, path)


def overview_figure(entries: Sequence[Entry], key: str, path: Path) -> Path | None:
    """One probe under every method side by side (original, template, then each result with PSNR), as Fig. 4."""
    attacked = [
        e for e in _order(entries) if e.attack_dir is not None and (e.attack_dir / "images" / f"{key}.png").is_file()
    ]
    if not attacked:
        return None
    originals, templates, template_key = {}, {}, ""
    for e in attacked:
        o, t = _attack_sources(e.attack_dir)
        originals.update(o)
        templates.update(t)
        row = next((r for r in read_csv_rows(e.attack_dir / "probes.csv") if r["key"] == key), {})
        template_key = template_key or row.get("template") or ""
    panels = [("original", _read_rgb(originals[key]) if key in originals else None)]
    if template_key:
        panels.append(("template", templates.get(template_key)))
    for e in attacked:
        row = next((r for r in read_csv_rows(e.attack_dir / "probes.csv") if r["key"] == key), {})
        psnr = row.get("psnr") or ""
        text = label(e.method) + (f"\n{float(psnr):.2f} dB" if psnr not in ("", "inf") else "")
        panels.append((text, _read_rgb(e.attack_dir / "images" / f"{key}.png")))
    plt = _pyplot()
    ncols = min(len(panels), 7)
    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.8 * ncols, 2.0 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (text, img) in zip(axes.flat, panels):
        ax.set_title(text, fontsize=7)
        if img is not None:
            ax.imshow(img)
    fig.suptitle(f"probe {key}", fontsize=8)
    return _save(fig, path)
