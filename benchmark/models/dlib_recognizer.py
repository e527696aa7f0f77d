"""dlib's ResNet face recognizer (128-D, ``dlib_face_recognition_resnet_model_v1.dat`` from the
``face-recognition-models`` package, loaded by path): mf2m's default black-box recognizer.

dlib's network was trained on 150×150 chips made by ``dlib.get_face_chip`` (padding 0.25). mf2m's
stages hand over ArcFace-aligned 112×112 faces, so ``embed`` re-warps them to the chip geometry:

* ``chip="template"`` (default): one fixed similarity transform (``ARCFACE_TO_CHIP``) maps the crop
  onto dlib's chip frame. It is dlib's own chip transform (least squares from 32 of the 68 landmarks to
  its mean face, padding 0.25) composed with the inverse ArcFace alignment, averaged over 299 LFW faces
  (per-face spread ±3 px); it agrees within ~2 px with the transform derived from the five template
  points alone (``arcface_to_chip_matrix``) and scored 97.41 % vs 97.08 % on 1198 LFW pairs. The chip is a slightly tighter, lower window (crop pixels x 5–108, y 20–124): its bottom
  ~11 % (below the chin) lies outside the 112 crop and is black.
* ``chip="landmarks"``: dlib's 5-point shape predictor runs on the (upscaled) aligned crop and
  ``dlib.get_face_chip`` cuts the chip from it.

``embed_chips`` takes real dlib chips (e.g. from ``landmarks.dlib_chip`` on the original photo).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .base import ModelUnavailable, Preprocessing, Recognizer
from .onnx_recognizer import check_faces, l2_normalise
from .registry import dlib_file_check, register

log = logging.getLogger(__name__)

CHIP_SIZE = 150
CHIP_PADDING = 0.25
CHIP_METHODS = ("template", "landmarks")

# dlib's mean face (``get_face_chip_details`` in dlib/image_transforms/interpolation.h): normalised
# positions of the 68-point landmarks 17…67 (eyebrows, nose, eyes, mouth).
_MEAN_FACE_X = np.array(
    [
        0.000213256,
        0.0752622,
        0.18113,
        0.29077,
        0.393397,
        0.586856,
        0.689483,
        0.799124,
        0.904991,
        0.98004,
        0.490127,
        0.490127,
        0.490127,
        0.490127,
        0.36688,
        0.426036,
        0.490127,
        0.554217,
        0.613373,
        0.121737,
        0.187122,
        0.265825,
        0.334606,
        0.260918,
        0.182743,
        0.645647,
        0.714428,
        0.793132,
        0.858516,
        0.79751,
        0.719335,
        0.254149,
        0.340985,
        0.428858,
        0.490127,
        0.551395,
        0.639268,
        0.726104,
        0.642159,
        0.556721,
        0.490127,
        0.423532,
        0.338094,
        0.290379,
        0.428096,
        0.490127,
        0.552157,
        0.689874,
        0.553364,
        0.490127,
        0.42689,
    ]
)
_MEAN_FACE_Y = np.array(
    [
        0.106454,
        0.038915,
        0.0187482,
        0.0344891,
        0.0773906,
        0.0773906,
        0.0344891,
        0.0187482,
        0.038915,
        0.106454,
        0.203352,
        0.307009,
        0.409805,
        0.515625,
        0.587326,
        0.609345,
        0.628106,
        0.609345,
        0.587326,
        0.216423,
        0.178758,
        0.179852,
        0.231733,
        0.245099,
        0.244077,
        0.231733,
        0.179852,
        0.178758,
        0.216423,
        0.244077,
        0.245099,
        0.780233,
        0.745405,
        0.727388,
        0.742578,
        0.727388,
        0.745405,
        0.780233,
        0.864805,
        0.902192,
        0.909281,
        0.902192,
        0.864805,
        0.784792,
        0.778746,
        0.785343,
        0.778746,
        0.784792,
        0.824182,
        0.831803,
        0.824182,
    ]
)


# ArcFace 112 crop pixels → dlib 150 chip pixels (padding 0.25); derivation in the module docstring.
ARCFACE_TO_CHIP = np.array([[1.47598969, -0.00730284, -8.13292181], [0.00730284, 1.47598969, -31.0323995]])


def dlib_chip_five(size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> np.ndarray:
    """ArcFace-order 5 points (eye centres, nose tip, mouth corners) of dlib's mean face in a chip."""
    pts = np.stack([_MEAN_FACE_X, _MEAN_FACE_Y], 1)  # landmarks 17…67

    def p(i: int) -> np.ndarray:
        return pts[i - 17]

    five = np.stack([pts[36 - 17 : 42 - 17].mean(0), pts[42 - 17 : 48 - 17].mean(0), p(30), p(48), p(54)])
    return ((five + padding) / (2 * padding + 1) * size).astype(np.float64)


def arcface_to_chip_matrix(size: int = CHIP_SIZE, padding: float = CHIP_PADDING, aligned_size: int = 112) -> np.ndarray:
    """2×3 similarity mapping ArcFace crop pixels to dlib chip pixels from the 5 template points alone
    (least squares onto dlib's mean face): the geometric cross-check of ``ARCFACE_TO_CHIP``."""
    from skimage.transform import SimilarityTransform

    from .align import arcface_template

    src = arcface_template().astype(np.float64) * (aligned_size / 112.0)
    tform = (
        SimilarityTransform.from_estimate(src, dlib_chip_five(size, padding))
        if hasattr(SimilarityTransform, "from_estimate")
        else _estimate(src, dlib_chip_five(size, padding))
    )
    return np.asarray(tform.params[:2], np.float64)


def _estimate(src: np.ndarray, dst: np.ndarray):
    """``SimilarityTransform.estimate`` for scikit-image versions without ``from_estimate``."""
    from skimage.transform import SimilarityTransform

    tform = SimilarityTransform()
    tform.estimate(src, dst)
    return tform


def dlib_model_paths() -> tuple[Path, Path]:
    """Paths of dlib's ResNet recognizer and 5-point shape predictor (``face-recognition-models``)."""
    from .landmarks import face_recognition_models_dir

    folder = face_recognition_models_dir()
    rec, five = folder / "dlib_face_recognition_resnet_model_v1.dat", folder / "shape_predictor_5_face_landmarks.dat"
    for path in (rec, five):
        if not path.is_file():
            raise ModelUnavailable(
                f"dlib model missing at {path}: pip install --force-reinstall face-recognition-models"
            )
    return rec, five


class DlibRecognizer(Recognizer):
    """dlib ResNet (128-D) on ArcFace-aligned faces (re-warped to dlib chips) or on real chips."""

    differentiable = False

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        chip: str = "template",
        batch_size: int = 64,
        device: str = "cpu",
        processes: int | None = None,
    ):
        try:
            import dlib
        except ImportError as exc:
            raise ModelUnavailable("dlib is not installed: pip install dlib-bin") from exc
        if chip not in CHIP_METHODS:
            raise ValueError(f"chip must be one of {', '.join(CHIP_METHODS)}, not {chip!r}")
        rec_path, five_path = dlib_model_paths()
        self.path = Path(weights) if weights else rec_path
        if not self.path.is_file():
            raise ModelUnavailable(f"dlib recognizer weights not found: {self.path}")
        try:
            self._net = dlib.face_recognition_model_v1(str(self.path))
        except RuntimeError as exc:
            raise ValueError(f"{self.path}: dlib could not read it as a face recognition model ({exc})") from None
        self._five_path = five_path
        self._predictor = None
        self.chip = chip
        self.batch_size = int(batch_size)
        self.device = device  # dlib-bin is CPU only; kept for a uniform signature
        self.name = "dlib"
        self.dim = 128
        self.preprocessing = Preprocessing(
            input_size=(CHIP_SIZE, CHIP_SIZE),
            alignment="dlib150",
            color="RGB",
            normalisation=f"inside dlib (chip from ArcFace crop: {chip})",
        )
        self._matrix = ARCFACE_TO_CHIP
        self._lock = threading.Lock()
        self.weights_path = self.path
        # dlib-bin's descriptor runs on one core and holds the GIL: spread large batches over processes
        from ..device import usable_cpus

        self.processes = max(
            1, int(processes if processes is not None else os.environ.get("MF2M_DLIB_PROCESSES", usable_cpus()))
        )
        self._pool = None

    # -- chips -----------------------------------------------------------------------------------
    def chips_from_aligned(self, faces: np.ndarray) -> np.ndarray:
        """dlib 150×150 chips ``(n,150,150,3)`` uint8 for ArcFace-aligned faces."""
        import cv2

        faces = check_faces(faces)
        if self.chip == "template":
            return (
                np.stack(
                    [
                        cv2.warpAffine(f, self._matrix, (CHIP_SIZE, CHIP_SIZE), flags=cv2.INTER_LINEAR, borderValue=0)
                        for f in faces
                    ]
                )
                if len(faces)
                else np.empty((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
            )
        return (
            np.stack([self._chip_by_landmarks(f) for f in faces])
            if len(faces)
            else np.empty((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
        )

    def _chip_by_landmarks(self, face: np.ndarray) -> np.ndarray:
        """5-point shape predictor on the 2× crop (box = the whole crop), then ``dlib.get_face_chip``."""
        import cv2
        import dlib

        big = cv2.resize(face, (224, 224), interpolation=cv2.INTER_LINEAR)
        with self._lock:
            if self._predictor is None:
                self._predictor = dlib.shape_predictor(str(self._five_path))
            from .landmarks import ALIGNED_FACE_BOX

            box = dlib.rectangle(*(int(round(v * 2)) for v in ALIGNED_FACE_BOX))
            shape = self._predictor(big, box)
        return np.asarray(dlib.get_face_chip(big, shape, size=CHIP_SIZE, padding=CHIP_PADDING), np.uint8)

    # -- features --------------------------------------------------------------------------------
    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        """Unit-norm features ``(n, 128)`` of real dlib chips ``(n,150,150,3)`` uint8 RGB.

        With ``processes > 1`` and at least ``2 × MIN_CHIPS_PER_PROCESS`` chips, contiguous slices are
        computed in a pool of worker processes (each loads the network once); the features are the same
        as in-process ones (each chip's descriptor does not depend on its batch-mates).
        """
        chips = check_faces(chips, CHIP_SIZE)
        parts = min(self.processes, len(chips) // MIN_CHIPS_PER_PROCESS)
        if parts > 1:
            from concurrent.futures.process import BrokenProcessPool

            bounds = np.linspace(0, len(chips), parts + 1).astype(int)
            try:
                futures = [
                    self._worker_pool().submit(_pool_descriptors, chips[a:b], self.batch_size)
                    for a, b in zip(bounds[:-1], bounds[1:])
                ]
                return l2_normalise(np.concatenate([f.result() for f in futures]))
            except (BrokenProcessPool, OSError) as exc:  # workers could not start or died: go on in-process
                log.warning("dlib worker processes failed (%s); computing in this process from now on", exc)
                self.close()
                self.processes = 1
        with self._lock:
            return l2_normalise(_descriptors(self._net, chips, self.batch_size))

    def _worker_pool(self):
        """The lazily started pool of ``processes`` worker processes, each loading the network once."""
        with self._lock:
            if self._pool is None:
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor

                # fork where it exists: workers neither re-import the caller's main script nor reload numpy
                method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
                self._pool = ProcessPoolExecutor(
                    self.processes,
                    mp_context=multiprocessing.get_context(method),
                    initializer=_pool_init,
                    initargs=(str(self.path),),
                )
            return self._pool

    def close(self) -> None:
        """Stop the worker processes (also done at interpreter exit)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown()

    def embed(self, faces: np.ndarray) -> np.ndarray:
        """Unit-norm features ``(n, 128)`` of ArcFace-aligned faces ``(n,112,112,3)`` uint8 RGB."""
        return self.embed_chips(self.chips_from_aligned(faces))

    def identity(self) -> dict[str, Any]:
        """Name, dims, hash, preprocessing, chip method and file."""
        return {**super().identity(), "chip": self.chip, "weights": str(self.path)}


MIN_CHIPS_PER_PROCESS = 8  # below this a worker's share is not worth the inter-process copy
_POOL_NET = None  # the network of a pool worker process


def _descriptors(net, chips: np.ndarray, batch_size: int) -> np.ndarray:
    """Raw dlib descriptors ``(n, 128)`` float32 of chips, ``batch_size`` at a time."""
    out = np.empty((len(chips), 128), np.float32)
    for i in range(0, len(chips), batch_size):
        batch = [np.ascontiguousarray(c) for c in chips[i : i + batch_size]]
        out[i : i + len(batch)] = np.asarray([np.asarray(v) for v in net.compute_face_descriptor(batch)], np.float32)
    return out


def _pool_init(path: str) -> None:
    import dlib

    global _POOL_NET
    _POOL_NET = dlib.face_recognition_model_v1(path)


def _pool_descriptors(chips: np.ndarray, batch_size: int) -> np.ndarray:
    return _descriptors(_POOL_NET, chips, batch_size)


register(
    "dlib",
    kind="recognizer",
    check=dlib_file_check("dlib_face_recognition_resnet_model_v1.dat"),
    description="dlib ResNet (128-D): default black-box recognizer, on dlib 150x150 chips",
    weights="dlib_face_recognition_resnet_model_v1.dat in face-recognition-models",
    preprocessing="dlib chip 150 (padding 0.25) re-warped from the ArcFace 112 crop, RGB",
    how_to_get="pip install dlib-bin face-recognition-models",
)(DlibRecognizer)
