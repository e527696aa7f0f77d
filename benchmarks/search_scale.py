"""Scale benchmark of ``mf2m search``: synthetic MegaFace-size feature sets, wall time, peak RSS, GEMM ratio.

Writes (to a temporary directory) 80 identities × 3,530 probes and 3,530 mates and 1,000,000
distractors, 512-D float16, with planted identity structure (probe/mate = identity centre + noise,
so positives score ~0.2–0.7 while negatives score ~N(0, 1/√D)), runs ``mf2m search`` in a child
process (its peak RSS is the child's ru_maxrss), then times a bare float32 matrix product of the
same shapes (probes × all distractors, in the same blocks, nothing else) in this run: numpy and torch
float32 (the faster is the float32 floor) and the low-precision product the search screened with.

    python benchmarks/search_scale.py                      # full scale, CPU
    python benchmarks/search_scale.py --distractors 100000 # smaller
    python benchmarks/search_scale.py --device cuda        # GPU (target ≤ 2 s on an H100/H200)
    python benchmarks/search_scale.py --precision fp32     # the float32 path even where bf16 units exist
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_sets(root: Path, n_id: int, n_probes: int, n_dist: int, dim: int, seed: int,
               probe_signal: tuple[float, float] = (0.5, 1.0)) -> dict[str, Path]:
    """Probe, mate and distractor feature sets (float16) with planted identity structure.

    ``probe_signal``: range of the identity-centre weight of the probes (mates always 0.5–1.0); a small
    range (``--attacked``) puts the positive scores inside the bulk of the negatives, as a successful attack does.
    """
    from benchmark.features import FeatureSetWriter, write_feature_file

    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_id, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    labels = np.sort(rng.integers(0, n_id, n_probes))

    def faces(tag: str) -> np.ndarray:
        noise = rng.normal(size=(n_probes, dim)).astype(np.float32) / np.sqrt(dim)
        lo, hi = probe_signal if tag == "p" else (0.5, 1.0)
        return centers[labels] * rng.uniform(lo, hi, (n_probes, 1)).astype(np.float32) + noise

    keys = [f"{lab:03d}/img{i:05d}" for i, lab in enumerate(labels)]
    paths = {"probes": root / "probes.h5", "mates": root / "mates.h5", "distractors": root / "distractors"}
    names = [f"id{lab:03d}" for lab in labels]
    write_feature_file(paths["probes"], faces("p"), [k + "_masked.png" for k in keys], labels, "synthetic",
                       dtype="float16", identities=names)
    write_feature_file(paths["mates"], faces("m"), [k + ".png" for k in keys], labels, "synthetic",
                       dtype="float16", identities=names)
    with FeatureSetWriter(paths["distractors"], "synthetic", dim, shard_size=100_000, dtype="float16") as w:
        for lo in range(0, n_dist, 100_000):
            n = min(100_000, n_dist - lo)
            w.add(rng.normal(size=(n, dim)).astype(np.float32), [f"flickr/{i}.jpg" for i in range(lo, lo + n)])
    return paths


def cached_sets(folder: Path, args: argparse.Namespace) -> dict[str, Path]:
    """``write_sets`` into ``folder/<shape and seed>/`` once; later runs with the same settings reuse it."""
    name = (f"id{args.identities}-p{args.probes}-d{args.distractors}-D{args.dim}-s{args.seed}"
            + ("-attacked" if args.attacked else ""))
    sub = folder / name
    done = sub / "complete"
    if not done.is_file():
        sub.mkdir(parents=True, exist_ok=True)
        write_sets(sub, args.identities, args.probes, args.distractors, args.dim, args.seed,
                   (0.02, 0.1) if args.attacked else (0.5, 1.0))
        done.write_text("ok\n")
    return {"probes": sub / "probes.h5", "mates": sub / "mates.h5", "distractors": sub / "distractors"}


def bare_products(paths: dict[str, Path], device: str, block: int, kinds: list[str]) -> dict[str, float]:
    """Seconds for probes @ distractorsᵀ in the same blocks, features already in memory, nothing else:
    ``numpy`` (float32, OpenBLAS), ``torch`` (float32, TF32 off), ``torch-bf16`` / ``torch-fp16``."""
    import torch

    from benchmark.features import FeatureSet
    p32 = FeatureSet(paths["probes"]).load().features
    d32 = FeatureSet(paths["distractors"]).load().features
    cuda = device.startswith("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    out = {}
    for kind in kinds:
        if kind == "numpy":
            if cuda:
                continue
            t0 = time.perf_counter()
            for a in range(0, d32.shape[0], block):
                s = p32 @ d32[a:a + block].T
            out[kind] = time.perf_counter() - t0
            continue
        dtype = {"torch": torch.float32, "torch-bf16": torch.bfloat16, "torch-fp16": torch.float16}[kind]
        p = torch.from_numpy(p32).to(device).to(dtype)
        d = torch.from_numpy(d32).to(device).to(dtype) if cuda else None
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for a in range(0, d32.shape[0], block):
            g = d[a:a + block] if cuda else torch.from_numpy(d32[a:a + block]).to(dtype)
            s = p @ g.T
        if cuda:
            torch.cuda.synchronize()
        out[kind] = time.perf_counter() - t0
        del p, d, s
    return out


def main(argv: list[str] | None = None) -> int:
    """Generate, search, compare; prints a JSON summary (and writes it with --json)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--identities", type=int, default=80, help="identities among probes/mates")
    ap.add_argument("--probes", type=int, default=3530, help="probes (and as many mates)")
    ap.add_argument("--distractors", type=int, default=1_000_000, help="distractors")
    ap.add_argument("--dim", type=int, default=512, help="feature dimension")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--block-size", type=int, default=8192, help="--block-size passed to mf2m search")
    ap.add_argument("--precision", default="auto", help="--precision passed to mf2m search")
    ap.add_argument("--products", nargs="*", default=None,
                    help="bare products to time in the same run (numpy, torch, torch-bf16, torch-fp16; "
                         "default: numpy and torch float32, plus the low-precision one the search ran)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    ap.add_argument("--attacked", action="store_true",
                    help="attacked-like probes (identity weight 0.02–0.1): positives inside the negative bulk")
    ap.add_argument("--workdir", default=None, help="where to write the sets (default: a temp dir, removed)")
    ap.add_argument("--data-dir", default=None,
                    help="keep the generated sets in this folder and reuse them on the next run with the same "
                         "shape/seed (saves the generation time when timing repeatedly)")
    ap.add_argument("--json", default=None, help="also write the summary to this file")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        paths = cached_sets(Path(args.data_dir), args) if args.data_dir else \
            write_sets(root, args.identities, args.probes, args.distractors, args.dim, args.seed,
                       (0.02, 0.1) if args.attacked else (0.5, 1.0))
        t_gen = time.perf_counter() - t0
        cmd = [sys.executable, "-m", "benchmark.cli", "search", "--probes", str(paths["probes"]),
               "--mates", str(paths["mates"]), "--distractors", str(paths["distractors"]),
               "--out", str(root / "out"), "--device", args.device, "--block-size", str(args.block_size),
               "--precision", args.precision, "--no-progress"]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t0
        peak_rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2
        metrics = json.loads((root / "out" / "metrics.json").read_text())
        manifest = json.loads((root / "out" / "manifest.json").read_text())
        device = manifest["device"]
        ran = metrics["exactness"]["precision"]["resolved"]
        kinds = args.products if args.products is not None else \
            ["numpy", "torch"] + ([f"torch-{ran}"] if ran in ("bf16", "fp16") else [])
        bare = bare_products(paths, device, args.block_size, kinds)
    fp32 = min(v for k, v in bare.items() if k in ("numpy", "torch"))
    low = {k: v for k, v in bare.items() if k in ("torch-bf16", "torch-fp16")}
    summary = {
        "shape": {"probes": args.probes, "mates": args.probes, "distractors": args.distractors, "dim": args.dim},
        "device": device, "cpus": os.cpu_count(), "load_avg_1min": os.getloadavg()[0],
        "generate_s": round(t_gen, 2), "search_wall_s": round(wall, 2), "search_timings": manifest["timings"],
        "peak_rss_gb": round(peak_rss_gb, 3),
        "bare_products_s": {k: round(v, 2) for k, v in bare.items()},
        "precision": metrics["exactness"]["precision"],
        "ratio_search_to_fp32_product": round(manifest["timings"]["search_s"] / fp32, 3),
        "ratio_wall_to_fp32_product": round(wall / fp32, 3),
        "ratio_wall_to_low_precision_product": {k: round(wall / v, 3) for k, v in low.items()},
        "metrics": {k: metrics[k] for k in ("rank1", "auc", "tar_at_far")},
        "attacked": args.attacked, "exactness": metrics["exactness"],
        "positive_pairs": metrics["counts"]["positive_pairs"],
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
