"""Small real torch models with seeded random weights for the attack tests (no files needed).

They implement the ``benchmark.models.base`` interfaces exactly as the shipped models do, so the
attack pipeline runs on them unchanged; only their weights are random.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmark.models.base import MaskDetector, Preprocessing, Recognizer


class TinyNet(nn.Module):
    """conv-BN-PReLU stack → linear; ``normalise`` gives unit-norm features (FR), else logits (MD)."""

    def __init__(self, out_dim: int, normalise: bool, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        chans = [3, 16, 32, 32]
        layers = []
        with torch.random.fork_rng():  # the layers' default (bias) initialisation: seeded too, global RNG untouched
            torch.manual_seed(seed)
            for cin, cout in zip(chans[:-1], chans[1:]):
                layers += [nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout), nn.PReLU(cout)]
            self.body = nn.Sequential(*layers)
            self.head = nn.Linear(32 * 14 * 14, out_dim)
        self.normalise = normalise
        with torch.no_grad():
            for p in self.parameters():
                if p.dim() > 1:
                    p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p[0].numel()) ** 0.5)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.body((x - 0.5) / 0.5).flatten(1))
        return F.normalize(y, dim=1) if self.normalise else y


class TinyRecognizer(Recognizer):
    name, dim, differentiable = "tiny-fr", 64, True
    preprocessing = Preprocessing((112, 112), "arcface112", "RGB", "(x-0.5)/0.5")

    def __init__(self, seed: int = 1):
        self.seed = seed

    def torch_module(self, device: str = "cpu"):
        return TinyNet(self.dim, True, self.seed).to(device)

    def embed(self, faces: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255
            return self.torch_module()(x).numpy()

    def weights_hash(self) -> str:
        return hashlib.sha256(f"tiny-fr-{self.seed}".encode()).hexdigest()


class TinyMaskDetector(MaskDetector):
    name, differentiable = "tiny-md", True

    def __init__(self, seed: int = 2):
        self.seed = seed

    def torch_module(self, device: str = "cpu"):
        return TinyNet(2, False, self.seed).to(device)

    def p_masked(self, faces: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255
            return torch.softmax(self.torch_module()(x), 1)[:, 1].numpy()

    def weights_hash(self) -> str:
        return hashlib.sha256(f"tiny-md-{self.seed}".encode()).hexdigest()
