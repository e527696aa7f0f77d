"""``mf2m search``: exact MegaFace-protocol identification and verification metrics."""

from __future__ import annotations

import argparse

from benchmark.search.defaults import DEFAULT_FARS, DEFAULT_RANKS


def _run(args: argparse.Namespace) -> int:
    from benchmark.search.run import SearchConfig, run_search

    cfg = SearchConfig(
        probes=args.probes,
        mates=args.mates,
        distractors=args.distractors,
        out=args.out,
        fars=args.far,
        ranks=args.ranks,
        distractor_sizes=args.distractor_sizes,
        noise_lists=args.noise_list,
        topk=args.topk,
        device=args.device,
        block_size=args.block_size,
        precision=args.precision,
        seed=args.seed,
        progress=not args.no_progress,
        join=args.join,
        allow_missing_mates=args.allow_missing_mates,
        dist_timeout=args.dist_timeout,
        bootstrap=args.bootstrap,
    )
    for f in cfg.fars:
        if not 0 < f < 1:
            raise ValueError(f"--far values must be in (0, 1), got {f}")
    if cfg.block_size < 1 or cfg.topk < 0:
        raise ValueError("--block-size must be ≥ 1 and --topk ≥ 0")
    if not cfg.dist_timeout > 0:
        raise ValueError("--dist-timeout must be > 0 minutes")
    metrics = run_search(cfg)
    if metrics:
        tar = ", ".join(f"TAR@{t['far']:g}={t['tar']:.4f}" for t in metrics["tar_at_far"])
        print(f"rank-1 {metrics['rank1']:.4f}  {tar}  AUC {metrics['auc']:.6f}  -> {args.out}/metrics.json")
    return 0


def register(subparsers, formatter_class) -> None:
    """Add ``mf2m search``."""
    p = subparsers.add_parser(
        "search",
        formatter_class=formatter_class,
        help="exact rank-1/CMC, TAR@FAR and AUC of probes vs mates + distractors (MegaFace protocol)",
        description="Score probes against mates and a distractor gallery (cosine similarity) and compute "
        "exact metrics without holding the score matrix: positives = probe × mate of the same "
        "identity *name* (the feature sets' per-row identities), never a probe with its own "
        "image or the clean image it was made from (keys compared without file extension, "
        "sources honoured); negatives = every probe × distractor. See docs/protocol.md.\n"
        "Several processes: torchrun --nproc-per-node N -m benchmark.cli search ... (each rank "
        "takes every N-th distractor block; torch.distributed brings the partials to rank 0: "
        "gloo on CPU, NCCL on CUDA). Independent jobs with RANK/WORLD_SIZE set by hand share "
        "--out and merge fingerprinted partial files instead.",
    )
    p.add_argument("--probes", required=True, help="probe feature set (HDF5 file or directory with manifest.json)")
    p.add_argument("--mates", required=True, help="mate feature set (clean images of the probes' identities)")
    p.add_argument("--distractors", required=True, help="distractor feature set (e.g. MegaFace 1M)")
    p.add_argument("--out", required=True, help="output directory (metrics.json, cmc/roc csv+png, topk.csv, manifest)")
    p.add_argument(
        "--far",
        type=float,
        nargs="+",
        default=list(DEFAULT_FARS),
        help="false accept rates for TAR@FAR (exact thresholds); the ROC grid goes up to the largest",
    )
    p.add_argument(
        "--ranks",
        type=int,
        nargs="+",
        default=list(DEFAULT_RANKS),
        help="CMC ranks reported in metrics.json (1, 10, 100, 1000 are always added)",
    )
    p.add_argument(
        "--distractor-sizes",
        type=int,
        nargs="*",
        default=[],
        help="nested, seeded random distractor subset sizes for the rank-1 / TAR sweep, "
        "e.g. 10 100 1000 10000 100000 1000000",
    )
    p.add_argument(
        "--noise-list",
        nargs="*",
        default=[],
        help="noise list file(s) (megaface_noises.txt / facescrub_noises.txt): listed keys are "
        "excluded from every role",
    )
    p.add_argument("--topk", type=int, default=50, help="gallery matches per probe written to topk.csv (0: none)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (results are identical)")
    p.add_argument(
        "--block-size",
        type=int,
        default=8192,
        help="distractors per GEMM block (memory ≈ probes × block × 4 bytes per block)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="block product precision: bf16/fp16 screen the score blocks and rescore every entry "
        "that could matter in float32 (same ranks, CMC, τ, TAR; AUC within its reported "
        "bound). auto: bf16 on CPUs with bf16 units (amx_bf16/avx512_bf16), fp16 on CUDA, "
        "else fp32. metrics.json records which ran and why",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the distractor-size sweep's permutation and of the bootstrap"
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="replicates of the bootstrap over probe identities behind the 95 %% intervals of rank-1 "
        "and TAR in metrics.json (0: none; TAR intervals only while the probes' top negative "
        "scores fit in memory)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--join",
        choices=("auto", "names", "labels"),
        default="auto",
        help="how probes find their mates: by identity name (names; an error when a set has none), "
        "by the sets' integer labels (labels: only right when both were labelled from one list "
        "of identities), or names when both sets carry them, else labels with a warning (auto)",
    )
    p.add_argument(
        "--allow-missing-mates",
        action="store_true",
        help="a probe identity with no image among the mates is counted and logged instead of an "
        "error (its probes still count as negatives)",
    )
    p.add_argument(
        "--dist-timeout",
        type=float,
        default=10.0,
        metavar="MINUTES",
        help="several processes: how long rank 0 waits for the other ranks' partial results before "
        "failing with an error naming the missing rank(s)",
    )
    p.set_defaults(func=_run)
