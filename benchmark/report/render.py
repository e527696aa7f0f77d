"""Renderers of a ``tables.Table``: GitHub Markdown, CSV of the raw numbers (with interval and resolution
columns), a booktabs LaTeX table and an HTML ``<table>`` (text escaped)."""

from __future__ import annotations

import csv
import io
import re

from .tables import DASH, Estimate, Table, Unresolved, fmt


def to_markdown(table: Table) -> str:
    """GitHub Markdown: caption, the table, notes."""
    head = [c.title for c in table.columns]
    if table.groups and any(g for g, _ in table.groups):
        head = []
        i = 0
        for group, span in table.groups:
            for c in table.columns[i : i + span]:
                head.append(f"{c.title} ({group})" if group else c.title)
            i += span
    lines = [
        table.caption,
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(":---" if c.kind == "text" else "---:" for c in table.columns) + "|",
    ]
    for row in table.rows:
        lines.append("| " + " | ".join(fmt(row.get(c.key), c.kind) for c in table.columns) + " |")
    if table.notes:
        lines.append("")
        lines += [f"- {n}" for n in table.notes]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """CSV of the raw numbers (full precision, empty cell when absent), one row per method."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    keys = ["method"] + [c.key for c in table.columns]
    flags = [c.key for c in table.columns if c.kind == "tar"]
    ranged = [c.key for c in table.columns if any(isinstance(r.get(c.key), Estimate) for r in table.rows)]
    w.writerow(keys + [f"{k}_resolved" for k in flags] + [f"{k}_{end}" for k in ranged for end in ("lo", "hi")])
    for row in table.rows:
        w.writerow(
            ["" if row.get(k) is None else float(row[k]) if isinstance(row.get(k), float) else row.get(k) for k in keys]
            + ["" if row.get(k) is None else int(not isinstance(row[k], Unresolved)) for k in flags]
            + [getattr(row.get(k), end, "") for k in ranged for end in ("lo", "hi")]
        )
    return buf.getvalue()


_LATEX_SUBS = [
    ("\\", r"\textbackslash{}"),
    ("&", r"\&"),
    ("%", r"\%"),
    ("#", r"\#"),
    ("_", r"\_"),
    ("²", r"$^2$"),
    ("—", "---"),
    ("†", r"$^\dagger$"),
    ("∞", r"$\infty$"),
    ("→", r"$\to$"),
    ("–", "--"),
    ("**", ""),
]


def latex_escape(text: str) -> str:
    """Escape LaTeX specials and map the few non-ASCII symbols the tables use."""
    for a, b in _LATEX_SUBS:
        text = text.replace(a, b)
    return text


def to_latex(table: Table) -> str:
    """A booktabs ``table`` environment with the caption and notes."""
    spec = "l" + "r" * (len(table.columns) - 1)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    if table.groups and any(g for g, _ in table.groups):
        cells, rules, col = [], [], 1
        for group, span in table.groups:
            cells.append(rf"\multicolumn{{{span}}}{{c}}{{{latex_escape(group)}}}" if span > 1 else latex_escape(group))
            if group:
                rules.append(rf"\cmidrule(lr){{{col}-{col + span - 1}}}")
            col += span
        lines += [" & ".join(cells) + r" \\", " ".join(rules)]
    lines.append(" & ".join(latex_escape(c.title) for c in table.columns) + r" \\")
    lines.append(r"\midrule")
    for row in table.rows:
        lines.append(" & ".join(latex_escape(fmt(row.get(c.key), c.kind)) for c in table.columns) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    caption = latex_escape(table.caption)
    if table.notes:
        caption += " " + " ".join(latex_escape(n) for n in table.notes)
    lines += [rf"\caption{{{caption}}}", rf"\label{{tab:{table.name}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_html(table: Table) -> str:
    """An HTML ``<table>`` with caption and notes (text escaped)."""
    import html

    out = [f'<table class="results" id="{table.name}">', f"<caption>{_md_bold(html.escape(table.caption))}</caption>"]
    if table.groups and any(g for g, _ in table.groups):
        out.append("<tr>" + "".join(f'<th colspan="{s}">{html.escape(g)}</th>' for g, s in table.groups) + "</tr>")
    out.append("<tr>" + "".join(f"<th>{html.escape(c.title)}</th>" for c in table.columns) + "</tr>")
    for row in table.rows:
        cells = []
        for c in table.columns:
            text = fmt(row.get(c.key), c.kind)
            cls = ' class="missing"' if text == DASH else ""
            cells.append(f"<td{cls}>{html.escape(text)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    out += [f'<p class="note">{html.escape(n)}</p>' for n in table.notes]
    return "\n".join(out) + "\n"


def _md_bold(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
