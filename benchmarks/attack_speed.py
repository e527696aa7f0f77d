"""Attack throughput: images/s of AdvNoise-DM and MF²M, and their overhead over bare FR+MD forward+backward.

For the same batch and the same number of gradient evaluations, the "bare" time is the forward +
backward (to the input) of the recognizer and the mask detector alone; the attack's overhead is
``attack_time / bare_time − 1`` (target ≤ 30 %): projection, sign, unfold/filtering and bookkeeping.

``--precisions fp32,bf16`` (CPU) or ``fp32,fp16`` (CUDA) times each precision of the attacks'
forward+backward (``--precision`` of ``mf2m attack``; images, updates and projections stay float32) in
one run, and prints the image-iterations/s relative to the first (issue 12 target: ≥ 1.5×). Speed only:
the outcome (cosine, detection rate, PSNR) on real faces is ``benchmarks/attack_precision.py``'s.

    python benchmarks/attack_speed.py --batch-size 8 --iters 10            # SFace + MaskNet on CPU
    python benchmarks/attack_speed.py --batch-size 8 --iters 5 --precisions fp32,bf16
    python benchmarks/attack_speed.py --device cuda --fr iresnet50-random --batch-size 64 --iters 40 --precisions fp32,fp16
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def models(fr_name: str, md_name: str, device: str):
    """``(fr_module, md_module)``: real SFace / mf2m MaskNet, or random-weight IResNet-50 / MaskNet."""
    if fr_name == "iresnet50-random":
        from benchmark.models.iresnet import build_iresnet
        torch.manual_seed(0)
        net = build_iresnet("r50").to(device).eval()
        fr = torch.nn.Sequential(_Scale(), net, _Normalise())
    else:
        from benchmark.models.sface import SFaceRecognizer
        fr = SFaceRecognizer(device="cpu").torch_module(device)
    if md_name == "masknet-random":
        from benchmark.models.mask_detector import build_masknet
        torch.manual_seed(1)
        md = build_masknet().to(device).eval()
    else:
        from benchmark.models.mask_detector import CNNMaskDetector
        md = CNNMaskDetector(device="cpu").torch_module(device)
    return fr, md


class _Scale(torch.nn.Module):
    def forward(self, x):
        return (x - 0.5) / 0.5


class _Normalise(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.normalize(x, dim=1)


def bare(fr, md, x, ref, iters: int, device: str) -> float:
    """Seconds for ``iters`` forward+backward passes of FR + MD to the input."""
    _sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        xi = x.detach().requires_grad_(True)
        loss = (fr(xi) - ref).norm(dim=1).sum() - torch.nn.functional.cross_entropy(md(xi), torch.zeros(len(x), dtype=torch.long, device=device))
        torch.autograd.grad(loss, xi)
    _sync(device)
    return time.perf_counter() - t


def timed(attack, x, r, ref, device: str) -> float:
    _sync(device)
    t = time.perf_counter()
    attack(x, r, ref)
    _sync(device)
    return time.perf_counter() - t


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    """Parse arguments, time the attacks, print a JSON line per measurement."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--fr", default="sface", choices=("sface", "iresnet50-random"), help="recognizer")
    p.add_argument("--md", default="masknet-random", choices=("mf2m-maskdet", "masknet-random"),
                   help="mask detector (random weights cost the same as trained ones)")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch")
    p.add_argument("--iters", type=int, default=10, help="gradient iterations per attack (paper: 40 / 40+160)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--precisions", default="fp32",
                   help="comma-separated --precision values of the FR+MD forward+backward, each timed in this run")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from attacks import create
    fr, md = models(args.fr, args.md, args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch_size, 3, 112, 112, generator=g).to(args.device)
    r = torch.zeros(args.batch_size, 1, 112, 112, device=args.device)
    r[:, :, 60:105, 20:92] = 1
    with torch.no_grad():
        ref = fr(torch.rand(args.batch_size, 3, 112, 112, generator=g).to(args.device))
    n = args.iters
    first: dict[str, float] = {}
    for precision in args.precisions.split(","):
        runs = {"advnoise-dm": (create("advnoise-dm", fr, md, steps=n, precision=precision), n),
                "mf2m": (create("mf2m", fr, md, noise_steps=n // 5, kernel_steps=n - n // 5, precision=precision), n)}
        for name, (attack, iters) in runs.items():
            bare(attack.fr_run, attack.md_run, x, ref, 1, args.device)   # warm-up (cuDNN autotuning)
            t_attack = timed(attack, x, r, ref, args.device)
            t_bare = bare(attack.fr_run, attack.md_run, x, ref, iters, args.device)
            rate = args.batch_size * iters / t_attack
            first.setdefault(name, rate)
            print(json.dumps({"method": name, "device": args.device, "fr": args.fr, "md": args.md,
                              "precision": attack.precision.precision, "form": attack.precision.form,
                              "batch_size": args.batch_size, "iters": iters,
                              "images_per_s": round(args.batch_size / t_attack, 3),
                              "image_iterations_per_s": round(rate, 3),
                              "speedup_vs_first": round(rate / first[name], 3),
                              "bare_images_per_s": round(args.batch_size / t_bare, 3),
                              "overhead": round(t_attack / t_bare - 1, 3),
                              "load_average": round(os.getloadavg()[0], 2)}), flush=True)


if __name__ == "__main__":
    main()
