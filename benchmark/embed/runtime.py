"""Forward-only runtimes: aligned uint8 faces → unit-norm float32 features, the fastest way per device.

* CPU: the recognizer's own ``embed`` (its native runtime, e.g. onnxruntime or dlib), or its torch module
  in float32 chunks of ``CPU_TORCH_CHUNK`` images where the model says that is faster
  (``prefer_torch_on_cpu``: SFace, ≈ 3× onnxruntime on 2 cores); in bf16 (``--precision bf16``, or
  ``auto`` on a CPU with bf16 units) the torch module with bf16 weights and input.
* CUDA: the recognizer's ``torch_module`` in half precision (``auto``/``fp16``; ``fp32`` on request),
  channels-last, fed from pinned memory with non-blocking copies; results come back one batch late so
  the GPU never waits for the host.

Reduced precision is :mod:`benchmark.precision`'s: the model's outputs are cast to float32 before the
L2 normalisation. A recognizer without a torch module (dlib) runs its native float32 runtime whatever
was asked, and its plan says so.

Flip test-time augmentation (insightface's convention): features of the image and of its mirror are
summed, then L2-normalised.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..precision import PrecisionPlan


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


CPU_TORCH_CHUNK = 16  # images per torch forward on the CPU


class Forward:
    """One recognizer on one device. ``runtime`` is ``"torch-fp32"``, ``"torch-bf16"``, ``"torch-fp16"`` or
    ``"native"``; ``precision`` is the :class:`~benchmark.precision.PrecisionPlan` that ran."""

    def __init__(
        self,
        recognizer: Any,
        device: str = "cpu",
        flip: bool = False,
        precision: str | PrecisionPlan = "auto",
        prefer_torch: bool | None = None,
    ):
        """``precision``: ``auto``/``fp32``/``bf16``/``fp16`` (resolved for ``device``) or a plan.
        ``prefer_torch`` (default: on CUDA, in reduced precision, and on the CPU where the model sets
        ``prefer_torch_on_cpu``) runs the torch module instead of ``embed``."""
        from ..precision import plan, reduce_module

        self.recognizer = recognizer
        self.device = device
        self.flip = flip
        self.module = None
        p = plan(precision, device) if isinstance(precision, str) else precision
        on_gpu = device.startswith("cuda")
        if prefer_torch is None:
            prefer_torch = on_gpu or p.reduced or bool(getattr(recognizer, "prefer_torch_on_cpu", False))
        module = None
        if prefer_torch:
            try:
                module = recognizer.torch_module(device)
            except NotImplementedError:
                module = None
        if module is not None:
            import torch

            # a private copy: casting must not change the recognizer's own (shared) module
            self.module = reduce_module(module, p).eval()
            self.runtime = f"torch-{p.precision}"
            torch.backends.cudnn.benchmark = on_gpu
        else:
            if p.reduced:
                p = p.fallback(
                    f"{getattr(recognizer, 'name', 'this model')} has no torch module "
                    f"(native runtime only): float32, although {p.precision} was resolved ({p.reason})"
                )
            self.runtime = "native"
        self.precision = p

    def describe(self) -> dict[str, Any]:
        """What a manifest records about the runtime."""
        return {
            "runtime": self.runtime,
            "device": self.device,
            "flip": self.flip,
            "precision": self.precision.describe(),
        }

    # -- CPU / native path -------------------------------------------------------------------------
    def embed_numpy(self, faces: np.ndarray) -> np.ndarray:
        """Features ``(n, D)`` for uint8 faces ``(n, 112, 112, 3)`` through the recognizer's ``embed``."""
        if len(faces) == 0:
            return np.empty((0, self.recognizer.dim), np.float32)
        if not self.flip:
            return l2_normalise(self.recognizer.embed(faces))
        both = self.recognizer.embed(np.concatenate([faces, faces[:, :, ::-1]]))
        n = len(faces)
        return l2_normalise(both[:n] + both[n:])

    # -- torch path ----------------------------------------------------------------------------------
    def _launch(self, faces):
        """Queue the forward pass of a uint8 ``(n,112,112,3)`` tensor; returns the features on the device."""
        import torch

        if not self.device.startswith("cuda") and len(faces) > CPU_TORCH_CHUNK:
            # CPU: small chunks keep the activations in cache (batch 16 ≈ 2× batch 64 for SFace)
            return torch.cat(
                [self._launch(faces[i : i + CPU_TORCH_CHUNK]) for i in range(0, len(faces), CPU_TORCH_CHUNK)]
            )
        x = faces.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        with torch.inference_mode():
            if self.flip:
                y = self.module(torch.cat([x, x.flip(3)])).float()
                y = y[: len(faces)] + y[len(faces) :]
            else:
                y = self.module(x).float()
            return torch.nn.functional.normalize(y, dim=1)

    def embed_tensor(self, faces) -> np.ndarray:
        """Features for one uint8 tensor batch, synchronously (any runtime)."""
        if self.module is None:
            return self.embed_numpy(faces.numpy())
        return self._launch(faces).cpu().numpy()

    def stream(self, batches: Iterator[tuple[Any, Any]]) -> Iterator[tuple[Any, np.ndarray]]:
        """Map ``(meta, faces)`` pairs to ``(meta, features)`` in order.

        On CUDA the device→host copy of batch *k* is waited for only after batch *k+1* was queued, so
        decoding, transfers and compute overlap.
        """
        if self.module is None or not self.device.startswith("cuda"):
            for meta, faces in batches:
                yield meta, self.embed_tensor(faces) if len(faces) else self.embed_numpy(faces.numpy())
            return
        import torch

        pending: deque = deque()
        for meta, faces in batches:
            if len(faces):
                y = self._launch(faces)
                host = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)
                host.copy_(y, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
            else:
                host, event = torch.empty((0, self.recognizer.dim)), None
            pending.append((meta, host, event))
            if len(pending) > 1:
                yield self._finish(*pending.popleft())
        while pending:
            yield self._finish(*pending.popleft())

    @staticmethod
    def _finish(meta, host, event):
        if event is not None:
            event.synchronize()
        return meta, host.numpy().astype(np.float32, copy=False)
