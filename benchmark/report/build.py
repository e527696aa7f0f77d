"""``mf2m report``: read stage outputs, write the tables, plots, examples and the HTML page.

Output folder::

    table1.md/.csv/.tex, table2.md/.csv/.tex   (one set per table; the paper's tables too when shown apart)
    tar_<model>[_from_<attack model>].*        TAR at every evaluated FAR, per evaluation model
    report.md                                  every table with its caption, and links to the figures
    plots/cmc_<model>.png, plots/roc_<model>.png, plots/distractors_<model>.png
    examples/<method>.png, examples/overview.png
    index.html                                 everything on one offline page
    manifest.json                              inputs read (with sha256) and outputs written
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..atomic import write_json, write_text
from ..manifest import build_manifest, replace_all, sha256_file
from . import plots, transfer
from .collect import Entry, Metrics, discover, load_metrics, model_groups, read_json
from .html import render_page
from .render import to_csv, to_latex, to_markdown
from .tables import Table, _slug, label, table1, table2
from .tar_tables import tar_tables

log = logging.getLogger(__name__)


@dataclass
class ReportOptions:
    """What to show: the FAR of the TAR column, whether to show the paper's numbers, how many examples."""

    far: float = 1e-6
    paper: str = "auto"  # auto (beside ours when the setting matches) | always | never
    examples: int = 3
    title: str = "MF²M benchmark report"
    warnings: tuple[str, ...] = ()  # shown above the tables (e.g. the data is too small to mean anything)
    image_dirs: dict[Path, Path] = field(default_factory=dict)  # kept attack folder → folder with its images
    renames: dict[str, str] = field(default_factory=dict)  # strings the manifest must not keep (data paths) → names


def collect(runs: Sequence[str]) -> list[tuple[Entry, Metrics]]:
    """Every entry of every ``--runs`` argument with its metrics (duplicates: the last one wins)."""
    seen: dict[tuple[str, str, str | None], tuple[Entry, Metrics]] = {}
    for spec in runs:
        if (Path(spec) / "leaderboard.json").is_file() or (Path(spec) / "transfer.json").is_file():
            continue  # a defence leaderboard (see leaderboards()) or a transfer output (see .transfer)
        for entry in discover(spec):
            seen[(entry.method, entry.eval_model, entry.attack_model)] = (entry, load_metrics(entry))
    return list(seen.values())


def _inputs(items: list[tuple[Entry, Metrics]]) -> dict[str, str]:
    files = {}
    for e, _ in items:
        for d, names in (
            (e.search_dir, ("metrics.json", "cmc.csv", "roc.csv", "manifest.json")),
            (e.attack_dir, ("probes.csv", "manifest.json")),
        ):
            for n in names:
                if d is not None and (d / n).is_file():
                    files[str(d / n)] = sha256_file(d / n)
    return files


def run_report_options(runs: Sequence[str]) -> dict[str, Any]:
    """The report settings ``mf2m run`` used for the first run folder of ``runs`` (``far``, ``paper``,
    ``examples``, ``title``), as ``ReportOptions`` fields; empty when none of ``runs`` is a run folder."""
    for spec in runs:
        path = Path(spec.partition("=")[2] or spec)
        if (path / "run.json").is_file():
            record = read_json(path / "run.json")
            report = (record.get("config") or {}).get("report") or {}
            options = {k: report[k] for k in ("far", "paper", "examples") if report.get(k) is not None}
            return options | ({"title": f"MF²M benchmark — {record['name']}"} if record.get("name") else {})
    return {}


def build_report(runs: Sequence[str], out: str | Path, options: ReportOptions | None = None) -> dict:
    """Write the whole report for ``runs`` into ``out`` (default ``ReportOptions()``); returns the report manifest."""
    options = options or ReportOptions()
    if options.paper not in ("auto", "always", "never"):
        raise ValueError("--paper must be auto, always or never")
    out = Path(out)
    items = collect(runs)
    boards = leaderboards(runs)
    transfer_tables, transfer_figs = transfer.collect(runs, out / "plots")
    boards += transfer_tables
    if not items and not boards:
        raise ValueError("no results found in --runs")
    empty = [e for e, m in items if m.rank1 is None]
    if items and len(empty) == len(items) and not boards:
        where = empty[0].search_dir / "metrics.json" if empty[0].search_dir is not None else empty[0].method
        raise ValueError(
            f"no metrics in --runs {' '.join(runs)}: none of its {len(items)} entries has a readable "
            f"metrics.json (e.g. {where} is missing: run.json may point into a cache folder that is "
            f"not here); nothing was written to {out}"
        )
    for e in empty:
        log.warning("%s on %s: no metrics.json in %s (shown as dashes)", e.method, e.eval_model, e.search_dir)
    tables: list[Table] = (
        table1(items, options.far, options.paper) + table2(items, options.far, options.paper) + tar_tables(items)
        if items
        else []
    )
    if items and options.paper != "never":
        from .compare import comparison_tables

        tables += comparison_tables(items, options.far)
    tables += boards
    warnings = data_warnings(items, options.warnings)
    written: list[str] = []
    md_parts = [f"# {options.title}\n"] + [f"> **Warning:** {w}\n" for w in warnings]
    for t in tables:
        for ext, text in (("md", to_markdown(t)), ("csv", to_csv(t)), ("tex", to_latex(t))):
            write_text(out / f"{t.name}.{ext}", text)
            written.append(f"{t.name}.{ext}")
        md_parts.append(to_markdown(t))
    figures = _figures(items, out, options) if items else []
    if transfer_figs:
        figures.append(("Transferability heatmaps", transfer_figs))
    for heading, figs in figures:
        md_parts.append(f"## {heading}\n")
        md_parts += [f"![{cap}]({png.relative_to(out).as_posix()})\n" for png, cap in figs]
        written += [png.relative_to(out).as_posix() for png, _ in figs]
    write_text(out / "report.md", "\n".join(md_parts))
    settings = {e.run: e.setting for e, _ in items if e.setting}
    intro = [f"Results of {len(items)} evaluated probe set(s) from: {', '.join(runs)}."]
    intro += [f"Run {name}: " + ", ".join(f"{k}={v}" for k, v in s.items()) for name, s in settings.items()]
    page = render_page(
        options.title,
        intro,
        tables,
        figures,
        footer=provenance(items, runs),
        warnings=warnings,
        downloads=[w for w in written if not w.endswith(".png")] + ["report.md", "manifest.json"],
    )
    write_text(out / "index.html", page)
    written += ["report.md", "index.html"]
    manifest = build_manifest(
        "report",
        {"runs": list(runs), "far": options.far, "paper": options.paper, "examples": options.examples},
        inputs=_inputs(items),
        outputs=written,
        entries=[
            {
                "method": e.method,
                "eval_model": e.eval_model,
                "attack_model": e.attack_model,
                "search": str(e.search_dir) if e.search_dir else None,
                "attack": str(e.attack_dir) if e.attack_dir else None,
                "has_metrics": m.rank1 is not None,
            }
            for e, m in items
        ],
    )
    manifest = replace_all(manifest, options.renames)
    write_json(out / "manifest.json", manifest)
    return manifest


#: below these sizes a run's numbers cannot mean anything (the demo's bundled faces are far below)
TOO_FEW_PROBES = 10
TOO_FEW_DISTRACTORS = 50


def data_warnings(items: list[tuple[Entry, Metrics]], given: Sequence[str] = ()) -> list[str]:
    """Warnings for the top of the page: ``given`` ones, each run's ``data_warning`` and split shortfalls
    (``split_warnings``), and tiny evaluations."""
    out = list(given)
    for e, _ in items:
        for w in [e.setting.get("data_warning"), *(e.setting.get("split_warnings") or ())]:
            if w and w not in out:
                out.append(w)
    probes = [m.counts.get("probes") for _, m in items if m.counts.get("probes") is not None]
    dists = [m.counts.get("distractors") for _, m in items if m.counts.get("distractors") is not None]
    if probes and dists and (max(probes) < TOO_FEW_PROBES or max(dists) < TOO_FEW_DISTRACTORS):
        out.append(
            f"This evaluation has only {max(probes)} probe(s) and {max(dists)} distractor(s): far too few "
            "for any number below to mean anything. It shows that every stage works, nothing more."
        )
    return out


def provenance(items: list[tuple[Entry, Metrics]], runs: Sequence[str]) -> list[str]:
    """Provenance blocks for the page: per run the commit, data, sizes and models (with weight hashes)."""
    from ..manifest import git_commit, package_versions

    blocks = []
    records = _run_jsons(runs)
    seen_runs: set[str] = set()
    for e, m in items:
        key = e.run or "(search outputs)"
        if key in seen_runs:
            continue
        seen_runs.add(key)
        run_json = records.get(e.run)
        lines = [f"run: {key}"]
        if run_json:
            lines.append(
                f"mf2m commit: {run_json.get('git_commit') or 'not recorded'}; "
                f"created {run_json.get('created', '?')}; complete: {run_json.get('complete')}"
            )
            versions = run_json.get("versions", {})
            lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
        for k, v in e.setting.items():
            if k not in ("data_warning", "split_warnings"):
                lines.append(f"{k}: {v}")
        sizes = {k: v for k, v in m.counts.items() if isinstance(v, int)}
        if sizes:
            lines.append("sizes (first entry): " + ", ".join(f"{k} {v:,}" for k, v in sizes.items()))
        models = _models(items, e.run)
        if models:
            lines.append("models: " + "; ".join(f"{n} sha256 {h}" for n, h in sorted(models.items())))
        blocks.append("\n".join(lines))
    blocks.append(
        f"report built by mf2m commit {git_commit() or 'unknown (installed package)'}, "
        f"mf2m {package_versions(('mf2m',)).get('mf2m', '?')}, from: {', '.join(runs)}"
    )
    return blocks


def _run_jsons(runs: Sequence[str]) -> dict[str, dict]:
    """Run name → ``run.json`` of every ``--runs`` folder that has one."""
    out = {}
    for spec in runs:
        path = Path(spec.split("=", 1)[-1]) / "run.json"
        if path.is_file():
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            out[record.get("name", path.parent.name)] = record
    return out


def _models(items: list[tuple[Entry, Metrics]], run: str) -> dict[str, str]:
    """Model name → weights SHA-256, read from the attack and embed manifests of a run's entries."""
    found: dict[str, str] = {}

    def visit(obj) -> None:
        if isinstance(obj, dict):
            if isinstance(obj.get("name"), str) and isinstance(obj.get("sha256"), str) and len(obj["sha256"]) == 64:
                found.setdefault(obj["name"], obj["sha256"])
            for v in obj.values():
                visit(v)
        elif isinstance(obj, list):
            for v in obj:
                visit(v)

    for e, _ in items:
        if e.run != run:
            continue
        for d in (e.attack_dir, e.search_dir):
            if d is not None and (d / "manifest.json").is_file():
                try:
                    visit(json.loads((d / "manifest.json").read_text()))
                except (OSError, json.JSONDecodeError):
                    continue
    return found


def leaderboards(runs: Sequence[str]) -> list[Table]:
    """Defence leaderboards (``mf2m defend`` outputs: ``leaderboard.json``) found directly in ``runs``."""
    from .leaderboard import leaderboard_table, rows_from_raw

    tables = []
    for spec in runs:
        path = Path(spec) / "leaderboard.json"
        if path.is_file():
            record = json.loads(path.read_text())
            if record.get("cells") and all(c.get("raw") for c in record["cells"]):
                rows, meta = rows_from_raw(spec)  # the numbers from the cells' own metrics.json
            else:
                rows, meta = record["cells"], record.get("meta") or _leaderboard_meta(record)
            tables.append(leaderboard_table(rows, meta))
    return tables


def _leaderboard_meta(record: dict) -> dict:
    """Caption facts of a leaderboard written before ``meta`` was stored in ``leaderboard.json``."""
    base = (record.get("models") or {}).get("none") or {}
    pool = record.get("pool") or {}
    return {
        "far": record.get("config", {}).get("far", 1e-6),
        "recognizer": (base.get("fr") or {}).get("name"),
        "mask_detector": (base.get("md") or {}).get("name"),
        "pool": f"{pool.get('probes')} probes, {pool.get('distractors')} distractors from "
        f"{record.get('config', {}).get('data')}",
    }


def _figures(items: list[tuple[Entry, Metrics]], out: Path, options: ReportOptions) -> list[tuple[str, list]]:
    curves, sweeps, examples = [], [], []
    for (model, attacked_on), sub in model_groups(items).items():
        what = f"{model}" + (f" (black-box, attacked on {attacked_on})" if attacked_on else " (white-box)")
        slug = _slug(model) + (f"_from_{_slug(attacked_on)}" if attacked_on else "")
        ents = [e for e, _ in sub]
        for kind in ("cmc", "roc"):
            png = plots.curve_plot(ents, kind, out / "plots" / f"{kind}_{slug}.png", f"{kind.upper()} — {what}")
            if png:
                curves.append((png, f"{kind.upper()}, evaluated on {what}"))
        png = plots.sweep_plot(sub, out / "plots" / f"distractors_{slug}.png", f"Rank-1 vs distractors — {what}")
        if png:
            sweeps.append((png, f"Rank-1 vs number of distractors, {what}"))
    attacked = {}
    for e, _ in items:
        if e.attack_dir is not None and e.method not in attacked:
            images = options.image_dirs.get(e.attack_dir.resolve())
            attacked[e.method] = replace(e, attack_dir=images) if images is not None else e
    if attacked and options.examples > 0:
        keys = plots.example_keys(list(attacked.values()), options.examples)
        for method, e in attacked.items():
            png = plots.examples_figure(e, keys, out / "examples" / f"{_slug(method)}.png")
            if png:
                examples.append((png, f"{label(method)}: original, template, result (PSNR against the base image)"))
        if keys:
            png = plots.overview_figure(list(attacked.values()), keys[0], out / "examples" / "overview.png")
            if png:
                examples.insert(0, (png, f"One probe under every method ({keys[0]})"))
    return [("CMC and ROC curves", curves), ("Distractor-size sweep", sweeps), ("Examples", examples)]
