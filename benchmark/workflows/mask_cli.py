"""``mf2m train-mask-detector`` (train mf2m's default mask detector) and ``mf2m mask-eval`` (score any
registered mask detector on a labelled folder). argparse only at import time."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def register(sub, formatter) -> None:
    """Add the ``train-mask-detector`` sub-command."""
    p = sub.add_parser(
        "train-mask-detector",
        formatter_class=formatter,
        help="train the default mask detector (small CNN on ArcFace-aligned crops)",
        description="Train mf2m's default mask detector on DIR/with_mask and DIR/without_mask photos.\n"
        "Faces are found with YuNet, aligned to the ArcFace 112x112 template (cached), split "
        "80/20 by a seeded stratified split, trained with augmentation and evaluated on the "
        "held-out 20%. Writes OUT (weights, atomically), OUT with .json (report + manifest) "
        "and a model card (OUT_STEM_CARD.md in capitals, e.g. MASK_DETECTOR_CARD.md).",
    )
    p.add_argument(
        "--data", required=True, type=Path, help="folder with with_mask/ and without_mask/ image sub-folders"
    )
    p.add_argument("--out", required=True, type=Path, help="weights file to write (.pt)")
    p.add_argument(
        "--card", type=Path, default=None, help="model card path (default: <OUT folder>/<OUT stem in capitals>_CARD.md)"
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="training epochs (default: 14; 3 with --with-faced-masks, which fine-tunes)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="training batch size")
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate, one-cycle schedule (default: 3e-3; 1e-3 with --with-faced-masks)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation and augmentation")
    p.add_argument("--held-out", type=float, default=0.2, help="fraction of faces held out for evaluation")
    p.add_argument(
        "--limit-per-class", type=int, default=None, help="use only N evenly spaced images per class (quick runs)"
    )
    p.add_argument(
        "--lfw",
        type=Path,
        default=None,
        help="LFW folder (images/<Name>/*.jpg): also report the rate of bare LFW faces read as "
        "not masked and of LFW faces with a synthetic solid lower-face fill read as masked",
    )
    p.add_argument("--lfw-limit", type=int, default=300, help="number of LFW images sampled (seeded)")
    p.add_argument(
        "--cache-dir", type=Path, default=None, help="cache of aligned crops (default: $MF2M_CACHE or ~/.cache/mf2m)"
    )
    p.add_argument(
        "--with-faced-masks",
        action="store_true",
        help="faced-mask-aware retraining (the faced-mask-aware-detector defence): fine-tune --init "
        "with LFW faces wearing DM faced masks (templates of other identities) as positives and "
        "the same faces bare as negatives, plus the facemask training split; needs --lfw. "
        "Reports held-out accuracy on real masks, bare faces, DM and solid masks for both the "
        "initial and the retrained model. Default --out for the defence: "
        "benchmark/models/weights/mask_detector_faced.pt",
    )
    p.add_argument(
        "--init",
        default="default",
        help="with --with-faced-masks: weights to fine-tune ('default' = the shipped default detector, "
        "'none' = train from scratch, or a .pt path)",
    )
    p.add_argument(
        "--faced-limit",
        type=int,
        default=400,
        help="with --with-faced-masks: LFW images sampled (seeded) for DM faces, split by identity "
        "into train / held out by --held-out",
    )
    p.add_argument(
        "--base-per-class",
        type=int,
        default=400,
        help="with --with-faced-masks: facemask training faces kept per class (0 = all)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_run)
    _register_eval(sub, formatter)


def _register_eval(sub, formatter) -> None:
    e = sub.add_parser(
        "mask-eval",
        formatter_class=formatter,
        help="score a mask detector on a labelled folder: accuracy, per-class accuracy, ROC AUC, failures",
        description="Evaluate any mask detector on DIR/with_mask and DIR/without_mask images. Faces are found\n"
        "with YuNet and aligned to the ArcFace 112x112 template (cached, as for training) unless\n"
        "--aligned. Prints a short table and writes a JSON report (--out) with accuracy, per-class\n"
        "accuracy, confusion counts, ROC AUC, every misclassified face (with its P(masked)) and every\n"
        "image where no face was found.\n\n"
        "--detector takes a registered mask detector (`mf2m models --kind mask-detector`; a plug-in\n"
        "module that registers one with benchmark.models.registry.register is loaded by --provider)\n"
        "or a replacement-mask-detector defence plug-in (an mf2m.defences entry point such as\n"
        "faced-mask-aware-detector, or module:callable[:key=value,...]).",
    )
    e.add_argument(
        "--data", required=True, type=Path, help="folder with with_mask/ and without_mask/ image sub-folders"
    )
    e.add_argument(
        "--detector",
        default="mf2m-maskdet",
        help="mask detector: registry name, defence entry point or module:callable",
    )
    e.add_argument(
        "--weights",
        default=None,
        help="weights file for a registry detector (e.g. the RetinaNet checkpoint); default: its own",
    )
    e.add_argument(
        "--provider",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module first so the detectors it registers can be named (repeatable)",
    )
    e.add_argument("--out", type=Path, default=None, help="write the JSON report here (atomically)")
    e.add_argument("--threshold", type=float, default=0.5, help="P(masked) at or above which a face counts as masked")
    e.add_argument(
        "--aligned",
        action="store_true",
        help="the images are already ArcFace-aligned 112x112 crops: no detection (others are listed as skipped)",
    )
    e.add_argument("--limit-per-class", type=int, default=None, help="use only N evenly spaced images per class")
    e.add_argument(
        "--cache-dir", type=Path, default=None, help="cache of aligned crops (default: $MF2M_CACHE or ~/.cache/mf2m)"
    )
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    e.add_argument("--no-progress", action="store_true", help="hide progress bars")
    e.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    """Evaluate, print the table, write the JSON."""
    from ..atomic import write_json
    from ..models.base import ModelUnavailable
    from .mask_eval import evaluate, summary_table

    if args.limit_per_class is not None and args.limit_per_class < 1:
        raise ValueError("--limit-per-class must be ≥ 1")
    try:
        report = evaluate(
            args.data,
            args.detector,
            device=args.device,
            weights=args.weights,
            providers=args.provider,
            threshold=args.threshold,
            aligned=args.aligned,
            limit_per_class=args.limit_per_class,
            cache_dir=args.cache_dir,
            progress=not args.no_progress,
        )
    except ModelUnavailable as exc:
        raise RuntimeError(str(exc)) from None
    print(summary_table(report))
    if args.out:
        write_json(args.out, report)
        print(f"wrote {args.out}")
    return 0


def _run(args: argparse.Namespace) -> int:
    """Run the training (heavy imports happen here)."""
    from ..device import resolve_device
    from .mask_training import TrainConfig, run_training

    faced = args.with_faced_masks
    epochs = args.epochs if args.epochs is not None else (3 if faced else 14)
    lr = args.lr if args.lr is not None else (1e-3 if faced else 3e-3)
    if epochs < 1 or args.batch_size < 1:
        raise ValueError("--epochs and --batch-size must be ≥ 1")
    if not 0 < args.held_out < 1:
        raise ValueError("--held-out must be in (0, 1)")
    if faced and args.lfw is None:
        raise ValueError("--with-faced-masks needs --lfw (the faces that get DM faced masks)")
    if faced and (args.faced_limit < 8 or args.base_per_class < 0):
        raise ValueError("--faced-limit must be ≥ 8 and --base-per-class ≥ 0")
    cfg = TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=lr, seed=args.seed, held_out=args.held_out)
    command = "mf2m " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if Path(sys.argv[0]).name == "mf2m" else ""
    if faced:
        from ..models.mask_detector import DEFAULT_WEIGHTS
        from .faced_training import run_faced_training

        init = {"default": DEFAULT_WEIGHTS, "none": None}.get(args.init, args.init)
        report = run_faced_training(
            args.data,
            args.lfw,
            args.out,
            cfg,
            init_weights=init,
            device=resolve_device(args.device),
            cache_dir=args.cache_dir,
            faced_limit=args.faced_limit,
            base_per_class=args.base_per_class or None,
            card=args.card,
            command=command or _command_from_args(args),
            progress=not args.no_progress,
            on_step=print,
            limit_per_class=args.limit_per_class,
        )
        rates = report["metrics"]["retrained"]
        print(f"wrote {args.out}: " + "; ".join(f"{k} {100 * v['accuracy']:.1f}%" for k, v in rates.items()))
        return 0
    report = run_training(
        args.data,
        args.out,
        cfg,
        device=resolve_device(args.device),
        cache_dir=args.cache_dir,
        limit_per_class=args.limit_per_class,
        lfw_dir=args.lfw,
        lfw_limit=args.lfw_limit,
        card=args.card,
        command=command or _command_from_args(args),
        progress=not args.no_progress,
        on_step=print,
    )
    held = report["metrics"]["held_out"]
    print(f"wrote {args.out} (held-out accuracy {100 * held['accuracy']:.2f}% on {held['n']} faces)")
    return 0


def _command_from_args(args: argparse.Namespace) -> str:
    """A reproducible command line rebuilt from parsed arguments (when not run as ``mf2m``)."""
    parts = ["mf2m", "train-mask-detector", "--data", str(args.data), "--out", str(args.out), "--seed", str(args.seed)]
    for flag, value in (("--epochs", args.epochs), ("--lr", args.lr)):
        if value is not None:
            parts += [flag, str(value)]
    if args.limit_per_class:
        parts += ["--limit-per-class", str(args.limit_per_class)]
    if args.lfw:
        parts += ["--lfw", str(args.lfw), "--lfw-limit", str(args.lfw_limit)]
    if args.with_faced_masks:
        parts += [
            "--with-faced-masks",
            "--init",
            str(args.init),
            "--faced-limit",
            str(args.faced_limit),
            "--base-per-class",
            str(args.base_per_class),
        ]
    return " ".join(shlex.quote(p) for p in parts)
