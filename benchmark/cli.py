"""The ``mf2m`` command: one sub-command per stage, each defined beside its stage.

Every stage package has a ``cli.py`` with ``register(subparsers)``: it adds its sub-command(s) using
argparse only (cheap to import, so ``mf2m --help`` is fast) and sets ``func`` to a function that
imports the heavy machinery when run.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Stage modules in the order they appear in ``mf2m --help``.
STAGE_CLIS = (
    "benchmark.models.cli",  # models
    "benchmark.workflows.mask_cli",  # train-mask-detector, mask-eval
    "benchmark.data.cli",  # prepare, lfw
    "attacks.cli",  # attack
    "benchmark.embed.cli",  # embed, pool
    "benchmark.features_cli",  # features (import / validate)
    "benchmark.search.cli",  # search
    "benchmark.report.cli",  # report
    "benchmark.workflows.cli",  # run, demo
    "benchmark.defences.cli",  # defend
    "benchmark.defences.transfer_cli",  # transfer
)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (all stages that are installed)."""
    parser = argparse.ArgumentParser(
        prog="mf2m",
        description="Benchmark face recognition and mask detection against faced masks (MF²M).\n"
        "Stages: attack → embed → search → report. Run `mf2m <command> --help` for details.",
        formatter_class=_Formatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for module_name in STAGE_CLIS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # stage not built in this version
            raise
        module.register(sub, _Formatter)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mf2m`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # User-facing errors: one clear line, no traceback (use -v for the traceback).
        if args.verbose:
            raise
        print(f"mf2m {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
