"""Fused CPU scan of one probe × distractor score block (numba, parallel over probe rows).

The sparse search path needs two things from every float32 score block: the AUC histogram of the
scores at or above ``lo`` (``HIST_BINS`` uniform bins of ``[lo, hi]``, as ``torch.histc`` counts them)
and the entries at or above a per-probe threshold (row-major, as ``engine.extract_ge`` returns them).
torch and numpy need three passes over the block for that (``histc``, a comparison, ``flatnonzero``);
this module does it in two — pass 1 bins and counts, pass 2 gathers — each one read of the block on all
cores.  Same results as the torch path except the bin of a score within float rounding of a bin edge,
which the AUC error bound already allows for (``engine.HIST_FUZZ``).  GPUs keep the torch path.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import overload

_NO_LUT = np.zeros(0, np.float32)


def _value(scores, i, j, lut):  # pragma: no cover (replaced by the overload below)
    raise NotImplementedError


@overload(_value, inline="always")
def _value_impl(scores, i, j, lut):
    """A block entry as float32: the value itself, or a 16-bit pattern (bf16/fp16 block) looked up in ``lut``."""
    if scores.dtype == types.uint16:
        return lambda scores, i, j, lut: lut[scores[i, j]]
    return lambda scores, i, j, lut: scores[i, j]


@numba.njit(parallel=True, cache=True, nogil=True)
def _bin_and_count(scores, lut, lo, hi, cap, inv_width, thr, hist_parts, counts):  # pragma: no cover (compiled)
    n, b = scores.shape
    n_parts, n_bins = hist_parts.shape
    rows_per = (n + n_parts - 1) // n_parts
    for part in numba.prange(n_parts):
        hist = hist_parts[part]
        for i in range(part * rows_per, min(n, (part + 1) * rows_per)):
            t = thr[i]
            k = 0
            for j in range(b):
                x = _value(scores, i, j, lut)
                if x >= lo and x <= hi and x < cap:
                    q = int((x - lo) * inv_width)
                    if q >= n_bins:
                        q = n_bins - 1
                    hist[q] += 1
                if x >= t:
                    k += 1
            counts[i] = k


@numba.njit(parallel=True, cache=True, nogil=True)
def _gather(scores, lut, thr, offsets, rows, cols, vals):  # pragma: no cover (compiled)
    n, b = scores.shape
    for i in numba.prange(n):
        t = thr[i]
        o = offsets[i]
        for j in range(b):
            x = _value(scores, i, j, lut)
            if x >= t:
                rows[o] = i
                cols[o] = j
                vals[o] = x
                o += 1


def scan_block(scores: np.ndarray, lo: float, hi: float, n_bins: int, thr: np.ndarray,
               with_histogram: bool = True, lut: np.ndarray | None = None, cap: float = np.inf) -> tuple[np.ndarray | None, int, np.ndarray, np.ndarray, np.ndarray]:
    """``(histogram, #scores < lo, rows, cols, values)`` of a C-contiguous float32 block.

    ``histogram``: int64 counts of the scores in ``[lo, hi]`` over ``n_bins`` uniform bins (None unless
    ``with_histogram``; the second value counts every score outside, as ``engine.neg_histogram`` does);
    ``rows, cols, values``: the entries with ``scores[i, j] >= thr[i]``, row-major.  A uint16 block holds
    bf16/fp16 bit patterns whose float32 values are ``lut[pattern]`` (``screen.values_lut``).  Values
    ≥ ``cap`` are left out of the histogram (and counted in the second value).
    """
    if lut is None:
        scores, lut = np.ascontiguousarray(scores, dtype=np.float32), _NO_LUT
    else:
        scores = np.ascontiguousarray(scores, dtype=np.uint16)
    thr = np.ascontiguousarray(thr, dtype=np.float32)
    n = scores.shape[0]
    parts = max(1, min(n, 4 * numba.get_num_threads()))
    hist_parts = np.zeros((parts if with_histogram else 1, n_bins if with_histogram else 1), np.int64)
    counts = np.zeros(n, np.int64)
    lo_eff, inv_width = (float(lo), float(n_bins / (hi - lo))) if with_histogram else (np.inf, 0.0)  # no binning
    _bin_and_count(scores, lut, lo_eff, float(hi), float(cap), inv_width, thr, hist_parts, counts)
    offsets = np.cumsum(counts) - counts
    total = int(counts.sum())
    rows, cols, vals = np.empty(total, np.int64), np.empty(total, np.int64), np.empty(total, np.float32)
    if total:
        _gather(scores, lut, thr, offsets, rows, cols, vals)
    if not with_histogram:
        return None, 0, rows, cols, vals
    hist = hist_parts.sum(axis=0)
    return hist, scores.size - int(hist.sum()), rows, cols, vals
