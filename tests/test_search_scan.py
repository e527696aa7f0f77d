"""The fused CPU block scan (numba) against the torch path it replaces on the CPU (and keeps on GPUs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.search import engine
from benchmark.search.run import stream
from benchmark.search.scan import scan_block
from tests.test_search import FARS, brute_force, unit32


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scan_block_matches_histc_and_extraction(seed):
    """Same extracted entries (row-major) and the same histogram up to float rounding at bin edges."""
    rng = np.random.default_rng(seed)
    s = np.clip(rng.normal(size=(37, 1001)) * 0.3, -1, 1).astype(np.float32)
    s[3, :5] = 0.25  # exact ties with a threshold
    thr = rng.uniform(0.1, 0.6, 37).astype(np.float32)
    thr[3], thr[7] = 0.25, np.inf  # a row at a tie, a row extracting nothing
    lo = engine.f32_below(-0.2)
    hist, below, rows, cols, vals = scan_block(s, lo, engine.HIST_HI, 4096, thr)
    t = torch.from_numpy(s)
    ref_hist = torch.histc(t, bins=4096, min=lo, max=engine.HIST_HI).numpy().astype(np.int64)
    assert below == int((s < lo).sum()) and hist.sum() == ref_hist.sum() == int((s >= lo).sum())
    assert scan_block(s * 2, lo, engine.HIST_HI, 4096, thr)[0].sum() == int(((s * 2 >= lo) & (s * 2 <= 1.0625)).sum())
    # a score can only move to a neighbouring bin (rounding of its bin index)
    assert np.abs(np.cumsum(hist) - np.cumsum(ref_hist)).max() <= 2
    p, d, v = engine.extract_ge(t, thr, np.arange(s.shape[1]))
    np.testing.assert_array_equal(rows, p)
    np.testing.assert_array_equal(cols, d)
    np.testing.assert_array_equal(vals, v)
    assert (rows == 7).sum() == 0 and (rows == 3).sum() >= 5
    none = scan_block(s, lo, engine.HIST_HI, 4096, thr, with_histogram=False)
    assert none[0] is None and np.array_equal(none[2], rows)


def planted(seed: int, n_id: int = 8, n: int = 60, n_d: int = 4000, dim: int = 48):
    """Clean-like data (positives above the negative bulk, so the sparse path runs); a few exact ties."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_id, dim))
    lab = rng.integers(0, n_id, n)
    P = centers[lab] + rng.normal(size=(n, dim)) * 0.6
    M = centers[lab] + rng.normal(size=(n, dim)) * 0.6
    D = rng.normal(size=(n_d, dim))
    D[:4] = M[:4]  # distractors tied with mates
    keys = [f"id{l}/{i}" for i, l in enumerate(lab)]
    return (P, [k + "_p" for k in keys], lab), (M, keys, lab), D


@pytest.mark.parametrize("seed", [3, 4])
def test_fused_stream_equals_torch_stream(seed):
    """Whole searches: identical ranks, τ and matches; the AUC histograms agree within their bounds."""
    (P, pk, pl), (M, mk, ml), D = planted(seed)
    problem = engine.build_problem(
        unit32(P),
        np.asarray(pk),
        np.asarray(pl),
        unit32(M),
        np.asarray(mk),
        np.asarray(ml),
        unit32(D),
        FARS,
        [50, 700],
        0,
        5,
    )
    fused = stream(problem, "cpu", 256, progress=False)
    plain = stream(problem, "cpu", 256, progress=False, fused=False)
    assert fused.dense_cols == plain.dense_cols == 0  # the sparse path ran
    np.testing.assert_array_equal(engine.rank_counts(fused, problem), engine.rank_counts(plain, problem))
    np.testing.assert_array_equal(engine.first_beater(fused, problem), engine.first_beater(plain, problem))
    n_neg = problem.probes.shape[0] * problem.distractors.shape[0]
    for far in FARS:
        assert engine.tar_at(problem, fused.tops[problem.distractors.shape[0]], n_neg, far) == engine.tar_at(
            problem, plain.tops[problem.distractors.shape[0]], n_neg, far
        )
    np.testing.assert_array_equal(engine.exact_matches(fused, problem)[0], engine.exact_matches(plain, problem)[0])
    assert fused.n_below + fused.neg_hist.sum() == plain.n_below + plain.neg_hist.sum() == n_neg
    auc_f, bound_f = engine.auc_from_histogram(fused, problem, n_neg)
    auc_p, bound_p = engine.auc_from_histogram(plain, problem, n_neg)
    assert abs(auc_f - auc_p) <= bound_f + bound_p
    ref = brute_force(P, pk, pl, M, mk, ml, D, FARS)["auc"]
    assert abs(auc_f - ref) <= bound_f + 1e-12


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_scan_bits_equals_scan_of_values(fmt):
    """A bf16/fp16 block scanned as bit patterns gives what the float32 scan of its values gives: the same
    entries (row-major), the same histogram bin for bin (each value is binned by the same formula), and
    thresholds between, on and beyond grid values (±0, ±inf, negative) honoured exactly."""
    from benchmark.search.scan import key_values, scan_bits
    from benchmark.search.screen import as_bits, torch_dtype, values_lut

    rng = np.random.default_rng(7)
    t = torch.from_numpy(np.clip(rng.normal(size=(41, 777)) * 0.3, -1, 1).astype(np.float32)).to(torch_dtype(fmt))
    t[0, :4] = 0.0
    t[0, 4:8] = -0.0
    t[1, :3] = -0.25
    vals32 = t.float().numpy()
    thr = rng.uniform(-0.7, 0.6, 41).astype(np.float32)
    thr[0], thr[1], thr[2], thr[3] = 0.0, -0.25, np.inf, -np.inf
    thr[4] = np.nextafter(np.float32(vals32[4, 0]), np.float32(1))  # just above a value: that value is out
    lut = values_lut(fmt)
    by_key = key_values(lut)
    assert np.all(by_key[1:] >= by_key[:-1])
    lo, cap = engine.f32_below(-0.2), np.float32(0.5)
    hist, outside, rows, cols, vals = scan_bits(as_bits(t), lut, by_key, lo, engine.HIST_HI, 4096, thr, cap=cap)
    ref_rows, ref_cols = np.nonzero(vals32 >= thr[:, None])
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_array_equal(cols, ref_cols)
    np.testing.assert_array_equal(vals, vals32[ref_rows, ref_cols])
    assert (rows == 0).sum() == 8 + int((vals32[0, 8:] >= 0).sum())  # −0 ≥ 0 holds
    assert (rows == 2).sum() == 0 and (rows == 3).sum() == 777
    v = vals32.astype(np.float64).ravel()
    inside = (v >= lo) & (v <= engine.HIST_HI) & (v < cap)
    q = np.minimum(((v[inside] - lo) * (4096 / (engine.HIST_HI - lo))).astype(np.int64), 4095)
    np.testing.assert_array_equal(hist, np.bincount(q, minlength=4096))
    assert outside == v.size - inside.sum()
    none = scan_bits(as_bits(t), lut, by_key, lo, engine.HIST_HI, 4096, thr, with_histogram=False)
    assert none[0] is None and np.array_equal(none[2], rows)
