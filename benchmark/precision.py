"""Reduced-precision forward (and forward+backward) of torch models, shared by the embed and attack stages.

``--precision {auto,fp32,bf16,fp16}`` is resolved once per run (:func:`plan`) into a
:class:`PrecisionPlan`: the precision that actually runs, why, and in which form. A model is then
wrapped (:func:`reduce_module`) so that it takes and returns float32 tensors while its weights and
activations are bf16/fp16 inside:

* **bf16 on a CPU**: weights and input in bf16 (not autocast: on 2 Zen 3 cores autocast ran SFace at
  0.6 img/s against 3.7 for cast weights), channels-last on CPUs with bf16 units (oneDNN's AMX /
  AVX512-BF16 kernels want NHWC), contiguous where bf16 is emulated (measured faster there);
* **fp16 on CUDA**: weights and input in fp16, channels-last (tensor cores);
* outputs are cast back to float32 before anything else (normalisation, losses), and gradients reach
  the float32 input through the casts, so callers keep float32 images, updates and projections.

A module that does its own input handling in float32 first (the mask detector's antialiased resize has
no bf16 kernel) sets ``casts_input = True`` and gets float32 input.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

from .device import PRECISIONS, cpu_bf16_units, resolve_precision

__all__ = ["PRECISIONS", "PrecisionPlan", "attack_plan", "plan", "reduce_module", "torch_dtype"]

#: reduced precisions that ``--precision auto`` may pick for the attacks: only those shown to keep the
#: attack's outcome (mean SFace cosine, mask detection rate, PSNR) at the paper's settings; see
#: BENCHMARKS.md ("Attack precision"). Empty: bf16 has not been shown to keep the outcome (BENCHMARKS.md
#: gives the measured differences) and fp16 parity on a GPU is not measured, so ``auto`` keeps the attacks
#: in float32.
ATTACK_AUTO_REDUCED: frozenset[str] = frozenset()


@dataclass(frozen=True)
class PrecisionPlan:
    """What runs: ``requested`` (the option), ``precision`` (fp32/bf16/fp16), ``reason`` and ``form``."""

    requested: str
    precision: str
    reason: str
    device: str
    memory_format: str = "contiguous"  # "contiguous" | "channels_last"

    @property
    def reduced(self) -> bool:
        """True for bf16/fp16."""
        return self.precision != "fp32"

    @property
    def form(self) -> str:
        """A short description of how the model runs, e.g. ``bf16 weights+input, channels_last``."""
        if not self.reduced:
            return f"float32, {self.memory_format}" + (", TF32 off" if self.device.startswith("cuda") else "")
        return f"{self.precision} weights+input, {self.memory_format}, float32 outputs"

    def describe(self) -> dict[str, Any]:
        """What a manifest records."""
        return {
            "requested": self.requested,
            "precision": self.precision,
            "reason": self.reason,
            "form": self.form,
            "device": self.device,
        }

    def fallback(self, reason: str) -> PrecisionPlan:
        """The same request run in float32 instead, with ``reason`` (e.g. a model without a torch module)."""
        return PrecisionPlan(self.requested, "fp32", reason, self.device, "contiguous")


def plan(precision: str, device: str) -> PrecisionPlan:
    """Resolve ``precision`` on a resolved ``device`` (``cpu``/``cuda[:N]``) into a plan.

    Raises ``ValueError`` for an unknown name and for fp16 on a CPU.
    """
    resolved, reason = resolve_precision(precision, device)
    on_cuda = device.startswith("cuda")
    if resolved == "fp32":
        fmt = "channels_last" if on_cuda else "contiguous"
    elif on_cuda or cpu_bf16_units():
        fmt = "channels_last"
    else:
        fmt = "contiguous"
        reason += "; this CPU has no bf16 units, so bf16 is emulated (slower than float32)"
    return PrecisionPlan(precision, resolved, reason, device, fmt)


def attack_plan(precision: str, device: str) -> PrecisionPlan:
    """:func:`plan` for the attacks' forward+backward: ``auto`` picks a reduced precision only where it
    is in ``ATTACK_AUTO_REDUCED`` (outcome parity shown), else float32; explicit choices are kept."""
    p = plan(precision, device)
    if precision == "auto" and p.reduced and p.precision not in ATTACK_AUTO_REDUCED:
        return p.fallback(
            f"auto: the attack stays float32 ({p.precision} was possible here — {p.reason} — "
            f"but its parity with float32 attacks is not shown; see BENCHMARKS.md)"
        )
    return p


def strict_fp32(p: PrecisionPlan) -> None:
    """On CUDA in float32: switch TF32 off in cuDNN convolutions and cuBLAS matmuls (global torch flags),
    so that float32 means float32 (the reference runs of the precision comparisons depend on it)."""
    if p.device.startswith("cuda") and not p.reduced:
        import torch

        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def torch_dtype(precision: str):
    """The torch dtype of ``fp32``/``bf16``/``fp16``."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def reduce_module(module: Any, p: PrecisionPlan) -> Any:
    """A private copy of ``module`` running as ``p`` says, taking and returning float32 tensors.

    In float32 the copy only gets ``p``'s memory format (and on CUDA, TF32 is switched off). Gradients flow to the input (the casts are
    differentiable); parameters keep ``requires_grad`` as they were.
    """
    import torch

    fmt = torch.channels_last if p.memory_format == "channels_last" else torch.contiguous_format
    strict_fp32(p)
    inner = copy.deepcopy(module).to(device=p.device, memory_format=fmt)
    dtype = torch_dtype(p.precision)
    if p.reduced:
        inner = inner.to(dtype)
    return _wrapper_class()(inner, dtype, fmt)


@functools.lru_cache(maxsize=1)
def _wrapper_class():
    import torch

    class ReducedPrecision(torch.nn.Module):
        """float32 in → ``dtype`` model (``memory_format``) → float32 out."""

        def __init__(self, inner: torch.nn.Module, dtype: torch.dtype, memory_format: torch.memory_format):
            super().__init__()
            self.inner = inner
            self.dtype = dtype
            self.memory_format = memory_format
            self.cast_input = not getattr(inner, "casts_input", False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.cast_input:
                x = x.to(self.dtype)
            x = x.contiguous(memory_format=self.memory_format)
            return self.inner(x).float()

    return ReducedPrecision
