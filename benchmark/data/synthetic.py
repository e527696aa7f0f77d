"""Small synthetic datasets built from *real* face crops, for tests, benchmarks and demos.

* :func:`lfw_crop` turns a deep-funneled LFW image (250×250, face centred) into an approximately
  ArcFace-aligned 112×112 crop (a fixed crop + resize; no detector needed).
* :func:`variants` makes seeded small variations of a crop (shift, scale, brightness, contrast, noise).
* :func:`write_testpack` writes an insightface-MegaFace-testpack-shaped folder
  (``facescrub_images/<Name>/<Name>_<id>.png``, ``megaface_images/<a>/<b>/<photo>.jpg``, the list files
  and noise lists).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..atomic import write_text
from .images import read_image, write_png

# Region of a 250×250 deep-funneled LFW image that maps roughly onto the ArcFace 112×112 template.
LFW_CROP = (64, 166, 74, 176)  # y0, y1, x0, x1


def lfw_crop(path: str | os.PathLike) -> np.ndarray:
    """A 112×112 RGB crop of a 250×250 deep-funneled LFW image, roughly ArcFace-aligned."""
    import cv2

    image = read_image(path)
    if image.shape[:2] != (250, 250):
        image = cv2.resize(image, (250, 250), interpolation=cv2.INTER_AREA)
    y0, y1, x0, x1 = LFW_CROP
    return cv2.resize(image[y0:y1, x0:x1], (112, 112), interpolation=cv2.INTER_AREA)


def variants(face: np.ndarray, n: int, seed: int = 0, strength: float = 1.0) -> np.ndarray:
    """``n`` seeded variations ``(n, 112, 112, 3)`` of one crop: ±3 px shift, ±4 % scale, brightness,
    contrast and mild Gaussian noise (``strength`` scales them all)."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = face.shape[:2]
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        scale = 1.0 + strength * rng.uniform(-0.04, 0.04)
        tx, ty = strength * rng.uniform(-3, 3, size=2)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, scale)
        m[:, 2] += (tx, ty)
        img = cv2.warpAffine(face, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        img = img.astype(np.float32) * (1.0 + strength * rng.uniform(-0.15, 0.15))
        img += strength * rng.uniform(-12, 12) + rng.normal(0, 2.0 * strength, img.shape)
        out[i] = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return out


def write_jpeg(path: str | os.PathLike, image: np.ndarray, quality: int = 95) -> None:
    """Write an RGB uint8 array as a JPEG (atomically)."""
    from PIL import Image

    from ..atomic import atomic_path

    with atomic_path(path, suffix=".jpg") as tmp:
        Image.fromarray(image).save(tmp, format="JPEG", quality=quality)


def write_testpack(
    root: str | os.PathLike,
    probes: Iterable[tuple[str, np.ndarray]],
    distractors: Sequence[np.ndarray],
    probe_noises: Sequence[str] = (),
    distractor_noises: Sequence[str] = (),
) -> dict[str, list[str]]:
    """Write a MegaFace-testpack-shaped folder; returns the relative keys written per part.

    ``probes``: ``(name, crop)`` pairs (names may repeat; ``_<id>`` numbers them);
    ``distractors``: crops, spread over ``<a>/<b>/`` folders like the MegaFace layout.
    Noise lists name probe files (``Name_id.png``) and distractor paths (``a/b/photo.jpg``).
    """
    root = Path(root)
    probe_keys: list[str] = []
    counts: dict[str, int] = {}
    for name, crop in probes:
        counts[name] = counts.get(name, 0) + 1
        key = f"{name}/{name}_{counts[name]}.png"
        write_png(root / "facescrub_images" / key, crop)
        probe_keys.append(key)
    distractor_keys = []
    for i, crop in enumerate(distractors):
        key = f"{i % 7:03d}/{i % 7:03d}{i // 7 % 3:02d}@N{i:04d}/{i:08d}_{i * 7919 % 10007:05d}.jpg"
        write_jpeg(root / "megaface_images" / key, crop)
        distractor_keys.append(key)
    write_text(root / "facescrub_lst", "".join(k + "\n" for k in probe_keys))
    write_text(root / "megaface_lst", "".join(k + "\n" for k in distractor_keys))
    write_text(root / "facescrub_noises.txt", "# noises of facescrub\n" + "".join(n + "\n" for n in probe_noises))
    write_text(root / "megaface_noises.txt", "# noises of megaface\n" + "".join(n + "\n" for n in distractor_noises))
    return {"probes": probe_keys, "distractors": distractor_keys}
