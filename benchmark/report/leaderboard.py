"""The defence leaderboard rows: their clean-cost columns and their rendering (Markdown, CSV, HTML page)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS = ("rank1", "tar", "auc", "mask_rate")
CSV_FIELDS = (
    "defence",
    "kind",
    "attack",
    "mode",
    "gradient",
    "variant",
    "eot_samples",
    "rank1",
    "tar",
    "auc",
    "mask_rate",
    "clean_cost_rank1",
    "clean_cost_tar",
    "clean_cost_auc",
    "clean_cost_mask_rate",
    "probes",
    "skipped",
    "positive_pairs",
    "negative_pairs",
)


def add_clean_cost(rows: list[dict[str, Any]]) -> None:
    """Fill ``clean_cost_*``: the defence's clean metric minus the undefended system's (same pool)."""
    base = next((r for r in rows if r["defence"] == "none" and r["attack"] == "clean"), None)
    clean = {r["defence"]: r for r in rows if r["attack"] == "clean"}
    for row in rows:
        ref = clean.get(row["defence"])
        for m in METRICS:
            have = base is not None and ref is not None and ref.get(m) is not None and base.get(m) is not None
            row[f"clean_cost_{m}"] = (ref[m] - base[m]) if have else None


def _fmt(v: Any, signed: bool = False) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:+.4f}" if signed else f"{v:.4f}"
    return str(v)


_LEGEND = (
    "Mode: *non-adaptive* = attack made against the undefended models; *adaptive* = attack run through "
    "the defence. Variant: the adaptive attack's gradient (exact, or BPDA: straight-through with the identity "
    "or the defence's declared surrogate where it is not differentiable) and, against a stochastic defence, "
    "EOT×N (objective averaged over N fresh draws of its randomness per step). "
    "Clean cost = the defended system's metric on unmasked probes minus the undefended one's. "
    "Mask rate on `clean` rows is the false-alarm rate."
)


def render_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The leaderboard as a Markdown table with a short legend."""
    far = meta.get("far", 1e-6)
    head = [
        "Defence",
        "Attack",
        "Mode",
        "Variant",
        "Rank-1",
        f"TAR@{far:g}",
        "AUC",
        "Mask rate",
        "Clean cost Rank-1",
        "Clean cost TAR",
        "Clean cost AUC",
        "Clean cost mask rate",
        "Probes",
        "Skipped",
    ]
    lines = [
        f"# Defence leaderboard — {meta.get('recognizer')} / {meta.get('mask_detector')}",
        "",
        f"Pool: {meta.get('pool')}. Rank-1, TAR and AUC come from the search stage's engine "
        "(docs/protocol.md): mates = the clean pool faces (never a probe's own original), negatives = "
        f"probe × distractor pairs. TAR resolution: {meta.get('far_resolution')} "
        "(fewer negatives than 1/FAR: TAR is measured at the largest negative score).",
        "",
        _LEGEND,
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        vals = (
            [
                r["defence"],
                r["attack"],
                r["mode"],
                r.get("variant") or "",
                _fmt(r["rank1"]),
                _fmt(r["tar"]),
                _fmt(r["auc"]),
                _fmt(r["mask_rate"]),
            ]
            + [_fmt(r[f"clean_cost_{m}"], True) for m in METRICS]
            + [str(r["probes"]), str(r["skipped"])]
        )
        lines.append("| " + " | ".join(v.replace("|", "\\|") for v in vals) + " |")
    return "\n".join(lines) + "\n"


def leaderboard_table(rows: list[dict[str, Any]], meta: dict[str, Any]):
    """The leaderboard as a ``benchmark.report.tables.Table`` (for the HTML report's renderer)."""
    from .tables import Column, Table

    far = meta.get("far", 1e-6)
    cols = [
        Column("Defence", "defence", "text"),
        Column("Attack", "attack", "text"),
        Column("Mode", "mode", "text"),
        Column("Variant", "variant", "text"),
        Column("Rank-1", "rank1"),
        Column(f"TAR@{far:g}", "tar"),
        Column("AUC", "auc"),
        Column("Mask rate", "mask_rate"),
        Column("Clean cost Rank-1", "clean_cost_rank1"),
        Column("Clean cost TAR", "clean_cost_tar"),
        Column("Clean cost AUC", "clean_cost_auc"),
        Column("Clean cost mask rate", "clean_cost_mask_rate"),
        Column("Probes", "probes", "int"),
        Column("Skipped", "skipped", "int"),
    ]
    return Table(
        "defence-leaderboard",
        f"Defence leaderboard — {meta.get('recognizer')} / {meta.get('mask_detector')}",
        cols,
        rows,
        notes=[f"Pool: {meta.get('pool')}.", _LEGEND],
    )


def render_html(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """A standalone HTML page of the leaderboard (the report stage's renderer, no scripts or links)."""
    from .html import render_page

    return render_page("mf2m defence leaderboard", [], [leaderboard_table(rows, meta)], [])


def render_csv(rows: list[dict[str, Any]]) -> str:
    """The leaderboard rows as CSV (floats with 6 significant digits, empty = not applicable)."""
    return rows_csv(rows, CSV_FIELDS)


def rows_csv(rows: list[dict[str, Any]], fields: list[str]) -> str:
    """Dict rows as CSV over ``fields`` (floats with 6 significant digits, empty = absent)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(fields)
    for r in rows:
        w.writerow(["" if r.get(f) is None else (f"{r[f]:.6g}" if isinstance(r[f], float) else r[f]) for f in fields])
    return buf.getvalue()


def write_leaderboard_files(out: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, str]:
    """Render ``rows`` (with clean cost) as ``leaderboard.csv``, ``.md`` and ``.html`` under ``out``."""
    from ..atomic import write_text

    write_text(out / "leaderboard.csv", render_csv(rows))
    write_text(out / "leaderboard.md", render_markdown(rows, meta))
    write_text(out / "leaderboard.html", render_html(rows, meta))
    return {"csv": "leaderboard.csv", "markdown": "leaderboard.md", "html": "leaderboard.html"}


def rows_from_raw(folder: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(rows with clean cost, meta)`` of a leaderboard folder, read from its cells' ``metrics.json``."""
    folder = Path(folder)
    record = json.loads((folder / "leaderboard.json").read_text(encoding="utf-8"))
    cells = record.get("cells") or []
    missing = [c.get("raw") for c in cells if not c.get("raw") or not (folder / c["raw"] / "metrics.json").is_file()]
    if not cells or missing:
        raise FileNotFoundError(
            f"{folder}: leaderboard.json lists {len(cells)} cells, {len(missing)} without a "
            f"cells/…/metrics.json (e.g. {missing[:1]}); it was written before raw cell outputs "
            "existed: rerun mf2m defend"
        )
    rows = [json.loads((folder / c["raw"] / "metrics.json").read_text(encoding="utf-8")) for c in cells]
    add_clean_cost(rows)
    return rows, record["meta"]


def rerender(folder: str | Path, out: str | Path) -> dict[str, str]:
    """Re-render a leaderboard folder's ``leaderboard.csv``/``.md``/``.html`` into ``out`` from its raw cells."""
    rows, meta = rows_from_raw(folder)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return write_leaderboard_files(out, rows, meta)
