"""IResNet r18/r34/r50/r100/r200 with exactly the state-dict layout of insightface's arcface_torch,
so its ``backbone.pth`` files (the paper's ArcFace-R50, CosFace-R34/R50) load unchanged.

Layout (``backbones/iresnet.py`` of arcface_torch): ``conv1, bn1, prelu``, then ``layer1…layer4`` of
``IBasicBlock`` (``bn1, conv1, bn2, prelu, conv2, bn3`` and, on the first block of each layer,
``downsample.0`` (1×1 conv) / ``downsample.1`` (BN)), then ``bn2, dropout, fc, features`` (BatchNorm1d).
Input: 112×112 RGB, ``(x/255 - 0.5) / 0.5``; output 512-D (L2-normalised here).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .base import ModelUnavailable, Preprocessing, Recognizer, batched_forward, frozen_eval, module_on
from .onnx_recognizer import check_faces
from .registry import register

# blocks per layer (arcface_torch's iresnet18/34/50/100/200)
DEPTHS: dict[str, tuple[int, int, int, int]] = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}
WIDTHS = (64, 128, 256, 512)


def _classes():
    import torch
    from torch import nn

    def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
        return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)

    class IBasicBlock(nn.Module):
        """arcface_torch's pre-activation basic block (BN → conv → BN → PReLU → conv → BN, + shortcut)."""

        def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
            self.conv1 = conv3x3(inplanes, planes)
            self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
            self.prelu = nn.PReLU(planes)
            self.conv2 = conv3x3(planes, planes, stride)
            self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
            self.downsample = downsample

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
            return out + (self.downsample(x) if self.downsample is not None else x)

    class IResNet(nn.Module):
        """arcface_torch IResNet backbone: ``(n,3,112,112)`` normalised input → ``(n, num_features)``."""

        def __init__(
            self, layers: tuple[int, int, int, int], num_features: int = 512, dropout: float = 0.0, fp16: bool = False
        ):
            super().__init__()
            self.fp16 = fp16
            self.inplanes = 64
            self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(64, eps=1e-05)
            self.prelu = nn.PReLU(64)
            self.layer1 = self._make_layer(WIDTHS[0], layers[0])
            self.layer2 = self._make_layer(WIDTHS[1], layers[1])
            self.layer3 = self._make_layer(WIDTHS[2], layers[2])
            self.layer4 = self._make_layer(WIDTHS[3], layers[3])
            self.bn2 = nn.BatchNorm2d(512, eps=1e-05)
            self.dropout = nn.Dropout(p=dropout)
            self.fc = nn.Linear(512 * 7 * 7, num_features)
            self.features = nn.BatchNorm1d(num_features, eps=1e-05)

        def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=2, bias=False), nn.BatchNorm2d(planes, eps=1e-05)
            )
            layers = [IBasicBlock(self.inplanes, planes, 2, downsample)]
            self.inplanes = planes
            layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device_type=x.device.type, enabled=self.fp16 and x.device.type == "cuda"):
                x = self.prelu(self.bn1(self.conv1(x)))
                x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
                x = self.dropout(torch.flatten(self.bn2(x), 1))
            x = self.fc(x.float() if self.fp16 else x)
            return self.features(x)

    class ArcfaceInput(nn.Module):
        """``(n,3,112,112)`` RGB in [0,1] → ``(x-0.5)/0.5`` → backbone → unit-norm features."""

        def __init__(self, backbone: nn.Module):
            super().__init__()
            self.backbone = backbone

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            feats = self.backbone((x - 0.5) / 0.5)
            return torch.nn.functional.normalize(feats.float(), dim=1)

    return IResNet, ArcfaceInput


def build_iresnet(arch: str = "r50", num_features: int = 512, fp16: bool = False):
    """An untrained arcface_torch IResNet (``arch`` in r18, r34, r50, r100, r200)."""
    arch = normalise_arch(arch)
    return _classes()[0](DEPTHS[arch], num_features=num_features, fp16=fp16)


def normalise_arch(arch: str) -> str:
    """``"r50"`` from ``"r50"``, ``"iresnet50"`` or ``"50"``; unknown depths raise ``ValueError``."""
    key = "r" + re.sub(r"^(iresnet|r)", "", str(arch).lower())
    if key not in DEPTHS:
        raise ValueError(f"unknown IResNet depth {arch!r}; choose one of {', '.join(DEPTHS)}")
    return key


def blocks_in_state(state: dict[str, Any]) -> tuple[int, int, int, int]:
    """Blocks per layer found in an arcface_torch state dict (from ``layerK.I.`` keys)."""
    counts = [0, 0, 0, 0]
    for key in state:
        m = re.match(r"layer([1-4])\.(\d+)\.", key)
        if m:
            k, i = int(m.group(1)) - 1, int(m.group(2))
            counts[k] = max(counts[k], i + 1)
    return tuple(counts)  # type: ignore[return-value]


def arch_of_state(state: dict[str, Any]) -> str | None:
    """The IResNet depth whose block counts match ``state`` (None when none does)."""
    found = blocks_in_state(state)
    return next((name for name, blocks in DEPTHS.items() if blocks == found), None)


def read_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Tensors of a ``backbone.pth`` (a plain state dict, or one under ``state_dict``/``model``; a
    ``module.`` prefix from DataParallel is removed). Loads with ``weights_only=True``."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelUnavailable(f"IResNet weights not found: {path}")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable torch state dict ({type(exc).__name__}: {exc})") from None
    for key in ("state_dict", "model", "backbone"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path}: expected a state dict of tensors, found {type(obj).__name__}")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_iresnet(path: str | os.PathLike, arch: str | None = None, fp16: bool = False):
    """An IResNet with the weights of an arcface_torch ``backbone.pth`` (eval mode).

    ``arch`` (optional) is checked against the file: a wrong depth raises ``ValueError`` naming the
    expected and found blocks per layer; missing/unexpected keys or wrong shapes are reported too.
    """
    state = read_state_dict(path)
    found = blocks_in_state(state)
    detected = arch_of_state(state)
    if arch is not None:
        arch = normalise_arch(arch)
        if DEPTHS[arch] != found:
            hint = f" (that is {detected})" if detected else ""
            raise ValueError(
                f"{path}: IResNet-{arch} expects blocks per layer {DEPTHS[arch]}, the file has {found}{hint}"
            )
    elif detected is None:
        raise ValueError(
            f"{path}: blocks per layer {found} match no IResNet depth "
            f"({', '.join(f'{k}={v}' for k, v in DEPTHS.items())}); is this an arcface_torch backbone?"
        )
    arch = arch or detected
    fc = state.get("fc.weight")
    num_features = int(fc.shape[0]) if fc is not None else 512
    model = build_iresnet(arch, num_features=num_features, fp16=fp16)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}{' …' if len(missing) > 5 else ''} ({len(missing)})")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}{' …' if len(unexpected) > 5 else ''} ({len(unexpected)})")
        if wrong:
            parts.append(
                "wrong shapes "
                + ", ".join(
                    f"{k}: expected {tuple(expected[k].shape)}, found {tuple(state[k].shape)}" for k in wrong[:3]
                )
            )
        raise ValueError(f"{path}: not an arcface_torch IResNet-{arch} state dict: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return model.eval(), arch


class IResNetRecognizer(Recognizer):
    """arcface_torch IResNet from a user's ``backbone.pth``; batched torch inference on CPU or CUDA.

    ``fp16`` runs the backbone in half precision (CUDA autocast) with the final ``fc`` in float32, as
    arcface_torch does.
    """

    differentiable = True

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        arch: str | None = None,
        device: str = "auto",
        batch_size: int = 64,
        fp16: bool = False,
        name: str | None = None,
    ):
        from ..device import resolve_device

        if not weights:
            raise ModelUnavailable(
                "IResNet needs its weights: pass --weights PATH (arcface_torch backbone.pth, "
                "e.g. ms1mv3_arcface_r50_fp16/backbone.pth) or set MF2M_MODELS_DIR"
            )
        self.path = Path(weights)
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.fp16 = bool(fp16)
        backbone, self.arch = load_iresnet(self.path, arch, fp16=self.fp16)
        self.name = name or f"iresnet{self.arch[1:]}"
        self.dim = int(backbone.fc.out_features)
        self.preprocessing = Preprocessing(
            input_size=(112, 112), alignment="arcface112", color="RGB", normalisation="(x/255-0.5)/0.5"
        )
        self._module = frozen_eval(_classes()[1](backbone).to(self.device))
        self.weights_path = self.path

    def embed(self, faces: np.ndarray) -> np.ndarray:
        """Unit-norm features ``(n, dim)`` of aligned faces ``(n,112,112,3)`` uint8 RGB."""
        return batched_forward(self._module, check_faces(faces), self.device, self.batch_size, self.dim)

    def torch_module(self, device: str = "cpu"):
        """``(n,3,112,112)`` RGB in [0,1] → unit-norm features (shared module when on this device)."""
        return module_on(self._module, self.device, device)

    def identity(self) -> dict[str, Any]:
        """Name, dims, hash, preprocessing, depth and file."""
        return {**super().identity(), "arch": self.arch, "weights": str(self.path), "fp16": self.fp16}


_HOW = (
    "Train with insightface's arcface_torch or download a backbone.pth from its model zoo "
    "(e.g. ms1mv3_arcface_r50_fp16); pass it with --weights PATH."
)
for _arch in DEPTHS:
    _n = _arch[1:]
    register(
        f"iresnet{_n}",
        kind="recognizer",
        differentiable=True,
        needs_weights=True,
        files=(f"iresnet{_n}.pth", f"iresnet{_n}/backbone.pth"),
        defaults={"arch": _arch},
        description=f"arcface_torch IResNet-{_n} (ArcFace/CosFace backbone.pth)",
        weights="user backbone.pth (arcface_torch layout)",
        preprocessing="ArcFace 112, RGB, (x/255-0.5)/0.5",
        how_to_get=_HOW,
    )(IResNetRecognizer)
register(
    "iresnet:",
    kind="recognizer",
    differentiable=True,
    needs_weights=True,
    description="arcface_torch IResNet of any depth, detected from the file (iresnet:PATH)",
    weights="user backbone.pth",
    preprocessing="ArcFace 112, RGB, (x/255-0.5)/0.5",
    how_to_get=_HOW,
)(IResNetRecognizer)
