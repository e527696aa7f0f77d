"""GPU embedding throughput: IResNet-50 (random weights) at 112×112 in half precision, end to end.

Writes ``--unique`` aligned JPEG crops of real faces (variations of insightface's sample face, or LFW
crops with ``--lfw``), lists them ``--images`` times in total through a CSV (distinct keys, so every
listed image is decoded again), then times

* **bare**: the fp16 channels-last torch module on a batch already on the device;
* **end to end**: ``mf2m embed`` (DataLoader decode → pinned memory → GPU fp16 → HDF5 shards → manifest).

Target on one H100/H200: ≥ 10,000 images/s end to end (the 1M MegaFace gallery in < 2 minutes).
``--precision`` is ``mf2m embed``'s (auto = fp16 on CUDA; fp32 runs with TF32 off); the JSON line also
gives the cosine of the batch's features to float32's (``min_cosine_to_fp32``). Without insightface
(the GPU machine has none) and without ``--lfw`` the base faces are seeded noise images: the model's
weights are random anyway, so the speed is the same.

    python benchmarks/gpu_embed.py --device cuda --images 200000 --batch-size 512 --workers 12
    python benchmarks/gpu_embed.py --device cpu --images 16 --batch-size 8 --workers 0   # smoke test
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def make_list(root: Path, unique: int, total: int, lfw: Path | None) -> Path:
    """``unique`` JPEG crops under ``root/faces`` and a CSV listing ``total`` entries (keys distinct)."""
    from benchmark.data.images import read_image
    from benchmark.data.synthetic import lfw_crop, variants, write_jpeg
    if lfw is not None:
        bases = [lfw_crop(sorted(p.glob("*.jpg"))[0]) for p in sorted((lfw / "images").iterdir())[:20]]
    else:
        try:
            import insightface
            bases = [read_image(Path(insightface.__file__).parent / "data" / "images" / "Tom_Hanks_54745.png")]
        except ImportError:
            bases = [np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)]
    files = []
    per = -(-unique // len(bases))
    for k, base in enumerate(bases):
        for i, img in enumerate(variants(base, per, seed=k)):
            if len(files) == unique:
                break
            path = root / "faces" / f"{k:03d}_{i:05d}.jpg"
            write_jpeg(path, img)
            files.append(path)
    lines = ["identity,path,key,aligned"]
    lines += [f"id{j % 1000},{files[j % len(files)]},img{j:08d},1" for j in range(total)]
    csv_path = root / "list.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    return csv_path


def random_iresnet50(path: Path, device: str):
    """An IResNet-50 recognizer with seeded random weights saved as an arcface_torch ``backbone.pth``."""
    import torch

    from benchmark.models.iresnet import IResNetRecognizer, build_iresnet
    torch.manual_seed(0)
    torch.save(build_iresnet("r50").state_dict(), path)
    return IResNetRecognizer(weights=path, device=device)


def bare_forward(forward, batch: np.ndarray, seconds: float = 3.0) -> float:
    """Images/s of the runtime's forward on one batch already in memory (device-resident on CUDA)."""
    import torch
    faces = torch.from_numpy(batch)
    if forward.module is not None:
        faces = faces.to(forward.device)
        sync = torch.cuda.synchronize if forward.device.startswith("cuda") else (lambda: None)
        for _ in range(3):
            forward._launch(faces)
        sync()
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            forward._launch(faces)
            n += len(faces)
        sync()
        return n / (time.perf_counter() - t0)
    forward.embed_numpy(batch)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds or n == 0:
        forward.embed_numpy(batch)
        n += len(batch)
    return n / (time.perf_counter() - t0)


def main() -> None:
    """Run the GPU (or CPU smoke) measurement; print JSON and optionally write a markdown snippet."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (cpu: a smoke test at tiny size)")
    ap.add_argument("--images", type=int, default=200_000, help="images embedded end to end")
    ap.add_argument("--unique", type=int, default=2000, help="distinct JPEG files behind them")
    ap.add_argument("--batch-size", type=int, default=512, help="batch size")
    ap.add_argument("--workers", type=int, default=12, help="DataLoader decoding workers")
    ap.add_argument("--shard-size", type=int, default=100_000, help="images per shard")
    ap.add_argument("--lfw", type=Path, default=None, help="LFW folder for the base faces (optional)")
    ap.add_argument("--bare-seconds", type=float, default=3.0, help="duration of the bare-forward timing")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                    help="embed precision (mf2m embed --precision)")
    ap.add_argument("--out", type=Path, default=None, help="markdown file for the result")
    args = ap.parse_args()

    from benchmark.device import resolve_device
    from benchmark.embed.engine import EmbedConfig, run_embed
    from benchmark.embed.runtime import Forward

    device = resolve_device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="mf2m-gpu-embed-"))
    try:
        csv_path = make_list(tmp, min(args.unique, args.images), args.images, args.lfw)
        rec = random_iresnet50(tmp / "backbone.pth", device)
        forward = Forward(rec, device=device, precision=args.precision)
        from benchmark.data.images import read_image
        first = sorted((tmp / "faces").glob("*.jpg"))
        batch = np.stack([read_image(first[i % len(first)]) for i in range(args.batch_size)])
        bare = bare_forward(forward, batch, args.bare_seconds)
        import torch
        feats = forward.embed_tensor(torch.from_numpy(batch))
        ref = Forward(rec, device=device, precision="fp32", prefer_torch=forward.module is not None)
        min_cos = float((feats * ref.embed_tensor(torch.from_numpy(batch))).sum(1).min())
        cfg = EmbedConfig(data=f"csv:{csv_path}", model=rec.name, out=str(tmp / "feats"),
                          batch_size=args.batch_size, workers=args.workers, device=args.device,
                          shard_size=args.shard_size, progress=False, dtype="float16", precision=args.precision)
        t0 = time.perf_counter()
        manifest = run_embed(cfg, recognizer=rec)
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"device": device, "runtime": manifest["runtime"]["runtime"], "images": manifest["count"],
              "batch_size": args.batch_size, "workers": args.workers, "bare_img_s": round(bare, 1),
              "end_to_end_img_s": round(manifest["count"] / wall, 1), "wall_s": round(wall, 2),
              "ratio": round(manifest["count"] / wall / bare, 3), "precision": manifest["precision"],
              "min_cosine_to_fp32": round(min_cos, 6)}
    if device.startswith("cuda"):
        import torch
        result["gpu"] = torch.cuda.get_device_name(torch.device(device))
    print(json.dumps(result))
    if args.out:
        from benchmark.atomic import write_text
        write_text(args.out, (
            f"## GPU embedding (`benchmarks/gpu_embed.py`)\n\n{result.get('gpu', device)}, "
            f"{datetime.date.today().isoformat()}: IResNet-50 (random weights), 112×112, {result['runtime']}, "
            f"batch {args.batch_size}, {args.workers} decoding workers, {result['images']} JPEG crops.\n\n"
            f"| bare forward img/s | end-to-end img/s | ratio | target |\n|---|---|---|---|\n"
            f"| {result['bare_img_s']} | {result['end_to_end_img_s']} | {result['ratio']} | ≥ 10,000 img/s |\n"))


if __name__ == "__main__":
    main()
