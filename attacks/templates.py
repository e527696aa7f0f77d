"""Face lists, aligned faces with landmarks, and the template bank DM draws faced masks from.

* ``list_faces``: a face folder (``root/<identity>/<image>``; a flat folder gives every file its own
  identity, as for StyleGAN faces) or an ``identity,path`` CSV → ``FaceItem`` rows with unique keys.
* ``load_aligned``: an image → ArcFace 112×112 crop + 68 landmarks in crop coordinates (images that
  are already 112×112 are taken as aligned; others are detected and aligned with dlib).
* ``TemplateBank``: every template's crop, landmarks and white-box FR feature, cached in one ``.npz``
  keyed by the file list, the recognizer and the quality threshold; ``choose`` picks for each probe
  the most similar template of a *different* identity. Templates whose landmarks fit the ArcFace
  5-point template badly (``alignment_errors`` > ``max_residual``: a shifted, tilted or turned face,
  or landmarks that missed it) are rejected, counted and reported with the reason.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: default rejection threshold of ``alignment_errors`` (pixels of the 112×112 crop). On 201 LFW
#: deep-funneled faces the residual's median is 5.4 px and its 98th percentile 10.5 px; a
#: badly aligned crop (Warren_Granados_0001: landmarks off the face) gives 10.8 px.
MAX_ALIGNMENT_RESIDUAL = 10.0

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass(frozen=True)
class FaceItem:
    """One input face: ``key`` (``identity/stem``, unique; output files are named by it), identity, path."""

    key: str
    identity: str
    path: Path
    source: str = ""  # the input's own key (the CSV's ``key`` column, else its path as written / relative path)


def list_faces(source: str | os.PathLike) -> list[FaceItem]:
    """Faces of a folder (``root/<identity>/<image>`` or flat) or an ``identity,path`` CSV, sorted by key."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"face source not found: {source}")
    items: list[FaceItem] = []
    if source.is_file():
        with open(source, newline="", encoding="utf-8") as fh:
            key_column = None
            for lineno, row in enumerate(csv.reader(fh), 1):
                if lineno == 1 and [c.strip().lower() for c in row[:2]] == ["identity", "path"]:
                    header = [c.strip().lower() for c in row]
                    key_column = header.index("key") if "key" in header else None
                    continue
                if not row or row[0].startswith("#"):
                    continue
                if len(row) < 2:
                    raise ValueError(f"{source}:{lineno}: expected 'identity,path', got {row!r}")
                identity, written = row[0].strip(), row[1].strip()
                path = Path(written)
                path = path if path.is_absolute() else source.parent / path
                own = row[key_column].strip() if key_column is not None and len(row) > key_column else ""
                items.append(
                    FaceItem(f"{_safe(identity)}/{_safe(path.stem)}", identity, path, own or written.replace("\\", "/"))
                )
    else:
        for path in sorted(source.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
                rel = path.relative_to(source)
                identity = rel.parts[0] if len(rel.parts) > 1 else path.stem
                items.append(FaceItem(f"{_safe(identity)}/{_safe(path.stem)}", identity, path, rel.as_posix()))
    if not items:
        raise ValueError(f"no face images found in {source}")
    seen: dict[str, Path] = {}
    for item in items:
        if item.key in seen:
            raise ValueError(f"two inputs map to the same key {item.key!r}: {seen[item.key]} and {item.path}")
        seen[item.key] = item.path
    return sorted(items, key=lambda it: it.key)


def _safe(name: str) -> str:
    """A file-name-safe version of an identity or stem (keeps letters, digits, ``-_.``)."""
    out = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip(".")
    return out or "_"


def load_aligned(path: str | os.PathLike, landmarker) -> tuple[np.ndarray, np.ndarray]:
    """``(crop, points)``: the 112×112 RGB uint8 aligned face and its 68 landmarks ``(68, 2)`` in the crop.

    Raises ``benchmark.data.images.ImageError`` / ``benchmark.models.base.LandmarkError`` with the reason.
    """
    from benchmark.data.images import read_image
    from benchmark.models.align import ALIGNED_SIZE, align_face, transform_points

    image = read_image(path)
    if image.shape[:2] == (ALIGNED_SIZE, ALIGNED_SIZE):
        return image, landmarker.landmarks_aligned(image).points.astype(np.float32)
    found = landmarker.landmarks(image)
    crop, matrix = align_face(image, found.five)
    return crop, transform_points(found.points, matrix)


def alignment_errors(points: np.ndarray) -> tuple[float, float]:
    """``(residual, offset)``: how badly a crop's landmarks fit the ArcFace 5-point template, in crop pixels.

    The five points (eye centres, nose tip, mouth corners) derived from the 68 are compared with the
    ArcFace template. ``residual``: the largest point distance after a least-squares similarity fit
    (Umeyama) — a turned face or landmarks that missed the face. ``offset``: the largest distance
    without a fit — a crop whose face is shifted, tilted or scaled (only possible for inputs that are
    taken as already aligned; for crops aligned here it is ≈ ``residual``). Frontal, well-detected
    faces give ≈ 3–7 px for both.
    """
    import warnings

    from skimage.transform import SimilarityTransform

    from benchmark.models.align import arcface_template
    from benchmark.models.landmarks import five_from_dlib68

    five = five_from_dlib68(np.asarray(points, np.float64)).astype(np.float64)
    target = np.asarray(arcface_template(), np.float64)
    offset = float(np.sqrt(((five - target) ** 2).sum(axis=1)).max())
    fit = SimilarityTransform()
    with warnings.catch_warnings():  # scikit-image ≥ 0.26 deprecates estimate() for from_estimate()
        warnings.simplefilter("ignore", FutureWarning)
        ok = fit.estimate(five, target)
    residual = float(np.sqrt(((fit(five) - target) ** 2).sum(axis=1)).max()) if ok else float("inf")
    return residual, offset


def misalignment_reason(points: np.ndarray, max_residual: float) -> str | None:
    """``None`` if the crop's landmarks are within ``max_residual`` px of the template, else the skip reason."""
    residual, offset = alignment_errors(points)
    if residual > max_residual:
        return f"misaligned:five-point residual > {max_residual:g} px:{residual:.2f} px after a similarity fit"
    if offset > max_residual:
        return f"misaligned:five-point offset > {max_residual:g} px:{offset:.2f} px (crop not aligned)"
    return None


def aligned_batch(items: Sequence[FaceItem], landmarker) -> tuple[list[int], np.ndarray, np.ndarray, dict[int, str]]:
    """Align ``items``: ``(ok indices, crops (k,112,112,3), points (k,68,2), {failed index: reason})``."""
    from benchmark.data.images import ImageError
    from benchmark.models.base import LandmarkError

    ok, crops, points, failed = [], [], [], {}
    for i, item in enumerate(items):
        try:
            crop, pts = load_aligned(item.path, landmarker)
        except ImageError as exc:
            failed[i] = f"image:{exc.reason}"
            continue
        except LandmarkError as exc:
            failed[i] = f"landmarks:{str(exc)[:80]}"
            continue
        ok.append(i)
        crops.append(crop)
        points.append(pts)
    crops_arr = np.stack(crops) if crops else np.zeros((0, 112, 112, 3), np.uint8)
    points_arr = np.stack(points).astype(np.float32) if points else np.zeros((0, 68, 2), np.float32)
    return ok, crops_arr, points_arr, failed


def to_tensor(faces: np.ndarray, device: str = "cpu"):
    """``(n,112,112,3)`` uint8 RGB → ``(n,3,112,112)`` float32 in [0, 1] on ``device``."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(faces)).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def features(module, faces: np.ndarray, device: str = "cpu", batch_size: int = 64) -> np.ndarray:
    """Unit-norm features ``(n, d)`` float32 of uint8 faces under a differentiable FR module."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(faces), batch_size):
            out.append(module(to_tensor(faces[i : i + batch_size], device)).float().cpu().numpy())
    feats = np.concatenate(out) if out else np.zeros((0, 1), np.float32)
    return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)


@dataclass
class TemplateBank:
    """Templates for DM: keys, identities, aligned crops, landmarks, FR features; and what was skipped."""

    keys: list[str]
    identities: list[str]
    faces: np.ndarray  # (t, 112, 112, 3) uint8
    points: np.ndarray  # (t, 68, 2) float32
    feats: np.ndarray  # (t, d) float32, unit norm
    skipped: dict[str, str]  # key → reason

    @classmethod
    def build(
        cls,
        source: str | os.PathLike,
        fr_module,
        fr_id: str,
        cache: str | os.PathLike | None,
        landmarker,
        device: str = "cpu",
        batch_size: int = 64,
        progress: Callable | None = None,
        max_residual: float | None = MAX_ALIGNMENT_RESIDUAL,
    ) -> TemplateBank:
        """Load (or build and cache) the bank of ``source`` for the recognizer identified by ``fr_id``.

        Templates whose ``alignment_errors`` exceed ``max_residual`` pixels (``None``: no filter)
        are left out and listed in ``skipped`` as ``misaligned:…`` with their residual.
        """
        if max_residual is not None and not max_residual > 0:
            raise ValueError(f"max_residual must be > 0 pixels (or None for no filter), not {max_residual}")
        items = list_faces(source)
        signature = _signature(items, f"{fr_id}|max_residual={max_residual}")
        if cache is not None and Path(cache).is_file():
            bank = cls.load(cache, signature)
            if bank is not None:
                return bank
        ok_keys, ids, crops, pts, skipped = [], [], [], [], {}
        chunks = range(0, len(items), batch_size)
        for start in progress(chunks, desc="templates", unit="batch") if progress else chunks:
            chunk = items[start : start + batch_size]
            ok, c, p, failed = aligned_batch(chunk, landmarker)
            if max_residual is not None:
                keep = []
                for j, i in enumerate(ok):
                    reason = misalignment_reason(p[j], max_residual)
                    if reason:
                        failed[i] = reason
                    else:
                        keep.append(j)
                ok, c, p = [ok[j] for j in keep], c[keep], p[keep]
            ok_keys += [chunk[i].key for i in ok]
            ids += [chunk[i].identity for i in ok]
            crops.append(c)
            pts.append(p)
            skipped.update({chunk[i].key: reason for i, reason in failed.items()})
        if not ok_keys:
            raise ValueError(f"no usable template in {source}: {len(skipped)} skipped ({_top(skipped)})")
        faces = np.concatenate(crops)
        bank = cls(ok_keys, ids, faces, np.concatenate(pts), features(fr_module, faces, device, batch_size), skipped)
        if cache is not None:
            bank.save(cache, signature)
        return bank

    def save(self, path: str | os.PathLike, signature: str) -> None:
        """Write the bank atomically as ``.npz`` with its signature."""
        from benchmark.atomic import atomic_path

        with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                keys=np.array(self.keys),
                identities=np.array(self.identities),
                faces=self.faces,
                points=self.points,
                feats=self.feats,
                signature=np.array(signature),
                skipped=np.array(json.dumps(self.skipped)),
            )

    @classmethod
    def load(cls, path: str | os.PathLike, signature: str) -> TemplateBank | None:
        """The cached bank, or ``None`` when the cache was built from other files or another recognizer."""
        with np.load(path, allow_pickle=False) as z:
            if str(z["signature"]) != signature:
                return None
            return cls(
                z["keys"].tolist(),
                z["identities"].tolist(),
                z["faces"],
                z["points"],
                z["feats"],
                json.loads(str(z["skipped"])),
            )

    def choose(self, probe_feats: np.ndarray, probe_identities: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """For each probe: index of the most cosine-similar template of another identity, and that similarity."""
        sims = np.asarray(probe_feats, np.float32) @ self.feats.T
        same = np.asarray(probe_identities)[:, None] == np.asarray(self.identities)[None, :]
        sims = np.where(same, -np.inf, sims)
        best = sims.argmax(axis=1)
        if np.isinf(sims[np.arange(len(best)), best]).any():
            raise ValueError("a probe has no template of another identity in the template bank")
        return best, sims[np.arange(len(best)), best]


def _signature(items: Sequence[FaceItem], fr_id: str) -> str:
    h = hashlib.sha256(fr_id.encode())
    for it in items:
        st = it.path.stat()
        h.update(f"{it.key}|{it.identity}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _top(reasons: dict[str, str], k: int = 3) -> str:
    from collections import Counter

    return ", ".join(f"{r}: {n}" for r, n in Counter(v.split(":")[0] for v in reasons.values()).most_common(k))
