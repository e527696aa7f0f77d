"""Attack outcome and speed in float32 vs reduced precision on real LFW probes, at the paper's settings.

For each method (AdvNoise-DM, MF²M) and precision, runs ``mf2m attack`` (``attacks.pipeline.run_attack``)
on the same probes and templates and reports, from ``probes.csv`` (re-evaluated in float32 on the 8-bit
PNGs written): mean cosine of ``--fr`` (default SFace) to the clean original, mask detection rate
(P(masked) ≥ 0.5), mean PSNR against DM, and image-iterations/s of the whole attack loop. The issue-12 parity target: |Δ cosine| and
|Δ detection rate| ≤ 0.02, |Δ PSNR| ≤ 0.1 dB against float32.

    python benchmarks/attack_precision.py --lfw ../shared/data/lfw/images --out /tmp/attack-precision \\
        --probes 40 --precisions fp32,bf16 --methods advnoise-dm,mf2m
    python benchmarks/attack_precision.py ... --fr iresnet:PATH/backbone.pth   # an ArcFace IResNet of yours

Probes: one image of each of the first ``--probes`` LFW people with ≥ 2 images; templates: the next
``--templates`` people (``benchmarks/attack_evidence.py``'s pool). ``--limit METHOD=N`` runs fewer probes
for one method (bf16 is emulated, ≈ 7× slower, on CPUs without bf16 units). Each finished run is kept in
``OUT/<method>-<precision>/`` and ``OUT/results.json``; rerunning the command skips finished runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ITERATIONS = {"advnoise-dm": 40, "mf2m": 40 + 160}      # gradient evaluations per probe at paper settings


def outcome(method_dir: Path) -> dict:
    """Means over the probes of ``probes.csv`` (status ok) and the per-key values."""
    with open(method_dir / "probes.csv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["status"] == "ok"]
    cos = np.array([float(r["fr_cosine"]) for r in rows])
    pm = np.array([float(r["p_masked"]) for r in rows])
    psnr = np.array([float(r["psnr"]) for r in rows])
    return {"probes": len(rows), "cosine": float(cos.mean()), "detection_rate": float((pm >= 0.5).mean()),
            "psnr": float(psnr.mean()),
            "per_key": {r["key"]: [float(r["fr_cosine"]), float(r["p_masked"]), float(r["psnr"])] for r in rows}}


def run_one(method: str, precision: str, probes: Path, templates: Path, out: Path, limit: int, batch: int,
            fr, md) -> dict:
    """One attack run; returns its outcome, seconds and image-iterations/s."""
    from attacks.pipeline import AttackJob, run_attack
    job = AttackJob(method=method, probes=str(probes), templates=str(templates), out=str(out), device="cpu",
                    batch_size=batch, limit=limit, precision=precision)
    t0 = time.time()
    summary = run_attack(job, fr, md, progress=False)
    wall = time.time() - t0
    res = outcome(out)
    n = summary["counts"]["processed_now"]
    res.update(method=method, precision=summary["precision"], seconds=summary["seconds"], wall_seconds=round(wall, 1),
               image_iterations_per_s=round(n * ITERATIONS[method] / summary["seconds"], 3) if n else None,
               load_average=round(os.getloadavg()[0], 2), finished=time.strftime("%Y-%m-%d %H:%M"))
    return res


def main() -> None:
    """Run every (method, precision) not yet in ``OUT/results.json`` and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw", required=True, type=Path, help="LFW images folder (<Name>/<Name>_NNNN.jpg)")
    ap.add_argument("--out", required=True, type=Path, help="output folder (rerun to resume)")
    ap.add_argument("--probes", type=int, default=40, help="probe identities (one image each)")
    ap.add_argument("--templates", type=int, default=50, help="template identities (one image each)")
    ap.add_argument("--methods", default="advnoise-dm,mf2m", help="comma-separated methods")
    ap.add_argument("--precisions", default="fp32,bf16", help="comma-separated precisions, float32 first")
    ap.add_argument("--limit", action="append", default=[], metavar="METHOD=N",
                    help="run only the first N probes for METHOD (all precisions)")
    ap.add_argument("--fr", default="sface",
                    help="white-box recognizer from the model registry (e.g. iresnet:PATH/backbone.pth)")
    ap.add_argument("--md", default="mf2m-maskdet", help="white-box mask detector from the model registry")
    ap.add_argument("--batch-size", type=int, default=8, help="probes per batch")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from attack_evidence import build_pool

    from attacks.cli import load_models
    args.out.mkdir(parents=True, exist_ok=True)
    probes, templates = build_pool(args.lfw, args.out, args.probes, 1, args.templates)
    limits = {k: int(v) for k, v in (item.split("=") for item in args.limit)}
    fr, md = load_models(args.fr, args.md, "cpu")
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for method in args.methods.split(","):
        for precision in args.precisions.split(","):
            name = f"{method}-{precision}"
            if name in results:
                continue
            print(f"running {name} …", flush=True)
            results[name] = run_one(method, precision, probes, templates, args.out / name,
                                    limits.get(method, args.probes), args.batch_size, fr, md)
            results_path.write_text(json.dumps(results, indent=1))
            print(json.dumps({k: v for k, v in results[name].items() if k != "per_key"}), flush=True)
    print(compare(results))


def compare(results: dict) -> str:
    """Markdown rows: each reduced-precision run against the float32 run of its method."""
    lines = ["| method | precision | probes | img-it/s | cosine | detection rate | PSNR (dB) | Δcos | Δdet | ΔPSNR | parity |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        base = results.get(f"{r['method']}-fp32")
        delta = ["", "", "", ""]
        if base is not None and name != f"{r['method']}-fp32":
            keys = sorted(set(r["per_key"]) & set(base["per_key"]))
            b = np.array([base["per_key"][k] for k in keys])
            x = np.array([r["per_key"][k] for k in keys])
            d = [x[:, 0].mean() - b[:, 0].mean(), (x[:, 1] >= 0.5).mean() - (b[:, 1] >= 0.5).mean(),
                 x[:, 2].mean() - b[:, 2].mean()]
            ok = abs(d[0]) <= 0.02 and abs(d[1]) <= 0.02 and abs(d[2]) <= 0.1
            delta = [f"{d[0]:+.4f}", f"{d[1]:+.3f}", f"{d[2]:+.3f}", "yes" if ok else "**no**"]
        lines.append(f"| {r['method']} | {r['precision']['precision']} | {r['probes']} | {r['image_iterations_per_s']} "
                     f"| {r['cosine']:.4f} | {r['detection_rate']:.3f} | {r['psnr']:.2f} | " + " | ".join(delta) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
