"""Our numbers beside the paper's, with the difference (Δ = ours − paper), whatever the setting.

``table1`` puts the paper's columns beside ours only when the settings match; the HTML page and
``report.md`` always also show this comparison so a reader sees how far a run is from the paper, with
the caption saying what differs (data, models, sizes) and therefore how much the Δ can mean.
"""

from __future__ import annotations

from .collect import Entry, Metrics
from .paper_numbers import TABLE1
from .tables import Column, Table, _slug, label, method_rows, setting_differences

_METRICS = (
    ("Rank-1", "rank1", "rate"),
    ("TAR", "tar", "rate"),
    ("AUC", "auc", "rate"),
    ("Mask rate", "mask_rate", "percent"),
)


def _delta(ours: float | None, paper: float | None, kind: str) -> str | None:
    if ours is None or paper is None:
        return None
    d = ours - paper
    if kind == "percent":
        return f"{100 * d:+.2f} pp"
    return f"{d:+.2e}" if 0 < abs(d) < 1e-3 else f"{d:+.4f}"


PAPER_FAR = 1e-6  # the FAR of the paper's TAR columns


def comparison_tables(items: list[tuple[Entry, Metrics]], far: float = 1e-6) -> list[Table]:
    """One table per white-box model: for Rank-1, TAR, AUC and mask rate, ours, the paper's Table 1, Δ. Our TAR
    is at the paper's FAR (1e-6) when the searches computed it, else at ``far``."""
    white = [(e, m) for e, m in items if e.white_box and e.attack_model is not None]
    if any(m.tar_at(PAPER_FAR) is not None for _, m in white):
        far = PAPER_FAR
    tables = []
    models = sorted({e.eval_model for e, _ in white})
    for model in models:
        sub = [(e, m) for e, m in items if e.white_box and e.eval_model == model]
        by_method = {e.method: m for e, m in sub}
        cols = [Column("Method", "label", "text")]
        groups = [("", 1)]
        for title, key, kind in _METRICS:
            cols += [Column("ours", key, kind), Column("paper", f"p_{key}", kind), Column("Δ", f"d_{key}", "text")]
            groups.append((title if key != "tar" else f"TAR@{far:g} FAR", 3))
        rows = []
        for method in method_rows(sub):
            m = by_method.get(method, Metrics())
            p = TABLE1.get(method, {})
            ours = {"rank1": m.rank1, "tar": m.tar_at(far), "auc": m.auc, "mask_rate": m.mask_rate}
            row = {"method": method, "label": label(method)}
            for _, key, kind in _METRICS:
                row[key], row[f"p_{key}"] = ours[key], p.get(key)
                row[f"d_{key}"] = _delta(ours[key], p.get(key), kind)
            rows.append(row)
        diffs = setting_differences(sub[0][0].setting, model)
        caption = f"Ours beside the paper's Table 1 (Δ = ours − paper), white-box on **{model}**. " + (
            "Same setting as the paper."
            if not diffs
            else "The settings differ, so Δ shows distance from the paper, not an error: " + "; ".join(diffs) + "."
        )
        notes = ["Paper: TAR at 1e-6 FAR; its No-mask Rank-1 is from its text (Sec. 4.2). — : not run or not given."]
        if far != PAPER_FAR:
            notes.append(f"Our TAR is at {far:g} FAR, the paper's at {PAPER_FAR:g}.")
        tables.append(Table(f"compare_table1_{_slug(model)}", caption, cols, rows, notes, groups))
    return tables
