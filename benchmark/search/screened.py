"""The sparse path's blocks scored in low precision (bf16/fp16, ``screen.Screen``): the same thresholds as the
float32 path lowered by the screen's error bound, the entries above rescored in float32, the AUC histogram
counted from the screened values; and the plan, after the first (float32) block, of where screening stops."""

from __future__ import annotations

import math

import numpy as np

from .engine import (
    AUC_TOLERANCE,
    HIST_BINS,
    HIST_FUZZ,
    HIST_HI,
    NegTopK,
    Partial,
    Problem,
    _count_extracted,
    extract_ge,
    histogram_values,
    neg_histogram,
)


def plan_screen(part: Partial, problem: Problem, state: dict, block_dev, n_scores: int, dense: bool) -> None:
    """After the first (float32) block: the screen's AUC split level, or no screening (``screen.plan_split``)."""
    screen = state["screen"]
    if dense:
        state["screen"], part.lp_note = None, "screening not used: dense float64 path (positives in the bulk)"
        return
    expected = 1.05 * float(screen.errors(block_dev)[1].max())  # later blocks' bounds are alike
    level, part.lp_note = screen.plan_split(
        part.neg_hist, n_scores, problem.hist_lo, HIST_HI, problem.sorted_pos, expected, HIST_FUZZ, AUC_TOLERANCE
    )
    if level is None:
        state["screen"] = None
    state["split"] = level


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
        hist, outside, p, c, vlp = scan_bits(
            as_bits(scores),
            state["lut"],
            state["by_key"],
            problem.hist_lo_lp,
            HIST_HI,
            HIST_BINS,
            thr_lp,
            with_hist,
            cap=split,
        )
    else:
        vals = scores.float()
        p, c, vlp = extract_ge(vals, thr_lp, np.arange(b))
        hist, outside = (
            neg_histogram(vals.masked_fill_(vals >= float(split), math.inf), problem.hist_lo_lp)
            if with_hist
            else (None, 0)
        )
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
                sel = np.flatnonzero(problem.perm_pos[col0 : col0 + b] < size)
                if sel.size:
                    _screened_offer(sub, screen, scores, err, probes_dev, block_dev, sel, cols)


def _screened_offer(
    sub: NegTopK, screen, scores, err, probes_dev, block_dev, sel: np.ndarray, cols: np.ndarray
) -> None:
    """A sweep subset's τ candidates among block columns ``sel`` of a screened block."""
    import torch

    from .screen import rescore

    cut = sub.block_cut(None)
    idx = torch.as_tensor(sel, device=scores.device)
    thr_lp = screen.thresholds(np.full(scores.shape[0], cut), err)
    p, c, _ = extract_ge(scores[:, idx].float(), thr_lp, sel)
    v32 = rescore(probes_dev, block_dev, p, c)
    sub.add(p, cols[c], v32, cut)
