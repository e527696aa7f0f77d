"""The paper's mask detector: RetinaNet (ResNet-50 + FPN) trained on face / face_mask boxes.

The checkpoint is the one of ``simpletask1/Retinanet-face_mask_detection``, built on the
``yhenon/pytorch-retinanet`` code: a dict whose ``model_state_dict`` holds the keys of a
``DataParallel``-wrapped model (``module.`` prefix): ``conv1``/``bn1``/``layer1-4`` (ResNet-50
bottlenecks), ``fpn.P3_1 … fpn.P7_2``, ``regressionModel.conv1-4/output`` and
``classificationModel.conv1-4/output`` (9 anchors × 2 classes, sigmoid). Class 0 = ``face``,
class 1 = ``face_mask``. mf2m ships no weights for it: it is available only when the user gives a path.

On an aligned face, ``p_masked`` follows the original inference pipeline (ImageNet normalisation,
resize so the short side is 608, zero padding to a multiple of 32) and reads the anchor with the
highest class score: ``p = s_face_mask / (s_face + s_face_mask)``. ``torch_module`` returns
``log(s_face), log(s_face_mask)`` of that anchor as logits, so softmax gives the same ``p`` and the
attack's cross-entropy is differentiable.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .base import MaskDetector, ModelUnavailable, batched_forward, frozen_eval, module_on

CLASSES = ("face", "face_mask")
NUM_ANCHORS = 9
MIN_SIDE = 608  # yhenon Resizer defaults
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNET_LAYERS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


@lru_cache(maxsize=1)
def _classes():  # noqa: C901  (a factory of nested module classes, each simple)
    """Define the torch modules on first use (keeps ``import torch`` out of module import)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = downsample

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + (self.downsample(x) if self.downsample is not None else x))

    class PyramidFeatures(nn.Module):
        def __init__(self, c3: int, c4: int, c5: int, size: int = 256):
            super().__init__()
            self.P5_1, self.P5_2 = nn.Conv2d(c5, size, 1), nn.Conv2d(size, size, 3, padding=1)
            self.P4_1, self.P4_2 = nn.Conv2d(c4, size, 1), nn.Conv2d(size, size, 3, padding=1)
            self.P3_1, self.P3_2 = nn.Conv2d(c3, size, 1), nn.Conv2d(size, size, 3, padding=1)
            self.P6 = nn.Conv2d(c5, size, 3, stride=2, padding=1)
            self.P7_2 = nn.Conv2d(size, size, 3, stride=2, padding=1)

        def forward(self, c3, c4, c5):
            p5 = self.P5_1(c5)
            p4 = self.P4_1(c4) + F.interpolate(p5, size=c4.shape[-2:], mode="nearest")
            p3 = self.P3_1(c3) + F.interpolate(p4, size=c3.shape[-2:], mode="nearest")
            p6 = self.P6(c5)
            return [self.P3_2(p3), self.P4_2(p4), self.P5_2(p5), p6, self.P7_2(F.relu(p6))]

    class Head(nn.Module):
        """Four 3×3 conv + ReLU, then a 3×3 conv to ``anchors × outputs`` channels."""

        def __init__(self, outputs: int, size: int = 256):
            super().__init__()
            self.outputs = outputs
            for i in range(1, 5):
                setattr(self, f"conv{i}", nn.Conv2d(size, size, 3, padding=1))
            self.output = nn.Conv2d(size, NUM_ANCHORS * outputs, 3, padding=1)

        def forward(self, x):
            for i in range(1, 5):
                x = F.relu(getattr(self, f"conv{i}")(x))
            out = self.output(x).permute(0, 2, 3, 1)
            return out.reshape(out.shape[0], -1, self.outputs)

    class RetinaNet(nn.Module):
        """ResNet + FPN + regression/classification heads with yhenon's attribute names."""

        def __init__(self, num_classes: int = 2, depth: int = 50):
            super().__init__()
            if depth not in RESNET_LAYERS:
                raise ValueError(f"RetinaNet depth must be one of {sorted(RESNET_LAYERS)}, not {depth}")
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self._cin = 64
            for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), RESNET_LAYERS[depth])):
                setattr(self, f"layer{i + 1}", self._layer(planes, blocks, 1 if i == 0 else 2))
            self.fpn = PyramidFeatures(512, 1024, 2048)
            self.regressionModel = Head(4)
            self.classificationModel = Head(num_classes)

        def _layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
            down = None
            if stride != 1 or self._cin != planes * 4:
                down = nn.Sequential(
                    nn.Conv2d(self._cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
                )
            layers = [Bottleneck(self._cin, planes, stride, down)]
            self._cin = planes * 4
            layers += [Bottleneck(self._cin, planes) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def class_scores(self, x):
            """Per-anchor class probabilities ``(n, anchors, classes)`` (sigmoid) of normalised input."""
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            c2 = self.layer1(x)
            c3 = self.layer2(c2)
            c4 = self.layer3(c3)
            c5 = self.layer4(c4)
            feats = self.fpn(c3, c4, c5)
            return torch.sigmoid(torch.cat([self.classificationModel(f) for f in feats], dim=1))

    class FaceMaskLogits(nn.Module):
        """Aligned faces (n,3,H,W) RGB [0,1] → logits (n,2) = log scores (face, face_mask) of the best anchor."""

        def __init__(self, net: nn.Module, min_side: int = MIN_SIDE):
            super().__init__()
            self.net, self.min_side = net, int(min_side)
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

        def forward(self, x):
            x = (x - self.mean) / self.std
            h, w = x.shape[-2:]
            scale = self.min_side / min(h, w)
            size = (round(h * scale), round(w * scale))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            x = F.pad(x, (0, 32 - size[1] % 32, 0, 32 - size[0] % 32))  # yhenon always pads 1..32
            scores = self.net.class_scores(x)  # (n, anchors, 2)
            best = scores.max(dim=2).values.argmax(dim=1)  # anchor with the top score
            picked = scores[torch.arange(len(x), device=x.device), best]  # (n, 2)
            return torch.log(picked.clamp_min(1e-12))

    return RetinaNet, FaceMaskLogits


def build_retinanet(num_classes: int = 2, depth: int = 50):
    """A randomly initialised RetinaNet with the yhenon/pytorch-retinanet parameter names."""
    return _classes()[0](num_classes=num_classes, depth=depth)


def _restricted_pickle_module():
    """A ``pickle``-like module whose unpickler only builds tensors and plain containers.

    ``torch.load(weights_only=True)`` cannot rebuild the ``collections.deque`` of losses that
    simpletask1's ``train.py`` stores beside the weights; this allows that and nothing executable.
    """
    import builtins
    import pickle
    import types

    import torch

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            obj = None
            module = "builtins" if module == "__builtin__" else module  # protocol ≤ 2 name
            if (
                (module, name)
                in {
                    ("collections", "OrderedDict"),
                    ("collections", "deque"),
                    ("torch._tensor", "_rebuild_from_type_v2"),
                    ("torch", "Size"),
                    ("torch", "Tensor"),
                    ("torch.nn.parameter", "Parameter"),
                    ("torch", "device"),
                    ("torch.storage", "UntypedStorage"),
                }
                or module == "torch._utils"
                and name.startswith("_rebuild_")
            ):
                obj = super().find_class(module, name)
            elif module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
                obj = getattr(torch, name)
            elif module == "builtins" and name in ("set", "frozenset", "complex", "slice"):
                obj = getattr(builtins, name)
            if obj is None:
                raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
            return obj

    def load(file, **kwargs):
        return Unpickler(file, **kwargs).load()

    return types.SimpleNamespace(Unpickler=Unpickler, load=load, __name__="mf2m_restricted_pickle")


def _read_checkpoint(path: Path, allow_pickle: bool) -> Any:
    """``torch.load`` restricted to tensors and plain containers (unless ``allow_pickle``)."""
    import torch

    try:
        if allow_pickle:
            return torch.load(path, map_location="cpu", weights_only=False)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # e.g. the deque of losses: retry with the restricted unpickler
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle_module())
    except Exception as exc:  # unpickling errors come in many types
        hint = (
            ""
            if allow_pickle
            else (
                " (only tensors and plain containers are read: if you trust the file, load it with allow_pickle=True)"
            )
        )
        raise ValueError(f"{path}: cannot read the RetinaNet checkpoint: {exc}{hint}") from None


def load_retinanet_state(path: str | Path, depth: int = 50, allow_pickle: bool = False):
    """Build the RetinaNet and load ``path``'s ``model_state_dict`` (``module.`` prefix stripped).

    Accepts the training checkpoint dict (``{"model_state_dict": …}``) or a bare state dict. Raises
    ``ModelUnavailable`` if the file is missing and ``ValueError`` naming the file and the first
    missing / unexpected / mis-shaped keys when the layout is not yhenon's ResNet-``depth`` RetinaNet
    with 2 classes.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelUnavailable(f"RetinaNet face-mask checkpoint not found at {path}")
    ckpt = _read_checkpoint(path, allow_pickle)
    state = ckpt.get("model_state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path}: no 'model_state_dict' (and not a state dict itself)")
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    model = build_retinanet(num_classes=len(CLASSES), depth=depth)
    expected = model.state_dict()
    for key in expected:  # checkpoints from torch < 0.4.1 have no BatchNorm step counters
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = expected[key]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        k for k in set(expected) & set(state) if tuple(getattr(state[k], "shape", ())) != tuple(expected[k].shape)
    )
    if missing or unexpected or shapes:

        def few(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" … (+{len(keys) - 5})" if len(keys) > 5 else "")

        detail = "; ".join(
            part
            for part in (
                f"{len(missing)} missing keys: {few(missing)}" if missing else "",
                f"{len(unexpected)} unexpected keys: {few(unexpected)}" if unexpected else "",
                "wrong shapes: "
                + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in shapes[:5])
                if shapes
                else "",
            )
            if part
        )
        raise ValueError(f"{path}: not a yhenon/pytorch-retinanet ResNet-{depth} face/face_mask checkpoint ({detail})")
    model.load_state_dict(state, strict=True)
    return model.eval()


class RetinaNetMaskDetector(MaskDetector):
    """The paper's RetinaNet face-mask detector on aligned faces (user-supplied checkpoint)."""

    name = "retinanet-facemask"
    differentiable = True

    def __init__(
        self,
        weights: str | Path | None = None,
        device: str = "auto",
        depth: int = 50,
        min_side: int = MIN_SIDE,
        batch_size: int = 8,
        allow_pickle: bool = False,
    ):
        from ..device import resolve_device

        if weights is None:
            raise ModelUnavailable(
                f"{self.name}: no checkpoint given; mf2m ships none. Pass the path of the "
                "RetinaNet face-mask checkpoint (simpletask1/Retinanet-face_mask_detection, "
                "e.g. csv_retinanet50_140epochs.pt)"
            )
        self.weights, self.device = Path(weights), resolve_device(device)
        self.batch_size = int(batch_size)
        net = load_retinanet_state(self.weights, depth, allow_pickle)
        self._module = frozen_eval(_classes()[1](net, min_side).to(self.device))
        self.weights_path = self.weights

    def p_masked(self, faces: np.ndarray) -> np.ndarray:
        """``s_face_mask / (s_face + s_face_mask)`` of the best anchor for each aligned face."""
        from .mask_detector import masked_probability

        return batched_forward(self._module, faces, self.device, self.batch_size, 1, head=masked_probability)[:, 0]

    def torch_module(self, device: str = "cpu"):
        """``(n,3,112,112)`` RGB [0,1] → logits ``(n,2)`` (log face / face_mask score of the best anchor)."""
        return module_on(self._module, self.device, device)


def _register() -> None:
    """Add the paper's RetinaNet to the model registry (needs the user's checkpoint)."""
    from .registry import register

    register(
        "retinanet-facemask",
        "mask-detector",
        description="the paper's RetinaNet-50 face/face_mask detector (yhenon pytorch-retinanet layout)",
        weights="user checkpoint (model_state_dict with module. prefix)",
        needs_weights=True,
        files=("csv_retinanet50_140epochs.pt",),
        differentiable=True,
        preprocessing="ArcFace 112 crop, ImageNet normalisation, short side 608, pad to 32",
        how_to_get="mf2m ships no weights: get csv_retinanet50_140epochs.pt from "
        "simpletask1/Retinanet-face_mask_detection and pass --weights PATH "
        "(or $MF2M_WEIGHTS_RETINANET_FACEMASK).",
    )(RetinaNetMaskDetector)


_register()
