"""``python -m benchmark.embed …`` = ``mf2m embed …``; the entry point for many GPUs:

    torchrun --nproc_per_node 8 -m benchmark.embed --data SPEC --model NAME --out DIR

Each rank embeds its own shards; rank 0 writes the manifest once all ranks are done.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .cli import add_embed_arguments, config_from_args


def main(argv: list[str] | None = None) -> int:
    """Parse ``mf2m embed`` options and run the embedding (errors print one line, exit status 1)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.embed",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Embed a dataset (same options as `mf2m embed`).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    add_embed_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from .engine import run_embed

    try:
        run_embed(config_from_args(args))
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        if args.verbose:
            raise
        print(f"benchmark.embed: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
