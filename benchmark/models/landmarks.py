"""Face detection + landmarks. Default: dlib's HOG detector and 68-point shape predictor, whose
``.dat`` files ship in the ``face-recognition-models`` package (loaded by path)."""

from __future__ import annotations

import importlib.util
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from .base import FaceLandmarks, Landmarker, LandmarkError, ModelUnavailable

# dlib 68-point scheme (iBUG 300-W): indices of the parts every stage needs.
DLIB68_JAW = np.arange(0, 17)  # ear to ear along the chin, image-left first
DLIB68_NOSE = np.arange(27, 36)  # bridge top (27) … tip (30) … nostrils (31-35)
DLIB68_EYE_IMAGE_LEFT = np.arange(36, 42)
DLIB68_EYE_IMAGE_RIGHT = np.arange(42, 48)
DLIB68_MOUTH_LEFT, DLIB68_MOUTH_RIGHT, DLIB68_NOSE_TIP = 48, 54, 30
# insightface 2d106det scheme (the paper's landmarker). Its 33 contour points are indices 0-32 but
# NOT stored in order along the chin, so ``jaw`` is re-ordered geometrically (by angle around the face
# centre, image-left ear → chin → image-right ear); the nose block is indices 72-86.
INSIGHTFACE106_CONTOUR = np.arange(0, 33)
INSIGHTFACE106_NOSE = np.arange(72, 87)
# Where dlib HOG puts the face box in an ArcFace-aligned 112×112 crop (mean over LFW crops, ±5 px):
# used only when the detector misses on an aligned crop, whose geometry is fixed by construction.
ALIGNED_FACE_BOX = (12.0, 28.0, 97.0, 113.0)


def face_recognition_models_dir() -> Path:
    """Folder with dlib's ``.dat`` model files from the ``face-recognition-models`` package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            "package 'face-recognition-models' is not installed: pip install face-recognition-models dlib-bin"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def five_from_dlib68(points: np.ndarray) -> np.ndarray:
    """ArcFace-order 5 points (eyes centres, nose tip, mouth corners) from 68 dlib landmarks."""
    points = np.asarray(points, dtype=np.float32)
    return np.stack(
        [
            points[DLIB68_EYE_IMAGE_LEFT].mean(0),
            points[DLIB68_EYE_IMAGE_RIGHT].mean(0),
            points[DLIB68_NOSE_TIP],
            points[DLIB68_MOUTH_LEFT],
            points[DLIB68_MOUTH_RIGHT],
        ]
    )


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
        self._lock = threading.Lock()  # dlib objects are not safe to share across threads
        self._detector, self._predictor = _dlib_models()

    def detect(self, image: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        """All HOG detections ``[(box, score)]``, largest first."""
        image = to_rgb_uint8(image)
        with self._lock:
            rects, scores, _ = self._detector.run(image, self.upsample, self.min_score)
        found = [((r.left(), r.top(), r.right(), r.bottom()), float(s)) for r, s in zip(rects, scores)]
        return sorted(found, key=lambda bs: -(bs[0][2] - bs[0][0]) * (bs[0][3] - bs[0][1]))

    def landmarks(self, image: np.ndarray, box: tuple[float, float, float, float] | None = None) -> FaceLandmarks:
        """68 landmarks of the largest face (or of the face in ``box``); raises ``LandmarkError``."""
        import dlib

        image = to_rgb_uint8(image)
        score = float("nan")
        if box is None:
            found = self.detect(image)
            if not found:
                raise LandmarkError(
                    f"no face found by dlib HOG (upsample={self.upsample}, "
                    f"min_score={self.min_score}) in a {image.shape[1]}x{image.shape[0]} image"
                )
            box, score = found[0]
        rect = dlib.rectangle(int(round(box[0])), int(round(box[1])), int(round(box[2])), int(round(box[3])))
        with self._lock:
            shape = self._predictor(image, rect)
        points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
        if points.shape != (68, 2) or not np.isfinite(points).all():
            raise LandmarkError("dlib shape predictor returned no valid 68-point shape")
        return FaceLandmarks(
            points=points,
            jaw=points[DLIB68_JAW],
            nose=points[DLIB68_NOSE],
            five=five_from_dlib68(points),
            score=score,
            box=tuple(float(v) for v in box),
            scheme="dlib68",
        )

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


def order_contour(points: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Order jaw points from the image-left ear through the chin to the image-right ear.

    Sorting by the angle around ``centre`` (a point above the jaw, e.g. the mean of all landmarks)
    makes the order independent of how a landmark scheme numbers its contour.
    """
    points = np.asarray(points, np.float32)
    d = points - np.asarray(centre, np.float32)
    # angle measured from the image-left direction, sweeping down through the chin (y grows downward)
    angle = np.arctan2(d[:, 1], -d[:, 0])
    angle = np.where(angle < -np.pi / 2, angle + 2 * np.pi, angle)
    return points[np.argsort(angle, kind="stable")]


class Insightface106Landmarker(Landmarker):
    """insightface's ``2d106det.onnx`` (106 points, the paper's landmarker) run with onnxruntime.

    The model needs a face box, so a detector (default YuNet) finds the face; the five alignment points
    are the detector's (as in insightface's own pipeline), the jaw and nose come from the 106 points.
    The ONNX file must be given by the user; nothing is downloaded.
    """

    name = "2d106"

    def __init__(self, model_path: str | Path, detector=None):
        if not model_path:
            raise ModelUnavailable(
                "the 2d106 landmarker needs its ONNX file: pass --landmarker-model PATH "
                "(2d106det.onnx from insightface's buffalo_l pack)"
            )
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise ModelUnavailable(f"2d106 landmark model not found: {self.model_path}")
        from insightface.model_zoo.landmark import Landmark

        from .detection import YuNetDetector

        self._net = Landmark(model_file=str(self.model_path))
        if self._net.lmk_num != 106 or self._net.lmk_dim != 2:
            raise ModelUnavailable(
                f"{self.model_path} predicts {self._net.lmk_num} {self._net.lmk_dim}-D points, "
                "not the 106 2-D points of 2d106det"
            )
        self.detector = detector if detector is not None else YuNetDetector()
        self._lock = threading.Lock()

    def landmarks(self, image: np.ndarray, box: tuple[float, float, float, float] | None = None) -> FaceLandmarks:
        """106 landmarks of the subject's face (or the detection overlapping ``box`` most)."""
        from insightface.app.common import Face

        from .detection import select_face

        image = to_rgb_uint8(image)
        found = [d for d in self.detector.detect(image) if d.five is not None]
        if not found:
            raise LandmarkError(f"no face found by {self.detector.name} in a {image.shape[1]}x{image.shape[0]} image")
        det = select_face(found, image.shape) if box is None else max(found, key=lambda d: _iou(d.box, box))
        if box is not None and _iou(det.box, box) < 0.3:
            raise LandmarkError(f"{self.detector.name} found no face overlapping the given box {box}")
        face = Face(bbox=np.asarray(det.box, np.float32))
        with self._lock:
            points = np.asarray(self._net.get(np.ascontiguousarray(image[:, :, ::-1]), face), np.float32)
        if points.shape != (106, 2) or not np.isfinite(points).all():
            raise LandmarkError("2d106 landmarker returned no valid 106-point shape")
        jaw = order_contour(points[INSIGHTFACE106_CONTOUR], points.mean(0))
        return FaceLandmarks(
            points=points,
            jaw=jaw,
            nose=points[INSIGHTFACE106_NOSE],
            five=det.five.astype(np.float32),
            score=det.score,
            box=det.box,
            scheme="2d106",
        )


def _iou(a, b) -> float:
    """Intersection over union of two ``x0, y0, x1, y1`` boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def dlib_chip(image: np.ndarray, points: np.ndarray, size: int = 150, padding: float = 0.25) -> np.ndarray:
    """dlib's own face chip (``dlib.get_face_chip``) from 68 (or dlib 5-point) landmarks of ``image``.

    This is the input dlib's ResNet recognizer was trained on (150×150, padding 0.25), so the same
    detection feeds both the ArcFace crop and the dlib chip.
    """
    import dlib

    image = to_rgb_uint8(image)
    points = np.asarray(points, np.float64).reshape(-1, 2)
    if points.shape[0] not in (68, 5) or not np.isfinite(points).all():
        raise ValueError(f"dlib_chip needs 68 or 5 finite dlib landmarks, got {points.shape[0]}")
    x0, y0 = np.floor(points.min(0)).astype(int)
    x1, y1 = np.ceil(points.max(0)).astype(int)
    shape = dlib.full_object_detection(
        dlib.rectangle(int(x0), int(y0), int(x1), int(y1)),
        [dlib.point(int(round(x)), int(round(y))) for x, y in points],
    )
    return np.asarray(dlib.get_face_chip(image, shape, size=size, padding=padding), dtype=np.uint8)


LANDMARKERS = ("dlib68", "2d106")


def create_landmarker(name: str = "dlib68", model_path: str | Path | None = None, detector=None) -> Landmarker:
    """A landmarker by name: ``dlib68`` (default) or ``2d106`` (needs ``model_path``)."""
    if name == "dlib68":
        return DlibLandmarker()
    if name == "2d106":
        return Insightface106Landmarker(model_path, detector=detector)
    raise ValueError(f"unknown landmarker {name!r}; choose one of {', '.join(LANDMARKERS)}")


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


def _register() -> None:
    from .registry import adapt, dlib_file_check, register

    register(
        "dlib68",
        "landmarker",
        description="dlib HOG detector + 68-point shape predictor",
        weights="shape_predictor_68_face_landmarks.dat from face-recognition-models",
        check=dlib_file_check("shape_predictor_68_face_landmarks.dat"),
    )(adapt(create_landmarker, name="dlib68"))
    register(
        "2d106",
        "landmarker",
        description="insightface 2d106det (106 points, the paper's landmarker) + YuNet boxes",
        weights="user ONNX",
        needs_weights=True,
        files=("2d106det.onnx", "buffalo_l/2d106det.onnx"),
        how_to_get="2d106det.onnx is in insightface's buffalo_l model pack.",
    )(adapt(create_landmarker, name="2d106"))


_register()
