"""Exact streaming MegaFace-protocol search: blocked GEMM over the distractors, additive partial results.

Scores are defined as the float64 inner product of the float32 unit vectors (``dot64``, always
computed on the CPU with numpy).  Blocks of probe×distractor scores are computed in float32 on the
chosen device (torch, TF32 off); a float32 score is within ``eps = gemm_error_bound(D)`` of the exact
one, whatever the summation order of the BLAS/cuBLAS kernel.  Every decision whose outcome could
change inside that window (a negative within ``eps`` of a positive score, of a top-K threshold, of a
retrieved match) is recomputed with ``dot64``; all others are decided from the float32 score, which
is safe by the bound.  Hence every count — and so every metric — is that of the float64 scores,
identical on every device and block size.  Attacked-like data (positives inside the negative bulk) takes
the dense path instead (``process_block``): float64 GEMM, ranks and the exact AUC counted densely with
``torch.searchsorted`` / a grid lookup, ``dot64`` only for near-exact ties.  The AUC is the exception by design: it comes from an
integer histogram of float32 scores with a rigorous error bound (≤ AUC_TOLERANCE, else an exact float64
pass), so it is within that bound of the exact value on every device.

A ``Partial`` holds additive state for the distractor columns it has seen (counts, per-probe rank
histograms, AUC numerator, candidate sets for the top-K thresholds and matches); ``merge`` combines
partials from different gallery shards / processes / GPUs, and ``finalize`` turns one into metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

_REFINE_CHUNK = 1 << 13  # pairs per dot64 chunk (bounds its float64 temporaries)
HIST_BINS = 1 << 16     # uniform bins of the negative-score histogram over [hist_lo, HIST_HI]
HIST_HI = 1.0625        # above every float32 score of unit vectors (|s32| ≤ 1 + eps)
HIST_FUZZ = 2           # a negative counted in bin j lies in bins j-2 … j+2 (float32 bin-index rounding)
AUC_TOLERANCE = 1e-6    # above this histogram error bound, the AUC is recomputed exactly (float64 pass)
DENSE_FRACTION = 0.01   # first block: more scores than this in the probes' rank bands ⇒ dense float64 path
_F32_EXACT = 1 << 24    # float32 histogram counts are exact below this


def f32_below(x: float) -> float:
    """The largest float32 ≤ x (so ``float32_tensor >= f32_below(x)`` never misses a value ≥ x)."""
    y = np.float32(x)
    if float(y) > x:
        y = np.nextafter(y, np.float32(-np.inf))
    return float(y)


def gemm_error_bound(dim: int) -> float:
    """Rigorous bound on |float32 dot − exact dot| for unit vectors of ``dim`` components, any order.

    γ_n = n·u/(1−n·u) with u = 2⁻²⁴ (Higham, Thm 3.1) times Σ|x_i y_i| ≤ ‖x‖‖y‖ ≤ 1+1e-6, plus the
    float64 reference's own (tiny) rounding.
    """
    u = 2.0 ** -24
    gamma = dim * u / (1 - dim * u)
    return gamma * (1 + 1e-6) + 4 * dim * 2.0 ** -53


def float64_error_bound(dim: int) -> float:
    """Bound on |float64 GEMM − dot64| for float32 unit vectors (products are exact in float64; both sums
    carry ≤ γ_D in float64), with a wide safety factor."""
    return 8 * dim * 2.0 ** -53


def dot64(a, b, ia: np.ndarray | None = None, ib: np.ndarray | None = None) -> np.ndarray:
    """Canonical score of row pairs: float64 sum of products of the float32 components (numpy, CPU).

    Pairs are ``(a[i], b[i])``, or ``(a[ia[i]], b[ib[i]])`` when index arrays are given — gathered chunk by
    chunk, so scoring many pairs never materialises them all (``a``/``b`` may be ``UnitRows``).
    """
    n = (a.shape[0] if ia is None else len(ia))
    out = np.empty(n, dtype=np.float64)
    for lo in range(0, n, _REFINE_CHUNK):
        hi = min(lo + _REFINE_CHUNK, n)
        x = a[lo:hi] if ia is None else a[ia[lo:hi]]
        y = b[lo:hi] if ib is None else b[ib[lo:hi]]
        out[lo:hi] = np.einsum("ij,ij->i", x, y, dtype=np.float64)
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
    hist_lo: float = -HIST_HI     # float32 lower edge of the AUC histogram: s32 < hist_lo ⇒ below every positive
    row_low: np.ndarray = None    # (n_p,) float32: a negative below this cannot beat any positive of the probe
    hist_lo_lp: float = -HIST_HI  # lower edge of the screened-value histogram (set with a screen, see stream)

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
    scores = dot64(probes, mates, pp, mm)
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
    hist_lo = max(f32_below(sorted_pos[0] - eps), -HIST_HI) if scores.size else HIST_HI
    row_low = np.array([f32_below(x - eps) if np.isfinite(x) else np.inf for x in table[:, 0]], np.float32)
    return Problem(probes, mates, distractors, pp, mm, slot, scores, table, sorted_pos, eps,
                   sorted(set(float(f) for f in fars)), sizes, perm_pos, int(topk), excl, hist_lo, row_low)


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
    _pending: list = field(default_factory=list, repr=False)   # queued (vals, probe, dist) chunks
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
        out._append(np.concatenate([self.vals, other.vals]), np.concatenate([self.probe, other.probe]),
                    np.concatenate([self.dist, other.dist]))
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


# ------------------------------------------------------------------------------------------ partials

@dataclass
class Partial:
    """Additive search state over a set of distractor columns (see module docstring)."""

    n_cols: int
    rank_hist: np.ndarray          # (n_p, m_max+1): #negatives beating exactly the k lowest positives of p
    n_below: int                   # negatives with float32 score < hist_lo (below every positive)
    neg_hist: np.ndarray           # (HIST_BINS,) int64 negatives per float32 bin of [hist_lo, HIST_HI]
    first_beater: np.ndarray       # (n_p, m_max+1): min sweep position of such negatives (sweep only)
    tops: dict[int, NegTopK]       # per subset size (the full size included)
    match_vals: np.ndarray         # (n_p, k') float32 best gallery scores so far
    match_idx: np.ndarray          # (n_p, k') int64 gallery index (mates first, then distractors)
    match_bound: np.ndarray        # (n_p,) float32: every dropped gallery item scores ≤ this (float32)
    n_refined: int = 0
    auc_num2: int = 0              # exact 2·AUC numerator of the dense (float64) blocks
    dense_cols: int = 0            # distractor columns processed on the dense float64 path
    auc_refined: int = 0           # dense-path negatives within the float64 bound of a positive (→ dot64)
    neg_hist_lp: np.ndarray = None  # (HIST_BINS,) screened negatives per bin of [hist_lo_lp, HIST_HI]
    n_below_lp: int = 0            # screened negatives below hist_lo_lp (below every positive)
    lp_err: float = 0.0            # largest screening error bound E of any screened block
    lp_out: str = ""               # output format of the screened products ("" when none ran)
    lp_cols: int = 0               # distractor columns screened
    lp_rescored: int = 0           # entries rescored in float32 after screening
    lp_note: str = ""              # how screening went (split level or why it was declined)

    def __post_init__(self):
        if self.neg_hist_lp is None:
            self.neg_hist_lp = np.zeros(HIST_BINS, np.int64)

    @classmethod
    def empty(cls, problem: Problem) -> Partial:
        """State before any column is seen."""
        n_p, m = problem.probes.shape[0], problem.m_max
        tops = {size: NegTopK(problem.k_for(n_p * size, max(problem.fars)) if problem.fars else 1, problem.eps)
                for size in problem.sizes_with_full()}
        return cls(0, np.zeros((n_p, m + 1), np.int64), 0, np.zeros(HIST_BINS, np.int64),
                   np.full((n_p, m + 1), np.iinfo(np.int64).max, np.int64), tops,
                   np.full((n_p, 0), -np.inf, np.float32), np.zeros((n_p, 0), np.int64),
                   np.full(n_p, -np.inf, np.float32))


def merge(a: Partial, b: Partial) -> Partial:
    """Combine partials of disjoint distractor column sets (associative, commutative)."""
    vals = np.concatenate([a.match_vals, b.match_vals], axis=1)
    idx = np.concatenate([a.match_idx, b.match_idx], axis=1)
    bound = np.maximum(a.match_bound, b.match_bound)
    vals, idx, bound = _keep_top(vals, idx, bound, max(a.match_vals.shape[1], b.match_vals.shape[1]))
    return Partial(a.n_cols + b.n_cols, a.rank_hist + b.rank_hist, a.n_below + b.n_below, a.neg_hist + b.neg_hist,
                   np.minimum(a.first_beater, b.first_beater),
                   {s: a.tops[s].merged(b.tops[s]) for s in a.tops}, vals, idx, bound,
                   a.n_refined + b.n_refined, a.auc_num2 + b.auc_num2, a.dense_cols + b.dense_cols,
                   a.auc_refined + b.auc_refined, a.neg_hist_lp + b.neg_hist_lp, a.n_below_lp + b.n_below_lp,
                   max(a.lp_err, b.lp_err), a.lp_out or b.lp_out, a.lp_cols + b.lp_cols,
                   a.lp_rescored + b.lp_rescored, a.lp_note or b.lp_note)


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
        s[amb] = dot64(problem.probes, problem.distractors, p[amb], d[amb])
        part.n_refined += int(amb.size)
    return s


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


def neg_histogram(scores, lo: float) -> tuple[np.ndarray, int]:
    """(int64 counts of a score block over HIST_BINS bins of [lo, HIST_HI], #scores < lo), exactly.

    ``torch.histc`` (parallel, no extraction) counts in float32, exact below 2²⁴ per bin; a block whose
    largest bin reaches that is recounted in row chunks small enough to be exact.
    """
    import torch
    n = scores.numel()
    hist = torch.histc(scores, bins=HIST_BINS, min=lo, max=HIST_HI)
    if n >= _F32_EXACT and float(hist.max()) >= _F32_EXACT:
        rows = max(1, (_F32_EXACT - 1) // max(scores.shape[1], 1))
        out = np.zeros(HIST_BINS, np.int64)
        for a in range(0, scores.shape[0], rows):
            out += torch.histc(scores[a:a + rows], bins=HIST_BINS, min=lo, max=HIST_HI).cpu().numpy().astype(np.int64)
    else:
        out = hist.cpu().numpy().astype(np.int64)
    return out, n - int(out.sum())


def histogram_values(v: np.ndarray, lo: float) -> tuple[np.ndarray, int]:
    """(counts of float32 values over the HIST_BINS bins of [lo, HIST_HI], #values < lo), as ``torch.histc``."""
    v = np.asarray(v, np.float64)
    inside = (v >= lo) & (v <= HIST_HI)
    q = np.minimum(((v[inside] - lo) * (HIST_BINS / (HIST_HI - lo))).astype(np.int64), HIST_BINS - 1)
    return np.bincount(q, minlength=HIST_BINS).astype(np.int64), int(v.size - inside.sum())


def process_block(part: Partial, problem: Problem, probes_dev, block_dev, col0: int, state: dict) -> None:
    """Add distractor columns ``col0 … col0+b`` (``block_dev``: their features on the device) to ``part``.

    Sparse path (clean data): float32 GEMM; the AUC histogram of the block (no extraction) and one
    extraction of the entries above a per-probe threshold (the lowest of: the probe's lowest positive − eps,
    the top-K cut, the probe's top-k floor) — few entries — from which everything else is counted.  On
    the CPU both come from one fused scan (``scan.scan_block``); on a GPU (or with ``state["fused"]``
    False) from ``torch.histc`` and ``extract_ge``.
    Dense path (chosen on the first block when more than ``DENSE_FRACTION`` of its scores lie in the rank
    bands, i.e. positives inside the negative bulk): float64 GEMM, ranks/sweep/AUC counted densely by
    ``dense.dense_block``; τ candidates and matches use the float32 rounding of the float64 scores (within eps).
    ``state`` carries per-run scratch between blocks (thresholds, the score buffer, the path).
    """
    import torch

    from .dense import dense_block, dense_wanted
    if state.get("screen") is not None and state.get("dense") is False and \
            (problem.topk <= 0 or state.get("floor") is not None):
        return screened_block(part, problem, probes_dev, block_dev, col0, state)
    b = block_dev.shape[0]
    buf = state.get("buf")
    if buf is None or buf.shape[1] != b:
        buf = state["buf"] = torch.empty((probes_dev.shape[0], b), dtype=torch.float32, device=probes_dev.device)
    s64 = None
    if state.get("dense"):
        s64 = torch.matmul(state["p64"], block_dev.double().T)
        scores = buf.copy_(s64)
    else:
        scores = torch.matmul(probes_dev, block_dev.T, out=buf)
        if "dense" not in state:
            state["dense"] = bool(problem.n_pos) and dense_wanted(scores, problem)
            if state["dense"]:
                state["p64"] = probes_dev.double()
                s64 = torch.matmul(state["p64"], block_dev.double().T)
                scores.copy_(s64)
    dense = s64 is not None
    n_d = problem.distractors.shape[0]
    cols = np.arange(col0, col0 + b)
    part.n_cols += b
    if dense:
        dense_block(part, problem, s64, col0, state)
        del s64
        thr = np.full(problem.probes.shape[0], np.inf, np.float32)
    else:
        thr = problem.row_low.copy()
    top = part.tops.get(n_d) if problem.fars else None
    cut = top.block_cut(scores) if top is not None else math.inf
    thr = np.minimum(thr, np.float32(cut))
    floor = state.get("floor")
    if problem.topk > 0 and floor is not None:
        thr = np.minimum(thr, floor)
    with_hist = bool(problem.n_pos) and not dense
    hist, below, p, d, v32 = _histogram_and_extract(scores, problem, thr, cols, with_hist, state)
    if with_hist:
        part.neg_hist += hist
        part.n_below += below
    _count_extracted(part, problem, p, d, v32, cut, floor, dense, state)
    if top is not None:
        for size, sub in part.tops.items():
            if size != n_d:
                sel = np.flatnonzero(problem.perm_pos[col0:col0 + b] < size)
                if sel.size:
                    sub.offer(scores[:, torch.as_tensor(sel, device=scores.device)], cols[sel])
    if problem.topk > 0 and floor is None:
        _offer_matches(part, problem, scores, problem.mates.shape[0] + col0, state)
    if state.get("screen") is not None and "split" not in state:
        _plan_screen(part, problem, state, block_dev, scores.numel(), dense)


def _histogram_and_extract(scores, problem: Problem, thr: np.ndarray, cols: np.ndarray, with_hist: bool,
                           state: dict):
    """(AUC histogram, #below, probe rows, distractor ids, float32 scores ≥ thr) of a float32 block: one fused
    two-pass scan on the CPU (``scan.py``), ``torch.histc`` + ``extract_ge`` elsewhere."""
    if scores.device.type == "cpu" and state.get("fused", True):
        from .scan import scan_block
        hist, below, p, c, v32 = scan_block(scores.numpy(), problem.hist_lo, HIST_HI, HIST_BINS, thr, with_hist)
        return hist, below, p, cols[c], v32
    hist, below = neg_histogram(scores, problem.hist_lo) if with_hist else (None, 0)
    if (thr < np.inf).any():
        p, d, v32 = extract_ge(scores, thr, cols)
    else:
        p, d, v32 = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return hist, below, p, d, v32


def _plan_screen(part: Partial, problem: Problem, state: dict, block_dev, n_scores: int, dense: bool) -> None:
    """After the first (float32) block: the screen's AUC split level, or no screening (``screen.plan_split``)."""
    screen = state["screen"]
    if dense:
        state["screen"], part.lp_note = None, "screening not used: dense float64 path (positives in the bulk)"
        return
    expected = 1.05 * float(screen.errors(block_dev)[1].max())  # later blocks' bounds are alike
    level, part.lp_note = screen.plan_split(part.neg_hist, n_scores, problem.hist_lo, HIST_HI, problem.sorted_pos,
                                            expected, HIST_FUZZ, AUC_TOLERANCE)
    if level is None:
        state["screen"] = None
    state["split"] = level


def _count_extracted(part: Partial, problem: Problem, p, d, v32, cut: float, floor, dense: bool,
                     state: dict) -> None:
    """Ranks, τ candidates and matches from a block's extracted entries (float32 scores ≥ their threshold)."""
    if problem.n_pos and p.size and not dense:
        inband = v32 >= problem.row_low[p]
        if inband.any():
            _rank_band(part, problem, p[inband], d[inband], v32[inband])
    top = part.tops.get(problem.distractors.shape[0]) if problem.fars else None
    if top is not None:
        top.add(p, d, v32, cut)
    if problem.topk > 0 and floor is not None:
        keep = v32 > floor[p]
        _merge_matches(part, problem, p[keep], d[keep] + problem.mates.shape[0], v32[keep], floor,
                       problem.probes.shape[0], state)


def screened_block(part: Partial, problem: Problem, probes_dev, block_dev, col0: int, state: dict) -> None:
    """``process_block`` for a sparse-path block scored in low precision (``screen.Screen``).

    The same thresholds as the float32 path, lowered by the screen's error bound; the entries above are
    rescored in float32 and those at or above the float32 threshold go on exactly as ``process_block``'s
    extraction would.  The AUC histogram counts the screened values (window widened by the screen).
    """
    import torch

    from .scan import key_values, scan_bits
    from .screen import as_bits, rescore, values_lut
    screen = state["screen"]
    b = block_dev.shape[0]
    n_d = problem.distractors.shape[0]
    cols = np.arange(col0, col0 + b)
    part.n_cols += b
    part.lp_cols += b
    part.lp_out = screen.out
    scores, err = screen.block(block_dev)
    part.lp_err = max(part.lp_err, float(err.max()))
    top = part.tops.get(n_d) if problem.fars else None
    cut = top.block_cut(None) if top is not None else math.inf
    floor = state.get("floor")
    thr = np.minimum(problem.row_low, np.float32(cut))
    if problem.topk > 0:
        thr = np.minimum(thr, floor)
    split = np.float32(state["split"])  # screened values ≥ split: rescored and binned in float32
    thr_lp = np.minimum(screen.thresholds(thr, err), split)
    with_hist = bool(problem.n_pos)
    if scores.dtype != torch.float32 and scores.device.type == "cpu" and state.get("fused", True):
        if "lut" not in state:
            state["lut"] = values_lut(screen.out)
            state["by_key"] = key_values(state["lut"])
        hist, outside, p, c, vlp = scan_bits(as_bits(scores), state["lut"], state["by_key"], problem.hist_lo_lp,
                                             HIST_HI, HIST_BINS, thr_lp, with_hist, cap=split)
    else:
        vals = scores.float()
        p, c, vlp = extract_ge(vals, thr_lp, np.arange(b))
        hist, outside = neg_histogram(vals.masked_fill_(vals >= float(split), math.inf), problem.hist_lo_lp) \
            if with_hist else (None, 0)
    v32 = rescore(probes_dev, block_dev, p, c)
    part.lp_rescored += int(p.size)
    if with_hist:
        high = vlp >= split
        part.neg_hist_lp += hist
        part.n_below_lp += outside - int(high.sum())
        h32, below32 = histogram_values(v32[high], problem.hist_lo)
        part.neg_hist += h32
        part.n_below += below32
    keep = v32 >= thr[p]
    p, c, v32 = p[keep], c[keep], v32[keep]
    _count_extracted(part, problem, p, cols[c], v32, cut, floor, False, state)
    if top is not None:
        for size, sub in part.tops.items():
            if size != n_d:
                sel = np.flatnonzero(problem.perm_pos[col0:col0 + b] < size)
                if sel.size:
                    _screened_offer(sub, screen, scores, err, probes_dev, block_dev, sel, cols)


def _screened_offer(sub: NegTopK, screen, scores, err, probes_dev, block_dev, sel: np.ndarray,
                    cols: np.ndarray) -> None:
    """A sweep subset's τ candidates among block columns ``sel`` of a screened block."""
    import torch

    from .screen import rescore
    cut = sub.block_cut(None)
    idx = torch.as_tensor(sel, device=scores.device)
    thr_lp = screen.thresholds(np.full(scores.shape[0], cut), err)
    p, c, _ = extract_ge(scores[:, idx].float(), thr_lp, sel)
    v32 = rescore(probes_dev, block_dev, p, c)
    sub.add(p, cols[c], v32, cut)


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

def auc_from_histogram(part: Partial, problem: Problem, n_neg: int) -> tuple[float, float]:
    """(AUC, rigorous bound on |AUC − exact AUC|) from the negative histograms, ½-tie treatment of near pairs.

    A negative counted in bin j has a float32 score in bins j−FUZZ … j+FUZZ, so an exact score in
    [lo_j, hi_j] (widened by eps).  Its numerator term 2·#{pos > s} + #{pos = s} lies in
    [2·above_j, 2·(above_j + within_j)]; we take the midpoint, so the error is ≤ within_j per negative.
    Negatives under ``hist_lo`` lie below every positive: 2·N_pos each, exactly.  Screened blocks
    (``screen``) have their own histogram, whose windows are widened by the screen's error and ulp.
    """
    n_pos = problem.n_pos
    num2 = part.auc_num2 + 2 * n_pos * (part.n_below + part.n_below_lp)
    err2 = 0
    hists = [(part.neg_hist, problem.hist_lo, None)]
    if part.lp_cols:
        hists.append((part.neg_hist_lp, problem.hist_lo_lp, part))
    for counts, h_lo, screened in hists:
        width = (HIST_HI - h_lo) / HIST_BINS
        j = np.arange(HIST_BINS)
        lo = h_lo + (j - HIST_FUZZ) * width
        hi = h_lo + (j + 1 + HIST_FUZZ) * width
        if screened is None:
            eps = problem.eps
        else:
            from .screen import ulp
            eps = screened.lp_err + ulp(np.maximum(np.abs(lo), np.abs(hi)), screened.lp_out)
        lo, hi = lo - eps - 1e-12, hi + eps + 1e-12
        below = np.searchsorted(problem.sorted_pos, lo, "left")
        within = np.searchsorted(problem.sorted_pos, hi, "right") - below
        num2 += int((counts * (2 * (n_pos - below) - within)).sum())
        err2 += int((counts * within).sum())
    denom = 2 * n_pos * n_neg
    return num2 / denom, err2 / denom


def auc_exact_pass(problem: Problem, probes_dev, blocks) -> tuple[float, int]:
    """Exact AUC by a second pass in float64 (used when the histogram bound exceeds AUC_TOLERANCE).

    ``blocks`` yields device tensors of consecutive distractor rows (float32).  Scores come from a float64
    GEMM (error ≤ ``eps64``); a negative with no positive within eps64 is placed among the sorted positives
    directly, the others are recomputed with ``dot64``.  Returns (AUC, #pairs refined).
    """
    import torch
    dev = probes_dev.device
    n_d = problem.distractors.shape[0]
    n_p = problem.probes.shape[0]
    eps64 = float64_error_bound(problem.probes.shape[1])
    sp = torch.as_tensor(problem.sorted_pos, device=dev)
    lo, hi = float(problem.sorted_pos[0]) - eps64, float(problem.sorted_pos[-1]) + eps64
    p64 = probes_dev.double()
    num2, refined, col0 = 0, 0, 0
    for block in blocks:
        b = block.shape[0]
        s = p64 @ block.double().T
        below = int((s < lo).sum())
        num2 += 2 * problem.n_pos * below
        mask = (s >= lo) & (s <= hi)
        idx = mask.nonzero()
        v = s[idx[:, 0], idx[:, 1]]
        left = torch.searchsorted(sp, v - eps64, right=False)
        right = torch.searchsorted(sp, v + eps64, right=True)
        clean = left == right
        num2 += int((2 * (problem.n_pos - left[clean])).sum())
        amb = (~clean).nonzero().squeeze(1)
        if amb.numel():
            rows = idx[amb, 0].cpu().numpy()
            cols = idx[amb, 1].cpu().numpy() + col0
            exact = dot64(problem.probes, problem.distractors, rows, cols)
            l2 = np.searchsorted(problem.sorted_pos, exact, "left")
            r2 = np.searchsorted(problem.sorted_pos, exact, "right")
            num2 += int((2 * (problem.n_pos - r2) + (r2 - l2)).sum())
            refined += int(amb.numel())
        col0 += b
    if col0 != n_d:
        raise RuntimeError(f"internal: exact AUC pass saw {col0} of {n_d} distractors")
    return num2 / (2 * problem.n_pos * n_p * n_d), refined


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
    exact[sel] = dot64(problem.probes, problem.mates, rows[sel], flat[sel])
    sel = np.flatnonzero(valid & (gal == 1))
    exact[sel] = dot64(problem.probes, problem.distractors, rows[sel], flat[sel] - n_m)
    exact = exact.reshape(idx.shape)
    order = _row_order(exact, idx)
    exact = np.take_along_axis(exact, order, 1)[:, :k]
    idx = np.take_along_axis(idx, order, 1)[:, :k]
    # certified when every dropped item (float32 ≤ bound, so exact ≤ bound + eps) is below the k-th
    uncertain = int((part.match_bound.astype(np.float64) + problem.eps >= exact[:, -1]).sum()) if k else 0
    return idx, exact, uncertain
