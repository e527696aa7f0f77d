"""Exact streaming MegaFace-protocol search: blocked GEMM over the distractors, additive partial results.

Scores are defined as the float64 inner product of the float32 unit vectors (``dot64``, always
computed on the CPU with numpy).  Blocks of probe×distractor scores are computed in float32 on the
chosen device (torch, TF32 off); a float32 score is within ``eps = gemm_error_bound(D)`` of the exact
one, whatever the summation order of the BLAS/cuBLAS kernel.  Every decision whose outcome could
change inside that window (a negative within ``eps`` of a positive score, of a top-K threshold, of a
retrieved match) is recomputed with ``dot64``; all others are decided from the float32 score, which
is safe by the bound.  Hence every count — and so every metric — is that of the float64 scores,
identical on every device and block size.

A ``Partial`` holds additive state for the distractor columns it has seen (counts, per-probe rank
histograms, AUC numerator, candidate sets for the top-K thresholds and matches); ``merge`` combines
partials from different gallery shards / processes / GPUs, and ``finalize`` turns one into metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

_REFINE_CHUNK = 1 << 16


def gemm_error_bound(dim: int) -> float:
    """Rigorous bound on |float32 dot − exact dot| for unit vectors of ``dim`` components, any order.

    γ_n = n·u/(1−n·u) with u = 2⁻²⁴ (Higham, Thm 3.1) times Σ|x_i y_i| ≤ ‖x‖‖y‖ ≤ 1+1e-6, plus the
    float64 reference's own (tiny) rounding.
    """
    u = 2.0 ** -24
    gamma = dim * u / (1 - dim * u)
    return gamma * (1 + 1e-6) + 4 * dim * 2.0 ** -53


def dot64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Canonical score of row pairs: float64 sum of products of the float32 components (numpy, CPU)."""
    out = np.empty(a.shape[0], dtype=np.float64)
    for lo in range(0, a.shape[0], _REFINE_CHUNK):
        hi = min(lo + _REFINE_CHUNK, a.shape[0])
        out[lo:hi] = np.einsum("ij,ij->i", a[lo:hi].astype(np.float64), b[lo:hi].astype(np.float64))
    return out


@dataclass
class Problem:
    """Everything a block needs: features, positive pairs and their exact scores, settings."""

    probes: np.ndarray            # (n_p, D) float32 unit rows
    mates: np.ndarray             # (n_m, D)
    distractors: np.ndarray       # (n_d, D)
    pair_probe: np.ndarray        # (N_pos,) probe index of each positive pair
    pair_mate: np.ndarray         # (N_pos,) mate index
    pair_slot: np.ndarray         # (N_pos,) position of the pair's score in its probe's sorted row
    pos_scores: np.ndarray        # (N_pos,) float64 exact scores
    pos_table: np.ndarray         # (n_p, m_max) float64, each row sorted ascending, padded with +inf
    sorted_pos: np.ndarray        # (N_pos,) all positive scores ascending
    eps: float
    fars: list[float]             # FARs whose exact threshold is needed (metrics + ROC grid)
    sweep_sizes: list[int]        # nested distractor subset sizes (< n_d), ascending
    perm_pos: np.ndarray | None   # (n_d,) position of each distractor in the seeded permutation
    topk: int
    mate_excluded: np.ndarray     # (n_p, n_m) bool: same key (an image is never its own match)

    @property
    def n_pos(self) -> int:
        return int(self.pos_scores.shape[0])

    @property
    def m_max(self) -> int:
        return int(self.pos_table.shape[1])

    @property
    def low(self) -> float:
        return float(self.sorted_pos[0]) if self.n_pos else math.inf

    def sizes_with_full(self) -> list[int]:
        return list(self.sweep_sizes) + [self.distractors.shape[0]]

    def k_for(self, n_neg: int, far: float) -> int:
        """Index (1-based) of the threshold negative: ⌊far·N_neg⌋ + 1."""
        return int(math.floor(far * n_neg)) + 1


def positive_pairs(probe_labels: np.ndarray, probe_keys: np.ndarray, mate_labels: np.ndarray,
                   mate_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probe index, mate index) of every pair with the same label ≥ 0 and different keys."""
    order = np.argsort(mate_labels, kind="stable")
    sl = mate_labels[order]
    left = np.searchsorted(sl, probe_labels, "left")
    right = np.searchsorted(sl, probe_labels, "right")
    counts = np.where(probe_labels >= 0, right - left, 0)
    pp = np.repeat(np.arange(len(probe_labels)), counts)
    starts = np.repeat(left, counts)
    offs = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    mm = order[starts + offs]
    keep = probe_keys[pp] != mate_keys[mm]
    return pp[keep].astype(np.int64), mm[keep].astype(np.int64)


def build_problem(probes, probe_keys, probe_labels, mates, mate_keys, mate_labels, distractors,
                  fars, sweep_sizes=(), seed: int = 0, topk: int = 50) -> Problem:
    """Positive pairs with exact scores, per-probe sorted tables, the sweep permutation."""
    pp, mm = positive_pairs(probe_labels, probe_keys, mate_labels, mate_keys)
    scores = dot64(probes[pp], mates[mm])
    order = np.lexsort((mm, scores, pp))  # by probe, then score, then mate
    pp, mm, scores = pp[order], mm[order], scores[order]
    n_p = probes.shape[0]
    counts = np.bincount(pp, minlength=n_p)
    m_max = max(int(counts.max()) if counts.size else 0, 1)
    first = np.cumsum(counts) - counts
    slot = np.arange(len(pp)) - first[pp]
    table = np.full((n_p, m_max), np.inf)
    table[pp, slot] = scores
    n_d = distractors.shape[0]
    sizes = sorted({int(s) for s in sweep_sizes if 0 < int(s) < n_d})
    perm_pos = None
    if sizes:
        perm = np.random.default_rng(seed).permutation(n_d)
        perm_pos = np.empty(n_d, dtype=np.int64)
        perm_pos[perm] = np.arange(n_d)
    excl = probe_keys[:, None] == mate_keys[None, :] if len(mate_keys) else np.zeros((n_p, 0), bool)
    return Problem(probes, mates, distractors, pp, mm, slot, scores, table, np.sort(scores),
                   gemm_error_bound(probes.shape[1]), sorted(set(float(f) for f in fars)), sizes, perm_pos,
                   int(topk), excl)


# ------------------------------------------------------------------------------------ top-K negatives

@dataclass
class NegTopK:
    """Candidates (float32 score, probe, distractor) that surely contain the K largest exact negatives."""

    k: int
    eps: float
    vals: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    probe: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    dist: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    cut: float = -math.inf

    def offer(self, scores, cols: np.ndarray) -> None:
        """Add the candidates of a (n_p, b) torch score block whose columns are distractors ``cols``."""
        import torch
        if scores.numel() == 0:
            return
        cut = self.cut
        if self.vals.size < self.k and scores.numel() > self.k:
            flat = scores.reshape(-1)
            kth = float(torch.kthvalue(flat, flat.numel() - self.k + 1).values)
            cut = max(cut, kth - 2 * self.eps)
        mask = scores >= cut if math.isfinite(cut) else torch.ones_like(scores, dtype=torch.bool)
        idx = mask.nonzero()
        if idx.shape[0] == 0:
            return
        vals = scores[idx[:, 0], idx[:, 1]].cpu().numpy()
        idx = idx.cpu().numpy()
        self._append(vals, idx[:, 0].astype(np.int32), cols[idx[:, 1]])

    def _append(self, vals, probe, dist) -> None:
        self.vals = np.concatenate([self.vals, vals.astype(np.float32)])
        self.probe = np.concatenate([self.probe, probe.astype(np.int32)])
        self.dist = np.concatenate([self.dist, dist.astype(np.int64)])
        if self.vals.size > 2 * self.k + 1024:
            self.prune()

    def prune(self) -> None:
        """Drop candidates that cannot reach the exact top K (more than 2·eps below the K-th float32)."""
        if self.vals.size >= self.k:
            theta = float(np.partition(self.vals, self.vals.size - self.k)[self.vals.size - self.k])
            self.cut = max(self.cut, theta - 2 * self.eps)
            keep = self.vals >= self.cut
            self.vals, self.probe, self.dist = self.vals[keep], self.probe[keep], self.dist[keep]

    def merged(self, other: "NegTopK") -> "NegTopK":
        """Union of two candidate sets (for disjoint distractor shards)."""
        out = NegTopK(max(self.k, other.k), self.eps, cut=max(self.cut, other.cut))
        out._append(np.concatenate([self.vals, other.vals]), np.concatenate([self.probe, other.probe]),
                    np.concatenate([self.dist, other.dist]))
        out.prune()
        return out

    def kth_largest(self, k: int, problem: Problem) -> float:
        """Exact k-th largest negative score (k ≤ self.k), refining only the ±2·eps window."""
        v = self.vals
        if k > v.size:
            raise RuntimeError(f"internal: {k}-th largest negative asked, {v.size} candidates kept")
        theta = float(np.partition(v, v.size - k)[v.size - k])
        above = int((v > theta + 2 * self.eps).sum())
        win = np.flatnonzero((v >= theta - 2 * self.eps) & (v <= theta + 2 * self.eps))
        exact = np.sort(dot64(problem.probes[self.probe[win]], problem.distractors[self.dist[win]]))[::-1]
        return float(exact[k - above - 1])


# ------------------------------------------------------------------------------------------ partials

@dataclass
class Partial:
    """Additive search state over a set of distractor columns (see module docstring)."""

    n_cols: int
    rank_hist: np.ndarray          # (n_p, m_max+1): #negatives beating exactly the k lowest positives of p
    auc2: int                      # Σ_neg 2·#{pos > s} + #{pos = s}
    first_beater: np.ndarray       # (n_p, m_max+1): min sweep position of such negatives (sweep only)
    tops: dict[int, NegTopK]       # per subset size (the full size included)
    match_vals: np.ndarray         # (n_p, k') float32 best gallery scores so far
    match_idx: np.ndarray          # (n_p, k') int64 gallery index (mates first, then distractors)
    match_bound: np.ndarray        # (n_p,) float32: every dropped gallery item scores ≤ this (float32)
    n_refined: int = 0

    @classmethod
    def empty(cls, problem: Problem) -> "Partial":
        """State before any column is seen."""
        n_p, m = problem.probes.shape[0], problem.m_max
        tops = {size: NegTopK(problem.k_for(n_p * size, max(problem.fars)) if problem.fars else 1, problem.eps)
                for size in problem.sizes_with_full()}
        return cls(0, np.zeros((n_p, m + 1), np.int64), 0,
                   np.full((n_p, m + 1), np.iinfo(np.int64).max, np.int64), tops,
                   np.full((n_p, 0), -np.inf, np.float32), np.zeros((n_p, 0), np.int64),
                   np.full(n_p, -np.inf, np.float32))


def merge(a: Partial, b: Partial) -> Partial:
    """Combine partials of disjoint distractor column sets (associative, commutative)."""
    vals = np.concatenate([a.match_vals, b.match_vals], axis=1)
    idx = np.concatenate([a.match_idx, b.match_idx], axis=1)
    bound = np.maximum(a.match_bound, b.match_bound)
    vals, idx, bound = _keep_top(vals, idx, bound, max(a.match_vals.shape[1], b.match_vals.shape[1]))
    return Partial(a.n_cols + b.n_cols, a.rank_hist + b.rank_hist, a.auc2 + b.auc2,
                   np.minimum(a.first_beater, b.first_beater),
                   {s: a.tops[s].merged(b.tops[s]) for s in a.tops}, vals, idx, bound,
                   a.n_refined + b.n_refined)


def _keep_top(vals: np.ndarray, idx: np.ndarray, bound: np.ndarray, k: int):
    """Keep the k best float32 candidates per row (ties by lower index), raising the bound by the rest."""
    if vals.shape[1] <= k:
        return vals, idx, bound
    order = _row_order(vals, idx)
    vals = np.take_along_axis(vals, order, 1)
    idx = np.take_along_axis(idx, order, 1)
    bound = np.maximum(bound, vals[:, k:].max(axis=1))
    return vals[:, :k], idx[:, :k], bound


def _row_order(vals: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per-row order by descending score then ascending index."""
    n, m = vals.shape
    rows = np.repeat(np.arange(n), m)
    order = np.lexsort((idx.ravel(), -vals.ravel().astype(np.float64), rows))
    return order.reshape(n, m) - np.arange(n)[:, None] * m


# ------------------------------------------------------------------------------------------ the block

def _band_contributions(part: Partial, problem: Problem, p: np.ndarray, d: np.ndarray, v32: np.ndarray) -> None:
    """Exact AUC / rank / sweep contributions of negatives whose float32 score is ≥ lowest positive − eps."""
    eps, sp = problem.eps, problem.sorted_pos
    n_pos = problem.n_pos
    m1 = problem.m_max + 1
    for lo in range(0, p.size, _REFINE_CHUNK):
        pc, dc = p[lo:lo + _REFINE_CHUNK], d[lo:lo + _REFINE_CHUNK]
        s = v32[lo:lo + _REFINE_CHUNK].astype(np.float64)
        a = np.searchsorted(sp, s - eps, "left")
        b = np.searchsorted(sp, s + eps, "right")
        amb = np.flatnonzero(a != b)  # a positive lies within eps: decide with the exact score
        if amb.size:
            s[amb] = dot64(problem.probes[pc[amb]], problem.distractors[dc[amb]])
            part.n_refined += int(amb.size)
        left = np.searchsorted(sp, s, "left")
        right = np.searchsorted(sp, s, "right")
        part.auc2 += int((2 * (n_pos - right) + (right - left)).sum())
        k = (problem.pos_table[pc] < s[:, None]).sum(axis=1)  # positives of the probe strictly below
        part.rank_hist += np.bincount(pc * m1 + k, minlength=part.rank_hist.size).reshape(part.rank_hist.shape)
        if problem.perm_pos is not None:
            np.minimum.at(part.first_beater.reshape(-1), pc * m1 + k, problem.perm_pos[dc])


def process_block(part: Partial, problem: Problem, probes_dev, block_dev, col0: int) -> None:
    """Add distractor columns ``col0 … col0+b`` (``block_dev``: their features on the device) to ``part``."""
    import torch
    scores = probes_dev @ block_dev.T
    n_p, b = scores.shape
    cols = np.arange(col0, col0 + b)
    part.n_cols += b
    if problem.n_pos:
        band = scores >= (problem.low - problem.eps)
        idx = band.nonzero()
        n_band = int(idx.shape[0])
        part.auc2 += 2 * problem.n_pos * (n_p * b - n_band)  # surely below every positive
        if n_band:
            v32 = scores[idx[:, 0], idx[:, 1]].cpu().numpy()
            idx = idx.cpu().numpy()
            _band_contributions(part, problem, idx[:, 0], cols[idx[:, 1]], v32)
    if problem.fars:
        for size, top in part.tops.items():
            if size == problem.distractors.shape[0]:
                top.offer(scores, cols)
            else:
                sel = np.flatnonzero(problem.perm_pos[col0:col0 + b] < size)
                if sel.size:
                    top.offer(scores[:, torch.as_tensor(sel, device=scores.device)], cols[sel])
    _offer_matches(part, problem, scores, problem.mates.shape[0] + col0)


def _offer_matches(part: Partial, problem: Problem, scores, gallery0: int) -> None:
    """Merge a block's best k' float32 scores per probe into the running candidates."""
    import torch
    kk = problem.topk + 8
    if problem.topk <= 0 or scores.shape[1] == 0:
        return
    k = min(kk, scores.shape[1])
    top = torch.topk(scores, k, dim=1)
    vals = top.values.cpu().numpy()
    idx = top.indices.cpu().numpy().astype(np.int64) + gallery0
    bound = part.match_bound
    if scores.shape[1] > k:
        bound = np.maximum(bound, vals[:, -1])
    vals = np.concatenate([part.match_vals, vals], axis=1)
    idx = np.concatenate([part.match_idx, idx], axis=1)
    part.match_vals, part.match_idx, part.match_bound = _keep_top(vals, idx, bound, kk)


def mates_partial(problem: Problem, probes_dev, mates_dev) -> Partial:
    """Top-k retrieval state for the mates (part of the gallery, not negatives)."""
    part = Partial.empty(problem)
    if problem.mates.shape[0]:
        import torch
        scores = probes_dev @ mates_dev.T
        excl = torch.as_tensor(problem.mate_excluded, device=scores.device)
        scores = scores.masked_fill(excl, -math.inf)
        _offer_matches(part, problem, scores, 0)
    return part


# ------------------------------------------------------------------------------------------ finalize

def rank_counts(part: Partial, problem: Problem) -> np.ndarray:
    """#distractors scoring above each positive pair (exact), in pair order."""
    # negatives beating exactly k lowest positives beat positive j iff k > j: suffix sums over k
    suffix = np.cumsum(part.rank_hist[:, ::-1], axis=1)[:, ::-1]
    return suffix[problem.pair_probe, problem.pair_slot + 1]


def first_beater(part: Partial, problem: Problem) -> np.ndarray:
    """Smallest sweep position of a distractor beating each positive pair (n_d if none)."""
    suffix = np.minimum.accumulate(part.first_beater[:, ::-1], axis=1)[:, ::-1]
    out = suffix[problem.pair_probe, problem.pair_slot + 1]
    return np.minimum(out, problem.distractors.shape[0])


def tar_at(problem: Problem, top: NegTopK, n_neg: int, far: float) -> tuple[float, float]:
    """(TAR, τ) at ``far`` for ``n_neg`` negatives whose candidates are ``top``."""
    tau = top.kth_largest(problem.k_for(n_neg, far), problem)
    above = problem.n_pos - np.searchsorted(problem.sorted_pos, tau, "right")
    return float(above / problem.n_pos) if problem.n_pos else float("nan"), tau


def exact_matches(part: Partial, problem: Problem) -> tuple[np.ndarray, np.ndarray, int]:
    """Exact top-k gallery items per probe: (indices (n_p, k), float64 scores, #probes not certified)."""
    k = min(problem.topk, part.match_vals.shape[1])
    n_p = problem.probes.shape[0]
    idx = part.match_idx
    n_m = problem.mates.shape[0]
    rows = np.repeat(np.arange(n_p), idx.shape[1])
    flat = idx.ravel()
    valid = np.isfinite(part.match_vals.ravel())
    exact = np.full(flat.shape, -np.inf)
    gal = np.where(flat < n_m, 0, 1)
    sel = np.flatnonzero(valid & (gal == 0))
    exact[sel] = dot64(problem.probes[rows[sel]], problem.mates[flat[sel]])
    sel = np.flatnonzero(valid & (gal == 1))
    exact[sel] = dot64(problem.probes[rows[sel]], problem.distractors[flat[sel] - n_m])
    exact = exact.reshape(idx.shape)
    order = _row_order(exact, idx)
    exact = np.take_along_axis(exact, order, 1)[:, :k]
    idx = np.take_along_axis(idx, order, 1)[:, :k]
    # certified when every dropped item (float32 ≤ bound, so exact ≤ bound + eps) is below the k-th
    uncertain = int((part.match_bound.astype(np.float64) + problem.eps >= exact[:, -1]).sum()) if k else 0
    return idx, exact, uncertain
