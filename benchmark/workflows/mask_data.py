"""The data of mask-detector training: labelled photos listed, detected (YuNet, 5 points), ArcFace-aligned and
cached; seeded splits; aligned LFW faces with a synthetic solid lower-face fill and with DM faced masks.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..models.base import LandmarkError

log = logging.getLogger(__name__)

CLASSES = ("without_mask", "with_mask")  # label 0, label 1 (= masked)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
ALIGN_VERSION = "yunet2023mar-int8bq/arcface112/v1"  # part of the cache key
# Colours (RGB) of the synthetic solid lower-face fill: medical blue, white, black.
SOLID_COLOURS = ((150, 200, 225), (240, 240, 240), (25, 25, 25))


def default_cache_dir() -> Path:
    """``$MF2M_CACHE`` or ``~/.cache/mf2m``: where aligned training crops are cached."""
    import os

    return Path(os.environ.get("MF2M_CACHE") or Path.home() / ".cache" / "mf2m")


# ----------------------------------------------------------------------------------------------------
# Data: listing, detection, alignment, caching
# ----------------------------------------------------------------------------------------------------


def list_dataset(data_dir: str | Path, limit_per_class: int | None = None) -> list[tuple[Path, int]]:
    """Sorted ``(path, label)`` pairs of ``DIR/without_mask`` (0) and ``DIR/with_mask`` (1) images.

    ``limit_per_class`` keeps an evenly spaced subset of each class (for quick runs).
    """
    data_dir = Path(data_dir)
    items: list[tuple[Path, int]] = []
    for label, cls in enumerate(CLASSES):
        folder = data_dir / cls
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: missing; --data must contain with_mask/ and without_mask/")
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        if limit_per_class and len(files) > limit_per_class:
            files = [files[i] for i in np.linspace(0, len(files) - 1, limit_per_class).round().astype(int)]
        items += [(p, label) for p in files]
    return items


class YuNetFive:
    """5 ArcFace-order points from YuNet (``detection.YuNetDetector``), tuned for small, tight photos.

    Images are rescaled so their long side is ``work_size`` (many training photos are small, tight
    crops); if nothing is found the image is retried with a black border of 25% (tight crops cut the
    face outline). Returns the most confident face.
    """

    def __init__(self, score_threshold: float = 0.6, work_size: int = 320):
        from ..models.detection import YuNetDetector

        self.work_size = work_size
        self._det = YuNetDetector(score_threshold=score_threshold, nms_threshold=0.3, top_k=50)

    def _run(self, image: np.ndarray, pad: float) -> tuple[np.ndarray, float] | None:
        import cv2

        h, w = image.shape[:2]
        p = int(round(pad * max(h, w)))
        big = cv2.copyMakeBorder(image, p, p, p, p, cv2.BORDER_CONSTANT, value=0) if p else image
        s = self.work_size / max(big.shape[:2])
        big = cv2.resize(big, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        found = self._det.detect(big)
        if not found:
            return None
        best = max(found, key=lambda d: d.score)
        return (best.five / s - p).astype(np.float32), best.score

    def five(self, image: np.ndarray) -> tuple[np.ndarray, float, str]:
        """``(five points, score, how)`` of the most confident face; raises ``LandmarkError``."""
        for pad, how in ((0.0, "yunet"), (0.25, "yunet-padded")):
            found = self._run(image, pad)
            if found is not None:
                return found[0], found[1], how
        raise LandmarkError(f"no face found by YuNet in a {image.shape[1]}x{image.shape[0]} image")


@dataclass
class AlignedSet:
    """Aligned faces with labels; ``skipped`` lists ``{"path", "label", "reason"}`` of dropped files."""

    faces: np.ndarray  # (n, 112, 112, 3) uint8 RGB
    labels: np.ndarray  # (n,) int64, 1 = masked
    paths: list[str]
    how: list[str]  # detector path per face ("yunet" / "yunet-padded")
    skipped: list[dict[str, Any]] = field(default_factory=list)
    from_cache: bool = False


def _cache_key(items: list[tuple[Path, int]], root: Path) -> str:
    """Hash of the alignment method and every file's relative path, size and mtime."""
    h = hashlib.sha256(ALIGN_VERSION.encode())
    for path, label in items:
        st = path.stat()
        h.update(f"{path.relative_to(root)}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def align_dataset(
    items: list[tuple[Path, int]], root: str | Path, cache_dir: str | Path | None = None, progress: bool = True
) -> AlignedSet:
    """Detect, align and cache every image of ``items``; unreadable / faceless files are skipped and listed."""
    from tqdm import tqdm

    from ..atomic import atomic_path
    from ..data.images import ImageError, read_image
    from ..models.align import align_face

    root = Path(root)
    cache = Path(cache_dir or default_cache_dir()) / "mask_detector" / f"aligned-{_cache_key(items, root)}.npz"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                return AlignedSet(
                    z["faces"],
                    z["labels"].astype(np.int64),
                    meta["paths"],
                    meta["how"],
                    meta["skipped"],
                    from_cache=True,
                )
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable cache %s (%s)", cache, exc)
    detector = YuNetFive()
    faces, labels, paths, how, skipped = [], [], [], [], []
    for path, label in tqdm(items, desc="align", unit="img", disable=not progress):
        rel = str(path.relative_to(root))
        try:
            image = read_image(path)
            five, _, method = detector.five(image)
            crop, _ = align_face(image, five)
        except (ImageError, LandmarkError, ValueError) as exc:
            skipped.append({"path": rel, "label": label, "reason": str(exc)})
            continue
        faces.append(crop)
        labels.append(label)
        paths.append(rel)
        how.append(method)
    out = AlignedSet(
        np.stack(faces) if faces else np.zeros((0, 112, 112, 3), np.uint8),
        np.asarray(labels, dtype=np.int64),
        paths,
        how,
        skipped,
    )
    meta = json.dumps({"paths": paths, "how": how, "skipped": skipped, "version": ALIGN_VERSION})
    with atomic_path(cache, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, faces=out.faces, labels=out.labels, meta=np.asarray(meta))
    return out


def split_indices(labels: np.ndarray, seed: int, held_out: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split stratified by class: ``(train indices, held-out indices)``, each sorted."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train, test = train_test_split(idx, test_size=held_out, random_state=seed, stratify=labels)
    return np.sort(train), np.sort(test)


def solid_fill(face: np.ndarray, points68: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """Paint a crude solid-colour "medical mask" over the lower face of an aligned crop.

    The polygon runs along the jaw (dlib points 1–15) and closes at the nose bridge (point 29).
    """
    import cv2

    poly = np.concatenate([points68[1:16], points68[29:30]]).round().astype(np.int32)
    out = face.copy()
    cv2.fillPoly(out, [poly], colour, lineType=cv2.LINE_AA)
    return out


def lfw_faces(
    lfw_dir: str | Path, limit: int, seed: int, progress: bool = True
) -> tuple[np.ndarray, np.ndarray, list[str], list[dict[str, str]]]:
    """A seeded sample of LFW images aligned by the project's default chain (dlib HOG + 68 points).

    Returns ``(faces, 68 points in the aligned frame, paths, skipped)``.
    """
    from tqdm import tqdm

    from ..data.images import ImageError, read_image
    from ..models.align import align_face, transform_points
    from ..models.landmarks import DlibLandmarker

    root = Path(lfw_dir)
    images = root / "images" if (root / "images").is_dir() else root
    files = sorted(images.glob("*/*.jpg"))
    if not files:
        raise FileNotFoundError(f"{images}: no LFW images (<Name>/<Name>_NNNN.jpg)")
    rng = np.random.default_rng(seed)
    files = [files[i] for i in sorted(rng.choice(len(files), size=min(limit, len(files)), replace=False))]
    marker = DlibLandmarker()
    faces, pts, paths, skipped = [], [], [], []
    for path in tqdm(files, desc="lfw", unit="img", disable=not progress):
        try:
            image = read_image(path)
            lm = marker.landmarks(image)
            crop, matrix = align_face(image, lm.five)
        except (ImageError, LandmarkError, ValueError) as exc:
            skipped.append({"path": str(path.relative_to(root)), "reason": str(exc)})
            continue
        faces.append(crop)
        pts.append(transform_points(lm.points, matrix))
        paths.append(str(path.relative_to(root)))
    return (
        np.stack(faces) if faces else np.zeros((0, 112, 112, 3), np.uint8),
        np.stack(pts) if pts else np.zeros((0, 68, 2), np.float32),
        paths,
        skipped,
    )


@dataclass
class FacedSet:
    """LFW faces, bare and wearing a DM faced mask cut from another identity's face."""

    bare: np.ndarray  # (n, 112, 112, 3) uint8
    faced: np.ndarray  # (n, 112, 112, 3) uint8: DM of bare[i] with template[i]
    points: np.ndarray  # (n, 68, 2) float32 landmarks of bare[i] in the aligned crop
    identities: list[str]
    paths: list[str]
    templates: list[str]  # path of the template face of each DM face
    skipped: list[dict[str, str]]


def faced_mask_faces(lfw_dir: str | Path, limit: int, seed: int, progress: bool = True) -> FacedSet:
    """A seeded LFW sample (:func:`lfw_faces`) and its DM versions (``attacks.masking.delaunay_mask``).

    Each face gets the faced mask of a seeded random template of **another identity** from the same
    sample (the attack picks the most FR-similar one; random choices give more varied training masks).
    Faces whose DM fails are skipped and listed.
    """
    from attacks.masking import delaunay_mask

    faces, pts, paths, skipped = lfw_faces(lfw_dir, limit, seed, progress)
    ids = [Path(p).parent.name for p in paths]
    if len(set(ids)) < 2:
        raise ValueError(f"{lfw_dir}: need faces of at least 2 identities for DM templates, got {len(set(ids))}")
    rng = np.random.default_rng([seed, 7])
    bare, faced, keep_pts, keep_ids, keep_paths, templates = [], [], [], [], [], []
    for i in range(len(faces)):
        others = [j for j in range(len(faces)) if ids[j] != ids[i]]
        j = others[int(rng.integers(len(others)))]
        try:
            image, region = delaunay_mask(faces[i], pts[i], faces[j], pts[j])
        except ValueError as exc:
            skipped.append({"path": paths[i], "reason": f"dm: {exc}"})
            continue
        if not region.any():
            skipped.append({"path": paths[i], "reason": "dm: empty faced-mask region"})
            continue
        bare.append(faces[i])
        faced.append(image)
        keep_pts.append(pts[i])
        keep_ids.append(ids[i])
        keep_paths.append(paths[i])
        templates.append(paths[j])
    empty = np.zeros((0, 112, 112, 3), np.uint8)
    return FacedSet(
        np.stack(bare) if bare else empty,
        np.stack(faced) if faced else empty,
        np.stack(keep_pts).astype(np.float32) if keep_pts else np.zeros((0, 68, 2), np.float32),
        keep_ids,
        keep_paths,
        templates,
        skipped,
    )


def identity_split(identities: list[str], seed: int, held_out: float) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of faces by identity (no person on both sides): ``(train indices, held-out indices)``."""
    from sklearn.model_selection import GroupShuffleSplit

    idx = np.arange(len(identities))
    train, test = next(
        GroupShuffleSplit(n_splits=1, test_size=held_out, random_state=seed).split(idx, groups=identities)
    )
    return np.sort(train), np.sort(test)


def _balanced_subset(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Indices of at most ``per_class`` seeded random items of each label (all when ``None``)."""
    rng = np.random.default_rng(seed)
    out = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        out.append(idx if per_class is None or len(idx) <= per_class else rng.choice(idx, per_class, replace=False))
    return np.sort(np.concatenate(out))
