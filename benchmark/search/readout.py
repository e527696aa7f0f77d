"""Metrics read off a (merged) ``Partial``: ranks, first beaters of the sweep, τ and TAR, the AUC from its
histograms (or an exact float64 pass), and the exact top matches."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .scores import HIST_BINS, HIST_FUZZ, HIST_HI, dot64, float64_error_bound
from .topk import NegTopK, row_order

if TYPE_CHECKING:
    from .engine import Partial, Problem


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
    order = row_order(exact, idx)
    exact = np.take_along_axis(exact, order, 1)[:, :k]
    idx = np.take_along_axis(idx, order, 1)[:, :k]
    # certified when every dropped item (float32 ≤ bound, so exact ≤ bound + eps) is below the k-th
    uncertain = int((part.match_bound.astype(np.float64) + problem.eps >= exact[:, -1]).sum()) if k else 0
    return idx, exact, uncertain
