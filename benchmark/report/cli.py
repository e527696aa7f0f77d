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
        "`mf2m search` (folders with metrics.json). Only reads manifests, metrics and CSV files. Options not "
        "given are the run's own (run.json's report settings), so `mf2m report --runs RUN` re-derives the "
        "tables `mf2m run` wrote.",
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
    p.add_argument(
        "--far",
        type=float,
        default=None,
        help="FAR of Table 1/2's TAR column, one the searches computed (default: the run's report.far, else 1e-6; "
        "the tar_* tables show every FAR)",
    )
    p.add_argument(
        "--paper",
        choices=("auto", "always", "never"),
        default=None,
        help="the paper's published numbers: beside ours when the setting matches (auto), always "
        "beside ours, or never; when not beside ours they are printed as a separate table (default: the "
        "run's report.paper, else auto)",
    )
    p.add_argument(
        "--examples",
        type=int,
        default=None,
        help="example probes per method figure, 0: none (default: the run's report.examples, else 3)",
    )
    p.add_argument("--title", default=None, help="title of the HTML page and report.md (default: the run's)")
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from .build import ReportOptions, build_report, run_report_options

    given = {"far": args.far, "paper": args.paper, "examples": args.examples, "title": args.title}
    options = run_report_options(args.runs) | {k: v for k, v in given.items() if v is not None}
    manifest = build_report(args.runs, args.out, ReportOptions(**options))
    print(f"report: {len(manifest['entries'])} entries → {args.out}/index.html, {args.out}/report.md")
    return 0
