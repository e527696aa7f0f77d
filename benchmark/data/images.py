"""Robust image decoding: every file becomes an RGB ``uint8`` array or an ``ImageError`` with a reason.

Handles grey, grey+alpha, RGBA (alpha dropped), 16-bit (scaled to 8-bit), palette and CMYK images;
zero-byte, truncated and corrupt files raise ``ImageError`` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class ImageError(ValueError):
    """An image could not be decoded; ``reason`` is a short machine-friendly tag."""

    def __init__(self, path: str | os.PathLike, reason: str, detail: str = ""):
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode ``path`` into an ``(H, W, 3)`` RGB uint8 array; raises ``ImageError``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(path, "missing") from None
    except OSError as exc:
        raise ImageError(path, "unreadable", str(exc)) from None
    return decode_image(data, path)


def decode_image(data: bytes, name: str | os.PathLike = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, BMP, TIFF, WebP…) into RGB uint8; raises ``ImageError``."""
    import io

    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageError(name, "empty-file")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # forces full decode: truncated files fail here
            arr = _to_rgb8(im, name)
    except UnidentifiedImageError:
        raise ImageError(name, "not-an-image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageError):
            raise
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageError(name, reason, str(exc)) from None
    if min(arr.shape[:2]) < 8:
        raise ImageError(name, "too-small", f"{arr.shape[1]}x{arr.shape[0]}")
    return arr


def _to_rgb8(im, name) -> np.ndarray:
    """Convert any PIL mode to an RGB uint8 array."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")  # alpha is dropped: colours are kept as stored
        return np.ascontiguousarray(np.asarray(im)[:, :, :3])
    if mode != "RGB":
        im = im.convert("RGB")  # L, P, CMYK, YCbCr, 1 …
    arr = np.asarray(im)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ImageError(name, "unsupported-format", f"mode {mode}, shape {arr.shape}")
    return np.ascontiguousarray(arr)


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Atomically write an RGB (or single-channel) uint8 array as a lossless PNG."""
    from PIL import Image

    from ..atomic import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(tmp, format="PNG")
