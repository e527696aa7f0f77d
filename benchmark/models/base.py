"""The small interfaces every model in mf2m implements.

Conventions shared by all stages:

* An **aligned face** is a 112×112 RGB ``uint8`` image aligned to the ArcFace 5-point template
  (``benchmark.models.align.ARCFACE_112``). The attack, embed and mask-detection stages all work on
  aligned faces; each recognizer converts from the aligned face to its own input (e.g. dlib's
  150×150 chip) inside ``embed``.
* Batches of images are ``numpy`` arrays ``(n, 112, 112, 3)`` ``uint8`` RGB, or for differentiable
  use ``torch`` tensors ``(n, 3, 112, 112)`` float in ``[0, 1]`` RGB.
* Features are float32, L2-normalised rows.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class ModelUnavailable(RuntimeError):
    """A model's weights or runtime are missing; the message says why and how to get them."""


@dataclass(frozen=True)
class Preprocessing:
    """How a model turns an image into its input tensor (recorded in manifests)."""

    input_size: tuple[int, int]  # (height, width) the network sees
    alignment: str  # "arcface112" | "dlib150" | "none"
    color: str  # "RGB" | "BGR"
    normalisation: str  # human-readable, e.g. "(x/255-0.5)/0.5" or "inside graph"


class Recognizer(abc.ABC):
    """A face recognizer: aligned faces → unit-norm features."""

    name: str
    dim: int
    preprocessing: Preprocessing
    differentiable: bool = False
    # forward-only embedding on the CPU through ``torch_module`` instead of ``embed`` (set where measured faster)
    prefer_torch_on_cpu: bool = False

    @abc.abstractmethod
    def embed(self, faces: np.ndarray) -> np.ndarray:
        """Features ``(n, dim)`` float32, unit L2 norm, for aligned faces ``(n, 112, 112, 3)`` uint8 RGB."""

    weights_path: Any = None  # the weight file whose SHA-256 identifies the model

    def weights_hash(self) -> str:
        """SHA-256 of the weight file(s): the model's identity in manifests."""
        return _cached_sha256(self)

    def torch_module(self, device: str = "cpu") -> Any:
        """A ``torch.nn.Module`` mapping ``(n,3,112,112)`` float RGB in [0,1] to unit-norm features.

        Gradients reach the input. Raises ``NotImplementedError`` for non-differentiable models.
        """
        raise NotImplementedError(f"{self.name} is not differentiable (black-box only)")

    def identity(self) -> dict[str, Any]:
        """What a manifest records about this model."""
        return {
            "name": self.name,
            "dim": self.dim,
            "sha256": self.weights_hash(),
            "preprocessing": self.preprocessing.__dict__,
            "differentiable": self.differentiable,
        }


class MaskDetector(abc.ABC):
    """A face-mask detector on aligned faces."""

    name: str
    differentiable: bool = False

    @abc.abstractmethod
    def p_masked(self, faces: np.ndarray) -> np.ndarray:
        """Probability ``(n,)`` that each aligned face ``(n,112,112,3)`` uint8 RGB wears a mask."""

    weights_path: Any = None  # the weight file whose SHA-256 identifies the model

    def weights_hash(self) -> str:
        """SHA-256 of the weight file(s)."""
        return _cached_sha256(self)

    def torch_module(self, device: str = "cpu") -> Any:
        """``torch.nn.Module``: ``(n,3,112,112)`` float RGB in [0,1] → logits ``(n,2)``; class 1 = masked."""
        raise NotImplementedError(f"{self.name} is not differentiable")

    def identity(self) -> dict[str, Any]:
        """What a manifest records about this model."""
        return {"name": self.name, "sha256": self.weights_hash(), "differentiable": self.differentiable}


def _cached_sha256(model: Any) -> str:
    """SHA-256 of ``model.weights_path``, computed once per model object."""
    sha = model.__dict__.get("_weights_sha256")
    if sha is None:
        if model.weights_path is None:
            raise NotImplementedError(f"{type(model).__name__} has no weights_path; override weights_hash()")
        from ..manifest import sha256_file

        sha = model.__dict__["_weights_sha256"] = sha256_file(model.weights_path)
    return sha


def faces_to_tensor(faces: np.ndarray, device: str = "cpu") -> Any:
    """Aligned faces ``(n,112,112,3)`` uint8 RGB → float tensor ``(n,3,112,112)`` in [0, 1] on ``device``."""
    import torch

    faces = np.asarray(faces)
    if faces.ndim == 3:
        faces = faces[None]
    if faces.ndim != 4 or faces.shape[3] != 3 or faces.dtype != np.uint8:
        raise ValueError(f"expected aligned faces (n, H, W, 3) uint8 RGB, got {faces.shape} {faces.dtype}")
    return torch.from_numpy(np.ascontiguousarray(faces)).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def batched_forward(
    module: Any, faces: np.ndarray, device: str, batch_size: int, width: int, head: Any = None
) -> np.ndarray:
    """Run ``module`` over aligned faces in batches without gradients; returns ``(n, width)`` float32.

    ``head`` (optional) maps the module's output tensor to the rows kept (e.g. a softmax column).
    """
    import torch

    faces = np.asarray(faces)
    if faces.ndim == 3:
        faces = faces[None]
    out = np.empty((len(faces), width), dtype=np.float32)
    with torch.inference_mode():
        for i in range(0, len(faces), batch_size):
            y = module(faces_to_tensor(faces[i : i + batch_size], device))
            y = head(y) if head is not None else y
            out[i : i + len(y)] = y.reshape(len(y), width).float().cpu().numpy()
    return out


def frozen_eval(module: Any) -> Any:
    """Put a torch module in eval mode with every parameter frozen (inputs still get gradients)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def module_on(module: Any, home_device: str, device: str) -> Any:
    """``module`` itself when ``device`` is where it lives, else a copy moved to ``device``."""
    import copy

    from ..device import resolve_device

    device = resolve_device(device)
    return module if device == home_device else copy.deepcopy(module).to(device)


@dataclass
class FaceLandmarks:
    """Landmarks of one face in the coordinates of the image they were found in.

    ``points`` is the model's full set; ``jaw`` (lower-face contour, ordered from one ear to the other
    along the chin), ``nose`` (nose points, bridge top first) and ``five`` (left eye, right eye, nose tip,
    left mouth corner, right mouth corner — the ArcFace order, subject's left = image left) index into it
    or are derived from it.
    """

    points: np.ndarray  # (k, 2) float32, x then y
    jaw: np.ndarray  # (j, 2) float32
    nose: np.ndarray  # (m, 2) float32
    five: np.ndarray  # (5, 2) float32
    score: float
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 of the detection
    scheme: str = "dlib68"  # which landmark scheme ``points`` follows
    extra: dict[str, Any] = field(default_factory=dict)


class LandmarkError(RuntimeError):
    """No face / landmarks could be found; never replaced by a guess."""


class Landmarker(abc.ABC):
    """Face detection + landmarks on a full image."""

    name: str

    @abc.abstractmethod
    def landmarks(self, image: np.ndarray, box: tuple[float, float, float, float] | None = None) -> FaceLandmarks:
        """Landmarks of the most prominent face in an RGB uint8 image (``box`` skips detection).

        Raises ``LandmarkError`` with the reason when no face or no reliable landmarks are found.
        """
