"""MF²M (paper Sec. 3.3–3.4, Eq. 6–7, Algorithm 1): small PGD noise, then adversarial pixel-wise filtering.

Every pixel p inside the region gets its own K×K kernel ``K_p`` (shared by the three colour
channels, as in the paper's ``K ∈ R^{H×W×K²}``), initialised to the identity (centre 1, others 0).
The filtered image is ``I'(p) = Σ_k K_p[k] · Î(p + offset_k)``: the K² shifted copies of Î are built
once with ``torch.nn.functional.unfold`` and each iteration is a weighted sum, so filtering costs
about as much as one extra element-wise pass. Outside the region the kernels stay the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Attack, pgd

KERNEL_UPDATES = ("raw", "sign")
KERNEL_NORMS = ("none", "sum1")


def shifted_stack(images: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """``(n, c, K², H, W)``: the K² shifted copies of ``images`` (edge pixels replicated)."""
    n, c, h, w = images.shape
    r = kernel_size // 2
    padded = F.pad(images, (r, r, r, r), mode="replicate")
    return F.unfold(padded, kernel_size).view(n, c, kernel_size * kernel_size, h, w)


def pixelwise_filter(stack: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Apply per-pixel kernels ``(n, K², H, W)`` to a shifted stack ``(n, c, K², H, W)`` → ``(n, c, H, W)``."""
    return (stack * kernels[:, None]).sum(dim=2)


def identity_kernels(n: int, kernel_size: int, h: int, w: int, device) -> torch.Tensor:
    """Kernels ``(n, K², H, W)`` that leave an image unchanged (centre weight 1, others 0)."""
    k = torch.zeros(n, kernel_size * kernel_size, h, w, device=device)
    k[:, (kernel_size * kernel_size) // 2] = 1.0
    return k


class MF2M(Attack):
    """Adversarial filtering Delaunay-based masking.

    Paper defaults: noise ``noise_eps=0.01`` (PGD, ``noise_step=0.001``, ``noise_steps=40``, weight
    ``alpha=1``), kernels ``kernel_size=5``, ``kernel_lr=0.1``, ``kernel_steps=160``, weight ``beta=1``.
    Open choices (see docs/attacks.md): ``kernel_update`` "raw" (K ← K + lr·∇K, the paper's formula)
    or "sign"; ``kernel_norm`` "none" or "sum1" (re-normalise every kernel to sum 1 after each step);
    the filtered image is clipped to [0, 1].
    """

    name = "mf2m"
    params = ("noise_eps", "noise_step", "noise_steps", "alpha", "kernel_size", "kernel_lr", "kernel_steps",
              "beta", "kernel_update", "kernel_norm", "random_start", "seed")

    def __init__(self, fr, md=None, *, noise_eps: float = 0.01, noise_step: float = 0.001, noise_steps: int = 40,
                 alpha: float = 1.0, kernel_size: int = 5, kernel_lr: float = 0.1, kernel_steps: int = 160,
                 beta: float = 1.0, kernel_update: str = "raw", kernel_norm: str = "none",
                 random_start: bool = False, seed: int = 0):
        super().__init__(fr, md, alpha=alpha, seed=seed)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, not {kernel_size}")
        if kernel_update not in KERNEL_UPDATES:
            raise ValueError(f"kernel_update must be one of {KERNEL_UPDATES}, not {kernel_update!r}")
        if kernel_norm not in KERNEL_NORMS:
            raise ValueError(f"kernel_norm must be one of {KERNEL_NORMS}, not {kernel_norm!r}")
        self.noise_eps, self.noise_step, self.noise_steps = float(noise_eps), float(noise_step), int(noise_steps)
        self.kernel_size, self.kernel_lr, self.kernel_steps = int(kernel_size), float(kernel_lr), int(kernel_steps)
        self.beta, self.kernel_update, self.kernel_norm = float(beta), kernel_update, kernel_norm
        self.random_start = bool(random_start)

    def forward(self, images: torch.Tensor, regions: torch.Tensor, ref: torch.Tensor, keys: list[str]) -> torch.Tensor:
        """Algorithm 1: Î = PGD(I_DM); optimise kernels K; return K ⊛ Î."""
        noised = pgd(self, images, regions, ref, keys, eps=self.noise_eps, step=self.noise_step,
                     steps=self.noise_steps, random_start=self.random_start)
        return self.filter_attack(noised, regions, ref)

    def filter_attack(self, noised: torch.Tensor, regions: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """The kernel stage alone, on already-noised images Î."""
        n, _, h, w = noised.shape
        kernels = identity_kernels(n, self.kernel_size, h, w, noised.device)
        if self.kernel_steps == 0:
            return noised
        stack = shifted_stack(noised, self.kernel_size)
        inside = regions > 0
        for _ in range(self.kernel_steps):
            kernels = kernels.detach().requires_grad_(True)
            filtered = self._render(stack, kernels, noised, inside)
            loss = self.objective(filtered, ref, weight=self.beta)
            (grad,) = torch.autograd.grad(loss.sum(), kernels)
            step = grad if self.kernel_update == "raw" else grad.sign()
            with torch.no_grad():
                kernels = kernels + self.kernel_lr * step * regions
                if self.kernel_norm == "sum1":
                    total = kernels.sum(dim=1, keepdim=True)
                    kernels = torch.where(total.abs() > 1e-6, kernels / total, kernels)
        with torch.no_grad():
            return self._render(stack, kernels, noised, inside)

    @staticmethod
    def _render(stack: torch.Tensor, kernels: torch.Tensor, noised: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
        filtered = torch.clamp(pixelwise_filter(stack, kernels), 0.0, 1.0)
        return torch.where(inside, filtered, noised)
