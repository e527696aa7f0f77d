"""The exact score and its error bounds: the float64 dot of float32 unit vectors (``dot64``), the rigorous
bounds of its float32 and float64 GEMM approximations, and the engine's histogram constants."""

from __future__ import annotations

import numpy as np

_REFINE_CHUNK = 1 << 13  # pairs per dot64 chunk (bounds its float64 temporaries)
HIST_BINS = 1 << 16  # uniform bins of the negative-score histogram over [hist_lo, HIST_HI]
HIST_HI = 1.0625  # above every float32 score of unit vectors (|s32| ≤ 1 + eps)
HIST_FUZZ = 2  # a negative counted in bin j lies in bins j-2 … j+2 (float32 bin-index rounding)
AUC_TOLERANCE = 1e-6  # above this histogram error bound, the AUC is recomputed exactly (float64 pass)
DENSE_FRACTION = 0.01  # first block: more scores than this in the probes' rank bands ⇒ dense float64 path
_F32_EXACT = 1 << 24  # float32 histogram counts are exact below this


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
    u = 2.0**-24
    gamma = dim * u / (1 - dim * u)
    return gamma * (1 + 1e-6) + 4 * dim * 2.0**-53


def float64_error_bound(dim: int) -> float:
    """Bound on |float64 GEMM − dot64| for float32 unit vectors (products are exact in float64; both sums
    carry ≤ γ_D in float64), with a wide safety factor."""
    return 8 * dim * 2.0**-53


def dot64(a, b, ia: np.ndarray | None = None, ib: np.ndarray | None = None) -> np.ndarray:
    """Canonical score of row pairs: float64 sum of products of the float32 components (numpy, CPU).

    Pairs are ``(a[i], b[i])``, or ``(a[ia[i]], b[ib[i]])`` when index arrays are given — gathered chunk by
    chunk, so scoring many pairs never materialises them all (``a``/``b`` may be ``UnitRows``).
    """
    n = a.shape[0] if ia is None else len(ia)
    out = np.empty(n, dtype=np.float64)
    for lo in range(0, n, _REFINE_CHUNK):
        hi = min(lo + _REFINE_CHUNK, n)
        x = a[lo:hi] if ia is None else a[ia[lo:hi]]
        y = b[lo:hi] if ib is None else b[ib[lo:hi]]
        out[lo:hi] = np.einsum("ij,ij->i", x, y, dtype=np.float64)
    return out
