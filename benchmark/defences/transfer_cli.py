"""``mf2m transfer``: source × target transferability matrices (argparse only at import time)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub, formatter) -> None:
    """Add the ``transfer`` sub-command."""
    p = sub.add_parser(
        "transfer",
        formatter_class=formatter,
        help="transferability: for each attack, a white-box source × target recognizer matrix (CSV, Markdown, heatmaps)",
        description="Run every attack of the config once against each white-box SOURCE recognizer (with the mask "
        "detector) on one seeded probe pool, cached and resumable under OUT/attacks/, and evaluate the "
        "attacked images with every TARGET recognizer (default: every available one, `mf2m models`). "
        "Per attack and source × target: Rank-1 and TAR at the lowest FAR the negatives resolve "
        "(1 / probe × distractor pairs), by the search stage's engine (mates = the clean pool faces, "
        "negatives = probe × distractor pairs); and the mask detector's mask rate on the attacked images "
        "(one per source). Writes OUT/transfer.csv, transfer.md, plots/transfer_<attack>_<metric>.png "
        "heatmaps, report.html and transfer.json (manifest). Rerun the same command to resume.\n\n"
        "The config is YAML with the leaderboard's pool keys (identities, max_images, distractors, "
        "templates, seed, device, batch_size), `attacks` (as in configs/defences.yaml), `sources`, "
        "`targets` and `mask_detector`; see configs/transfer.yaml.",
    )
    p.add_argument("--config", required=True, help="transfer YAML (e.g. configs/transfer.yaml)")
    p.add_argument("--data", default=None, help="dataset spec of the pool source (overrides the config), e.g. lfw:DIR")
    p.add_argument("--out", default=None, help="output folder (overrides the config)")
    p.add_argument(
        "--sources",
        nargs="+",
        default=None,
        metavar="MODEL",
        help="white-box source recognizers (differentiable; overrides the config)",
    )
    p.add_argument(
        "--targets",
        nargs="+",
        default=None,
        metavar="MODEL",
        help="target recognizers (overrides the config; default every available recognizer)",
    )
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (overrides the config)")
    p.add_argument("--seed", type=int, default=None, help="seed of the pool and the attacks (overrides the config)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the config, run the matrices, print the Markdown."""
    from ..workflows.transfer import TransferConfig, run_transfer
    from ..yamlfile import read_yaml_mapping

    raw = read_yaml_mapping(Path(args.config), "transfer config")
    overrides = {
        "data": args.data,
        "out": args.out,
        "sources": args.sources,
        "targets": args.targets,
        "device": args.device,
        "seed": args.seed,
    }
    raw = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
    cfg = TransferConfig.from_dict(raw, args.config)
    result = run_transfer(cfg, progress=not args.no_progress)
    print((Path(result["out"]) / "transfer.md").read_text(encoding="utf-8"))
    return 0
