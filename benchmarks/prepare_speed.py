"""Time face preparation per image (decode → detect → landmarks → align [→ dlib chip]) on LFW photos.

Usage: python benchmarks/prepare_speed.py --data DIR/lfw [--n 200] [--seed 0]
Prints milliseconds per image for each detector/landmarker combination, measured in one process.
"""

from __future__ import annotations

import argparse
import random
import time

from benchmark.data.images import read_image
from benchmark.data.lfw import images_root, list_images
from benchmark.data.prepare import FacePreparer, PrepareConfig

CONFIGS = {
    "dlib-hog + dlib68 (default)": PrepareConfig(),
    "dlib-hog + dlib68 + dlib chip": PrepareConfig(chips=True),
    "yunet + dlib68": PrepareConfig(detector="yunet"),
    "yunet 5 points only": PrepareConfig(detector="yunet", align_from="detector"),
}


def main() -> None:
    """Run the timing and print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="LFW folder (images/<Name>/<Name>_NNNN.jpg)")
    ap.add_argument("--n", type=int, default=200, help="number of photos (seeded sample)")
    ap.add_argument("--seed", type=int, default=0, help="sample seed")
    args = ap.parse_args()
    rels = list_images(args.data)
    paths = [images_root(args.data) / r for r in random.Random(args.seed).sample(rels, args.n)]
    t0 = time.perf_counter()
    images = [read_image(p) for p in paths]
    decode = (time.perf_counter() - t0) / len(paths) * 1e3
    print(f"| step | ms / image ({args.n} LFW photos, 250x250) |\n| --- | --- |\n| JPEG decode | {decode:.1f} |")
    for label, cfg in CONFIGS.items():
        prep = FacePreparer(cfg)
        prep.prepare(images[0])                      # warm-up (model load)
        t0 = time.perf_counter()
        for im in images:
            try:
                prep.prepare(im)
            except Exception:                        # noqa: BLE001 — a miss still costs its time
                pass
        print(f"| {label} | {(time.perf_counter() - t0) / len(images) * 1e3:.1f} |")


if __name__ == "__main__":
    main()
