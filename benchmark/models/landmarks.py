"""Face detection + landmarks. Default: dlib's HOG detector and 68-point shape predictor, whose
``.dat`` files ship in the ``face-recognition-models`` package (loaded by path)."""

from __future__ import annotations

import importlib.util
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from .base import FaceLandmarks, LandmarkError, Landmarker, ModelUnavailable

# dlib 68-point scheme (iBUG 300-W): indices of the parts every stage needs.
DLIB68_JAW = np.arange(0, 17)          # ear to ear along the chin, image-left first
DLIB68_NOSE = np.arange(27, 36)        # bridge top (27) … tip (30) … nostrils (31-35)
DLIB68_EYE_IMAGE_LEFT = np.arange(36, 42)
DLIB68_EYE_IMAGE_RIGHT = np.arange(42, 48)
DLIB68_MOUTH_LEFT, DLIB68_MOUTH_RIGHT, DLIB68_NOSE_TIP = 48, 54, 30
# Where dlib HOG puts the face box in an ArcFace-aligned 112×112 crop (mean over LFW crops, ±5 px):
# used only when the detector misses on an aligned crop, whose geometry is fixed by construction.
ALIGNED_FACE_BOX = (12.0, 28.0, 97.0, 113.0)


def face_recognition_models_dir() -> Path:
    """Folder with dlib's ``.dat`` model files from the ``face-recognition-models`` package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable("package 'face-recognition-models' is not installed: "
                               "pip install face-recognition-models dlib-bin")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def five_from_dlib68(points: np.ndarray) -> np.ndarray:
    """ArcFace-order 5 points (eyes centres, nose tip, mouth corners) from 68 dlib landmarks."""
    points = np.asarray(points, dtype=np.float32)
    return np.stack([points[DLIB68_EYE_IMAGE_LEFT].mean(0), points[DLIB68_EYE_IMAGE_RIGHT].mean(0),
                     points[DLIB68_NOSE_TIP], points[DLIB68_MOUTH_LEFT], points[DLIB68_MOUTH_RIGHT]])


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Validate an image array as ``(H, W, 3)`` uint8 (grey is expanded, alpha dropped)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    return np.ascontiguousarray(image[:, :, :3])


class DlibLandmarker(Landmarker):
    """dlib HOG face detector + 68-point shape predictor.

    ``upsample`` is the number of times the detector doubles the image (1 finds faces ≥ ~40 px).
    ``min_score`` rejects weak detections (HOG margin), reported as a ``LandmarkError``.
    """

    name = "dlib68"

    def __init__(self, upsample: int = 1, min_score: float = -0.5):
        self.upsample = upsample
        self.min_score = min_score
        self._lock = threading.Lock()   # dlib objects are not safe to share across threads
        self._detector, self._predictor = _dlib_models()

    def detect(self, image: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        """All HOG detections ``[(box, score)]``, largest first."""
        image = to_rgb_uint8(image)
        with self._lock:
            rects, scores, _ = self._detector.run(image, self.upsample, self.min_score)
        found = [((r.left(), r.top(), r.right(), r.bottom()), float(s)) for r, s in zip(rects, scores)]
        return sorted(found, key=lambda bs: -(bs[0][2] - bs[0][0]) * (bs[0][3] - bs[0][1]))

    def landmarks(self, image: np.ndarray, box: tuple[float, float, float, float] | None = None
                  ) -> FaceLandmarks:
        """68 landmarks of the largest face (or of the face in ``box``); raises ``LandmarkError``."""
        import dlib
        image = to_rgb_uint8(image)
        score = float("nan")
        if box is None:
            found = self.detect(image)
            if not found:
                raise LandmarkError(f"no face found by dlib HOG (upsample={self.upsample}, "
                                    f"min_score={self.min_score}) in a {image.shape[1]}x{image.shape[0]} image")
            box, score = found[0]
        rect = dlib.rectangle(int(round(box[0])), int(round(box[1])), int(round(box[2])), int(round(box[3])))
        with self._lock:
            shape = self._predictor(image, rect)
        points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
        if points.shape != (68, 2) or not np.isfinite(points).all():
            raise LandmarkError("dlib shape predictor returned no valid 68-point shape")
        return FaceLandmarks(points=points, jaw=points[DLIB68_JAW], nose=points[DLIB68_NOSE],
                             five=five_from_dlib68(points), score=score,
                             box=tuple(float(v) for v in box), scheme="dlib68")

    def landmarks_aligned(self, face: np.ndarray) -> FaceLandmarks:
        """68 landmarks of an ArcFace-aligned crop (detected at 2× scale; the template box if missed)."""
        import cv2
        face = to_rgb_uint8(face)
        scale = 224.0 / face.shape[0]
        big = cv2.resize(face, (224, round(face.shape[1] * scale)), interpolation=cv2.INTER_LINEAR)
        found = self.detect(big)
        if found:
            box, score, source = found[0][0], found[0][1], "hog"
        else:
            box, score, source = tuple(v * scale for v in ALIGNED_FACE_BOX), float("nan"), "aligned-template"
        result = self.landmarks(big, box=box)
        result.points /= scale
        result.jaw, result.nose, result.five = result.jaw / scale, result.nose / scale, result.five / scale
        result.box = tuple(v / scale for v in box)
        result.score = score
        result.extra["box_source"] = source
        return result


@lru_cache(maxsize=1)
def _dlib_models():
    """The HOG detector and the 68-point predictor, loaded once per process."""
    try:
        import dlib
    except ImportError as exc:
        raise ModelUnavailable("dlib is not installed: pip install dlib-bin") from exc
    path = face_recognition_models_dir() / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise ModelUnavailable(f"dlib 68-point model missing at {path}: pip install face-recognition-models")
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(path))
