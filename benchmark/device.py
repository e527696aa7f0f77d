"""One ``--device`` switch for every stage: ``auto`` picks CUDA when present, else CPU."""

from __future__ import annotations

import os


def resolve_device(device: str = "auto") -> str:
    """Return ``"cuda"``/``"cuda:N"`` or ``"cpu"``; ``auto`` means CUDA if torch sees a GPU."""
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, not {device!r}")
    if device == "cpu":
        return "cpu"
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if device == "auto":
        return "cuda" if has_cuda else "cpu"
    if not has_cuda:
        raise RuntimeError(f"--device {device} was asked for but no CUDA device is visible to torch")
    return device


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_units() -> list[str]:
    """The CPU's bf16 matrix/vector units as /proc/cpuinfo names them (empty where none or unknown)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in _BF16_CPU_FLAGS if f in flags]
    except OSError:
        pass
    return []


def resolve_precision(precision: str, device: str) -> tuple[str, str]:
    """``(precision, reason)`` for a resolved device: ``auto`` → bf16 on a CPU with bf16 units, fp16 on
    CUDA, else fp32.  An explicit choice is kept (bf16 without units runs, emulated and slow)."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    on_cuda = device.startswith("cuda")
    if precision != "auto":
        if precision == "fp16" and not on_cuda:
            raise ValueError("--precision fp16 needs a CUDA device (float16 brings nothing on a CPU); use bf16 or fp32")
        return precision, "asked for"
    if on_cuda:
        return "fp16", "auto: CUDA device (tensor cores)"
    units = cpu_bf16_units()
    if units:
        return "bf16", f"auto: CPU has bf16 units ({', '.join(units)})"
    return "fp32", "auto: CPU has no bf16 units (no amx_bf16/avx512_bf16 in /proc/cpuinfo)"
