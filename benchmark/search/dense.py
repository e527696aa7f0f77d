"""The dense float64 path of the search engine, for attacked-like data (positives inside the negative bulk).

When many negatives fall inside their probe's rank band, extracting them is slower than counting
densely: every block is scored by a float64 GEMM (error ≤ ``float64_error_bound``), and ranks, the
sweep's first beaters and the exact AUC numerator are counted over the whole block; only scores within
that bound of a positive (near-exact ties) are recomputed with ``dot64``.  Same additive ``Partial``
state as the sparse path, so results are identical whichever path ran.

Counting uses lookup tables over one uniform grid of the positives' score range (``DenseGrid``): a fine
global table gives each score's AUC term (2·#{positives above}), a coarse per-probe table gives how many
of the probe's positives it beats; a bin that a positive could share (within the error bound) is
marked "hard" and its scores are placed by a short search in the sorted positives.  On the CPU one
fused, parallel numba kernel does all of it in a single pass over the block (``_kernel``); on other
devices (CUDA) the same decisions are taken with torch operations (``_torch_block``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .engine import DENSE_FRACTION, Partial, Problem, dot64, float64_error_bound

_DENSE_CHUNK = 1 << 22  # scores per row chunk of the torch path (bounds its temporaries)
AUC_GRID_BINS = 1 << 21  # fine uniform bins of the positives' score range (AUC lookup; 8 MB table)
RANK_TABLE_CELLS = 1 << 24  # budget of the per-probe coarse rank table (n_p × coarse bins)
USE_KERNEL = True  # the numba kernel on CPU (tests switch it off to check the torch path)


def dense_wanted(scores, problem: Problem) -> bool:
    """True when many scores fall in their probe's rank band (positives inside the negative bulk)."""
    import torch

    low = torch.as_tensor(problem.row_low, device=scores.device)[:, None]
    return float((scores >= low).sum()) > DENSE_FRACTION * scores.numel()


# ------------------------------------------------------------------------------------------ the grid


@dataclass
class DenseGrid:
    """Lookup tables of one problem (built once per run, cached in the block ``state``).

    A float64 score x falls in fine index f = clamp(⌊(x − lo)·inv_w⌋ + 1, 0, bins + 1): 0 below every
    positive, bins + 1 above every positive, otherwise fine bin f − 1.  ``auc[f]`` is 2·#{positives > x}
    for every x in the bin, or −1 − #{positives below the bin} for a hard bin (a positive within the
    bin widened by ``delta`` ≥ the float64 error bound + index rounding).  ``rank[p, c]`` (coarse index
    c = (f + 2^shift − 1) >> shift) is #{positives of p < x}, or −1 − #{those below the bin} when hard.
    """

    lo: float
    inv_w: float
    bins: int
    shift: int
    eps64: float
    auc: np.ndarray  # (bins + 2,) int32
    rank: np.ndarray  # (n_p, bins >> shift + 2) int32
    sorted_pos: np.ndarray  # (N_pos,) float64
    pad: np.ndarray  # (n_p, m_max + 2) float64: −inf, the probe's sorted positives (+inf padded), +inf


def build_grid(problem: Problem, bins: int = AUC_GRID_BINS, rank_cells: int = RANK_TABLE_CELLS) -> DenseGrid:
    """The lookup tables of ``problem`` (see ``DenseGrid``); exact by construction (hard bins searched)."""
    sp, table = problem.sorted_pos, problem.pos_table
    n_p = table.shape[0]
    eps64 = float64_error_bound(problem.probes.shape[1])
    span = max(float(sp[-1] - sp[0]), 1e-6)
    w = span / bins * (1 + 1e-9)
    # index rounding: |computed index − exact| ≪ 1e-6 bins; the score itself is within eps64
    delta = eps64 + 1e-6 * w + 1e-14
    lo = float(sp[0]) - 4 * delta - w  # so x < lo (+ rounding) lies below every positive by more than eps64
    w = (float(sp[-1]) + 4 * delta + w - lo) / bins
    inv_w = 1.0 / w
    edges = lo + np.arange(bins + 1, dtype=np.float64) * w
    below = np.searchsorted(sp, edges[:-1] - delta, "left")
    upto = np.searchsorted(sp, edges[1:] + delta, "right")
    auc = np.empty(bins + 2, np.int64)
    auc[0], auc[-1] = 2 * sp.size, 0
    auc[1:-1] = np.where(upto > below, -1 - below, 2 * (sp.size - below))
    coarse = max(1, min(bins, 1 << int(np.log2(max(rank_cells // max(n_p, 1), 1)))))
    shift = int(np.log2(bins // coarse))
    cedges = edges[:: 1 << shift]
    rank = np.empty((n_p, coarse + 2), np.int64)
    rank[:, 0] = 0
    rank[:, -1] = np.isfinite(table).sum(axis=1)
    for p in range(n_p):  # rows are sorted ascending (+inf padded)
        b = np.searchsorted(table[p], cedges[:-1] - delta, "left")
        u = np.searchsorted(table[p], cedges[1:] + delta, "right")
        rank[p, 1:-1] = np.where(u > b, -1 - b, b)
    pad = np.concatenate([np.full((n_p, 1), -np.inf), table, np.full((n_p, 1), np.inf)], axis=1)
    return DenseGrid(
        lo,
        inv_w,
        bins,
        shift,
        eps64,
        auc.astype(np.int32),
        rank.astype(np.int32),
        np.ascontiguousarray(sp),
        np.ascontiguousarray(pad),
    )


def _grid(problem: Problem, state: dict) -> DenseGrid:
    if "dense_grid" not in state:
        state["dense_grid"] = build_grid(problem, AUC_GRID_BINS, RANK_TABLE_CELLS)
    return state["dense_grid"]


# ------------------------------------------------------------------------------- numba kernel (CPU)

try:  # the fused CPU kernel (numba); without it every device takes the torch path
    import numba
except ImportError:  # pragma: no cover - numba is a dependency
    numba = None

if numba is not None:

    @numba.njit(inline="always", cache=True)
    def _gallop(a, start, stop, x):
        """First index ≥ ``start`` with a[i] ≥ x in sorted ``a[:stop]`` (all of a[:start] < x), galloping."""
        step = 1
        hi = start
        while hi < stop and a[hi] < x:
            hi = start + step
            step *= 2
        if hi > stop:
            hi = stop
        lo = start
        while lo < hi:
            mid = (lo + hi) // 2
            if a[mid] < x:
                lo = mid + 1
            else:
                hi = mid
        return lo

    @numba.njit(inline="always", cache=True)
    def _fine_index(x, lo, inv_w, bins):
        """The grid's fine index f of score x (see ``DenseGrid``)."""
        t = (x - lo) * inv_w + 1.0
        if t < 1.0:
            return 0
        if t >= bins + 1.0:
            return bins + 1
        return int(t)

    @numba.njit(inline="always", cache=True)
    def _auc_term(x, f, auc, sp, eps64):
        """2·#{positives > x}, or −1 when a positive lies within eps64 of x (a near tie: ``dot64``)."""
        a = auc[f]
        if a >= 0:
            return a
        n = sp.shape[0]
        left = _gallop(sp, -1 - a, n, x)
        if (left > 0 and x - sp[left - 1] <= eps64) or (left < n and sp[left] - x <= eps64):
            return -1
        return 2 * (n - left)

    @numba.njit(parallel=True, cache=True, nogil=True)
    def _kernel(
        s, lo, inv_w, bins, shift, eps64, auc, rank, sp, pad, perm, rank_hist, first_beater, num2_rows, amb_rows
    ):
        """One pass over a float64 block (rows = probes): rank histogram, first beaters, 2·AUC per row,
        and per row the number of near ties left out (for ``dot64``)."""
        n, b = s.shape
        m2 = pad.shape[1]
        half = (1 << shift) - 1
        sweep = perm.shape[0] > 0
        for i in numba.prange(n):
            acc = 0
            namb = 0
            for c in range(b):
                x = s[i, c]
                f = _fine_index(x, lo, inv_w, bins)
                a = _auc_term(x, f, auc, sp, eps64)
                if a < 0:
                    namb += 1
                    continue
                acc += a
                k = rank[i, (f + half) >> shift]
                if k < 0:  # a positive of this probe shares the bin: count them (no tie: checked above)
                    k = _gallop(pad[i], -k, m2, x) - 1
                rank_hist[i, k] += 1
                if sweep and perm[c] < first_beater[i, k]:
                    first_beater[i, k] = perm[c]
            num2_rows[i] = acc
            amb_rows[i] = namb

    @numba.njit(cache=True)
    def _tie_cols(row, lo, inv_w, bins, eps64, auc, sp):
        """Columns of one score row that ``_kernel`` left out as near ties."""
        out = np.empty(row.shape[0], np.int64)
        n = 0
        for c in range(row.shape[0]):
            x = row[c]
            if _auc_term(x, _fine_index(x, lo, inv_w, bins), auc, sp, eps64) < 0:
                out[n] = c
                n += 1
        return out[:n]


def kernel_available() -> bool:
    """True when the numba CPU kernel can be used."""
    return numba is not None


def _kernel_block(part: Partial, problem: Problem, g: DenseGrid, s: np.ndarray, col0: int) -> None:
    """One fused pass (numba, parallel over probes) over a CPU float64 block; ties → ``dot64``."""
    n_p, b = s.shape
    perm = (
        np.zeros(0, np.int64) if problem.perm_pos is None else np.ascontiguousarray(problem.perm_pos[col0 : col0 + b])
    )
    num2 = np.zeros(n_p, np.int64)
    namb = np.zeros(n_p, np.int64)
    _kernel(
        s,
        g.lo,
        g.inv_w,
        g.bins,
        g.shift,
        g.eps64,
        g.auc,
        g.rank,
        g.sorted_pos,
        g.pad,
        perm,
        part.rank_hist,
        part.first_beater,
        num2,
        namb,
    )
    total = int(num2.sum())
    for r in np.flatnonzero(namb):
        cols = _tie_cols(s[r], g.lo, g.inv_w, g.bins, g.eps64, g.auc, g.sorted_pos)
        rows = np.full(cols.size, r)
        total += _exact_ties(part, problem, rows, cols, col0)
    part.auc_num2 += total


def _exact_ties(part: Partial, problem: Problem, rows: np.ndarray, cols: np.ndarray, col0: int) -> int:
    """Rank/sweep counts of near-tie pairs (block rows/cols) from ``dot64``; returns their 2·AUC terms."""
    exact = dot64(problem.probes[rows], problem.distractors[cols + col0])
    k = (problem.pos_table[rows] < exact[:, None]).sum(axis=1)
    np.add.at(part.rank_hist, (rows, k), 1)
    if problem.perm_pos is not None:
        np.minimum.at(part.first_beater, (rows, k), problem.perm_pos[cols + col0])
    part.n_refined += int(rows.size)
    part.auc_refined += int(rows.size)
    sp = problem.sorted_pos
    return int((2 * sp.size - np.searchsorted(sp, exact, "left") - np.searchsorted(sp, exact, "right")).sum())


# ------------------------------------------------------------------------------ torch path (devices)


def _torch_block(part: Partial, problem: Problem, g: DenseGrid, s64, col0: int, state: dict) -> None:
    """The same counts with torch operations (any device): grid lookups, ``searchsorted`` for hard bins."""
    import torch

    dev = s64.device
    if state.get("dense_dev") is None:
        state["dense_dev"] = tuple(
            torch.as_tensor(x, device=dev)
            for x in (g.auc.astype(np.int64), g.rank.astype(np.int64), g.sorted_pos, g.pad, problem.pos_table)
        )
    auc, rank, sp, pad, table = state["dense_dev"]
    n_p, b = s64.shape
    n_pos, m1 = sp.numel(), problem.m_max + 1
    rows_per = max(1, _DENSE_CHUNK // max(b, 1))
    perm = None if problem.perm_pos is None else torch.as_tensor(problem.perm_pos[col0 : col0 + b], device=dev)
    num2 = 0
    hist = torch.zeros(n_p * m1, dtype=torch.int64, device=dev)
    for r0 in range(0, n_p, rows_per):
        r1 = min(r0 + rows_per, n_p)
        s = s64[r0:r1]
        f = ((s - g.lo) * g.inv_w + 1.0).clamp_(0, g.bins + 1).long()
        a = auc[f]
        hard = a < 0
        hi = hard.nonzero()
        x = s[hi[:, 0], hi[:, 1]]
        left = torch.searchsorted(sp, x)
        sp_pad = torch.nn.functional.pad(sp, (1, 1), value=float("inf"))
        sp_pad[0] = -float("inf")
        amb_h = ((x - sp_pad[left]) <= g.eps64) | ((sp_pad[left + 1] - x) <= g.eps64)
        a[hi[:, 0], hi[:, 1]] = torch.where(amb_h, 0, 2 * (n_pos - left))
        num2 += int(a.sum())
        k = rank[torch.arange(r0, r1, device=dev)[:, None], (f + ((1 << g.shift) - 1)) >> g.shift]
        kh = k < 0
        ki = kh.nonzero()
        if ki.numel():
            xr = s[ki[:, 0], ki[:, 1]]
            k[ki[:, 0], ki[:, 1]] = torch.searchsorted(table[ki[:, 0] + r0], xr[:, None]).squeeze(1)
        idx = torch.arange(r0, r1, device=dev)[:, None] * m1 + k
        amb = hi[amb_h]
        if amb.numel():
            idx[amb[:, 0], amb[:, 1]] = -1  # recomputed below
        keep = idx.reshape(-1)
        ok = keep >= 0
        hist += torch.bincount(keep[ok], minlength=n_p * m1)
        if perm is not None:
            fb = torch.full((n_p * m1,), np.iinfo(np.int64).max, dtype=torch.int64, device=dev)
            fb.scatter_reduce_(0, keep[ok], perm.expand(r1 - r0, b).reshape(-1)[ok], "amin")
            part.first_beater[:] = np.minimum(part.first_beater, fb.cpu().numpy().reshape(n_p, m1))
        if amb.numel():
            num2 += _exact_ties(part, problem, amb[:, 0].cpu().numpy() + r0, amb[:, 1].cpu().numpy(), col0)
    part.rank_hist += hist.cpu().numpy().reshape(n_p, m1)
    part.auc_num2 += num2


# ------------------------------------------------------------------------------------------ the block


def dense_block(part: Partial, problem: Problem, s64, col0: int, state: dict) -> None:
    """Ranks, sweep and the exact AUC numerator of a float64 score block (error ≤ ``float64_error_bound``).

    Grid lookups place every score among the probe's positives (ranks, first beaters) and among all
    positives (AUC); scores in a bin a positive could share are placed by a search, and those within
    the bound of a positive (exact or near-exact ties, rare) are recomputed with ``dot64``.
    """
    g = _grid(problem, state)
    if s64.device.type == "cpu" and USE_KERNEL and kernel_available():
        _kernel_block(part, problem, g, np.ascontiguousarray(s64.numpy()), col0)
    else:
        _torch_block(part, problem, g, s64, col0, state)
    part.dense_cols += s64.shape[1]
