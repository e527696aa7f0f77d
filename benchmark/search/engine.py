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
AUC_CELLS = 1 << 20  # uniform cells over [-1, 1] for the negative-score histogram
# Up to this many (positive, negative) pairs the AUC is exact (every ambiguous negative refined); above,
# ambiguous negatives are ordered by their float32 score and ``auc_max_error`` bounds the effect (one
# pair weighs < 1e-11 there, and the bound is reported; it is far below the 1e-6 tolerance in practice).
AUC_EXACT_MAX_PAIRS = 10 ** 11


def f32_below(x: float) -> float:
    """The largest float32 ≤ x (so ``float32_tensor >= f32_below(x)`` never misses a value ≥ x)."""
    y = np.float32(x)
    if float(y) > x:
        y = np.nextafter(y, np.float32(-np.inf))
    return float(y)


def auc_cells(sorted_pos: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell AUC weight 2·#{pos above} and the cells needing per-element treatment.

    A float32 score s32 lands in cell c = ⌊(s32+1)·C/2⌋ (clamped), computed in float32; its exact
    score is within margin = eps + 1e-6 of the cell.  A cell is *clean* when no positive lies within
    that margin: then every negative in it contributes exactly 2·#{pos > cell} to the AUC numerator.
    """
    width = 2.0 / AUC_CELLS
    margin = eps + 1e-6
    lo = -1.0 + width * np.arange(AUC_CELLS) - margin
    hi = lo + width + 2 * margin
    lo[0], hi[-1] = -np.inf, np.inf
    below_lo = np.searchsorted(sorted_pos, lo, "left")
    upto_hi = np.searchsorted(sorted_pos, hi, "right")
    return 2 * (sorted_pos.size - upto_hi).astype(np.int64), upto_hi != below_lo


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
        out[lo:hi] = np.einsum("ij,ij->i", a[lo:hi], b[lo:hi], dtype=np.float64)
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
    cell_g: np.ndarray = None     # (AUC_CELLS,) int64: 2·#{pos > s} for any s in a clean cell
    cell_dirty: np.ndarray = None  # (AUC_CELLS,) bool: a positive lies within eps of the cell
    auc_exact: bool = True        # refine AUC-ambiguous negatives (see AUC_EXACT_MAX_PAIRS)

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
    _, codes = np.unique(np.concatenate([probe_keys, mate_keys]), return_inverse=True)
    excl = codes[:n_p, None] == codes[None, n_p:]
    eps = gemm_error_bound(probes.shape[1])
    sorted_pos = np.sort(scores)
    cell_g, cell_dirty = auc_cells(sorted_pos, eps)
    return Problem(probes, mates, distractors, pp, mm, slot, scores, table, sorted_pos, eps,
                   sorted(set(float(f) for f in fars)), sizes, perm_pos, int(topk), excl, cell_g, cell_dirty,
                   len(scores) * n_p * n_d <= AUC_EXACT_MAX_PAIRS)


# ------------------------------------------------------------------------------------ extraction

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

    def block_cut(self, scores) -> float:
        """Lowest float32 score of this block that can matter (uses the block's K-th largest early on)."""
        cut = self.cut
        if self.vals.size < self.k and scores.numel() > self.k:
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
    auc2: int                      # Σ 2·#{pos > s} + #{pos = s} over negatives in dirty cells
    auc_hist: np.ndarray           # (AUC_CELLS,) int64 negatives per cell (clean cells give the rest)
    first_beater: np.ndarray       # (n_p, m_max+1): min sweep position of such negatives (sweep only)
    tops: dict[int, NegTopK]       # per subset size (the full size included)
    match_vals: np.ndarray         # (n_p, k') float32 best gallery scores so far
    match_idx: np.ndarray          # (n_p, k') int64 gallery index (mates first, then distractors)
    match_bound: np.ndarray        # (n_p,) float32: every dropped gallery item scores ≤ this (float32)
    n_refined: int = 0
    auc_err: int = 0               # (pos, neg) pairs whose order was taken from float32 (approximate mode)

    @classmethod
    def empty(cls, problem: Problem) -> "Partial":
        """State before any column is seen."""
        n_p, m = problem.probes.shape[0], problem.m_max
        tops = {size: NegTopK(problem.k_for(n_p * size, max(problem.fars)) if problem.fars else 1, problem.eps)
                for size in problem.sizes_with_full()}
        return cls(0, np.zeros((n_p, m + 1), np.int64), 0, np.zeros(AUC_CELLS, np.int64),
                   np.full((n_p, m + 1), np.iinfo(np.int64).max, np.int64), tops,
                   np.full((n_p, 0), -np.inf, np.float32), np.zeros((n_p, 0), np.int64),
                   np.full(n_p, -np.inf, np.float32))


def merge(a: Partial, b: Partial) -> Partial:
    """Combine partials of disjoint distractor column sets (associative, commutative)."""
    vals = np.concatenate([a.match_vals, b.match_vals], axis=1)
    idx = np.concatenate([a.match_idx, b.match_idx], axis=1)
    bound = np.maximum(a.match_bound, b.match_bound)
    vals, idx, bound = _keep_top(vals, idx, bound, max(a.match_vals.shape[1], b.match_vals.shape[1]))
    return Partial(a.n_cols + b.n_cols, a.rank_hist + b.rank_hist, a.auc2 + b.auc2, a.auc_hist + b.auc_hist,
                   np.minimum(a.first_beater, b.first_beater),
                   {s: a.tops[s].merged(b.tops[s]) for s in a.tops}, vals, idx, bound,
                   a.n_refined + b.n_refined, a.auc_err + b.auc_err)


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

def _refine_near(problem: Problem, p, d, v32, near: np.ndarray, part: Partial) -> np.ndarray:
    """float64 scores: the float32 ones, replaced by the exact ``dot64`` where ``near`` (a boundary within eps)."""
    s = v32.astype(np.float64)
    amb = np.flatnonzero(near)
    if amb.size:
        s[amb] = dot64(problem.probes[p[amb]], problem.distractors[d[amb]])
        part.n_refined += int(amb.size)
    return s


def _auc_dirty(part: Partial, problem: Problem, p, d, v32) -> None:
    """Exact AUC numerator of negatives in dirty cells (refined where a positive is within eps)."""
    sp, eps, n_pos = problem.sorted_pos, problem.eps, problem.n_pos
    for lo in range(0, p.size, _REFINE_CHUNK):
        sl = slice(lo, lo + _REFINE_CHUNK)
        v = v32[sl].astype(np.float64)
        n_near = np.searchsorted(sp, v + eps, "right") - np.searchsorted(sp, v - eps, "left")
        if problem.auc_exact:
            s = _refine_near(problem, p[sl], d[sl], v32[sl], n_near > 0, part)
        else:
            s = v
            part.auc_err += int(n_near.sum())
        left, right = np.searchsorted(sp, s, "left"), np.searchsorted(sp, s, "right")
        part.auc2 += int((2 * (n_pos - right) + (right - left)).sum())


def _rank_band(part: Partial, problem: Problem, p, d, v32) -> None:
    """Per-probe rank (and sweep) contributions of negatives scoring ≥ the probe's lowest positive − eps."""
    eps, m1 = problem.eps, problem.m_max + 1
    for lo in range(0, p.size, _REFINE_CHUNK):
        sl = slice(lo, lo + _REFINE_CHUNK)
        pc, dc = p[sl], d[sl]
        v = v32[sl].astype(np.float64)[:, None]
        rows = problem.pos_table[pc]
        near = ((rows >= v - eps) & (rows <= v + eps)).any(axis=1)
        s = _refine_near(problem, pc, dc, v32[sl], near, part)
        k = (rows < s[:, None]).sum(axis=1)  # positives of the probe strictly below: the ones it beats
        part.rank_hist += np.bincount(pc * m1 + k, minlength=part.rank_hist.size).reshape(part.rank_hist.shape)
        if problem.perm_pos is not None:
            np.minimum.at(part.first_beater.reshape(-1), pc * m1 + k, problem.perm_pos[dc])


def process_block(part: Partial, problem: Problem, probes_dev, block_dev, col0: int, state: dict) -> None:
    """Add distractor columns ``col0 … col0+b`` (``block_dev``: their features on the device) to ``part``.

    One pass extracts every entry that any consumer needs (above the lowest of: the AUC/rank band,
    the top-K cut, the probe's top-k floor); the consumers then filter those few entries.
    ``state`` carries per-run scratch between blocks (thresholds, the score buffer).
    """
    import torch
    b = block_dev.shape[0]
    buf = state.get("buf")
    if buf is None or buf.shape[1] != b:
        buf = state["buf"] = torch.empty((probes_dev.shape[0], b), dtype=torch.float32, device=probes_dev.device)
    scores = torch.matmul(probes_dev, block_dev.T, out=buf)
    n_p = scores.shape[0]
    n_d = problem.distractors.shape[0]
    cols = np.arange(col0, col0 + b)
    part.n_cols += b
    if "low" not in state:
        state["band"] = f32_below(problem.low - problem.eps) if problem.n_pos else math.inf
        state["low"] = np.array([f32_below(x - problem.eps) if np.isfinite(x) else np.inf
                                 for x in problem.pos_table[:, 0]], dtype=np.float32)
    thr = np.full(n_p, state["band"], dtype=np.float32)
    top = part.tops.get(n_d) if problem.fars else None
    cut = top.block_cut(scores) if top is not None else math.inf
    thr = np.minimum(thr, np.float32(cut))
    floor = state.get("floor")
    if problem.topk > 0 and floor is not None:
        thr = np.minimum(thr, floor)
    if (thr < np.inf).any():
        p, d, v32 = extract_ge(scores, thr, cols)
    else:
        p, d, v32 = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    if problem.n_pos:
        inb = v32 >= state["band"]
        pb, db, vb = p[inb], d[inb], v32[inb]
        # negatives below every positive (by more than eps) add 2·N_pos each to the AUC numerator
        part.auc2 += 2 * problem.n_pos * (n_p * b - pb.size)
        if pb.size:
            cells = np.clip(np.floor((vb.astype(np.float64) + 1.0) * (AUC_CELLS // 2)), 0, AUC_CELLS - 1)
            cells = cells.astype(np.int64)
            part.auc_hist += np.bincount(cells, minlength=AUC_CELLS)
            dirty = problem.cell_dirty[cells]
            if dirty.any():
                _auc_dirty(part, problem, pb[dirty], db[dirty], vb[dirty])
            inband = vb >= state["low"][pb]
            if inband.any():
                _rank_band(part, problem, pb[inband], db[inband], vb[inband])
    if top is not None:
        top.add(p, d, v32, cut)
        for size, sub in part.tops.items():
            if size != n_d:
                sel = np.flatnonzero(problem.perm_pos[col0:col0 + b] < size)
                if sel.size:
                    sub.offer(scores[:, torch.as_tensor(sel, device=scores.device)], cols[sel])
    if problem.topk > 0:
        if floor is None:
            _offer_matches(part, problem, scores, problem.mates.shape[0] + col0, state)
        else:
            keep = v32 > floor[p]
            _merge_matches(part, problem, p[keep], d[keep] + problem.mates.shape[0], v32[keep], floor, n_p, state)


def _merge_matches(part: Partial, problem: Problem, p, g, v, floor, n_p: int, state: dict) -> None:
    """Merge extracted entries (all above their probe's floor) into the running top-k' candidates."""
    kk = problem.topk + 4
    counts = np.bincount(p, minlength=n_p)
    width = max(int(counts.max()) if counts.size else 0, 1)
    vals = np.full((n_p, width), -np.inf, np.float32)
    idx = np.full((n_p, width), -1, np.int64)
    slot = np.arange(p.size) - (np.cumsum(counts) - counts)[p]
    vals[p, slot], idx[p, slot] = v, g
    bound = np.maximum(part.match_bound, floor)  # everything not extracted scored ≤ floor
    if p.size:
        rows = np.flatnonzero(counts)  # only rows that changed need re-ranking
        v2 = np.concatenate([part.match_vals[rows], vals[rows]], axis=1)
        i2 = np.concatenate([part.match_idx[rows], idx[rows]], axis=1)
        v2, i2, b2 = _keep_top(v2, i2, bound[rows], kk)
        part.match_vals[rows], part.match_idx[rows], bound[rows] = v2, i2, b2
        state["floor"][rows] = part.match_vals[rows, kk - 1]
    part.match_bound = bound


def _offer_matches(part: Partial, problem: Problem, scores, gallery0: int, state: dict) -> None:
    """First block(s): the block's float32 top-k' per probe (torch.topk) merged into the candidates."""
    import torch
    kk = problem.topk + 4
    if problem.topk <= 0 or scores.shape[1] == 0:
        return
    k = min(kk, scores.shape[1])
    top = torch.topk(scores, k, dim=1)
    vals = top.values.cpu().numpy()
    idx = top.indices.cpu().numpy().astype(np.int64) + gallery0
    bound = np.maximum(part.match_bound, vals[:, -1]) if scores.shape[1] > k else part.match_bound
    vals = np.concatenate([part.match_vals, vals], axis=1)
    idx = np.concatenate([part.match_idx, idx], axis=1)
    part.match_vals, part.match_idx, part.match_bound = _keep_top(vals, idx, bound, kk)
    if part.match_vals.shape[1] >= kk:
        state["floor"] = part.match_vals[:, kk - 1].copy()


def mates_partial(problem: Problem, probes_dev, mates_dev) -> Partial:
    """Top-k retrieval state for the mates (part of the gallery, not negatives)."""
    part = Partial.empty(problem)
    if problem.mates.shape[0]:
        import torch
        scores = probes_dev @ mates_dev.T
        excl = torch.as_tensor(problem.mate_excluded, device=scores.device)
        scores = scores.masked_fill(excl, -math.inf)
        _offer_matches(part, problem, scores, 0, {})
    return part


# ------------------------------------------------------------------------------------------ finalize

def auc(part: Partial, problem: Problem, n_neg: int) -> float:
    """AUC = (Σ_neg 2·#{pos > s} + #{pos = s}) / (2·N_pos·N_neg): clean cells from the histogram + dirty exact."""
    clean = ~problem.cell_dirty
    num2 = part.auc2 + int((part.auc_hist[clean] * problem.cell_g[clean]).sum())
    return num2 / (2 * problem.n_pos * n_neg)


def auc_max_error(part: Partial, problem: Problem, n_neg: int) -> float:
    """Bound on |reported AUC − exact AUC| (0 in exact mode)."""
    return part.auc_err / (problem.n_pos * n_neg)


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
    valid = np.isfinite(part.match_vals.ravel()) & (flat >= 0)
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
