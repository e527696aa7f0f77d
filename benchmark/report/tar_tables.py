"""TAR at every FAR the searches evaluated, one table per evaluation model (and attack model when black-box).

Table 1 and Table 2 show one FAR (``mf2m report --far``); these tables show all of them side by side, each
with its bootstrap interval where the search wrote one, and a FAR below 1/N_neg in parentheses (not
resolved: the fraction of mates above every negative score, never a TAR at that FAR).
"""

from __future__ import annotations

from .collect import Entry, Metrics, model_groups
from .tables import Column, Table, _common_notes, _md_text, _sizes, _slug, _tar_title, label, method_rows, tar_cell


def tar_tables(items: list[tuple[Entry, Metrics]]) -> list[Table]:
    """``tar_<model>`` (white-box) and ``tar_<model>_from_<attack model>`` (black-box) tables."""
    tables = []
    for (model, attacked_on), sub in model_groups(items).items():
        fars = sorted({f for _, m in sub for f in m.tar})
        if not fars:
            continue
        by_method = {e.method: m for e, m in sub}
        cols = [Column("Method", "label", "text")] + [Column(_tar_title(f), f"tar@{f:g}", "tar") for f in fars]
        rows = []
        for method in method_rows(sub):
            m = by_method.get(method, Metrics())
            rows.append({"method": method, "label": label(method)} | {f"tar@{f:g}": tar_cell(m, f) for f in fars})
        how = f"black-box, probes attacked on {attacked_on}" if attacked_on else "white-box"
        caption = (
            f"TAR at every evaluated FAR — evaluated on **{model}** ({how}){_md_text(sub[0][0].setting)}. {_sizes(sub)}"
        )
        notes = _common_notes(sub, fars[0], attack_columns=False)
        name = f"tar_{_slug(model)}" + (f"_from_{_slug(attacked_on)}" if attacked_on else "")
        tables.append(Table(name, caption, cols, rows, notes))
    return tables
