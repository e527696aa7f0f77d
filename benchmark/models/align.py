"""Face alignment: 5-point similarity transform to the ArcFace 112×112 template (insightface's
``face_align``), and mapping landmarks into the aligned frame so every stage shares one crop."""

from __future__ import annotations

import numpy as np

ALIGNED_SIZE = 112


def arcface_template() -> np.ndarray:
    """The ArcFace 5-point template for 112×112 crops (left eye, right eye, nose, mouth corners)."""
    from insightface.utils import face_align

    return face_align.arcface_dst.astype(np.float32).copy()


def alignment_matrix(five: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """2×3 similarity transform mapping image coordinates onto the ArcFace template at ``size``."""
    import warnings

    from insightface.utils import face_align

    five = np.asarray(five, dtype=np.float32).reshape(5, 2)
    if not np.isfinite(five).all():
        raise ValueError("alignment points contain NaN/Inf")
    with warnings.catch_warnings():  # scikit-image ≥0.26 deprecates the call insightface makes
        warnings.simplefilter("ignore", FutureWarning)
        return face_align.estimate_norm(five, size).astype(np.float64)


def warp(image: np.ndarray, matrix: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """Apply a 2×3 affine ``matrix`` to ``image`` and return the ``size``×``size`` crop (black border)."""
    import cv2

    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)


def align_face(image: np.ndarray, five: np.ndarray, size: int = ALIGNED_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Crop an ArcFace-aligned face; returns ``(crop, matrix)`` so landmarks can follow the crop."""
    matrix = alignment_matrix(five, size)
    return warp(image, matrix, size), matrix


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Map ``(k, 2)`` points through a 2×3 affine matrix."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return (points @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)
