"""``mf2m embed`` (images → feature set) and ``mf2m pool`` (probe-pool builder). Argparse only here."""

from __future__ import annotations

import argparse

SPEC_HELP = (
    "dataset spec KIND:PATH[?opt=v&…]; kinds: folder:ROOT (ROOT/<identity>/<image>), csv:FILE "
    "(identity,path[,key[,aligned]]), megaface-probes:ROOT, megaface-distractors:ROOT (insightface "
    "testpack), megaface-originals:ROOT, facescrub-originals:ROOT (photos + JSON boxes), lfw:ROOT, "
    "prepared:DIR; options aligned=1, noises=drop, list=FILE, limit=N (see docs/embed.md)"
)


def add_embed_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``mf2m embed`` (shared with ``python -m benchmark.embed``)."""
    p.add_argument("--data", required=True, metavar="SPEC", help=SPEC_HELP)
    p.add_argument(
        "--model",
        required=True,
        metavar="NAME",
        help="recognizer name from the model registry (`mf2m models` lists them)",
    )
    p.add_argument(
        "--weights",
        metavar="PATH",
        default=None,
        help="weight file of the model when the registry has none built in (e.g. an arcface_torch "
        "backbone.pth for iresnet50); default: the registry's / $MF2M_MODELS_DIR",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output feature-set directory (manifest.json + shard-NNNNN.h5); re-running the same "
        "command resumes an interrupted run",
    )
    p.add_argument(
        "--flip",
        action="store_true",
        help="flip test-time augmentation: sum the features of each image and its mirror, then "
        "L2-normalise (insightface's convention)",
    )
    p.add_argument("--batch-size", type=int, default=128, help="images per forward pass")
    p.add_argument(
        "--workers",
        type=int,
        default=-1,
        help="DataLoader processes decoding images while the model runs (-1: CPU count - 1, "
        "at most 16; 0: decode in the main process)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto | cpu | cuda | cuda:N (auto picks CUDA when present; CUDA runs the torch "
        "module, CPU the model's fastest runtime, e.g. SFace's torch module or onnxruntime)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="arithmetic of the recognizer: auto = bf16 on a CPU with bf16 units (AMX/AVX512-BF16), "
        "fp16 on CUDA, else fp32; bf16 runs on any CPU but is emulated (slower) without such "
        "units; fp16 needs CUDA. Features are always float32 and unit-norm; models without a "
        "torch module (dlib) run float32. Recorded in the manifest (precision)",
    )
    p.add_argument(
        "--shard-size",
        type=int,
        default=100_000,
        help="images per HDF5 shard (also the unit of resume and of the split across ranks)",
    )
    p.add_argument(
        "--max-failure-fraction",
        type=float,
        default=0.05,
        help="stop with an error when more than this fraction of the images cannot be used "
        "(unreadable, not aligned, no face found, …)",
    )
    p.add_argument(
        "--dtype", choices=("float32", "float16"), default="float32", help="storage type of the features in the shards"
    )
    p.add_argument(
        "--prepared-dir",
        metavar="DIR",
        default=None,
        help="cache of aligned crops for datasets of photos (detection + landmarks + alignment "
        "run once; default: OUT/prepared)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def register(sub, formatter) -> None:
    """Add the ``embed`` and ``pool`` sub-commands."""
    p = sub.add_parser(
        "embed",
        formatter_class=formatter,
        help="embed a dataset with a recognizer into a feature set",
        description="Turn the images of a dataset into a feature set (docs/embed.md): batched, streaming, "
        "resumable after a kill, bad images skipped with their reason.\n"
        "Many GPUs: torchrun --nproc_per_node N -m benchmark.embed --data … --model … --out …",
    )
    add_embed_arguments(p)
    p.set_defaults(func=_embed)

    q = sub.add_parser(
        "pool",
        formatter_class=formatter,
        help="pick a seeded probe pool (N identities × up to M images)",
        description="Choose N identities (seeded) with at least --min-images images and keep up to M images "
        "of each, like the paper's FaceScrub subset (80 identities, 3,530 images). Writes "
        "OUT/probes.csv, OUT/rest.csv (the other images: distractors or templates) and "
        "OUT/pool.json; use them with --data csv:OUT/probes.csv.",
    )
    q.add_argument("--data", required=True, metavar="SPEC", help=SPEC_HELP)
    q.add_argument("--identities", type=int, default=80, help="number of identities in the pool")
    q.add_argument("--max-images", type=int, default=None, help="at most this many images per identity (default: all)")
    q.add_argument(
        "--min-images",
        type=int,
        default=2,
        help="only identities with at least this many images (a probe needs a mate)",
    )
    q.add_argument("--seed", type=int, default=0, help="random seed of the choice")
    q.add_argument("--out", required=True, metavar="DIR", help="output folder")
    q.set_defaults(func=_pool)


def config_from_args(args: argparse.Namespace):
    """An ``EmbedConfig`` from parsed arguments."""
    from .engine import EmbedConfig

    return EmbedConfig(
        data=args.data,
        model=args.model,
        out=args.out,
        flip=args.flip,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        shard_size=args.shard_size,
        max_failure_fraction=args.max_failure_fraction,
        dtype=args.dtype,
        prepared_dir=args.prepared_dir,
        weights=args.weights,
        precision=args.precision,
        progress=not args.no_progress,
    )


def _embed(args: argparse.Namespace) -> int:
    from .engine import run_embed

    run_embed(config_from_args(args))
    return 0


def _pool(args: argparse.Namespace) -> int:
    from ..data.datasets import load_dataset
    from ..data.pool import build_pool, write_pool

    dataset = load_dataset(args.data)
    pool = build_pool(dataset, args.identities, args.max_images, args.seed, args.min_images)
    write_pool(
        pool,
        args.out,
        {
            "data": args.data,
            "identities": args.identities,
            "max_images": args.max_images,
            "min_images": args.min_images,
            "seed": args.seed,
        },
    )
    print(
        f"pool: {len(pool.identities)} identities, {len(pool.probes)} probe images, {len(pool.rest)} others "
        f"→ {args.out}/probes.csv, rest.csv"
    )
    return 0
