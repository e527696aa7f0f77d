"""Speed of the mask detectors: p_masked throughput and the attack's forward+backward step.

Usage: python benchmarks/bench_mask_detector.py [--device cpu] [--n 512] [--retinanet]
(RetinaNet is timed with randomly initialised weights: speed does not depend on the values.)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _best_of(fn, repeats: int = 3) -> float:
    fn()   # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    """Print one markdown table row per measurement."""
    from benchmark.device import resolve_device
    from benchmark.models.mask_detector import CNNMaskDetector
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=512, help="faces for the p_masked throughput")
    ap.add_argument("--retinanet", action="store_true", help="also time RetinaNet-50 at 608 px")
    args = ap.parse_args()
    device = resolve_device(args.device)
    faces = np.random.default_rng(0).integers(0, 256, (args.n, 112, 112, 3), dtype=np.uint8)
    det = CNNMaskDetector(device=device)
    t = _best_of(lambda: det.p_masked(faces))
    print(f"| mf2m-maskdet p_masked | {device} | {args.n / t:,.0f} faces/s |")
    net = det.torch_module(device)
    x = torch.rand(32, 3, 112, 112, device=device)

    def step():
        xi = x.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(net(xi), torch.zeros(32, dtype=torch.long, device=device)).backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    t = _best_of(step)
    print(f"| mf2m-maskdet forward+backward, batch 32 | {device} | {1000 * t:.1f} ms |")
    if args.retinanet:
        from benchmark.models.retinanet_mask import RetinaNetMaskDetector, build_retinanet
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "random.pt"
            torch.save({"model_state_dict": {f"module.{k}": v for k, v in build_retinanet().state_dict().items()}},
                       path)
            rdet = RetinaNetMaskDetector(path, device=device, batch_size=4)
            t = _best_of(lambda: rdet.p_masked(faces[:4]), repeats=1)
            print(f"| retinanet-facemask p_masked (608 px) | {device} | {4 / t:.2f} faces/s |")


if __name__ == "__main__":
    main()
