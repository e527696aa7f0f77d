"""AdvNoise-DM (paper Sec. 3.2, Eq. 4–5): PGD noise on the DM image, confined to the faced-mask region."""

from __future__ import annotations

import torch

from .base import Attack, pgd


class AdvNoise(Attack):
    """PGD (sign steps, L∞ ball) maximising FR distance − α·CE(MD, not masked) inside the region.

    Paper defaults: ``eps=0.04`` (images in [0, 1]), ``step=0.001``, ``steps=40``, ``alpha=1``.
    ``random_start`` is off by default: with step × steps = eps the paper's PSNR (38.8 dB) implies the
    noise does not start at a uniform random point of the ball (that alone would cost ~33 dB).
    """

    name = "advnoise-dm"
    params = ("eps", "step", "steps", "alpha", "random_start", "seed")

    def __init__(
        self,
        fr,
        md=None,
        *,
        eps: float = 0.04,
        step: float = 0.001,
        steps: int = 40,
        alpha: float = 1.0,
        random_start: bool = False,
        seed: int = 0,
        precision: str = "fp32",
    ):
        super().__init__(fr, md, alpha=alpha, seed=seed, precision=precision)
        self.eps, self.step, self.steps, self.random_start = float(eps), float(step), int(steps), bool(random_start)

    def forward(self, images: torch.Tensor, regions: torch.Tensor, ref: torch.Tensor, keys: list[str]) -> torch.Tensor:
        """PGD from the DM image."""
        return pgd(
            self,
            images,
            regions,
            ref,
            keys,
            eps=self.eps,
            step=self.step,
            steps=self.steps,
            random_start=self.random_start,
        )
