"""The seven FGSM-family baselines of the paper (Table 1), run on the solid-mask image inside its region.

One parameterised loop covers them all (sign steps, L∞ ball ``eps``, perturbation confined to the
region, the same objective as AdvNoise-DM); each method is a short subclass fixing its options:

=============  =====  ========  ===============  ================
method         steps  momentum  translation-inv.  input diversity
=============  =====  ========  ===============  ================
FGSM           1      –         –                –
I-FGSM         40     –         –                –
MI-FGSM        40     1         –                –
TI-FGSM        1      –         Gaussian 7×7     –
TI-MI-FGSM     40     1         Gaussian 7×7     –
DI²-FGSM       40     –         –                p = 0.5
M-DI²-FGSM     40     1         –                p = 0.5
=============  =====  ========  ===============  ================
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Attack


def gaussian_kernel(size: int, nsig: float = 3.0) -> torch.Tensor:
    """Dong et al.'s TI kernel: a ``size``×``size`` Gaussian spanning ±``nsig`` σ, summing to 1."""
    x = torch.linspace(-nsig, nsig, size, dtype=torch.float64)
    k1 = torch.exp(-0.5 * x**2)
    k2 = torch.outer(k1, k1)
    return (k2 / k2.sum()).float()


class FGSMFamily(Attack):
    """Iterative sign-gradient attacks with optional momentum (MI), translation invariance (TI) and
    input diversity (DI). ``step`` defaults to ``eps / steps``.

    ``ti_kernel``: Gaussian kernel size smoothing the gradient (0 = off); ``di_prob``: probability of
    the random resize-and-pad per iteration; ``di_scale``: the canvas is ``di_scale`` × the image
    (Xie et al. used 330/299 ≈ 1.1) and the result is resized back to the model's input size.
    """

    name = "fgsm-family"
    params = ("eps", "steps", "step", "momentum", "ti_kernel", "ti_nsig", "di_prob", "di_scale", "alpha", "seed")
    defaults: dict = {}

    def __init__(
        self,
        fr,
        md=None,
        *,
        eps: float = 0.04,
        steps: int | None = None,
        step: float | None = None,
        momentum: float | None = None,
        ti_kernel: int | None = None,
        ti_nsig: float = 3.0,
        di_prob: float | None = None,
        di_scale: float = 1.1,
        alpha: float = 1.0,
        seed: int = 0,
        precision: str = "fp32",
    ):
        super().__init__(fr, md, alpha=alpha, seed=seed, precision=precision)
        d = {"steps": 40, "momentum": 0.0, "ti_kernel": 0, "di_prob": 0.0, **self.defaults}
        self.eps = float(eps)
        self.steps = int(d["steps"] if steps is None else steps)
        self.step = float(self.eps / max(self.steps, 1) if step is None else step)
        self.momentum = float(d["momentum"] if momentum is None else momentum)
        self.ti_kernel = int(d["ti_kernel"] if ti_kernel is None else ti_kernel)
        self.ti_nsig, self.di_scale = float(ti_nsig), float(di_scale)
        self.di_prob = float(d["di_prob"] if di_prob is None else di_prob)
        if self.ti_kernel and self.ti_kernel % 2 == 0:
            raise ValueError(f"ti_kernel must be odd, not {self.ti_kernel}")
        if self.di_scale < 1.0:
            raise ValueError(f"di_scale must be ≥ 1, not {self.di_scale}")

    def forward(self, images: torch.Tensor, regions: torch.Tensor, ref: torch.Tensor, keys: list[str]) -> torch.Tensor:
        """Sign-gradient ascent from the solid-mask image."""
        gens = self.generators(keys, images.device) if self.di_prob > 0 else None
        kernel = gaussian_kernel(self.ti_kernel, self.ti_nsig).to(images.device) if self.ti_kernel else None
        x = images.clone()
        g = torch.zeros_like(images)
        for _ in range(self.steps):
            transform = self._diversity(gens) if gens is not None else None
            grad, _ = self.gradient(x, ref, transform)
            grad = grad * regions
            if kernel is not None:
                c = grad.shape[1]
                grad = F.conv2d(grad, kernel.expand(c, 1, *kernel.shape), padding=self.ti_kernel // 2, groups=c)
                grad = grad * regions
            if self.momentum:
                g = self.momentum * g + grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
            else:
                g = grad
            x = self.project(x + self.step * g.sign() * regions, images, regions, self.eps)
        return x

    def _diversity(self, gens: list[torch.Generator]):
        """A per-image random resize-and-pad (Xie et al.), drawn now, applied inside the graph."""
        thetas, apply = [], []
        for gen in gens:
            use = torch.rand((), generator=gen).item() < self.di_prob
            size = torch.rand((), generator=gen).item()  # fraction of the canvas the image fills
            ox, oy = torch.rand(2, generator=gen).tolist()  # where it sits on the canvas
            s = 1.0 / self.di_scale + size * (1.0 - 1.0 / self.di_scale)  # rnd / canvas in [1/scale, 1]
            offx, offy = ox * (1 - s), oy * (1 - s)  # canvas-relative offsets
            thetas.append([[1 / s, 0.0, (1 - 2 * offx) / s - 1], [0.0, 1 / s, (1 - 2 * offy) / s - 1]])
            apply.append(use)

        def transform(x: torch.Tensor) -> torch.Tensor:
            theta = torch.tensor(thetas, dtype=x.dtype, device=x.device)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            moved = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            mask = torch.tensor(apply, device=x.device).view(-1, 1, 1, 1)
            return torch.where(mask, moved, x)

        return transform


class FGSM(FGSMFamily):
    """FGSM (Goodfellow et al.): one step of size ``eps``."""

    name, defaults = "fgsm", {"steps": 1}


class IFGSM(FGSMFamily):
    """I-FGSM (Kurakin et al.): ``steps`` sign steps of ``eps/steps``."""

    name, defaults = "i-fgsm", {"steps": 40}


class MIFGSM(FGSMFamily):
    """MI-FGSM (Dong et al. 2018): I-FGSM with momentum μ = 1 on L1-normalised gradients."""

    name, defaults = "mi-fgsm", {"steps": 40, "momentum": 1.0}


class TIFGSM(FGSMFamily):
    """TI-FGSM (Dong et al. 2019): FGSM with the gradient smoothed by a Gaussian kernel."""

    name, defaults = "ti-fgsm", {"steps": 1, "ti_kernel": 7}


class TIMIFGSM(FGSMFamily):
    """TI-MI-FGSM: momentum + translation-invariant gradient."""

    name, defaults = "ti-mi-fgsm", {"steps": 40, "momentum": 1.0, "ti_kernel": 7}


class DI2FGSM(FGSMFamily):
    """DI²-FGSM (Xie et al.): I-FGSM on randomly resized-and-padded inputs (p = 0.5)."""

    name, defaults = "di2-fgsm", {"steps": 40, "di_prob": 0.5}


class MDI2FGSM(FGSMFamily):
    """M-DI²-FGSM: DI²-FGSM with momentum μ = 1."""

    name, defaults = "m-di2-fgsm", {"steps": 40, "di_prob": 0.5, "momentum": 1.0}


FGSM_METHODS = {cls.name: cls for cls in (FGSM, IFGSM, MIFGSM, TIFGSM, TIMIFGSM, DI2FGSM, MDI2FGSM)}
