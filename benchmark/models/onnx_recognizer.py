"""ONNX face recognizers: onnxruntime for fast forward passes, the converted graph (``onnx_torch``) for
white-box (differentiable) use.

* :class:`OnnxRecognizer` wraps one ONNX file: ``embed`` runs onnxruntime (dynamic batch), and
  ``torch_module`` is the converted graph behind the same normalisation.
* :class:`InsightfaceOnnxRecognizer` applies insightface's rule for the input normalisation: a graph
  whose first nodes are ``Sub``/``Mul`` (mxnet exports) normalises internally (mean 0, std 1); any
  other takes ``(x - 127.5) / 127.5``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .base import ModelUnavailable, Preprocessing, Recognizer, frozen_eval
from .onnx_torch import graph_data_inputs, load_onnx, onnx_to_torch_from_proto, ort_session

# --------------------------------------------------------------------------------------------------
# Recognizers
# --------------------------------------------------------------------------------------------------


def check_faces(faces: np.ndarray, size: int = 112) -> np.ndarray:
    """Validate a batch of aligned faces ``(n, size, size, 3)`` uint8 (a single face gets a batch axis)."""
    faces = np.asarray(faces)
    if faces.ndim == 3:
        faces = faces[None]
    if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[1:] != (size, size, 3):
        raise ValueError(
            f"expected aligned faces of shape (n, {size}, {size}, 3) uint8 RGB, got {faces.shape} {faces.dtype}"
        )
    return faces


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32)."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _normalised_module_class():
    import torch
    from torch import nn

    class NormalisedRecognizer(nn.Module):
        """``(n,3,H,W)`` RGB in [0,1] → ×255, colour order, ``(x-mean)/std`` → graph → unit-norm features."""

        def __init__(self, net: nn.Module, mean: float, std: float, bgr: bool):
            super().__init__()
            self.net = net
            self.bgr = bool(bgr)
            self.register_buffer("mean", torch.tensor(float(mean)))
            self.register_buffer("scale", torch.tensor(255.0 / float(std)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.bgr:
                x = x.flip(1)
            x = x * self.scale - self.mean * (self.scale / 255.0)
            feats = self.net(x).float()
            return torch.nn.functional.normalize(feats, dim=1)

    return NormalisedRecognizer


class OnnxRecognizer(Recognizer):
    """A recognizer in one ONNX file: onnxruntime for ``embed``, the converted graph for ``torch_module``.

    The network input is ``(x - mean) / std`` of 0–255 pixels in ``color`` order (NCHW).
    """

    differentiable = True

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        name: str | None = None,
        mean: float = 127.5,
        std: float = 127.5,
        color: str = "RGB",
        device: str = "auto",
        batch_size: int = 64,
        threads: int | None = None,
        normalisation_note: str | None = None,
        model: Any = None,
    ):
        from ..device import resolve_device

        if color not in ("RGB", "BGR"):
            raise ValueError(f"color must be RGB or BGR, not {color!r}")
        self.path = Path(path)
        self.model = model if model is not None else load_onnx(self.path)
        self.name = name or self.path.stem
        self.mean, self.std, self.color = float(mean), float(std), color
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.threads = threads
        inputs = graph_data_inputs(self.model)
        dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim] if inputs else []
        if len(dims) != 4 or dims[1] != 3:
            raise ValueError(f"{self.path}: expected an image input (N, 3, H, W), found {dims}")
        self.input_hw = (dims[2] or 112, dims[3] or 112)
        if self.input_hw != (112, 112):
            raise ValueError(
                f"{self.path}: input is {self.input_hw[0]}×{self.input_hw[1]}; mf2m's aligned "
                "faces are 112×112 (ArcFace template)"
            )
        out_dims = [d.dim_value for d in self.model.graph.output[0].type.tensor_type.shape.dim]
        self.dim = int(out_dims[-1]) if out_dims and out_dims[-1] else 0
        note = normalisation_note or (
            f"(x-{self.mean:g})/{self.std:g}" if (self.mean, self.std) != (0.0, 1.0) else "inside graph"
        )
        self.preprocessing = Preprocessing(
            input_size=self.input_hw, alignment="arcface112", color=color, normalisation=note
        )
        self._session = None
        self._session_lock = threading.Lock()
        self.weights_path = self.path

    # -- forward ---------------------------------------------------------------------------------
    def session(self):
        """The onnxruntime session (created on first use)."""
        with self._session_lock:
            if self._session is None:
                self._session = ort_session(self.model, self.device, self.threads)
                self._input_name = self._session.get_inputs()[0].name
        return self._session

    def to_input(self, faces: np.ndarray) -> np.ndarray:
        """The network input ``(n, 3, 112, 112)`` float32 for uint8 RGB faces."""
        x = faces[..., ::-1] if self.color == "BGR" else faces
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
        if (self.mean, self.std) != (0.0, 1.0):
            x = (x - self.mean) / self.std
        return x

    def embed(self, faces: np.ndarray) -> np.ndarray:
        """Unit-norm features ``(n, dim)`` of aligned faces ``(n,112,112,3)`` uint8 RGB (onnxruntime)."""
        faces = check_faces(faces)
        sess = self.session()
        out = []
        for i in range(0, len(faces), self.batch_size):
            out.append(sess.run(None, {self._input_name: self.to_input(faces[i : i + self.batch_size])})[0])
        if not out:
            return np.empty((0, self.dim), np.float32)
        feats = np.concatenate(out).reshape(len(faces), -1)
        return l2_normalise(feats)

    def torch_module(self, device: str = "cpu", fp16: bool = False):
        """Differentiable module: ``(n,3,112,112)`` RGB in [0,1] → unit-norm features."""
        from ..device import resolve_device

        net = onnx_to_torch_from_proto(self.model, str(self.path))
        module = _normalised_module_class()(net, self.mean, self.std, self.color == "BGR")
        module = frozen_eval(module.to(resolve_device(device)))
        return module.half() if fp16 else module

    def identity(self) -> dict[str, Any]:
        """Name, dims, hash, preprocessing and the file path."""
        return {**super().identity(), "weights": str(self.path)}


def insightface_normalisation(model: Any) -> tuple[float, float]:
    """insightface's ``ArcFaceONNX`` rule: ``(0, 1)`` when the first 8 nodes include ``Sub`` and ``Mul``
    nodes (named ``Sub…``/``_minus…`` and ``Mul…``/``_mul…``: mxnet exports normalise in-graph), else
    ``(127.5, 127.5)``."""
    find_sub = find_mul = False
    for node in model.graph.node[:8]:
        if node.name.startswith("Sub") or node.name.startswith("_minus"):
            find_sub = True
        if node.name.startswith("Mul") or node.name.startswith("_mul"):
            find_mul = True
    return (0.0, 1.0) if find_sub and find_mul else (127.5, 127.5)


class InsightfaceOnnxRecognizer(OnnxRecognizer):
    """An insightface recognition ONNX (``w600k_r50.onnx``, ``glintr100.onnx``, …): RGB 112×112 input,
    normalisation chosen by :func:`insightface_normalisation`."""

    def __init__(
        self,
        weights: str | os.PathLike,
        *,
        name: str | None = None,
        device: str = "auto",
        batch_size: int = 64,
        threads: int | None = None,
    ):
        path = weights
        if not path:
            raise ModelUnavailable("an insightface ONNX recognizer needs its file: arcface-onnx:PATH")
        model = load_onnx(path)
        mean, std = insightface_normalisation(model)
        note = "inside graph (mxnet Sub/Mul)" if (mean, std) == (0.0, 1.0) else "(x-127.5)/127.5"
        super().__init__(
            path,
            name=name or f"arcface-onnx:{Path(path).name}",
            mean=mean,
            std=std,
            color="RGB",
            device=device,
            batch_size=batch_size,
            threads=threads,
            normalisation_note=note,
            model=model,
        )


def _register() -> None:
    from .registry import register

    how = (
        "Download an insightface model pack (buffalo_l has w600k_r50.onnx, antelopev2 glintr100.onnx) "
        "and give the file's path."
    )
    common = dict(
        kind="recognizer",
        differentiable=True,
        needs_weights=True,
        how_to_get=how,
        preprocessing="ArcFace 112, RGB, (x-127.5)/127.5 unless the graph normalises (insightface rule)",
    )
    register(
        "arcface-onnx:",
        description="any insightface recognition ONNX (arcface-onnx:PATH)",
        weights="user ONNX file",
        **common,
    )(InsightfaceOnnxRecognizer)
    register(
        "w600k_r50",
        description="insightface buffalo_l ArcFace R50 (WebFace600K), 512-D",
        weights="user w600k_r50.onnx",
        files=("w600k_r50.onnx", "buffalo_l/w600k_r50.onnx"),
        defaults={"name": "w600k_r50"},
        **common,
    )(InsightfaceOnnxRecognizer)
    register(
        "glintr100",
        description="insightface antelopev2 ArcFace R100 (Glint360K), 512-D",
        weights="user glintr100.onnx",
        files=("glintr100.onnx", "antelopev2/glintr100.onnx"),
        defaults={"name": "glintr100"},
        **common,
    )(InsightfaceOnnxRecognizer)


_register()
