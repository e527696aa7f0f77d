"""MF²M (paper Sec. 3.3–3.4, Eq. 6–7, Algorithm 1): small PGD noise, then adversarial pixel-wise filtering.

Every pixel p inside the region gets its own K×K kernel ``K_p`` (shared by the three colour
channels, as in the paper's ``K ∈ R^{H×W×K²}``), initialised to the identity (centre 1, others 0).
The filtered image is ``I'(p) = Σ_k K_p[k] · Î(p + offset_k)``: the K² shifted copies of Î are built
once with ``torch.nn.functional.unfold`` and each iteration is a weighted sum, so filtering costs
about as much as one extra element-wise pass. Outside the region the kernels stay the identity.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .base import Attack, pgd

KERNEL_UPDATES = ("raw", "sign")
KERNEL_NORMS = ("none", "sum1", "simplex")


def shifted_stack(images: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """``(n, c, K², H, W)``: the K² shifted copies of ``images`` (edge pixels replicated)."""
    n, c, h, w = images.shape
    r = kernel_size // 2
    padded = F.pad(images, (r, r, r, r), mode="replicate")
    return F.unfold(padded, kernel_size).view(n, c, kernel_size * kernel_size, h, w)


def pixelwise_filter(stack: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Apply per-pixel kernels ``(n, K², H, W)`` to a shifted stack ``(n, c, K², H, W)`` → ``(n, c, H, W)``."""
    return (stack * kernels[:, None]).sum(dim=2)


def project_simplex(kernels: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of every kernel ``(n, K², H, W)`` (along dim 1) onto the probability simplex.

    The result is non-negative and sums to 1 per pixel, so the filtered pixel is a convex combination
    of its neighbours (Duchi et al. 2008, sort-based, exact); kernels already on the simplex are unchanged.
    """
    k = kernels.shape[1]
    u = torch.sort(kernels, dim=1, descending=True).values
    css = torch.cumsum(u, dim=1) - 1.0
    ind = torch.arange(1, k + 1, device=kernels.device, dtype=kernels.dtype).view(1, k, *([1] * (kernels.dim() - 2)))
    rho = ((u - css / ind) > 0).sum(dim=1, keepdim=True).clamp(min=1)
    theta = torch.gather(css, 1, rho - 1) / rho.to(kernels.dtype)
    return torch.clamp(kernels - theta, min=0.0)


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
    or "sign"; ``kernel_batch`` (32): the number of images whose *mean* loss the paper's raw step is
    taken on, so each image's kernels move by ``kernel_lr / kernel_batch`` × the gradient of its own
    loss (independent of the batch size actually used; 1 = the step on each image's own loss); ``kernel_norm`` after each step: "none", "sum1" (rescale every kernel to sum 1) or
    "simplex" (project every kernel onto non-negative weights summing to 1, so each output pixel is a
    convex combination of its neighbours); ``kernel_bound`` (> 0) clips every weight's deviation from
    the identity kernel to ±bound (0 = no bound). The filtered image is clipped to [0, 1].
    """

    name = "mf2m"
    params = (
        "noise_eps",
        "noise_step",
        "noise_steps",
        "alpha",
        "kernel_size",
        "kernel_lr",
        "kernel_steps",
        "beta",
        "kernel_update",
        "kernel_batch",
        "kernel_norm",
        "kernel_bound",
        "random_start",
        "seed",
    )

    def __init__(
        self,
        fr,
        md=None,
        *,
        noise_eps: float = 0.01,
        noise_step: float = 0.001,
        noise_steps: int = 40,
        alpha: float = 1.0,
        kernel_size: int = 5,
        kernel_lr: float = 0.1,
        kernel_steps: int = 160,
        beta: float = 1.0,
        kernel_update: str = "raw",
        kernel_batch: int = 32,
        kernel_norm: str = "none",
        kernel_bound: float = 0.0,
        random_start: bool = False,
        seed: int = 0,
        precision: str = "fp32",
    ):
        super().__init__(fr, md, alpha=alpha, seed=seed, precision=precision)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, not {kernel_size}")
        if kernel_update not in KERNEL_UPDATES:
            raise ValueError(f"kernel_update must be one of {KERNEL_UPDATES}, not {kernel_update!r}")
        if kernel_norm not in KERNEL_NORMS:
            raise ValueError(f"kernel_norm must be one of {KERNEL_NORMS}, not {kernel_norm!r}")
        if kernel_batch < 1:
            raise ValueError(f"kernel_batch must be ≥ 1, not {kernel_batch}")
        if kernel_bound < 0:
            raise ValueError(f"kernel_bound must be ≥ 0 (0 = no bound), not {kernel_bound}")
        self.noise_eps, self.noise_step, self.noise_steps = float(noise_eps), float(noise_step), int(noise_steps)
        self.kernel_size, self.kernel_lr, self.kernel_steps = int(kernel_size), float(kernel_lr), int(kernel_steps)
        self.beta, self.kernel_update, self.kernel_norm = float(beta), kernel_update, kernel_norm
        self.kernel_bound = float(kernel_bound)
        self.kernel_batch = int(kernel_batch)
        self.random_start = bool(random_start)

    def forward(self, images: torch.Tensor, regions: torch.Tensor, ref: torch.Tensor, keys: list[str]) -> torch.Tensor:
        """Algorithm 1: Î = PGD(I_DM); optimise kernels K; return K ⊛ Î."""
        noised = pgd(
            self,
            images,
            regions,
            ref,
            keys,
            eps=self.noise_eps,
            step=self.noise_step,
            steps=self.noise_steps,
            random_start=self.random_start,
        )
        return self.filter_attack(noised, regions, ref)

    def filter_attack(
        self,
        noised: torch.Tensor,
        regions: torch.Tensor,
        ref: torch.Tensor,
        trace: Callable[[int, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """The kernel stage alone, on already-noised images Î.

        ``trace(i, image)`` (optional) is called after every update with the filtered image of the
        kernels after ``i`` steps (for strength/PSNR curves such as the paper's Fig. 7).
        """
        n, _, h, w = noised.shape
        kernels = identity_kernels(n, self.kernel_size, h, w, noised.device)
        if self.kernel_steps == 0:
            return noised
        stack = shifted_stack(noised, self.kernel_size)
        inside = regions > 0
        ident = kernels.clone()
        for i in range(self.kernel_steps):
            grad, _ = self.objective_gradient(
                kernels, lambda k: self._render(stack, k, noised, inside), ref, weight=self.beta
            )
            with torch.no_grad():
                kernels = self._update(kernels, grad, regions, ident)
                if trace is not None:
                    trace(i + 1, self._render(stack, kernels, noised, inside))
        with torch.no_grad():
            return self._render(stack, kernels, noised, inside)

    def _update(
        self, kernels: torch.Tensor, grad: torch.Tensor, regions: torch.Tensor, ident: torch.Tensor
    ) -> torch.Tensor:
        """One ascent step on the kernels (inside the region), then bound and normalisation."""
        # raw: the paper's step on the mean loss of kernel_batch images; sign steps do not depend on it
        step = grad / self.kernel_batch if self.kernel_update == "raw" else grad.sign()
        kernels = kernels + self.kernel_lr * step * regions
        if self.kernel_bound > 0:
            kernels = ident + torch.clamp(kernels - ident, -self.kernel_bound, self.kernel_bound)
        if self.kernel_norm == "sum1":
            total = kernels.sum(dim=1, keepdim=True)
            kernels = torch.where(total.abs() > 1e-6, kernels / total, kernels)
        elif self.kernel_norm == "simplex":
            kernels = project_simplex(kernels)
        return kernels

    @staticmethod
    def _render(stack: torch.Tensor, kernels: torch.Tensor, noised: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
        filtered = torch.clamp(pixelwise_filter(stack, kernels), 0.0, 1.0)
        return torch.where(inside, filtered, noised)
