"""Candidates of the protocol's top-K thresholds and per-probe top lists: extraction of the entries of a
score block above a threshold, and ``NegTopK``, a set of (score, probe, distractor) that surely holds the K
largest exact negatives."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .scores import dot64, f32_below

if TYPE_CHECKING:
    from .engine import Problem


def extract_ge(scores, thr, cols: np.ndarray, strict: bool = False):
    """(probe rows, column ids, float32 scores) of entries ≥ ``thr`` (> if strict); thr scalar or (n_p,).

    numpy on the CPU (a zero-copy view of the torch block), torch on a GPU; results on the CPU.
    """
    if scores.device.type == "cpu":
        s = scores.numpy()
        t = thr if np.isscalar(thr) else np.asarray(thr, np.float32)[:, None]
        mask = s > t if strict else s >= t
        flat = np.flatnonzero(mask)
        b = s.shape[1]
        return flat // b, cols[flat % b], s.reshape(-1)[flat]
    import torch

    t = thr if np.isscalar(thr) else torch.as_tensor(np.asarray(thr, np.float32), device=scores.device)[:, None]
    mask = scores > t if strict else scores >= t
    idx = mask.nonzero()
    v = scores[idx[:, 0], idx[:, 1]].cpu().numpy()
    idx = idx.cpu().numpy()
    return idx[:, 0], cols[idx[:, 1]], v


@dataclass
class NegTopK:
    """Candidates (float32 score, probe, distractor) that surely contain the K largest exact negatives."""

    k: int
    eps: float
    vals: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    probe: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    dist: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    cut: float = -math.inf
    _pending: list = field(default_factory=list, repr=False)  # queued (vals, probe, dist) chunks
    _n_pending: int = 0

    def block_cut(self, scores) -> float:
        """Lowest float32 score of this block that can matter (uses the block's K-th largest early on, unless
        ``scores`` is None)."""
        if self.cut == -math.inf and self.vals.size + self._n_pending >= self.k:
            self.prune()  # K candidates are known: their K-th largest bounds what can still matter
        cut = self.cut
        if self.vals.size + self._n_pending < self.k and scores is not None and scores.numel() > self.k:
            if scores.device.type == "cpu":
                flat = scores.numpy().reshape(-1)
                kth = float(np.partition(flat, flat.size - self.k)[flat.size - self.k])
            else:
                import torch

                flat = scores.reshape(-1)
                kth = float(torch.kthvalue(flat, flat.numel() - self.k + 1).values)
            cut = max(cut, kth - 2 * self.eps)
        return f32_below(cut) if math.isfinite(cut) else -math.inf

    def add(self, p: np.ndarray, d: np.ndarray, v: np.ndarray, cut: float) -> None:
        """Append the extracted entries scoring ≥ ``cut`` (from ``block_cut``)."""
        keep = v >= cut
        if keep.any():
            self._append(v[keep], p[keep], d[keep])

    def offer(self, scores, cols: np.ndarray) -> None:
        """Add the candidates of a (n_p, b) torch score block whose columns are distractors ``cols``."""
        if scores.numel() == 0:
            return
        cut = self.block_cut(scores)
        p, d, v = extract_ge(scores, cut, cols)
        if p.size:
            self._append(v, p, d)

    def _append(self, vals, probe, dist) -> None:
        """Queue new candidates (O(new) per block); they join the arrays on ``flush``/``prune``."""
        self._pending.append((vals.astype(np.float32), probe.astype(np.int32), dist.astype(np.int64)))
        self._n_pending += int(vals.size)
        if self.vals.size + self._n_pending > 2 * self.k + 1024:
            self.prune()

    def flush(self) -> None:
        """Move the queued candidates into ``vals``/``probe``/``dist``."""
        if self._pending:
            parts = [(self.vals, self.probe, self.dist)] + self._pending
            self.vals, self.probe, self.dist = (np.concatenate(c) for c in zip(*parts))
            self._pending, self._n_pending = [], 0

    def prune(self) -> None:
        """Drop candidates that cannot reach the exact top K (more than 2·eps below the K-th float32)."""
        self.flush()
        if self.vals.size >= self.k:
            theta = float(np.partition(self.vals, self.vals.size - self.k)[self.vals.size - self.k])
            self.cut = max(self.cut, theta - 2 * self.eps)
            keep = self.vals >= self.cut
            self.vals, self.probe, self.dist = self.vals[keep], self.probe[keep], self.dist[keep]

    def merged(self, other: NegTopK) -> NegTopK:
        """Union of two candidate sets (for disjoint distractor shards)."""
        self.flush()
        other.flush()
        out = NegTopK(max(self.k, other.k), self.eps, cut=max(self.cut, other.cut))
        out._append(
            np.concatenate([self.vals, other.vals]),
            np.concatenate([self.probe, other.probe]),
            np.concatenate([self.dist, other.dist]),
        )
        out.prune()
        return out

    def kth_largest(self, k: int, problem: Problem) -> float:
        """Exact k-th largest negative score (k ≤ self.k), refining only the ±2·eps window."""
        self.flush()
        v = self.vals
        if k > v.size:
            raise RuntimeError(f"internal: {k}-th largest negative asked, {v.size} candidates kept")
        theta = float(np.partition(v, v.size - k)[v.size - k])
        above = int((v > theta + 2 * self.eps).sum())
        win = np.flatnonzero((v >= theta - 2 * self.eps) & (v <= theta + 2 * self.eps))
        exact = np.sort(dot64(problem.probes, problem.distractors, self.probe[win], self.dist[win]))[::-1]
        return float(exact[k - above - 1])


def keep_top(vals: np.ndarray, idx: np.ndarray, bound: np.ndarray, k: int):
    """Keep the k best float32 candidates per row (ties by lower index), raising the bound by the rest."""
    if vals.shape[1] <= k:
        return vals, idx, bound
    order = row_order(vals, idx)
    vals = np.take_along_axis(vals, order, 1)
    idx = np.take_along_axis(idx, order, 1)
    bound = np.maximum(bound, vals[:, k:].max(axis=1))
    return vals[:, :k], idx[:, :k], bound


def row_order(vals: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per-row order by descending score then ascending index."""
    if vals.dtype == np.float32 and (idx.size == 0 or (idx.min() >= -1 and idx.max() < 2**32 - 1)):
        # one uint64 key per entry: the score's order-preserving bits (descending), then index + 1
        u = (vals + np.float32(0.0)).view(np.uint32)  # −0 → +0: equal scores tie on the index
        ordered = np.where(u >> np.uint32(31), ~u, u | np.uint32(0x80000000))
        key = ((~ordered).astype(np.uint64) << np.uint64(32)) | (idx + 1).astype(np.uint64)
        return np.argsort(key, axis=1)
    n, m = vals.shape
    rows = np.repeat(np.arange(n), m)
    order = np.lexsort((idx.ravel(), -vals.ravel().astype(np.float64), rows))
    return order.reshape(n, m) - np.arange(n)[:, None] * m
