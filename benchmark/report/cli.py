"""``mf2m report`` (argparse only at import time)."""

from __future__ import annotations

import argparse


def register(sub, formatter) -> None:
    """Add the ``report`` sub-command."""
    p = sub.add_parser(
        "report",
        formatter_class=formatter,
        help="tables (Markdown/CSV/LaTeX), CMC/ROC plots, examples, HTML page",
        description="Build Table 1 (white-box) and Table 2 (black-box) with the paper's numbers, CMC/ROC plots "
        "(semilog, one curve per method), the rank-1 vs distractors plot, example faces per method "
        "and one offline HTML page, from the outputs of `mf2m run` (a folder with run.json) or of "
        "`mf2m search` (folders with metrics.json). Only reads manifests, metrics and CSV files.",
    )
    p.add_argument(
        "--runs",
        nargs="+",
        required=True,
        metavar="DIR",
        help="run folders (run.json), search output folders (metrics.json; LABEL=DIR names the "
        "method, else the folder name), or folders of search outputs",
    )
    p.add_argument("--out", required=True, help="report folder (created)")
    p.add_argument("--far", type=float, default=1e-6, help="FAR of the TAR column (must be one the search computed)")
    p.add_argument(
        "--paper",
        choices=("auto", "always", "never"),
        default="auto",
        help="the paper's published numbers: beside ours when the setting matches (auto), always "
        "beside ours, or never; when not beside ours they are printed as a separate table",
    )
    p.add_argument("--examples", type=int, default=3, help="example probes per method figure (0: none)")
    p.add_argument("--title", default="MF²M benchmark report", help="title of the HTML page and report.md")
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from .build import ReportOptions, build_report

    manifest = build_report(
        args.runs, args.out, ReportOptions(far=args.far, paper=args.paper, examples=args.examples, title=args.title)
    )
    print(f"report: {len(manifest['entries'])} entries → {args.out}/index.html, {args.out}/report.md")
    return 0
