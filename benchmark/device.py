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
