"""One static HTML page with the tables, plots and example figures (images embedded as base64).

The page has no scripts and no external links, so it opens offline in any browser and can be mailed
as a single file.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from .render import to_html
from .tables import Table

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}
table.results{border-collapse:collapse;margin:1em 0;font-size:.9em}
table.results caption{caption-side:top;text-align:left;padding-bottom:.5em}
table.results th,table.results td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
table.results td:first-child,table.results th:first-child{text-align:left}
td.missing{color:#999;text-align:center}
p.note{font-size:.85em;color:#555;margin:.2em 0}
figure{display:inline-block;margin:.5em;vertical-align:top}figure img{max-width:100%}
figcaption{font-size:.85em;color:#444}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto}
div.warning{border:2px solid #c60;background:#fff4e5;padding:.5em 1em;margin:1em 0}
td.delta{color:#555}
"""


def image_tag(path: Path, alt: str) -> str:
    """An ``<img>`` with the PNG embedded as a data URI."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def render_page(
    title: str,
    intro: Sequence[str],
    tables: Sequence[Table],
    figures: Sequence[tuple[str, Sequence[tuple[Path, str]]]],
    footer: Sequence[str] = (),
    warnings: Sequence[str] = (),
    downloads: Sequence[str] = (),
) -> str:
    """The whole page: warnings (e.g. data too small to mean anything), intro paragraphs, every table,
    figure sections ``(heading, [(png, caption)])`` and the provenance ``footer``. ``downloads`` are
    files beside the page (relative paths), linked under the tables."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    parts += [f'<div class="warning"><p><b>Warning:</b> {html.escape(w)}</p></div>' for w in warnings]
    parts += [f"<p>{html.escape(p)}</p>" for p in intro]
    if tables:
        parts.append("<h2>Tables</h2>")
        parts += [to_html(t) for t in tables]
    if downloads:
        links = " · ".join(f'<a href="{html.escape(d)}">{html.escape(d)}</a>' for d in downloads)
        parts.append(f'<p class="note downloads">Files: {links}</p>')
    for heading, figs in figures:
        if not figs:
            continue
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for png, caption in figs:
            parts.append(f"<figure>{image_tag(png, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>")
    if footer:
        parts.append("<h2>Provenance</h2>")
        parts += [f"<pre>{html.escape(f)}</pre>" for f in footer]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
