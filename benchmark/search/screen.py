"""Low-precision screening of score blocks: bf16 (CPUs with bf16 units) or fp16/bf16 (GPU tensor cores).

A screened block is scored as ``bf16(probes) @ bf16(distractors)ᵀ``.  Its error against the exact score
is bounded rigorously, per probe row i and block:

    |s_acc − s| ≤ E_i = ‖p_i − p̂_i‖·‖d‖ + ‖p̂_i‖·max_j ‖d_j − d̂_j‖ + γ_acc·‖p̂_i‖·max_j ‖d̂_j‖ + D·2⁻¹²⁶

(the input roundings measured on the actual rows; products of two bf16/fp16 values are exact in
float32; accumulation in float32 in any order, with γ_acc = D·u/(1−D·u) taken at u = 2⁻²², four times
float32's unit roundoff, to cover matrix units that truncate; flushed subnormals), and the output
``v = rnd(s_acc)`` is a monotone rounding to the output format, so ``|v − s_acc| < ulp(v)``.

The screen never decides anything itself.  For a float32 threshold ``t`` (an entry matters iff its
float32 score is ≥ t), every entry with float32 score ≥ t has s ≥ t − eps32, so s_acc ≥ t − eps32 − E_i
and, rounding being monotone, v ≥ floor_out(t − eps32 − E_i).  The screen extracts the entries above
that, rescores them in float32 (``rescore``: error ≤ eps32, as the float32 GEMM's) and keeps those ≥ t:
exactly what the float32 path hands to the engine, so every rank, τ and TAR decision is unchanged.
The AUC histogram counts screened values below a split level L (each bin's window widened by
E + ulp) and the float32 rescored values of the entries at or above L (float32 window).
L is planned from the first block, which always runs in float32 (``plan_split``): the highest level
whose predicted histogram error stays under a share of the AUC tolerance.  Where that would rescore
more than ``MAX_RESCORED`` of the scores, screening is declined and the float32 path runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

MAX_RESCORED = 0.02  # screening declined when the AUC split would rescore more than this share
SPLIT_ERROR_SHARE = 0.5  # predicted screened-histogram AUC error allowed, as a share of the tolerance
U_ACC = 2.0**-22  # accumulation unit roundoff assumed for matrix units (float32 is 2⁻²⁴)
_MANTISSA = {"bf16": 7, "fp16": 10, "fp32": 23}
_MIN_ULP = {"bf16": 2.0**-133, "fp16": 2.0**-24, "fp32": 2.0**-149}


def torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def ulp(x, out: str) -> np.ndarray:
    """Spacing of the ``out`` format (bf16/fp16/fp32) at magnitude |x| (an upper bound of |rnd(s) − s|)."""
    a = np.maximum(np.abs(np.asarray(x, np.float64)), 1e-300)
    return np.maximum(np.exp2(np.floor(np.log2(a)) - _MANTISSA[out]), _MIN_ULP[out])


def floor_to(x: np.ndarray, out: str) -> np.ndarray:
    """Float32 array of values of the ``out`` grid, each ≤ x (−inf stays −inf, +inf stays +inf)."""
    x = np.asarray(x, np.float64)
    f = x.astype(np.float32)
    f = np.where(f > x, np.nextafter(f, np.float32(-np.inf)), f)  # float32 floor
    if out == "fp32":
        return f
    if out == "fp16":
        h = f.astype(np.float16)
        h = np.where(h.astype(np.float64) > f, np.nextafter(h, np.float16(-np.inf)), h)
        return h.astype(np.float32)
    bits = f.view(np.uint32)
    low = bits & np.uint32(0xFFFF)
    trunc = bits & np.uint32(0xFFFF0000)
    neg = (bits >> np.uint32(31)).astype(bool)
    finite = np.isfinite(f)
    trunc = np.where(neg & (low != 0) & finite, trunc + np.uint32(0x10000), trunc)  # away from zero
    return np.where(finite, trunc.view(np.float32), f)


def residual_norms(x, lp_dtype):
    """(‖x − x̂‖, ‖x̂‖) per row of a float32 torch tensor, x̂ its ``lp_dtype`` rounding (as float64, inflated
    by 1e-4 for the float32 norm computation's own rounding)."""
    import torch

    xh = x.to(lp_dtype)
    r = torch.linalg.vector_norm(x - xh.float(), dim=1).double() * (1 + 1e-4)
    n = torch.linalg.vector_norm(xh.float(), dim=1).double() * (1 + 1e-4)
    return xh, r, n


def gamma(dim: int, u: float) -> float:
    return dim * u / (1 - dim * u)


@dataclass
class Screen:
    """One run's screening settings and the probes' low-precision copy (see module docstring)."""

    precision: str  # "bf16" or "fp16": the input format of the screened product
    out: str  # output format of the product: "bf16"/"fp16", or "fp32" where the device offers it
    probes_lp: object  # torch (n_p, D) in the input format, on the device
    probe_err: np.ndarray  # (n_p,) ‖p − p̂‖ (float64)
    probe_norm: np.ndarray  # (n_p,) ‖p̂‖
    eps32: float  # the float32 error bound of the rescored scores

    @classmethod
    def build(cls, precision: str, probes_dev, eps32: float) -> Screen:
        lp = torch_dtype(precision)
        ph, r, n = residual_norms(probes_dev, lp)
        out = precision if probes_dev.device.type == "cpu" else _gpu_out(ph)
        return cls(precision, out, ph, r.cpu().numpy(), n.cpu().numpy(), eps32)

    def a_priori_error(self, dim: int) -> float:
        """Upper bound of every block's E_i (distractor residual ≤ u·‖d‖ component-wise)."""
        u_in = 2.0 ** -(_MANTISSA[self.precision] + 1)
        n = float(self.probe_norm.max()) if self.probe_norm.size else 1.0
        return (
            float(self.probe_err.max(initial=0.0))
            + n * u_in * 1.0001
            + gamma(dim, U_ACC) * n * (1 + u_in)
            + dim * 2.0**-126
        )

    def errors(self, block_dev):
        """(the block in the input format, E (n_p,) float64: the bound of each probe row's screened scores)."""
        bh, r, n = residual_norms(block_dev, self.probes_lp.dtype)
        dim = block_dev.shape[1]
        rmax, nmax = float(r.max()), float(n.max())
        err = (
            self.probe_err * (1 + 1e-6)
            + self.probe_norm * rmax
            + gamma(dim, U_ACC) * self.probe_norm * nmax
            + dim * 2.0**-126
        )
        return bh, err

    def block(self, block_dev):
        """(scores in ``out`` format (n_p, b), E (n_p,) float64) of one distractor block (float32 unit rows)."""
        import torch

        bh, err = self.errors(block_dev)
        if self.out == "fp32" and self.precision != "fp32":
            scores = torch.mm(self.probes_lp, bh.T, out_dtype=torch.float32)
        else:
            scores = self.probes_lp @ bh.T
        return scores, err

    def thresholds(self, thr: np.ndarray, err: np.ndarray) -> np.ndarray:
        """Float32 screening thresholds: an entry whose float32 score is ≥ thr[i] screens ≥ the result."""
        return floor_to(np.asarray(thr, np.float64) - self.eps32 - err, self.out)

    def plan_split(
        self,
        counts: np.ndarray,
        n_scores: int,
        lo: float,
        hi: float,
        sorted_pos: np.ndarray,
        expected_err: float,
        fuzz: int,
        tolerance: float,
    ) -> tuple[float | None, str]:
        """(split level L on the output grid, or None to decline screening; a note) from a float32
        histogram ``counts`` of ``n_scores`` scores over uniform bins of [lo, hi] (the first block), for
        screened blocks whose error bound is about ``expected_err``."""
        n_pos = sorted_pos.size
        if n_pos == 0 or n_scores == 0:
            return math.inf, "no positive pairs: no AUC histogram"
        bins = counts.size
        width = (hi - lo) / bins
        j = np.arange(bins)
        a, b = lo + (j - fuzz) * width, lo + (j + 1 + fuzz) * width
        w = expected_err + ulp(np.maximum(np.abs(a), np.abs(b)), self.out)
        within = np.searchsorted(sorted_pos, b + w, "right") - np.searchsorted(sorted_pos, a - w, "left")
        err = np.cumsum(counts * within) / (2.0 * n_pos * n_scores)  # predicted error if bins ≤ j screened
        budget = SPLIT_ERROR_SHARE * tolerance
        top = int(np.searchsorted(err, budget, "right"))  # bins [0, top) may stay screened
        rescored = float(counts[top:].sum()) / n_scores
        if rescored > MAX_RESCORED:
            return None, (
                f"screening declined: keeping the AUC bound ≤ {tolerance:g} would rescore "
                f"{100 * rescored:.2f} % of the scores in float32 (first block)"
            )
        level = math.inf if top >= bins else float(floor_to(np.array([lo + top * width]), self.out)[0])
        return level, (
            f"AUC split at {level:.6g}: {100 * rescored:.3f} % of the first block's scores rescored, "
            f"predicted screened-histogram error {float(err[top - 1]) if top else 0.0:.3g}"
        )


def _gpu_out(probes_lp) -> str:
    """float32 output where torch offers it for a low-precision product on this device, else the input format."""
    import torch

    try:
        torch.mm(probes_lp[:2], probes_lp[:2].T, out_dtype=torch.float32)
        return "fp32"
    except (RuntimeError, TypeError, NotImplementedError):
        return "bf16" if probes_lp.dtype == torch.bfloat16 else "fp16"


# ----------------------------------------------------------------------------------- rescoring


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=True)  # finite inputs; any summation order is within eps32
def _rescore(a, b, rows, cols, out):  # pragma: no cover (compiled)
    for k in numba.prange(rows.shape[0]):
        i, j = rows[k], cols[k]
        acc = np.float32(0.0)
        for t in range(a.shape[1]):
            acc += a[i, t] * b[j, t]
        out[k] = acc


def rescore(probes_dev, block_dev, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Float32 scores of block entries (probe row, block column): a float32 dot in some order, so within
    eps32 of the exact score, as the float32 GEMM's entries are."""
    out = np.empty(rows.size, np.float32)
    if rows.size == 0:
        return out
    if probes_dev.device.type == "cpu":
        _rescore(probes_dev.numpy(), block_dev.numpy(), rows.astype(np.int64), cols.astype(np.int64), out)
        return out
    import torch

    step = 1 << 16
    for lo in range(0, rows.size, step):
        r = torch.as_tensor(rows[lo : lo + step], device=probes_dev.device)
        c = torch.as_tensor(cols[lo : lo + step], device=probes_dev.device)
        out[lo : lo + step] = (probes_dev[r] * block_dev[c]).sum(dim=1).cpu().numpy()
    return out


def values_lut(out: str) -> np.ndarray:
    """float32 value of every 16-bit pattern of ``out`` (bf16/fp16): the CPU scan reads bits through it."""
    bits = np.arange(1 << 16, dtype=np.uint32)
    if out == "bf16":
        return (bits << np.uint32(16)).view(np.float32)
    return bits.astype(np.uint16).view(np.float16).astype(np.float32)


def as_bits(scores) -> np.ndarray:
    """uint16 view of a CPU bf16/fp16 torch block (no copy)."""
    import torch

    return scores.view(torch.int16).numpy().view(np.uint16)
