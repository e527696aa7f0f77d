"""Forward speed of the default recognizers: SFace (onnxruntime vs the converted torch module) and
dlib ResNet (on ArcFace crops re-warped to chips, and on ready chips).

Speed does not depend on image content, so the faces are seeded random uint8 images.
Usage: python benchmarks/bench_recognizers.py [--images 128] [--batch-size 32] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def rate(fn, n: int, repeats: int = 3) -> float:
    """Best images/second over ``repeats`` runs of ``fn`` (one warm-up call first)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def main() -> None:
    """Measure and print a markdown table (and optionally JSON)."""
    import torch

    from benchmark.atomic import write_json
    from benchmark.manifest import build_manifest
    from benchmark.models.registry import create
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=128, help="images per timed run")
    p.add_argument("--batch-size", type=int, default=32, help="batch size")
    p.add_argument("--repeats", type=int, default=3, help="timed runs (best is reported)")
    p.add_argument("--device", default="cpu", help="cpu or cuda for the torch modules")
    p.add_argument("--out", default=None, help="JSON file for the results")
    args = p.parse_args()
    faces = np.random.default_rng(0).integers(0, 256, (args.images, 112, 112, 3), dtype=np.uint8)
    results = {}

    sface = create("sface", device="cpu", batch_size=args.batch_size)
    results["sface onnxruntime (embed)"] = rate(lambda: sface.embed(faces), args.images, args.repeats)
    module = sface.torch_module(args.device)
    x = torch.from_numpy(faces).permute(0, 3, 1, 2).float().div(255).to(args.device)

    def torch_forward():
        with torch.inference_mode():
            for i in range(0, len(x), args.batch_size):
                module(x[i:i + args.batch_size])
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
    results[f"sface torch {args.device} (forward)"] = rate(torch_forward, args.images, args.repeats)

    def torch_backward():
        for i in range(0, len(x), args.batch_size):
            xb = x[i:i + args.batch_size].clone().requires_grad_(True)
            module(xb).sum().backward()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
    results[f"sface torch {args.device} (forward+backward to input)"] = rate(torch_backward, args.images,
                                                                              args.repeats)

    dlib_rec = create("dlib", batch_size=args.batch_size)
    chips = dlib_rec.chips_from_aligned(faces)
    results["dlib embed (ArcFace crop → template chip)"] = rate(lambda: dlib_rec.embed(faces), args.images,
                                                                 args.repeats)
    results["dlib embed_chips (ready 150 chips)"] = rate(lambda: dlib_rec.embed_chips(chips), args.images,
                                                          args.repeats)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print("| runtime | images/s |\n|---|---|")
    for k, v in results.items():
        print(f"| {k} | {v:.1f} |")
    print(f"\n{args.images} images, batch {args.batch_size}, torch threads {torch.get_num_threads()}, "
          f"load average at the end {load:.1f}")
    if args.out:
        write_json(args.out, {"images_per_second": results, "load_average": load,
                              "manifest": build_manifest("bench_recognizers", vars(args))})


if __name__ == "__main__":
    main()
