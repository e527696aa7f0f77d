"""``mf2m defend``: the defence leaderboard (argparse only at import time)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub, formatter) -> None:
    """Add the ``defend`` sub-command."""
    p = sub.add_parser(
        "defend",
        formatter_class=formatter,
        help="evaluate defences against the attacks: leaderboard with clean cost, adaptive and non-adaptive cells",
        description="Run every attack of the config on a seeded probe pool, once against the undefended models "
        "(non-adaptive) and, for adversarial attacks, once through each defence (adaptive; BPDA/"
        "straight-through where a defence is not differentiable), and evaluate every defence × attack "
        "cell: Rank-1, TAR@FAR, AUC, mask detection rate, and the clean cost (the same metrics on "
        "unmasked probes, minus the undefended system's). Writes OUT/leaderboard.csv, .md and .json "
        "(manifest). Rerun the same command to resume.\n\n"
        "A defence is `module:callable[:key=value,...]` (the callable returns an InputTransform, "
        "RecognitionPolicy, ReplacementRecognizer or ReplacementMaskDetector; values are parsed as "
        "int/float/bool/str) or a registered name (a built-in, or an entry point in the "
        "`mf2m.defences` group of an installed package; --list lists them), optionally with "
        "`:key=value,...` (built in: jpeg, median-blur, gaussian-blur, bit-depth, random-resize-pad, "
        "upper-face, faced-mask-aware-detector). See docs/defences.md.\n\n"
        "Against a stochastic defence (random-resize-pad, or any defence with stochastic=True) adaptive "
        "attacks use Expectation over Transformation: the objective is averaged over --eot-samples "
        "fresh draws of the defence's randomness per step; the Variant column says what ran.\n\n"
        "--verify SUBMISSION re-runs a submission (a YAML naming a defence, its pinned package version "
        "and weight hashes, benchmark settings and the claimed row) on a pool seeded now, and accepts "
        "the claim when it lies in the bootstrap interval (--confidence) plus the stated tolerance; "
        "it writes OUT/verification.json and exits 0 (verified) or 1 (rejected).\n\n"
        "Every cell's raw outputs are kept under OUT/cells/ (metrics.json, per_probe.csv); "
        "--render DIR --out X rebuilds the leaderboard files from them byte for byte.",
    )
    p.add_argument(
        "--config", default=None, help="leaderboard YAML (e.g. configs/defences.yaml); required unless --list"
    )
    p.add_argument(
        "--defence",
        action="append",
        default=[],
        metavar="SPEC",
        help="add a defence (repeatable): module:callable[:k=v,...] or NAME[:k=v,...] (see --list)",
    )
    p.add_argument(
        "--only-cli-defences",
        action="store_true",
        help="evaluate only the --defence ones (plus the undefended system), not the config's list",
    )
    p.add_argument("--data", default=None, help="dataset spec of the pool source (overrides the config), e.g. lfw:DIR")
    p.add_argument("--out", default=None, help="output folder (overrides the config)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (overrides the config)")
    p.add_argument("--seed", type=int, default=None, help="seed of the pool and the attacks (overrides the config)")
    p.add_argument(
        "--eot-samples",
        type=int,
        default=None,
        metavar="N",
        help="EOT draws per step against stochastic defences (overrides the config; default 20, "
        "AutoAttack's setting; 1 = no EOT)",
    )
    p.add_argument(
        "--verify",
        default=None,
        metavar="SUBMISSION",
        help="verify a submission YAML (schema mf2m.submission.v1, see docs/defences.md); needs "
        "--data and --out; --seed reproduces an earlier verification, else a seed is drawn now",
    )
    p.add_argument("--confidence", type=float, default=0.95, help="--verify: level of the bootstrap intervals")
    p.add_argument(
        "--bootstrap", type=int, default=2000, metavar="B", help="--verify: bootstrap resamples of the probes"
    )
    p.add_argument(
        "--render",
        default=None,
        metavar="DIR",
        help="re-render DIR's leaderboard.csv/.md/.html into --out from its raw cell outputs "
        "(DIR/leaderboard.json and DIR/cells/*/metrics.json); loads no model and no data",
    )
    p.add_argument(
        "--list", action="store_true", help="list the registered defences (built-ins, then installed plug-ins) and exit"
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the config and defences, run the leaderboard, print the Markdown table."""
    if args.list:
        from .api import list_defences

        for name, target, origin in list_defences():
            print(f"{name}\t{target}\t{origin}")
        return 0
    if args.verify:
        return _verify(args)
    if args.render:
        from ..report.leaderboard import rerender

        if not args.out:
            raise ValueError("--render needs --out (where the re-rendered leaderboard files go)")
        written = rerender(args.render, args.out)
        print(f"re-rendered {', '.join(written.values())} from {args.render} → {args.out}")
        return 0
    if not args.config:
        raise ValueError("--config is required (e.g. --config configs/defences.yaml)")
    from ..workflows.defend import load_config, run_leaderboard
    from .api import load_defence

    for spec in args.defence:  # fail fast, before any model loads
        load_defence(spec)
    cfg = load_config(
        args.config,
        data=args.data,
        out=args.out,
        device=args.device,
        seed=args.seed,
        defences=args.defence,
        eot_samples=args.eot_samples,
    )
    if args.only_cli_defences:
        cfg.defences = [d for d in args.defence if d != "none"]
    result = run_leaderboard(cfg, progress=not args.no_progress)
    print((Path(result["out"]) / "leaderboard.md").read_text(encoding="utf-8"))
    return 0


def _verify(args: argparse.Namespace) -> int:
    """``--verify``: check, re-run and compare a submission; print the verdict (exit 1 when rejected)."""
    from ..workflows.verify import render_record, verify

    missing = [f"--{k}" for k in ("data", "out") if not getattr(args, k)]
    if missing:
        raise ValueError(f"--verify needs {' and '.join(missing)} (the pool source and where the record goes)")
    if args.config or args.defence:
        raise ValueError("--verify takes the defence and settings from the submission; drop --config/--defence")
    record = verify(
        args.verify,
        args.data,
        args.out,
        seed=args.seed,
        device=args.device or "auto",
        confidence=args.confidence,
        n_boot=args.bootstrap,
        progress=not args.no_progress,
    )
    print(render_record(record))
    print(f"record: {Path(args.out) / 'verification.json'}")
    return 0 if record["verdict"] == "verified" else 1
