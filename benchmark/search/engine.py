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
from dataclasses import dataclass

import numpy as np

from .readout import auc_exact_pass, auc_from_histogram, exact_matches, first_beater, rank_counts, tar_at
from .scores import (
    _F32_EXACT,
    _REFINE_CHUNK,
    AUC_TOLERANCE,
    DENSE_FRACTION,
    HIST_BINS,
    HIST_FUZZ,
    HIST_HI,
    dot64,
    f32_below,
    float64_error_bound,
    gemm_error_bound,
)
from .topk import NegTopK, extract_ge, keep_top

__all__ = [
    "AUC_TOLERANCE",
    "DENSE_FRACTION",
    "HIST_BINS",
    "HIST_FUZZ",
    "HIST_HI",
    "NegTopK",
    "Partial",
    "Problem",
    "auc_exact_pass",
    "auc_from_histogram",
    "build_problem",
    "dot64",
    "exact_matches",
    "extract_ge",
    "f32_below",
    "first_beater",
    "float64_error_bound",
    "gemm_error_bound",
    "merge",
    "neg_histogram",
    "process_block",
    "rank_counts",
    "tar_at",
]


@dataclass
class Problem:
    """Everything a block needs: features, positive pairs and their exact scores, settings."""

    probes: np.ndarray  # (n_p, D) float32 unit rows
    mates: np.ndarray  # (n_m, D)
    distractors: np.ndarray  # (n_d, D)
    pair_probe: np.ndarray  # (N_pos,) probe index of each positive pair
    pair_mate: np.ndarray  # (N_pos,) mate index
    pair_slot: np.ndarray  # (N_pos,) position of the pair's score in its probe's sorted row
    pos_scores: np.ndarray  # (N_pos,) float64 exact scores
    pos_table: np.ndarray  # (n_p, m_max) float64, each row sorted ascending, padded with +inf
    sorted_pos: np.ndarray  # (N_pos,) all positive scores ascending
    eps: float
    fars: list[float]  # FARs whose exact threshold is needed (metrics + ROC grid)
    sweep_sizes: list[int]  # nested distractor subset sizes (< n_d), ascending
    perm_pos: np.ndarray | None  # (n_d,) position of each distractor in the seeded permutation
    topk: int
    mate_excluded: np.ndarray  # (n_p, n_m) bool: same key (an image is never its own match)
    hist_lo: float = -HIST_HI  # float32 lower edge of the AUC histogram: s32 < hist_lo ⇒ below every positive
    row_low: np.ndarray = None  # (n_p,) float32: a negative below this cannot beat any positive of the probe
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


def positive_pairs(
    probe_labels: np.ndarray, probe_keys: np.ndarray, mate_labels: np.ndarray, mate_keys: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
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


def build_problem(
    probes,
    probe_keys,
    probe_labels,
    mates,
    mate_keys,
    mate_labels,
    distractors,
    fars,
    sweep_sizes=(),
    seed: int = 0,
    topk: int = 50,
) -> Problem:
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
    return Problem(
        probes,
        mates,
        distractors,
        pp,
        mm,
        slot,
        scores,
        table,
        sorted_pos,
        eps,
        sorted(set(float(f) for f in fars)),
        sizes,
        perm_pos,
        int(topk),
        excl,
        hist_lo,
        row_low,
    )


# ------------------------------------------------------------------------------------ extraction


# ------------------------------------------------------------------------------------ top-K negatives


# ------------------------------------------------------------------------------------------ partials


@dataclass
class Partial:
    """Additive search state over a set of distractor columns (see module docstring)."""

    n_cols: int
    rank_hist: np.ndarray  # (n_p, m_max+1): #negatives beating exactly the k lowest positives of p
    n_below: int  # negatives with float32 score < hist_lo (below every positive)
    neg_hist: np.ndarray  # (HIST_BINS,) int64 negatives per float32 bin of [hist_lo, HIST_HI]
    first_beater: np.ndarray  # (n_p, m_max+1): min sweep position of such negatives (sweep only)
    tops: dict[int, NegTopK]  # per subset size (the full size included)
    match_vals: np.ndarray  # (n_p, k') float32 best gallery scores so far
    match_idx: np.ndarray  # (n_p, k') int64 gallery index (mates first, then distractors)
    match_bound: np.ndarray  # (n_p,) float32: every dropped gallery item scores ≤ this (float32)
    n_refined: int = 0
    auc_num2: int = 0  # exact 2·AUC numerator of the dense (float64) blocks
    dense_cols: int = 0  # distractor columns processed on the dense float64 path
    auc_refined: int = 0  # dense-path negatives within the float64 bound of a positive (→ dot64)
    neg_hist_lp: np.ndarray = None  # (HIST_BINS,) screened negatives per bin of [hist_lo_lp, HIST_HI]
    n_below_lp: int = 0  # screened negatives below hist_lo_lp (below every positive)
    lp_err: float = 0.0  # largest screening error bound E of any screened block
    lp_out: str = ""  # output format of the screened products ("" when none ran)
    lp_cols: int = 0  # distractor columns screened
    lp_rescored: int = 0  # entries rescored in float32 after screening
    lp_note: str = ""  # how screening went (split level or why it was declined)

    def __post_init__(self):
        if self.neg_hist_lp is None:
            self.neg_hist_lp = np.zeros(HIST_BINS, np.int64)

    @classmethod
    def empty(cls, problem: Problem) -> Partial:
        """State before any column is seen."""
        n_p, m = problem.probes.shape[0], problem.m_max
        tops = {
            size: NegTopK(problem.k_for(n_p * size, max(problem.fars)) if problem.fars else 1, problem.eps)
            for size in problem.sizes_with_full()
        }
        return cls(
            0,
            np.zeros((n_p, m + 1), np.int64),
            0,
            np.zeros(HIST_BINS, np.int64),
            np.full((n_p, m + 1), np.iinfo(np.int64).max, np.int64),
            tops,
            np.full((n_p, 0), -np.inf, np.float32),
            np.zeros((n_p, 0), np.int64),
            np.full(n_p, -np.inf, np.float32),
        )


def merge(a: Partial, b: Partial) -> Partial:
    """Combine partials of disjoint distractor column sets (associative, commutative)."""
    vals = np.concatenate([a.match_vals, b.match_vals], axis=1)
    idx = np.concatenate([a.match_idx, b.match_idx], axis=1)
    bound = np.maximum(a.match_bound, b.match_bound)
    vals, idx, bound = keep_top(vals, idx, bound, max(a.match_vals.shape[1], b.match_vals.shape[1]))
    return Partial(
        a.n_cols + b.n_cols,
        a.rank_hist + b.rank_hist,
        a.n_below + b.n_below,
        a.neg_hist + b.neg_hist,
        np.minimum(a.first_beater, b.first_beater),
        {s: a.tops[s].merged(b.tops[s]) for s in a.tops},
        vals,
        idx,
        bound,
        a.n_refined + b.n_refined,
        a.auc_num2 + b.auc_num2,
        a.dense_cols + b.dense_cols,
        a.auc_refined + b.auc_refined,
        a.neg_hist_lp + b.neg_hist_lp,
        a.n_below_lp + b.n_below_lp,
        max(a.lp_err, b.lp_err),
        a.lp_out or b.lp_out,
        a.lp_cols + b.lp_cols,
        a.lp_rescored + b.lp_rescored,
        a.lp_note or b.lp_note,
    )


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
            out += torch.histc(scores[a : a + rows], bins=HIST_BINS, min=lo, max=HIST_HI).cpu().numpy().astype(np.int64)
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

    if (
        state.get("screen") is not None
        and state.get("dense") is False
        and (problem.topk <= 0 or state.get("floor") is not None)
    ):
        from .screened import screened_block

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
                sel = np.flatnonzero(problem.perm_pos[col0 : col0 + b] < size)
                if sel.size:
                    sub.offer(scores[:, torch.as_tensor(sel, device=scores.device)], cols[sel])
    if problem.topk > 0 and floor is None:
        _offer_matches(part, problem, scores, problem.mates.shape[0] + col0, state)
    if state.get("screen") is not None and "split" not in state:
        from .screened import plan_screen

        plan_screen(part, problem, state, block_dev, scores.numel(), dense)


def _histogram_and_extract(scores, problem: Problem, thr: np.ndarray, cols: np.ndarray, with_hist: bool, state: dict):
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


def _count_extracted(part: Partial, problem: Problem, p, d, v32, cut: float, floor, dense: bool, state: dict) -> None:
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
        _merge_matches(
            part, problem, p[keep], d[keep] + problem.mates.shape[0], v32[keep], floor, problem.probes.shape[0], state
        )


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
        v2, i2, b2 = keep_top(v2, i2, bound[rows], kk)
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
    part.match_vals, part.match_idx, part.match_bound = keep_top(vals, idx, bound, kk)
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
