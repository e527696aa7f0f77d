"""The embed stage as a library: aligned faces in, unit-norm features out, nothing written.

``embed`` runs the same forward runtime as ``mf2m embed`` (:class:`benchmark.embed.runtime.Forward`: the
model's torch module or native runtime, the resolved precision, optional flip augmentation) on images
already in memory, so the features equal those ``mf2m embed`` stores for the same crops and batches.

Examples::

    >>> from benchmark.embed import embed
    >>> features = embed(faces, "sface", device="cpu")      # faces: uint8 (n, 112, 112, 3)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["embed"]


def embed(
    images: np.ndarray,
    model: str | Any,
    *,
    device: str = "auto",
    flip: bool = False,
    precision: str = "auto",
    batch_size: int = 128,
) -> np.ndarray:
    """Features ``(n, D)`` float32, unit rows, of ArcFace-aligned uint8 RGB faces ``(n, 112, 112, 3)``.

    ``model`` is a registry name (``benchmark.models.registry``) or a recognizer object; ``precision`` and
    ``flip`` are those of ``mf2m embed``; ``batch_size`` images go through the model at a time.
    """
    import torch

    from ..device import resolve_device
    from .runtime import Forward

    faces = np.asarray(images)
    if faces.ndim != 4 or faces.shape[1:] != (112, 112, 3) or faces.dtype != np.uint8:
        raise ValueError(f"images must be uint8 aligned faces (n, 112, 112, 3), got {faces.dtype} {faces.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, not {batch_size}")
    device = resolve_device(device)
    if isinstance(model, str):
        from ..models.registry import create

        model = create(model, device=device)
    forward = Forward(model, device=device, flip=flip, precision=precision)
    batches = (
        (i, torch.from_numpy(np.ascontiguousarray(faces[i : i + batch_size]))) for i in range(0, len(faces), batch_size)
    )
    out = [feats for _, feats in forward.stream(batches)]
    dim = getattr(model, "dim", 0)
    return np.concatenate(out).astype(np.float32, copy=False) if out else np.empty((0, dim), np.float32)
