"""The default mask detector: a small CNN mf2m trains itself on ArcFace-aligned 112×112 crops.

``MaskNet`` maps ``(n, 3, 112, 112)`` float RGB in ``[0, 1]`` to logits ``(n, 2)`` (class 1 = masked);
it downsamples to 64×64 inside the graph (antialiased bilinear) so it is cheap on a CPU and stays
smooth for the attack stage's cross-entropy term. ``CNNMaskDetector`` wraps a weights file written by
``mf2m train-mask-detector`` (``benchmark/models/weights/mask_detector.pt`` by default).

torch is imported lazily so that importing this module (e.g. to list models) stays cheap.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .base import MaskDetector, ModelUnavailable, batched_forward, frozen_eval

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "mask_detector.pt"
DEFAULT_CARD = WEIGHTS_DIR / "MASK_DETECTOR_CARD.md"
FORMAT = "mf2m-masknet/1"
DEFAULT_ARCH: dict[str, Any] = {"widths": [24, 32, 64, 128], "internal_size": 64, "dropout": 0.2}


@lru_cache(maxsize=1)
def _masknet_class():
    """Define ``MaskNet`` on first use (keeps ``import torch`` out of module import)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        )

    class MaskNet(nn.Module):
        """Stem (stride 2) + three conv-BN-ReLU ×2 blocks with 2×2 average pooling, GAP, linear → 2."""

        def __init__(self, widths=(24, 32, 64, 128), internal_size: int = 64, dropout: float = 0.2):
            super().__init__()
            w = list(widths)
            if len(w) != 4:
                raise ValueError(f"MaskNet needs 4 widths, got {w}")
            self.internal_size = int(internal_size)
            self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1))
            layers = [conv_bn(3, w[0], 2)]
            for cin, cout in zip(w[:-1], w[1:]):
                layers += [conv_bn(cin, cout), conv_bn(cout, cout), nn.AvgPool2d(2)]
            self.features = nn.Sequential(*layers)
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(w[-1], 2))

        #: takes float32 input and casts it to the weights' dtype itself, after the resize
        #: (the antialiased bilinear resize has no bf16 kernel; ``benchmark.precision``)
        casts_input = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.ndim != 4 or x.shape[1] != 3:
                raise ValueError(f"MaskNet expects (n, 3, H, W) RGB in [0, 1], got {tuple(x.shape)}")
            if x.shape[-1] != self.internal_size or x.shape[-2] != self.internal_size:
                x = F.interpolate(
                    x.float(),
                    size=(self.internal_size, self.internal_size),
                    mode="bilinear",
                    align_corners=False,
                    antialias=True,
                )
            x = x.to(self.mean.dtype)
            return self.head(self.features((x - self.mean) / self.std))

    return MaskNet


def build_masknet(arch: dict[str, Any] | None = None):
    """A freshly initialised ``MaskNet`` with architecture ``arch`` (defaults: ``DEFAULT_ARCH``)."""
    arch = {**DEFAULT_ARCH, **(arch or {})}
    return _masknet_class()(widths=arch["widths"], internal_size=arch["internal_size"], dropout=arch["dropout"])


def masked_probability(logits: Any) -> Any:
    """Column ``(n, 1)`` of P(masked) from mask-detector logits ``(n, 2)`` (class 1 = masked)."""
    import torch

    return torch.softmax(logits, dim=1)[:, 1:2]


def save_weights(path: str | Path, model, meta: dict[str, Any], arch: dict[str, Any] | None = None) -> None:
    """Atomically write ``model``'s state dict with its architecture and ``meta`` (JSON-able)."""
    import torch

    from ..atomic import atomic_path

    payload = {
        "format": FORMAT,
        "arch": json.dumps({**DEFAULT_ARCH, **(arch or {})}),
        "meta": json.dumps(meta, default=str),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)


def load_weights(path: str | Path, device: str = "cpu"):
    """Load a weights file written by ``save_weights``; returns ``(model in eval mode, meta)``.

    Raises ``ModelUnavailable`` when the file is missing and ``ValueError`` naming the file when it is
    not an mf2m mask-detector file or its tensors do not fit the recorded architecture.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelUnavailable(
            f"mask-detector weights not found at {path}: train them with "
            f"`mf2m train-mask-detector --data DIR --out {path}`"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors have many types
        raise ValueError(f"{path}: not a readable torch file ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not an mf2m mask-detector file (expected format {FORMAT!r})")
    arch, meta = json.loads(payload["arch"]), json.loads(payload["meta"])
    model = build_masknet(arch)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit MaskNet{arch}: {exc}") from None
    return model.to(device).eval(), meta


class CNNMaskDetector(MaskDetector):
    """mf2m's own mask detector (``MaskNet``) on ArcFace-aligned 112×112 crops; differentiable."""

    name = "mf2m-maskdet"
    differentiable = True

    def __init__(self, weights: str | Path | None = None, device: str = "auto", batch_size: int = 256):
        from ..device import resolve_device

        self.weights = Path(weights) if weights else DEFAULT_WEIGHTS
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self._model, self.meta = load_weights(self.weights, self.device)
        frozen_eval(self._model)
        self.weights_path = self.weights

    def p_masked(self, faces: np.ndarray) -> np.ndarray:
        """Probability ``(n,)`` (float32 in [0, 1]) that each aligned face wears a mask."""
        return batched_forward(self._model, faces, self.device, self.batch_size, 1, head=masked_probability)[:, 0]

    def torch_module(self, device: str = "cpu"):
        """``MaskNet`` in eval mode on ``device``: ``(n,3,112,112)`` RGB [0,1] → logits ``(n,2)``."""
        from ..device import resolve_device

        model, _ = load_weights(self.weights, resolve_device(device))
        return model

    def identity(self) -> dict[str, Any]:
        """Name, hash, weights path and the training metrics recorded in the file."""
        return {
            **super().identity(),
            "weights": str(self.weights),
            "held_out_accuracy": self.meta.get("metrics", {}).get("held_out", {}).get("accuracy"),
        }


def default_status() -> tuple[bool, str]:
    """``(available, reason)`` for the default detector without loading torch."""
    if DEFAULT_WEIGHTS.is_file():
        return True, f"weights {DEFAULT_WEIGHTS.name} shipped with mf2m"
    return False, (
        f"weights missing at {DEFAULT_WEIGHTS}: run `mf2m train-mask-detector --data DIR --out {DEFAULT_WEIGHTS}`"
    )


def _register() -> None:
    """Add the default detector to the model registry (``mf2m models``, ``create("mf2m-maskdet")``)."""
    from .registry import register

    register(
        "mf2m-maskdet",
        "mask-detector",
        description="mf2m's own small CNN mask detector (MaskNet) on ArcFace-aligned crops; the default",
        weights=f"shipped: benchmark/models/weights/{DEFAULT_WEIGHTS.name}",
        preprocessing="ArcFace 112, RGB float [0,1], resized to 64 in graph",
        differentiable=True,
        check=default_status,
        how_to_get=f"Retrain: mf2m train-mask-detector --data DIR --out {DEFAULT_WEIGHTS}",
    )(CNNMaskDetector)


_register()
