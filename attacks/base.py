"""The common machinery of every adversarial attack (torchattacks-style).

An attack is called as ``attack(images, regions, reference)``:

* ``images``: ``(n, 3, H, W)`` float RGB in [0, 1] — the masked faces to start from (DM or solid);
* ``regions``: ``(n, 1, H, W)`` (or ``(n, H, W)``) 0/1 — where the attack may change pixels;
* ``reference``: the clean originals' FR features ``(n, d)``, or the clean images ``(n, 3, H, W)``;
* ``keys`` (optional): one string per image; random choices (random start, input diversity) are
  drawn from a generator seeded by ``(seed, key)``, so an image's result does not depend on which
  batch it is in.

The objective (paper Eq. 5/7) is maximised::

    L(x) = ||FR(x) − FR(I)||₂ − α · CE(MD(x), y=0 "not masked")

and the perturbation never leaves the region: pixels outside it are returned unchanged, bit for bit.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F


class Attack:
    """Base class: owns the models, the objective, the region mask, projection and clipping.

    ``fr``: differentiable recognizer module ``(n,3,112,112)`` [0,1] → unit-norm features.
    ``md``: differentiable mask-detector module → logits ``(n, 2)`` (class 1 = masked), or ``None``
    to attack the recognizer only. ``alpha`` weighs the mask-detection term. Both modules are put in
    eval mode and their parameters stop requiring gradients (only the input's gradient is needed).
    ``precision`` (``fp32`` default, ``bf16``, ``fp16`` on CUDA, ``auto``: :func:`benchmark.precision.attack_plan`)
    is the arithmetic of the forward+backward through FR and MD only: reduced-precision copies of the
    modules take and return float32, so images, gradients, updates and projections stay float32, and
    reference features (of clean images) are computed by the float32 ``fr``. ``fr_run``/``md_run`` are
    the modules the objective runs (``fr``/``md`` themselves in float32).
    """

    name = "attack"
    #: hyper-parameters shown in ``repr`` and recorded in manifests (subclasses extend).
    params: tuple[str, ...] = ("alpha", "seed")

    def __init__(
        self,
        fr: torch.nn.Module,
        md: torch.nn.Module | None = None,
        *,
        alpha: float = 1.0,
        seed: int = 0,
        precision: str = "fp32",
    ):
        from benchmark.precision import attack_plan, reduce_module, strict_fp32

        self.fr = _frozen(fr)
        self.md = _frozen(md) if md is not None else None
        self.alpha = float(alpha)
        self.seed = int(seed)
        self.precision = attack_plan(precision, _device_of(self.fr))
        if self.precision.reduced:
            self.fr_run = _frozen(reduce_module(self.fr, self.precision))
            self.md_run = _frozen(reduce_module(self.md, self.precision)) if self.md is not None else None
        else:
            strict_fp32(self.precision)
            self.fr_run, self.md_run = self.fr, self.md

    # ---------------------------------------------------------------- public API
    def __call__(
        self, images: torch.Tensor, regions: torch.Tensor, reference: torch.Tensor, keys: Sequence[str] | None = None
    ) -> torch.Tensor:
        """Attacked images, same shape as ``images``; unchanged outside ``regions``."""
        images, regions = self._check(images, regions)
        ref = self.reference_features(reference.to(images.device))
        keys = list(keys) if keys is not None else [str(i) for i in range(len(images))]
        if len(keys) != len(images):
            raise ValueError(f"{len(keys)} keys for {len(images)} images")
        with torch.enable_grad():
            out = self.forward(images, regions, ref, keys)
        return torch.where(regions > 0, out, images).detach()

    def forward(self, images: torch.Tensor, regions: torch.Tensor, ref: torch.Tensor, keys: list[str]) -> torch.Tensor:
        """The method itself (subclasses): returns attacked images."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Name and hyper-parameters (for manifests; ``eot_samples`` when EOT is on)."""
        eot = {"eot_samples": self.eot_samples} if self.eot_samples != 1 else {}
        return {
            "method": self.name,
            **{p: getattr(self, p) for p in self.params},
            **eot,
            "precision": self.precision.describe(),
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{p}={getattr(self, p)!r}" for p in self.params)
        return f"{type(self).__name__}({args})"

    # ---------------------------------------------------------------- objective
    @torch.no_grad()
    def reference_features(self, reference: torch.Tensor) -> torch.Tensor:
        """FR features of the clean originals (``reference`` may already be features)."""
        if reference.dim() == 4:
            return self.fr(reference).detach()
        if reference.dim() != 2:
            raise ValueError(f"reference must be features (n, d) or images (n, 3, H, W), got {tuple(reference.shape)}")
        return reference

    #: Expectation over Transformation (Athalye et al. 2018): :meth:`objective` is the mean of this many
    #: forward passes, each drawing the models' randomness anew (a stochastic defence's torch module does).
    #: Set with :func:`set_eot` (``eot_samples`` in an attack's params); 1 = a single pass.
    eot_samples: int = 1

    def objective(self, x: torch.Tensor, ref: torch.Tensor, weight: float | None = None) -> torch.Tensor:
        """Per-image objective ``(n,)``, averaged over ``eot_samples`` draws of the models' randomness (EOT)."""
        if self.eot_samples == 1:
            return self.objective_once(x, ref, weight)
        return torch.stack([self.objective_once(x, ref, weight) for _ in range(self.eot_samples)]).mean(dim=0)

    def objective_once(self, x: torch.Tensor, ref: torch.Tensor, weight: float | None = None) -> torch.Tensor:
        """Per-image objective ``(n,)``: FR distance to the original minus ``weight`` (default α) × CE(MD(x), 0)."""
        weight = self.alpha if weight is None else float(weight)
        feats = self.fr_run(x)
        dist = torch.sqrt(((feats - ref) ** 2).sum(dim=1) + 1e-12)
        if self.md is None or weight == 0:
            return dist
        logits = self.md_run(x)
        ce = F.cross_entropy(logits, torch.zeros(len(x), dtype=torch.long, device=x.device), reduction="none")
        return dist - weight * ce

    def gradient(self, x: torch.Tensor, ref: torch.Tensor, transform=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(∇ₓ Σ L, L)``: each image's own gradient (the sum keeps images independent).

        ``transform`` (e.g. input diversity) is applied to ``x`` inside the graph.
        """
        return self.objective_gradient(x, transform if transform is not None else (lambda v: v), ref)

    def objective_gradient(
        self, wrt: torch.Tensor, build, ref: torch.Tensor, weight: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(∇ Σ L(build(wrt)), L)`` with respect to ``wrt`` (images, or MF²M's kernels).

        With EOT (``eot_samples`` > 1) ``build`` runs once and each draw's objective is backpropagated to its
        input on its own, so only one draw's graph through the models is held at a time; the mean of those
        input gradients is then carried back through ``build``: the gradient of the mean objective.
        """
        wrt = wrt.detach().requires_grad_(True)
        if self.eot_samples == 1:
            loss = self.objective_once(build(wrt), ref, weight)
            (grad,) = torch.autograd.grad(loss.sum(), wrt)
            return grad, loss.detach()
        built = build(wrt)
        inner = built.detach().requires_grad_(True)
        grad_inner, total = torch.zeros_like(inner), torch.zeros(len(inner), device=inner.device)
        for _ in range(self.eot_samples):
            loss = self.objective_once(inner, ref, weight)
            (g,) = torch.autograd.grad(loss.sum(), inner)
            grad_inner += g
            total += loss.detach()
        (grad,) = torch.autograd.grad(built, wrt, grad_outputs=grad_inner / self.eot_samples)
        return grad, total / self.eot_samples

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def project(x: torch.Tensor, base: torch.Tensor, regions: torch.Tensor, eps: float) -> torch.Tensor:
        """Clip ``x`` into the L∞ ``eps``-ball around ``base``, inside ``regions`` only, and into [0, 1]."""
        delta = torch.clamp(x - base, -eps, eps) * regions
        return torch.clamp(base + delta, 0.0, 1.0)

    def generators(self, keys: Sequence[str], device: torch.device | str) -> list[torch.Generator]:
        """One generator per image, seeded by ``(seed, key)`` (CPU generators: same bytes on any device)."""
        gens = []
        for key in keys:
            g = torch.Generator(device="cpu")
            g.manual_seed((self.seed * 1_000_003 + zlib.crc32(str(key).encode())) % (2**63))
            gens.append(g)
        return gens

    @staticmethod
    def _check(images: torch.Tensor, regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (n, 3, H, W), got {tuple(images.shape)}")
        if regions.dim() == 3:
            regions = regions[:, None]
        if regions.shape[0] != images.shape[0] or regions.shape[-2:] != images.shape[-2:] or regions.shape[1] != 1:
            raise ValueError(f"regions {tuple(regions.shape)} do not match images {tuple(images.shape)}")
        return images.float(), (regions > 0).to(images.device, torch.float32)


def _device_of(module: torch.nn.Module) -> str:
    """The device of a module's first parameter or buffer (``cpu`` for a module without any)."""
    for t in list(module.parameters()) + list(module.buffers()):
        return str(t.device)
    return "cpu"


def set_eot(attack: Attack, samples: int) -> Attack:
    """Turn on Expectation over Transformation with ``samples`` draws per objective (1 = off); returns ``attack``."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"eot_samples must be an integer ≥ 1, not {samples!r}")
    attack.eot_samples = samples
    return attack


def _frozen(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def pgd(
    attack: Attack,
    images: torch.Tensor,
    regions: torch.Tensor,
    ref: torch.Tensor,
    keys: list[str],
    *,
    eps: float,
    step: float,
    steps: int,
    random_start: bool,
    trace=None,
) -> torch.Tensor:
    """Projected gradient ascent with sign steps inside the region (Madry et al.), shared by methods.

    ``trace(i, x)`` (optional) is called with the image after every step ``i`` (for strength/PSNR curves).
    """
    x = images.clone()
    if random_start:
        noise = torch.stack(
            [
                torch.empty(images.shape[1:]).uniform_(-eps, eps, generator=g)
                for g in attack.generators(keys, images.device)
            ]
        ).to(images.device)
        x = attack.project(images + noise, images, regions, eps)
    for i in range(steps):
        grad, _ = attack.gradient(x, ref)
        x = attack.project(x + step * grad.sign() * regions, images, regions, eps)
        if trace is not None:
            trace(i + 1, x)
    return x
