"""The built-in (reference) defences.

Input transforms (before recognition and/or mask detection): :class:`JPEG`, :class:`MedianBlur`,
:class:`GaussianBlur`, :class:`BitDepth`, :class:`RandomResizePad`. Recognition policy:
:class:`UpperFace` (the recognizer sees only the face above the ArcFace template's nose line).
Replacement mask detector: :class:`FacedMaskAwareDetector` (the default detector retrained with
DM-masked faces as positives). Their names are registered in ``benchmark.defences.DEFENCES``.

Every transform works on ArcFace-aligned ``uint8`` faces with OpenCV and has a torch ``surrogate``
for adaptive attacks: exact for the blurs, the resize-and-pad and the upper-face policy; the
identity (BPDA) for JPEG and bit-depth reduction, whose forward passes are piecewise constant.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .api import InputTransform, RecognitionPolicy, ReplacementMaskDetector

#: y of the nose tip in the ArcFace 112×112 template (``insightface.utils.face_align.arcface_dst``).
ARCFACE_NOSE_Y = 71.7366


class JPEG(InputTransform):
    """JPEG compression at ``quality`` (1–100), OpenCV's encoder (Dziugaite et al. 2016). BPDA gradient."""

    name = "jpeg"
    gradient = "bpda-identity"

    def __init__(self, quality: int = 75, apply_to: str = "both"):
        super().__init__(apply_to)
        if not isinstance(quality, int) or not 1 <= quality <= 100:
            raise ValueError(f"jpeg: quality must be an integer in 1..100, not {quality!r}")
        self.quality = quality

    def params(self) -> dict[str, Any]:
        """``quality`` and ``apply_to``."""
        return {"quality": self.quality, **super().params()}

    def apply_one(self, face: np.ndarray) -> np.ndarray:
        """Encode as JPEG and decode again."""
        import cv2

        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(face[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise RuntimeError("jpeg: OpenCV failed to encode a face")
        return cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]


class MedianBlur(InputTransform):
    """``k``×``k`` median filter (feature squeezing, Xu et al. 2018); border replicated. Exact gradient."""

    name = "median-blur"
    gradient = "exact"

    def __init__(self, k: int = 3, apply_to: str = "both"):
        super().__init__(apply_to)
        if not isinstance(k, int) or k < 3 or k % 2 == 0:
            raise ValueError(f"median-blur: k must be an odd integer ≥ 3, not {k!r}")
        self.k = k

    def params(self) -> dict[str, Any]:
        """``k`` and ``apply_to``."""
        return {"k": self.k, **super().params()}

    def apply_one(self, face: np.ndarray) -> np.ndarray:
        """OpenCV's median blur."""
        import cv2

        return cv2.medianBlur(np.ascontiguousarray(face), self.k)

    def surrogate(self, x):
        """The same median over replicate-padded ``k``×``k`` windows (gradient flows to the median pixel)."""
        import torch.nn.functional as F

        n, c, h, w = x.shape
        r = self.k // 2
        patches = F.unfold(F.pad(x, (r, r, r, r), mode="replicate"), self.k)  # (n, c·k², h·w)
        return patches.view(n, c, self.k * self.k, h * w).median(dim=2).values.view(n, c, h, w)


def gaussian_kernel_size(sigma: float) -> int:
    """Odd kernel size covering ±3σ (at least 3)."""
    return max(3, 2 * int(math.ceil(3 * sigma)) + 1)


class GaussianBlur(InputTransform):
    """Gaussian blur of standard deviation ``sigma`` pixels (kernel ±3σ, reflect-101 border). Exact gradient."""

    name = "gaussian-blur"
    gradient = "exact"

    def __init__(self, sigma: float = 1.0, apply_to: str = "both"):
        super().__init__(apply_to)
        if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or not sigma > 0:
            raise ValueError(f"gaussian-blur: sigma must be a positive number, not {sigma!r}")
        self.sigma = float(sigma)
        self.ksize = gaussian_kernel_size(self.sigma)

    def params(self) -> dict[str, Any]:
        """``sigma`` and ``apply_to``."""
        return {"sigma": self.sigma, **super().params()}

    def apply_one(self, face: np.ndarray) -> np.ndarray:
        """OpenCV's Gaussian blur."""
        import cv2

        return cv2.GaussianBlur(face, (self.ksize, self.ksize), self.sigma, borderType=cv2.BORDER_REFLECT_101)

    def surrogate(self, x):
        """Separable convolution with the same kernel (``cv2.getGaussianKernel``) and border."""
        import cv2
        import torch
        import torch.nn.functional as F

        g = torch.as_tensor(cv2.getGaussianKernel(self.ksize, self.sigma)[:, 0], dtype=x.dtype, device=x.device)
        r = self.ksize // 2
        c = x.shape[1]
        y = F.pad(x, (r, r, r, r), mode="reflect")
        y = F.conv2d(y, g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        return F.conv2d(y, g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


class BitDepth(InputTransform):
    """Colour bit-depth reduction to ``bits`` bits per channel (feature squeezing). BPDA gradient."""

    name = "bit-depth"
    gradient = "bpda-identity"

    def __init__(self, bits: int = 4, apply_to: str = "both"):
        super().__init__(apply_to)
        if not isinstance(bits, int) or not 1 <= bits <= 7:
            raise ValueError(f"bit-depth: bits must be an integer in 1..7, not {bits!r}")
        self.bits = bits

    def params(self) -> dict[str, Any]:
        """``bits`` and ``apply_to``."""
        return {"bits": self.bits, **super().params()}

    def apply(self, faces: np.ndarray) -> np.ndarray:
        """Round each channel to ``2**bits`` evenly spaced levels in 0..255."""
        from .api import check_faces

        levels = 2**self.bits - 1
        faces = check_faces(faces).astype(np.float32)
        return np.clip(np.rint(np.rint(faces / 255.0 * levels) / levels * 255.0), 0, 255).astype(np.uint8)


class RandomResizePad(InputTransform):
    """Randomly shrink the face to ``s``×``s`` (``s`` in [``min_scale``·112, 112]) and pad it back to
    112×112 at a random offset with black (Xie et al. 2018). Random choices are seeded by ``seed`` and
    the face's bytes, so a face always gets the same result. Exact gradient (same choices, bilinear)."""

    name = "random-resize-pad"
    gradient = "exact"
    stochastic = True

    def __init__(self, min_scale: float = 0.85, seed: int = 0, apply_to: str = "both"):
        super().__init__(apply_to)
        if not isinstance(min_scale, (int, float)) or not 0.3 <= float(min_scale) <= 1.0:
            raise ValueError(f"random-resize-pad: min_scale must be in [0.3, 1], not {min_scale!r}")
        self.min_scale, self.seed = float(min_scale), int(seed)

    def params(self) -> dict[str, Any]:
        """``min_scale``, ``seed`` and ``apply_to``."""
        return {"min_scale": self.min_scale, "seed": self.seed, **super().params()}

    def sample(self, rng: np.random.Generator) -> RandomResizePad:
        """The same transform with a fresh ``seed`` from ``rng`` (a new draw of every face's choices)."""
        return RandomResizePad(self.min_scale, int(rng.integers(2**31)), self.apply_to)

    def choices(self, face: np.ndarray) -> tuple[int, int, int]:
        """``(size, top, left)`` for one uint8 face (deterministic in ``seed`` and the face's bytes)."""
        h = face.shape[0]
        rng = np.random.default_rng([self.seed, zlib.crc32(np.ascontiguousarray(face).tobytes())])
        size = int(rng.integers(int(round(self.min_scale * h)), h + 1))
        top, left = (int(v) for v in rng.integers(0, h - size + 1, size=2))
        return size, top, left

    def apply_one(self, face: np.ndarray) -> np.ndarray:
        """Resize (bilinear) and pad one face."""
        import cv2

        size, top, left = self.choices(face)
        out = np.zeros_like(face)
        out[top : top + size, left : left + size] = cv2.resize(face, (size, size), interpolation=cv2.INTER_LINEAR)
        return out

    def surrogate(self, x):
        """Differentiable bilinear resize and pad with the choices of each (8-bit rounded) face."""
        import torch
        import torch.nn.functional as F

        faces = torch.round(x.detach().clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out = []
        for i, face in enumerate(faces):
            size, top, left = self.choices(face)
            small = F.interpolate(x[i : i + 1], size=(size, size), mode="bilinear", align_corners=False)
            h, w = x.shape[2:]
            out.append(F.pad(small, (left, w - left - size, top, h - top - size)))
        return torch.cat(out) if out else x


class UpperFace(RecognitionPolicy):
    """Recognize from the upper face only: everything below the ArcFace template's nose line (y≈71.7 in
    the 112×112 crop, moved by ``offset`` pixels) is blanked to ``fill`` (``mode=blank``) or cut off and the
    upper band stretched back to 112×112 (``mode=crop``, for recognizers trained on such crops).
    Exact gradient."""

    name = "upper-face"
    gradient = "exact"

    def __init__(self, mode: str = "blank", offset: float = 0.0, fill: int = 0):
        super().__init__()
        if mode not in ("blank", "crop"):
            raise ValueError(f"upper-face: mode must be blank or crop, not {mode!r}")
        if not isinstance(fill, int) or not 0 <= fill <= 255:
            raise ValueError(f"upper-face: fill must be an integer in 0..255, not {fill!r}")
        self.mode, self.offset, self.fill = mode, float(offset), fill

    def params(self) -> dict[str, Any]:
        """``mode``, ``offset`` and ``fill``."""
        return {"mode": self.mode, "offset": self.offset, "fill": self.fill}

    def line(self, height: int = 112) -> int:
        """First row that is removed (rows above it are kept untouched)."""
        y = (ARCFACE_NOSE_Y + self.offset) * height / 112.0
        line = int(math.ceil(y))
        if not 8 <= line <= height:
            raise ValueError(f"upper-face: offset {self.offset} puts the nose line at row {line}, outside the face")
        return line

    def apply_one(self, face: np.ndarray) -> np.ndarray:
        """Blank or crop below the nose line."""
        import cv2

        line = self.line(face.shape[0])
        if self.mode == "blank":
            out = face.copy()
            out[line:] = self.fill
            return out
        return cv2.resize(face[:line], (face.shape[1], face.shape[0]), interpolation=cv2.INTER_LINEAR)

    def surrogate(self, x):
        """The same blanking (a constant below the line) or crop (bilinear stretch)."""
        import torch
        import torch.nn.functional as F

        line = self.line(x.shape[2])
        if self.mode == "blank":
            keep = torch.zeros_like(x[:1, :1])
            keep[..., :line, :] = 1
            return x * keep + (self.fill / 255.0) * (1 - keep)
        return F.interpolate(x[:, :, :line], size=tuple(x.shape[2:]), mode="bilinear", align_corners=False)


class FacedMaskAwareDetector(ReplacementMaskDetector):
    """The default mask detector retrained with DM-masked (faced-mask) faces as positives.

    ``weights``: the retrained ``MaskNet`` file (``mf2m train-mask-detector --with-faced-masks``, see
    docs/defences.md); default ``mask_detector_faced.pt`` beside the default detector's weights.
    """

    name = "faced-mask-aware-detector"

    def __init__(self, weights: str = ""):
        self.weights = str(weights)

    def weights_path(self) -> Path:
        """The weights file this defence loads."""
        if self.weights:
            return Path(self.weights)
        from ..models.mask_detector import WEIGHTS_DIR

        return WEIGHTS_DIR / "mask_detector_faced.pt"

    def params(self) -> dict[str, Any]:
        """``weights`` (empty = the default path)."""
        return {"weights": self.weights} if self.weights else {}

    def create(self, device: str = "auto"):
        """A ``CNNMaskDetector`` on the retrained weights (``ModelUnavailable`` when not trained yet)."""
        from ..models.mask_detector import CNNMaskDetector

        det = CNNMaskDetector(self.weights_path(), device=device)
        det.name = "mf2m-maskdet-faced"
        return det
