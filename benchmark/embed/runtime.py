"""Forward-only runtimes: aligned uint8 faces → unit-norm float32 features, the fastest way per device.

* CPU: the recognizer's own ``embed`` (its native runtime, e.g. onnxruntime or dlib), or its torch module
  in float32 chunks of ``CPU_TORCH_CHUNK`` images where the model says that is faster
  (``prefer_torch_on_cpu``: SFace, ≈ 3× onnxruntime on 2 cores).
* CUDA: the recognizer's ``torch_module`` in half precision, channels-last, fed from pinned memory with
  non-blocking copies; results come back one batch late so the GPU never waits for the host.

Flip test-time augmentation (insightface's convention): features of the image and of its mirror are
summed, then L2-normalised.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Iterator

import numpy as np


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


CPU_TORCH_CHUNK = 16   # images per torch forward on the CPU


class Forward:
    """One recognizer on one device. ``runtime`` is ``"torch-fp16"``, ``"torch-fp32"`` or ``"native"``."""

    def __init__(self, recognizer: Any, device: str = "cpu", flip: bool = False, half: bool | None = None,
                 prefer_torch: bool | None = None):
        """``prefer_torch`` (default: on CUDA, and on the CPU where the model sets ``prefer_torch_on_cpu``)
        runs the torch module instead of ``embed``;
        ``half`` (default: on CUDA only) casts it to float16."""
        self.recognizer = recognizer
        self.device = device
        self.flip = flip
        self.module = None
        on_gpu = device.startswith("cuda")
        if prefer_torch is None:
            prefer_torch = on_gpu or bool(getattr(recognizer, "prefer_torch_on_cpu", False))
        if prefer_torch:
            try:
                self.module = recognizer.torch_module(device)
            except NotImplementedError:
                self.module = None
        if self.module is not None:
            import copy

            import torch
            half = on_gpu if half is None else half
            # a private copy: casting to half must not change the recognizer's own (shared) module
            self.memory_format = torch.channels_last if on_gpu else torch.contiguous_format
            self.module = copy.deepcopy(self.module).eval().to(device=device, memory_format=self.memory_format)
            if half:
                self.module = self.module.half()
            self.dtype = torch.float16 if half else torch.float32
            self.runtime = "torch-fp16" if half else "torch-fp32"
            torch.backends.cudnn.benchmark = on_gpu
        else:
            self.runtime = "native"

    def describe(self) -> dict[str, Any]:
        """What a manifest records about the runtime."""
        return {"runtime": self.runtime, "device": self.device, "flip": self.flip}

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
            return torch.cat([self._launch(faces[i:i + CPU_TORCH_CHUNK])
                              for i in range(0, len(faces), CPU_TORCH_CHUNK)])
        x = faces.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        x = x.to(self.dtype).div_(255.0).contiguous(memory_format=self.memory_format)
        with torch.inference_mode():
            if self.flip:
                y = self.module(torch.cat([x, x.flip(3)])).float()
                y = y[: len(faces)] + y[len(faces):]
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
