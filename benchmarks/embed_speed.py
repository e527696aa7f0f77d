"""End-to-end embedding throughput vs. the model's bare forward pass, measured in the same run.

Writes a few thousand aligned 112×112 crops of real faces (LFW crops when ``--lfw`` is given, else
insightface's sample face; seeded small variations; half PNG, half JPEG) into a temporary face folder,
then times

* **bare**: ``recognizer.embed`` on in-memory uint8 batches of ``--batch-size`` (no decoding, no I/O);
* **end to end**: ``mf2m embed`` on the folder (list files → DataLoader decode → model → HDF5 shard →
  manifest), with the model already loaded.

The ratio end-to-end / bare shows whether the input pipeline hides behind the model (target ≥ 0.8).

``--precisions fp32,bf16`` measures each precision in the same run (``mf2m embed --precision``), and
``--cosine-faces N`` (with ``--lfw``) embeds the first image of N LFW people in float32 and in each other
precision and reports the cosine of each face's feature to its float32 feature (issue 12: ≥ 0.999 for
≥ 99.9 % of 1,000 faces).

    python benchmarks/embed_speed.py --lfw ../shared/data/lfw --images 3000 --out benchmarks/results/embed_speed.md
    python benchmarks/embed_speed.py --lfw ../shared/data/lfw --images 200 --precisions fp32,bf16 \
        --cosine-faces 1000 --out benchmarks/results/embed_precision.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def make_faces(root: Path, n: int, lfw: Path | None, seed: int = 0) -> None:
    """``n`` aligned crops under ``root/<identity>/<i>.(png|jpg)``: variations of real faces."""
    from benchmark.data.images import read_image, write_png
    from benchmark.data.synthetic import lfw_crop, variants, write_jpeg
    if lfw is not None:
        people = sorted((lfw / "images").iterdir())[:50]
        bases = [(p.name, lfw_crop(sorted(p.glob("*.jpg"))[0])) for p in people]
    else:
        import insightface
        face = read_image(Path(insightface.__file__).parent / "data" / "images" / "Tom_Hanks_54745.png")
        bases = [("Tom_Hanks", face)]
    per = -(-n // len(bases))
    written = 0
    for k, (name, base) in enumerate(bases):
        for i, img in enumerate(variants(base, min(per, n - written), seed=seed + k)):
            path = root / name / f"{i:05d}"
            if (written + i) % 2:
                write_jpeg(path.with_suffix(".jpg"), img)
            else:
                write_png(path.with_suffix(".png"), img)
        written += min(per, n - written)
        if written >= n:
            break


def bare_forward(recognizer, faces: np.ndarray, batch_size: int, repeats: int = 1, precision: str = "auto") -> float:
    """Images/s of the embed stage's own forward runtime (``Forward`` on the CPU) on in-memory batches."""
    import torch

    from benchmark.embed.runtime import Forward
    forward = Forward(recognizer, device="cpu", precision=precision)
    batches = [torch.from_numpy(faces[i:i + batch_size]) for i in range(0, len(faces), batch_size)]
    forward.embed_tensor(batches[0])              # warm-up
    t0 = time.perf_counter()
    count = 0
    for _ in range(repeats):
        for batch in batches:
            forward.embed_tensor(batch)
            count += len(batch)
    return count / (time.perf_counter() - t0)


def cosine_to_fp32(recognizer, lfw: Path, n: int, precisions: list[str]) -> dict[str, dict]:
    """Per precision: cosine of each of ``n`` real LFW faces' features to its float32 feature."""
    import torch

    from benchmark.data.synthetic import lfw_crop
    from benchmark.embed.runtime import Forward
    people = sorted(p for p in (lfw / "images").iterdir() if p.is_dir())[:n]
    faces = torch.from_numpy(np.stack([lfw_crop(sorted(p.glob("*.jpg"))[0]) for p in people]))
    ref = Forward(recognizer, device="cpu", precision="fp32").embed_tensor(faces)
    out = {}
    for precision in precisions:
        if precision == "fp32":
            continue
        cos = (Forward(recognizer, device="cpu", precision=precision).embed_tensor(faces) * ref).sum(1)
        out[precision] = {"faces": len(cos), "min": float(cos.min()), "mean": float(cos.mean()),
                          "p0.1": float(np.quantile(cos, 0.001)), "fraction_ge_0.999": float((cos >= 0.999).mean())}
    return out


def run_precision(recognizer, root: Path, files: list[Path], args, precision: str) -> dict:
    """Bare and end-to-end images/s of one precision (the embed stage's own code paths)."""
    from benchmark.data.images import read_image
    from benchmark.embed.engine import EmbedConfig, run_embed
    sample = np.stack([read_image(p) for p in files[: min(len(files), args.bare_images)]])
    bare = bare_forward(recognizer, sample, args.batch_size, precision=precision)
    cfg = EmbedConfig(data=f"folder:{root / 'faces'}?aligned=1", model=args.model, out=str(root / f"feats-{precision}"),
                      batch_size=args.batch_size, workers=args.workers, device="cpu",
                      shard_size=100_000, progress=False, precision=precision)
    t0 = time.perf_counter()
    manifest = run_embed(cfg, recognizer=recognizer)
    wall = time.perf_counter() - t0
    bare_after = bare_forward(recognizer, sample, args.batch_size, precision=precision)   # drift check
    return {"precision": manifest["precision"], "runtime": manifest["runtime"]["runtime"], "count": manifest["count"],
            "bare": bare, "bare_after": bare_after, "e2e": manifest["count"] / wall, "wall": wall,
            "load": os.getloadavg()[0]}


def main() -> None:
    """Run the measurement and write the markdown snippet."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sface", help="recognizer name in the registry")
    ap.add_argument("--images", type=int, default=3000, help="number of aligned crops to generate")
    ap.add_argument("--batch-size", type=int, default=64, help="batch size of both measurements")
    ap.add_argument("--workers", type=int, default=1, help="DataLoader decoding workers")
    ap.add_argument("--lfw", type=Path, default=None, help="LFW folder (images/<Name>/…) for real faces")
    ap.add_argument("--precisions", default="auto",
                    help="comma-separated --precision values to measure in this run (e.g. fp32,bf16)")
    ap.add_argument("--bare-images", type=int, default=512, help="in-memory images of the bare-forward timing")
    ap.add_argument("--cosine-faces", type=int, default=0,
                    help="with --lfw: cosine of N real faces' features to float32's, per precision")
    ap.add_argument("--out", type=Path, default=None, help="markdown file for the results")
    args = ap.parse_args()

    from benchmark.models.registry import create

    precisions = args.precisions.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="mf2m-embed-speed-"))
    try:
        make_faces(tmp / "faces", args.images, args.lfw)
        files = sorted(p for p in (tmp / "faces").rglob("*") if p.is_file())
        recognizer = create(args.model)
        runs = [run_precision(recognizer, tmp, files, args, p) for p in precisions]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cosines = cosine_to_fp32(recognizer, args.lfw, args.cosine_faces, precisions) if args.cosine_faces and args.lfw else {}

    head = (f"Machine: 2-core CPU, no GPU ({platform.processor() or platform.machine()}; bf16 units: "
            f"{', '.join(cpu_units()) or 'none'}); {datetime.date.today().isoformat()}.\n"
            f"Model `{args.model}`, {runs[0]['count']} aligned 112×112 crops of real faces (half PNG, half JPEG), "
            f"batch size {args.batch_size}, {args.workers} decoding worker(s).\n\n")
    if len(runs) == 1:
        r = runs[0]
        ratio = r["e2e"] / ((r["bare"] + r["bare_after"]) / 2)
        text = (f"## Embedding throughput (`benchmarks/embed_speed.py`)\n\n{head}"
                f"Runtime `{r['runtime']}` ({r['precision']['form']}; {r['precision']['reason']}).\n\n"
                f"| measurement | images/s |\n|---|---|\n"
                f"| bare forward (the same runtime on in-memory batches; before / after) | {r['bare']:.1f} / {r['bare_after']:.1f} |\n"
                f"| end to end (`mf2m embed`: list → decode → model → HDF5 shard → manifest) | {r['e2e']:.1f} |\n"
                f"| **ratio end-to-end / bare** (target ≥ 0.8) | **{ratio:.2f}** |\n\n"
                f"End-to-end wall time {r['wall']:.1f} s for {r['count']} images. Load average at the end: "
                f"{r['load']:.1f} (the 2 cores are shared: compare the ratio, not absolute rates).\n")
    else:
        base = runs[0]["e2e"]
        rows = "".join(f"| `{r['runtime']}` ({r['precision']['form']}) | {r['bare']:.1f} / {r['bare_after']:.1f} | "
                       f"{r['e2e']:.1f} | {r['e2e'] / base:.2f}× | {r['load']:.1f} |\n" for r in runs)
        text = (f"## Embedding precision (`benchmarks/embed_speed.py --precisions {args.precisions}`)\n\n{head}"
                f"| runtime | bare img/s (before / after) | end to end img/s | vs {runs[0]['runtime']} | load after |\n"
                f"|---|---|---|---|---|\n{rows}")
    if cosines:
        text += ("\nCosine of each face's feature to its float32 feature (first image of the first "
                 f"{args.cosine_faces} LFW people, aligned crops):\n\n| precision | faces | min | 0.1 % quantile | mean "
                 "| fraction ≥ 0.999 (target ≥ 0.999) |\n|---|---|---|---|---|---|\n")
        text += "".join(f"| {p} | {c['faces']} | {c['min']:.5f} | {c['p0.1']:.5f} | {c['mean']:.6f} | "
                        f"**{c['fraction_ge_0.999']:.4f}** |\n" for p, c in cosines.items())
    print(text)
    if args.out:
        from benchmark.atomic import write_text
        write_text(args.out, text)


def cpu_units() -> list[str]:
    """The CPU's bf16 units (``benchmark.device.cpu_bf16_units``)."""
    from benchmark.device import cpu_bf16_units
    return cpu_bf16_units()


if __name__ == "__main__":
    main()
