"""Fused CPU scan of one probe × distractor score block (numba, parallel over probe rows).

The sparse search path needs two things from every float32 score block: the AUC histogram of the
scores at or above ``lo`` (``HIST_BINS`` uniform bins of ``[lo, hi]``, as ``torch.histc`` counts them)
and the entries at or above a per-probe threshold (row-major, as ``engine.extract_ge`` returns them).
torch and numpy need three passes over the block for that (``histc``, a comparison, ``flatnonzero``);
this module does it in two — pass 1 bins and counts, pass 2 gathers — each one read of the block on all
cores.  A bf16/fp16 block (``scan_bits``) is read as 16-bit patterns: pass 1 counts each pattern (the
65,536 patterns are binned afterwards) and compares order keys with integer thresholds.  Same results as the torch path except the bin of a score within float rounding of a bin edge,
which the AUC error bound already allows for (``engine.HIST_FUZZ``).  GPUs keep the torch path.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(parallel=True, cache=True, nogil=True)
def _bin_and_count(scores, lo, hi, inv_width, thr, hist_parts, counts):  # pragma: no cover (compiled)
    n, b = scores.shape
    n_parts, n_bins = hist_parts.shape
    rows_per = (n + n_parts - 1) // n_parts
    for part in numba.prange(n_parts):
        hist = hist_parts[part]
        for i in range(part * rows_per, min(n, (part + 1) * rows_per)):
            t = thr[i]
            k = 0
            for j in range(b):
                x = scores[i, j]
                if x >= lo and x <= hi:
                    q = int((x - lo) * inv_width)
                    if q >= n_bins:
                        q = n_bins - 1
                    hist[q] += 1
                if x >= t:
                    k += 1
            counts[i] = k


@numba.njit(parallel=True, cache=True, nogil=True)
def _gather(scores, thr, offsets, rows, cols, vals):  # pragma: no cover (compiled)
    n, b = scores.shape
    for i in numba.prange(n):
        t = thr[i]
        o = offsets[i]
        for j in range(b):
            x = scores[i, j]
            if x >= t:
                rows[o] = i
                cols[o] = j
                vals[o] = x
                o += 1


@numba.njit(inline="always")
def _key(x):  # pragma: no cover (compiled)
    """Order key of a 16-bit bf16/fp16 pattern: integer order = value order (−0 just below +0)."""
    return np.int32(x) ^ (np.int32(0x8000) + (np.int32(x) >> 15) * np.int32(0x7FFF))


@numba.njit(parallel=True, cache=True, nogil=True)
def _count_patterns(bits, kthr, pattern_parts, counts):  # pragma: no cover (compiled)
    n, b = bits.shape
    n_parts = pattern_parts.shape[0]
    rows_per = (n + n_parts - 1) // n_parts
    for part in numba.prange(n_parts):
        cnt = pattern_parts[part]
        for i in range(part * rows_per, min(n, (part + 1) * rows_per)):
            row = bits[i]
            for j in range(b):  # branch-free: a test against the histogram's edge costs more
                cnt[row[j]] += 1
            t = kthr[i]
            k = 0
            for j in range(b):  # no histogram in this loop: it vectorises
                k += _key(row[j]) >= t
            counts[i] = k


@numba.njit(parallel=True, cache=True, nogil=True)
def _gather_bits(bits, kthr, offsets, rows, cols, out_bits):  # pragma: no cover (compiled)
    n, b = bits.shape
    for i in numba.prange(n):
        t = kthr[i]
        o = offsets[i]
        for j in range(b):
            x = bits[i, j]
            if _key(x) >= t:
                rows[o] = i
                cols[o] = j
                out_bits[o] = x
                o += 1


def key_values(lut: np.ndarray) -> np.ndarray:
    """float32 value of every order key 0…65535 (see ``_key``), non-decreasing: key k ≥ 0x8000 is the
    positive pattern k ^ 0x8000, key k < 0x8000 the negative pattern k ^ 0xFFFF; NaN patterns (at both
    ends) read as −inf/+inf, so thresholds become keys by ``searchsorted``."""
    k = np.arange(1 << 16, dtype=np.uint32)
    patterns = np.where(k >= 0x8000, k ^ 0x8000, k ^ 0xFFFF)
    v = np.asarray(lut, np.float32)[patterns].copy()
    nan = np.isnan(v)
    v[nan] = np.where(k[nan] >= 0x8000, np.inf, -np.inf)
    return v


def scan_bits(
    bits: np.ndarray,
    lut: np.ndarray,
    by_key: np.ndarray,
    lo: float,
    hi: float,
    n_bins: int,
    thr: np.ndarray,
    with_histogram: bool = True,
    cap: float = np.inf,
) -> tuple[np.ndarray | None, int, np.ndarray, np.ndarray, np.ndarray]:
    """``scan_block`` of a block of bf16/fp16 bit patterns (uint16; ``lut``: ``screen.values_lut``,
    ``by_key``: ``key_values(lut)``).  Values ≥ ``cap`` are left out of the histogram (and counted in
    the second value).  Each entry is counted once per pattern and the 65,536 patterns are binned
    afterwards, and the thresholds become order keys, so the inner loops do no float work."""
    bits = np.ascontiguousarray(bits, dtype=np.uint16)
    kthr = np.searchsorted(by_key, np.asarray(thr, np.float32), "left").astype(np.int32)  # 65536: none
    n = bits.shape[0]
    parts = max(1, min(n, 2 * numba.get_num_threads()))
    pattern_parts = np.zeros((parts, 1 << 16), np.int64)
    counts = np.zeros(n, np.int64)
    _count_patterns(bits, kthr, pattern_parts, counts)
    offsets = np.cumsum(counts) - counts
    total = int(counts.sum())
    rows, cols, out_bits = np.empty(total, np.int64), np.empty(total, np.int64), np.empty(total, np.uint16)
    if total:
        _gather_bits(bits, kthr, offsets, rows, cols, out_bits)
    vals = lut[out_bits]
    if not with_histogram:
        return None, 0, rows, cols, vals
    per_pattern = pattern_parts.sum(axis=0)
    with np.errstate(invalid="ignore"):  # NaN patterns (signalling ones warn when cast): never inside
        v = np.asarray(lut, np.float64)
        inside = (v >= lo) & (v <= hi) & (v < cap) & (per_pattern > 0)
    q = np.minimum(((v[inside] - lo) * (n_bins / (hi - lo))).astype(np.int64), n_bins - 1)
    hist = np.bincount(q, weights=per_pattern[inside], minlength=n_bins).astype(np.int64)
    return hist, bits.size - int(hist.sum()), rows, cols, vals


def scan_block(
    scores: np.ndarray, lo: float, hi: float, n_bins: int, thr: np.ndarray, with_histogram: bool = True
) -> tuple[np.ndarray | None, int, np.ndarray, np.ndarray, np.ndarray]:
    """``(histogram, #scores < lo, rows, cols, values)`` of a C-contiguous float32 block.

    ``histogram``: int64 counts of the scores in ``[lo, hi]`` over ``n_bins`` uniform bins (None unless
    ``with_histogram``; the second value counts every score outside, as ``engine.neg_histogram`` does);
    ``rows, cols, values``: the entries with ``scores[i, j] >= thr[i]``, row-major.
    """
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    thr = np.ascontiguousarray(thr, dtype=np.float32)
    n = scores.shape[0]
    parts = max(1, min(n, 4 * numba.get_num_threads()))
    hist_parts = np.zeros((parts if with_histogram else 1, n_bins if with_histogram else 1), np.int64)
    counts = np.zeros(n, np.int64)
    lo_eff, inv_width = (float(lo), float(n_bins / (hi - lo))) if with_histogram else (np.inf, 0.0)  # no binning
    _bin_and_count(scores, lo_eff, float(hi), inv_width, thr, hist_parts, counts)
    offsets = np.cumsum(counts) - counts
    total = int(counts.sum())
    rows, cols, vals = np.empty(total, np.int64), np.empty(total, np.int64), np.empty(total, np.float32)
    if total:
        _gather(scores, thr, offsets, rows, cols, vals)
    if not with_histogram:
        return None, 0, rows, cols, vals
    hist = hist_parts.sum(axis=0)
    return hist, scores.size - int(hist.sum()), rows, cols, vals
