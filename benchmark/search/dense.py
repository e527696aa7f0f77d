"""The dense float64 path of the search engine, for attacked-like data (positives inside the negative bulk).

When many negatives fall inside their probe's rank band, extracting them is slower than counting
densely: every block is scored by a float64 GEMM (error ≤ ``float64_error_bound``), and ranks, the
sweep's first beaters and the exact AUC numerator are counted over the whole block; only scores within
that bound of a positive (near-exact ties) are recomputed with ``dot64``.  Same additive ``Partial``
state as the sparse path, so results are identical whichever path ran.
"""

from __future__ import annotations

import numpy as np

from .engine import DENSE_FRACTION, Partial, Problem, dot64, float64_error_bound

_DENSE_CHUNK = 1 << 22  # scores per row chunk of the dense path (bounds its temporaries)


def dense_wanted(scores, problem: Problem) -> bool:
    """True when many scores fall in their probe's rank band (positives inside the negative bulk)."""
    import torch
    low = torch.as_tensor(problem.row_low, device=scores.device)[:, None]
    return float((scores >= low).sum()) > DENSE_FRACTION * scores.numel()


def _dense_tables(problem: Problem, device, state: dict):
    """Device copies of the per-probe and global positive tables, padded with ∓inf (cached in ``state``)."""
    import torch
    if "dense_tables" not in state:
        n_p = problem.pos_table.shape[0]
        pad = np.concatenate([np.full((n_p, 1), -np.inf), problem.pos_table, np.full((n_p, 1), np.inf)], axis=1)
        sp_pad = np.concatenate([[-np.inf], problem.sorted_pos, [np.inf]])
        state["dense_tables"] = tuple(torch.as_tensor(np.ascontiguousarray(x), device=device) for x in
                                      (problem.pos_table, pad, problem.sorted_pos, sp_pad))
    return state["dense_tables"]


AUC_GRID_BINS = 1 << 23  # uniform score bins of the dense path's AUC lookup table


def _auc_grid(problem: Problem, eps64: float, device, state: dict):
    """(lo, 1/width, table): ``table[j]`` = #positives below every score of bin j, or −1 when a positive lies
    within one bin + eps64 of bin j (then the bin's scores are looked up exactly).  Cached in ``state``."""
    import torch
    if "auc_grid" not in state:
        sp = problem.sorted_pos
        lo, hi = float(sp[0]) - 4 * eps64, float(sp[-1]) + 4 * eps64
        w = max(hi - lo, 1e-9) / AUC_GRID_BINS
        edges = lo + np.arange(AUC_GRID_BINS, dtype=np.float64) * w
        below = np.searchsorted(sp, edges, "left")
        near = np.searchsorted(sp, edges + 2 * w + eps64, "right") - np.searchsorted(sp, edges - w - eps64, "left")
        table = np.where(near > 0, -1, below).astype(np.int32)
        state["auc_grid"] = (lo, 1.0 / w, torch.as_tensor(table, device=device))
    return state["auc_grid"]


def _dense_auc(part: Partial, problem: Problem, s, r0: int, col0: int, state: dict) -> int:
    """Exact 2·AUC numerator of float64 scores ``s`` (probe rows r0…): Σ over negatives of
    2·#{pos > s} + #{pos = s}.  A grid lookup places most scores; those in a bin near a positive go through
    ``searchsorted``, and those within ``float64_error_bound`` of a positive are recomputed with ``dot64``."""
    import torch
    dev = s.device
    n_pos = problem.n_pos
    eps64 = float64_error_bound(problem.probes.shape[1])
    lo, inv_w, table = _auc_grid(problem, eps64, dev, state)
    j = ((s - lo) * inv_w).clamp_(-1, AUC_GRID_BINS)
    low, high = j < 0, j >= AUC_GRID_BINS
    v = table[j.clamp_(0, AUC_GRID_BINS - 1).long()]
    v = v.masked_fill_(low, 0).masked_fill_(high, n_pos)  # below / above every positive (by > 4·eps64)
    fall = v < 0
    num2 = 2 * int((n_pos - v.long()).masked_fill_(fall, 0).sum())
    fi = fall.nonzero()
    if fi.numel() == 0:
        return num2
    _, _, sp, sp_pad = _dense_tables(problem, dev, state)
    x = s[fi[:, 0], fi[:, 1]]
    left = torch.searchsorted(sp, x)
    amb = ((x - sp_pad[left]) <= eps64) | ((sp_pad[left + 1] - x) <= eps64)
    num2 += 2 * int((n_pos - left).masked_fill_(amb, 0).sum())
    ai = amb.nonzero().squeeze(1)
    if ai.numel():
        rows = fi[ai, 0].cpu().numpy() + r0
        cols = fi[ai, 1].cpu().numpy() + col0
        exact = dot64(problem.probes[rows], problem.distractors[cols])
        l2 = np.searchsorted(problem.sorted_pos, exact, "left")
        r2 = np.searchsorted(problem.sorted_pos, exact, "right")
        num2 += int((2 * n_pos - l2 - r2).sum())
        part.auc_refined += int(ai.numel())
    return num2


def dense_block(part: Partial, problem: Problem, s64, col0: int, state: dict) -> None:
    """Ranks, sweep and the exact AUC numerator of a float64 score block (error ≤ ``float64_error_bound``).

    Per probe, ``torch.searchsorted`` of the block's scores in the probe's sorted positives gives how many
    of its positives each negative beats; only a score within the bound of a positive (an exact or
    near-exact tie, rare) is recomputed with ``dot64``.  Same for the AUC against all positives.
    """
    import torch
    dev = s64.device
    table, pad, sp, sp_pad = _dense_tables(problem, dev, state)
    eps64 = float64_error_bound(problem.probes.shape[1])
    n_p, b = s64.shape
    m1, n_pos = problem.m_max + 1, problem.n_pos
    rows_per = max(1, _DENSE_CHUNK // max(b, 1))
    perm = None if problem.perm_pos is None else torch.as_tensor(problem.perm_pos[col0:col0 + b], device=dev)
    num2 = 0
    for r0 in range(0, n_p, rows_per):  # noqa: B007
        r1 = min(r0 + rows_per, n_p)
        s = s64[r0:r1]
        k = torch.searchsorted(table[r0:r1], s)  # positives of the probe strictly below each score
        amb = ((s - pad[r0:r1].gather(1, k)) <= eps64) | ((pad[r0:r1].gather(1, k + 1) - s) <= eps64)
        ai = amb.nonzero()
        if ai.numel():
            rows, cols = ai[:, 0].cpu().numpy() + r0, ai[:, 1].cpu().numpy()
            exact = dot64(problem.probes[rows], problem.distractors[cols + col0])
            knew = (problem.pos_table[rows] < exact[:, None]).sum(axis=1)
            k[ai[:, 0], ai[:, 1]] = torch.as_tensor(knew, device=dev)
            part.n_refined += int(ai.shape[0])
        idx = (torch.arange(r1 - r0, device=dev)[:, None] * m1 + k).reshape(-1)
        part.rank_hist[r0:r1] += torch.bincount(idx, minlength=(r1 - r0) * m1).cpu().numpy().reshape(-1, m1)
        if perm is not None:
            fb = torch.full(((r1 - r0) * m1,), np.iinfo(np.int64).max, dtype=torch.int64, device=dev)
            fb.scatter_reduce_(0, idx, perm.expand(r1 - r0, b).reshape(-1), "amin")
            part.first_beater[r0:r1] = np.minimum(part.first_beater[r0:r1], fb.cpu().numpy().reshape(-1, m1))
        num2 += _dense_auc(part, problem, s, r0, col0, state)
    part.auc_num2 += num2
    part.dense_cols += b
