"""End-to-end embedding throughput vs. the model's bare forward pass, measured in the same run.

Writes a few thousand aligned 112×112 crops of real faces (LFW crops when ``--lfw`` is given, else
insightface's sample face; seeded small variations; half PNG, half JPEG) into a temporary face folder,
then times

* **bare**: ``recognizer.embed`` on in-memory uint8 batches of ``--batch-size`` (no decoding, no I/O);
* **end to end**: ``mf2m embed`` on the folder (list files → DataLoader decode → model → HDF5 shard →
  manifest), with the model already loaded.

The ratio end-to-end / bare shows whether the input pipeline hides behind the model (target ≥ 0.8).

    python benchmarks/embed_speed.py --lfw ../shared/data/lfw --images 3000 --out benchmarks/results/embed_speed.md
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


def bare_forward(recognizer, faces: np.ndarray, batch_size: int, repeats: int = 1) -> float:
    """Images/s of the embed stage's own forward runtime (``Forward`` on the CPU) on in-memory batches."""
    import torch

    from benchmark.embed.runtime import Forward
    forward = Forward(recognizer, device="cpu")
    batches = [torch.from_numpy(faces[i:i + batch_size]) for i in range(0, len(faces), batch_size)]
    forward.embed_tensor(batches[0])              # warm-up
    t0 = time.perf_counter()
    count = 0
    for _ in range(repeats):
        for batch in batches:
            forward.embed_tensor(batch)
            count += len(batch)
    return count / (time.perf_counter() - t0)


def main() -> None:
    """Run the measurement and write the markdown snippet."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sface", help="recognizer name in the registry")
    ap.add_argument("--images", type=int, default=3000, help="number of aligned crops to generate")
    ap.add_argument("--batch-size", type=int, default=64, help="batch size of both measurements")
    ap.add_argument("--workers", type=int, default=1, help="DataLoader decoding workers")
    ap.add_argument("--lfw", type=Path, default=None, help="LFW folder (images/<Name>/…) for real faces")
    ap.add_argument("--out", type=Path, default=None, help="markdown file for the results")
    args = ap.parse_args()

    from benchmark.data.images import read_image
    from benchmark.embed.engine import EmbedConfig, run_embed
    from benchmark.models.registry import create

    tmp = Path(tempfile.mkdtemp(prefix="mf2m-embed-speed-"))
    try:
        make_faces(tmp / "faces", args.images, args.lfw)
        files = sorted(p for p in (tmp / "faces").rglob("*") if p.is_file())
        recognizer = create(args.model)
        sample = np.stack([read_image(p) for p in files[: min(len(files), 8 * args.batch_size)]])
        bare = bare_forward(recognizer, sample, args.batch_size)

        cfg = EmbedConfig(data=f"folder:{tmp / 'faces'}?aligned=1", model=args.model, out=str(tmp / "feats"),
                          batch_size=args.batch_size, workers=args.workers, device="cpu",
                          shard_size=100_000, progress=False)
        t0 = time.perf_counter()
        manifest = run_embed(cfg, recognizer=recognizer)
        wall = time.perf_counter() - t0
        e2e = manifest["count"] / wall
        bare_after = bare_forward(recognizer, sample, args.batch_size)   # drift check
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    bare_mean = (bare + bare_after) / 2
    ratio = e2e / bare_mean
    text = (f"## Embedding throughput (`benchmarks/embed_speed.py`)\n\n"
            f"Machine: 2-core CPU, no GPU ({platform.processor() or platform.machine()}); "
            f"{datetime.date.today().isoformat()}.\n"
            f"Model `{args.model}` (runtime `{manifest['runtime']['runtime']}`), "
            f"{manifest['count']} aligned 112×112 crops of real faces (half PNG, half JPEG), batch size "
            f"{args.batch_size}, {args.workers} decoding worker(s).\n\n"
            f"| measurement | images/s |\n|---|---|\n"
            f"| bare forward (the same runtime on in-memory batches; before / after) | {bare:.1f} / {bare_after:.1f} |\n"
            f"| end to end (`mf2m embed`: list → decode → model → HDF5 shard → manifest) | {e2e:.1f} |\n"
            f"| **ratio end-to-end / bare** (target ≥ 0.8) | **{ratio:.2f}** |\n\n"
            f"End-to-end wall time {wall:.1f} s for {manifest['count']} images. Load average at the end: "
            f"{os.getloadavg()[0]:.1f} (the 2 cores are shared: compare the ratio, not absolute rates).\n")
    print(text)
    if args.out:
        from benchmark.atomic import write_text
        write_text(args.out, text)


if __name__ == "__main__":
    main()
