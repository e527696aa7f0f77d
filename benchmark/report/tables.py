"""Table 1 (white-box) and Table 2 (black-box) as Markdown, CSV and LaTeX, with the paper's numbers.

Rows follow the paper's order (``paper_numbers.METHOD_ORDER``); a method that was not run is a row of
"—". The paper's published numbers sit beside ours when the setting matches theirs (MegaFace data,
ArcFace R50 white-box, CosFace R50/R34 black-box) and are otherwise printed as a separate reference
table whose caption says what differs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .collect import Entry, Metrics
from .paper_numbers import METHOD_LABELS, METHOD_ORDER, PAPER_SETTING, TABLE1, TABLE2, TABLE2_MODELS

DASH = "—"


class Unresolved(float):
    """A TAR at a FAR below 1/N_neg: the fraction of mates above the highest negative score, not a TAR at
    that FAR; rendered in parentheses, flagged 0 in the CSV's ``*_resolved`` column."""


class Estimate(float):
    """A value with its confidence interval ``lo``–``hi`` (rendered ``value [lo, hi]``; CSV ``*_lo``/``*_hi``)."""

    lo: float
    hi: float

    def __new__(cls, value: float, interval: tuple[float, float]) -> Estimate:
        obj = super().__new__(cls, value)
        obj.lo, obj.hi = float(interval[0]), float(interval[1])
        return obj


def with_interval(value: float | None, m: Metrics, name: str) -> float | None:
    """``value`` as an ``Estimate`` when ``m`` holds an interval ``name`` for it."""
    if value is None or name not in m.intervals or m.intervals[name] is None:
        return value
    return Estimate(value, m.intervals[name])


def tar_cell(m: Metrics, far: float) -> float | None:
    """The TAR of ``m`` at ``far`` for a table cell (``Unresolved`` when far·N_neg < 1, else with its interval)."""
    tar = m.tar_at(far)
    n_neg = m.counts.get("negative_pairs")
    if tar is not None and n_neg and far * n_neg < 1:
        return Unresolved(tar)
    return with_interval(tar, m, f"tar@{far:g}")


@dataclass
class Column:
    """A column: header text, the key of the value in a row, and how to format it."""

    title: str
    key: str
    kind: str = "rate"  # rate | tar | percent | psnr | ssim | text | int


@dataclass
class Table:
    """A rendered-format-neutral table: columns, rows of raw values, caption and notes."""

    name: str
    caption: str
    columns: list[Column]
    rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    groups: list[tuple[str, int]] = field(default_factory=list)  # optional header groups (title, span)


def fmt(value: Any, kind: str) -> str:
    """Format one cell: rates with 4 decimals (scientific below 1e-3), percentages, PSNR in dB, — when absent."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if kind in ("text", "int"):
        return str(value)
    if isinstance(value, Unresolved):
        return f"({fmt(float(value), kind)})"
    if isinstance(value, Estimate):
        if kind == "percent":
            return f"{100 * float(value):.2f}% [{100 * value.lo:.1f}, {100 * value.hi:.1f}]"
        return f"{fmt(float(value), kind)} [{value.lo:.3f}, {value.hi:.3f}]"
    v = float(value)
    if kind == "percent":
        return f"{100 * v:.2f}%"
    if kind == "psnr":
        return "∞" if math.isinf(v) else f"{v:.2f}"
    if 0 < abs(v) < 1e-3:
        return f"{v:.2e}"
    return f"{v:.4f}"


def method_rows(entries: Iterable[tuple[Entry, Metrics]]) -> list[str]:
    """Methods to show: every method of the paper (missing ones become — rows), then any others, in order."""
    extra = sorted({e.method for e, _ in entries} - set(METHOD_ORDER))
    return list(METHOD_ORDER) + extra


def label(method: str) -> str:
    """Display name of a method id."""
    return METHOD_LABELS.get(method, method)


# ---------------------------------------------------------------------------------------------------
# whether the paper's numbers are comparable


def _norm(name: str | None) -> str:
    return re.sub(r"[^a-z0-9]", "", (name or "").lower())


def paper_model(name: str | None) -> str | None:
    """The paper's model a registry name stands for (arcface-r50, cosface-r50, cosface-r34) or None."""
    n = _norm(name)
    for loss in ("arcface", "cosface"):
        if loss in n:
            for depth in ("50", "34"):
                if f"r{depth}" in n or f"resnet{depth}" in n:
                    return f"{loss}-r{depth}"
    return None


def setting_differences(setting: dict[str, Any], white_box: str | None, eval_model: str | None = None) -> list[str]:
    """What separates our setting from the paper's (empty: comparable)."""
    diffs = []
    kind = str(setting.get("data_kind", ""))
    if not kind.startswith("megaface"):
        diffs.append(f"data {setting.get('data', kind or 'unknown')} (paper: MegaFace/FaceScrub)")
    if paper_model(white_box) != "arcface-r50":
        diffs.append(f"white-box model {white_box} (paper: ArcFace R50)")
    if eval_model is not None and paper_model(eval_model) not in TABLE2:
        diffs.append(f"evaluation model {eval_model} (paper: CosFace R50/R34)")
    return diffs


# ---------------------------------------------------------------------------------------------------
# Table 1


def _tar_title(far: float) -> str:
    return f"TAR@{far:.0e} FAR".replace("e-0", "e-")


def table1(items: list[tuple[Entry, Metrics]], far: float = 1e-6, paper: str = "auto") -> list[Table]:
    """One white-box table per attack model (plus the paper's table when its setting differs)."""
    white = [(e, m) for e, m in items if e.white_box]
    attacked = {e.eval_model for e, _ in white if e.attack_model is not None}
    black_only = {e.eval_model for e, _ in items if not e.white_box} - attacked
    # unmasked probes on a model that only evaluates black-box transfer belong to Table 2
    models = sorted({e.eval_model for e, _ in white} - black_only)
    tables: list[Table] = []
    for model in models:
        sub = [(e, m) for e, m in white if e.eval_model == model]
        by_method = {e.method: (e, m) for e, m in sub}
        setting = sub[0][0].setting
        diffs = setting_differences(setting, model)
        beside = paper == "always" or (paper == "auto" and not diffs)
        cols = [
            Column("Method", "label", "text"),
            Column("Rank-1", "rank1"),
            Column(_tar_title(far), "tar", "tar"),
            Column("AUC", "auc"),
            Column("Mask rate", "mask_rate", "percent"),
            Column("PSNR", "psnr", "psnr"),
            Column("SSIM", "ssim", "ssim"),
        ]
        if beside:
            cols += [
                Column("Rank-1 (paper)", "p_rank1"),
                Column("TAR (paper)", "p_tar"),
                Column("AUC (paper)", "p_auc"),
                Column("Mask rate (paper)", "p_mask_rate", "percent"),
            ]
        rows = []
        notes = []
        for method in method_rows(sub):
            e, m = by_method.get(method, (None, Metrics()))
            psnr, ssim = m.psnr, m.ssim
            name = label(method)
            if m.reference == "solid" and psnr is not None:
                name += " †"
            row = {
                "method": method,
                "label": name,
                "rank1": with_interval(m.rank1, m, "rank1"),
                "tar": tar_cell(m, far),
                "auc": m.auc,
                "mask_rate": with_interval(m.mask_rate, m, "mask_rate"),
                "psnr": psnr,
                "ssim": ssim,
                "probes": m.counts.get("probes"),
                "attacked": m.attacked,
                "attack_skipped": m.attack_skipped,
            }
            if beside:
                p = TABLE1.get(method, {})
                row.update(
                    p_rank1=p.get("rank1"), p_tar=p.get("tar"), p_auc=p.get("auc"), p_mask_rate=p.get("mask_rate")
                )
            rows.append(row)
            if m.attack_skipped:
                notes.append(f"{label(method)}: {m.attack_skipped} probe(s) skipped by the attack stage.")
        notes = _common_notes(sub, far) + notes
        if beside and diffs:
            notes.append("Paper numbers shown beside ours although the setting differs: " + "; ".join(diffs) + ".")
        caption = (
            f"Table 1 — white-box: probes masked/attacked and evaluated on **{model}**"
            f"{_md_text(setting)}. {_sizes(sub)}"
        )
        tables.append(Table(f"table1_{_slug(model)}" if len(models) > 1 else "table1", caption, cols, rows, notes))
        if not beside and paper != "never":
            tables.append(paper_table1(diffs))
    return tables


def paper_table1(diffs: list[str] | None = None) -> Table:
    """The paper's Table 1 (plus the unmasked rank-1 and PSNR/SSIM given in its text)."""
    cols = [
        Column("Method", "label", "text"),
        Column("Rank-1", "rank1"),
        Column("TAR@1e-6 FAR", "tar"),
        Column("AUC", "auc"),
        Column("Mask rate", "mask_rate", "percent"),
        Column("PSNR", "psnr", "psnr"),
        Column("SSIM", "ssim", "ssim"),
    ]
    rows = [{"method": k, "label": label(k), **v} for k, v in TABLE1.items()]
    caption = (
        f"Paper's Table 1 (published numbers) — white-box {PAPER_SETTING['white_box']}, "
        f"{PAPER_SETTING['data']}, mask detector {PAPER_SETTING['mask_detector']}."
    )
    notes = ["No-mask Rank-1 and the PSNR/SSIM values are from the paper's text (Sec. 4.2)."]
    if diffs:
        notes.append("Not directly comparable with ours: " + "; ".join(diffs) + ".")
    return Table("table1_paper", caption, cols, rows, notes)


# ---------------------------------------------------------------------------------------------------
# Table 2


def table2(items: list[tuple[Entry, Metrics]], far: float = 1e-6, paper: str = "auto") -> list[Table]:
    """One black-box table per attack model: for each evaluation model Rank-1, TAR, AUC."""
    black = [(e, m) for e, m in items if not e.white_box]
    tables: list[Table] = []
    for attack_model in sorted({e.attack_model for e, _ in black}):
        sub = [(e, m) for e, m in black if e.attack_model == attack_model]
        eval_models = sorted({e.eval_model for e, _ in sub})
        # unmasked probes evaluated on the same models: the reference row
        clean = [(e, m) for e, m in items if e.method == "none" and e.eval_model in eval_models]
        setting = sub[0][0].setting
        cols = [Column("Method", "label", "text")]
        groups = [("", 1)]
        notes = _common_notes(sub + clean, far, attack_columns=False)
        paper_tables = []
        for model in eval_models:
            diffs = setting_differences(setting, attack_model, model)
            beside = paper == "always" or (paper == "auto" and not diffs)
            slug = _slug(model)
            cols += [
                Column("Rank-1", f"{slug}:rank1"),
                Column(_tar_title(far), f"{slug}:tar", "tar"),
                Column("AUC", f"{slug}:auc"),
            ]
            span = 3
            if beside and paper_model(model) in TABLE2:
                cols += [
                    Column("Rank-1 (paper)", f"{slug}:p_rank1"),
                    Column("TAR (paper)", f"{slug}:p_tar"),
                    Column("AUC (paper)", f"{slug}:p_auc"),
                ]
                span += 3
            elif paper != "never" and not paper_tables:
                paper_tables.append(paper_table2(diffs))
            groups.append((model, span))
        rows = []
        for method in method_rows(sub + clean):
            row: dict[str, Any] = {"method": method, "label": label(method)}
            for model in eval_models:
                slug = _slug(model)
                found = [m for e, m in sub + clean if e.method == method and e.eval_model == model]
                m = found[0] if found else Metrics()
                row.update(
                    {
                        f"{slug}:rank1": with_interval(m.rank1, m, "rank1"),
                        f"{slug}:tar": tar_cell(m, far),
                        f"{slug}:auc": m.auc,
                    }
                )
                p = TABLE2.get(paper_model(model) or "", {}).get(method, {})
                row.update(
                    {f"{slug}:p_rank1": p.get("rank1"), f"{slug}:p_tar": p.get("tar"), f"{slug}:p_auc": p.get("auc")}
                )
            rows.append(row)
        caption = (
            f"Table 2 — black-box transfer: probes attacked on **{attack_model}**, evaluated on "
            f"{', '.join(eval_models)}{_md_text(setting)}. {_sizes(sub)}"
        )
        name = "table2" if len({e.attack_model for e, _ in black}) == 1 else f"table2_{_slug(attack_model)}"
        tables.append(Table(name, caption, cols, rows, notes, groups))
        tables += paper_tables
    return tables


def paper_table2(diffs: list[str] | None = None) -> Table:
    """The paper's Table 2 (black-box on CosFace R50 and R34)."""
    cols = [Column("Method", "label", "text")]
    groups = [("", 1)]
    for model, title in TABLE2_MODELS.items():
        cols += [
            Column("Rank-1", f"{model}:rank1"),
            Column("TAR@1e-6 FAR", f"{model}:tar"),
            Column("AUC", f"{model}:auc"),
        ]
        groups.append((title, 3))
    rows = []
    for method in TABLE2["cosface-r50"]:
        row: dict[str, Any] = {"method": method, "label": label(method)}
        for model in TABLE2_MODELS:
            row.update({f"{model}:{k}": v for k, v in TABLE2[model][method].items()})
        rows.append(row)
    caption = (
        f"Paper's Table 2 (published numbers) — attacked on {PAPER_SETTING['white_box']}, evaluated on "
        f"CosFace ResNet50 / ResNet34, {PAPER_SETTING['data']}."
    )
    notes = ["Not directly comparable with ours: " + "; ".join(diffs) + "."] if diffs else []
    return Table("table2_paper", caption, cols, rows, notes, groups)


# ---------------------------------------------------------------------------------------------------
# captions


def _md_text(setting: dict[str, Any]) -> str:
    parts = []
    if setting.get("data"):
        parts.append(f"data {setting['data']}")
    if setting.get("mask_detector"):
        parts.append(f"mask detector {setting['mask_detector']}")
    if setting.get("templates") and not setting.get("split"):
        parts.append(f"templates: {setting['templates']}")
    text = ("; " + "; ".join(parts)) if parts else ""
    if setting.get("distractors_from"):
        text += f"; more distractors from {setting['distractors_from']}"
    if setting.get("split"):  # requested vs obtained sizes of the run's split, with the reasons
        text += f". {str(setting['split']).rstrip('.')}"
    if setting.get("screen"):  # pool people found among the other datasets' distractors (left out)
        text += f". {str(setting['screen']).rstrip('.')}"
    if setting.get("noise_lists"):  # data-set label errors left out (MegaFace-style noise lists)
        text += f". {str(setting['noise_lists']).rstrip('.')}"
    return text


def _sizes(items: list[tuple[Entry, Metrics]]) -> str:
    """Sizes of the evaluation (from the search stage's counts), as ranges when they vary by method."""
    keys = ("probes", "mates", "distractors", "positive_pairs", "negative_pairs")
    texts = []
    for k in keys:
        vals = sorted({m.counts[k] for _, m in items if k in m.counts})
        if vals:
            v = f"{vals[0]:,}" if len(vals) == 1 else f"{vals[0]:,}–{vals[-1]:,}"
            texts.append(f"{v} {k.replace('_', ' ')}")
    return ("Sizes: " + ", ".join(texts) + ".") if texts else "No search results yet."


def _common_notes(items: list[tuple[Entry, Metrics]], far: float, attack_columns: bool = True) -> list[str]:
    notes = ["— : not run (or its stage output is missing)."]
    negs = [m.counts.get("negative_pairs") for _, m in items if m.counts.get("negative_pairs")]
    if negs and min(negs) * far < 1:
        notes.append(
            f"(…): not resolved — with {min(negs):,} negative pairs, FAR {far:g} is below 1/N_neg, so "
            "the threshold is the highest negative score and the value is the fraction of mates above "
            "every distractor, not a TAR at this FAR."
        )
    boot = next((m.interval_note for _, m in items if m.interval_note), "")
    if boot:
        notes.append(boot + " (rank-1, TAR; mask rate: the same resampling of the attacked probes).")
    elif attack_columns and any("mask_rate" in m.intervals for _, m in items):
        notes.append("[lo, hi]: 95 % bootstrap interval of the mask rate, resampling the probe identities.")
    if attack_columns and any(m.mask_rate is not None for _, m in items):
        notes.append("Mask rate: fraction of probes with P(masked) > 0.5 under the mask detector.")
    if attack_columns and any(m.psnr is not None for _, m in items):
        notes.append(
            "PSNR/SSIM: mean over probes, whole image, against the DM image († against the solid-mask "
            "image, the base of the FGSM-family baselines)."
        )
    return notes


def _slug(name: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name or "none").strip("-").lower()


# ---------------------------------------------------------------------------------------------------
# renderers
