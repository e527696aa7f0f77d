"""The dense float64 search path (attacked-like data) against the independent brute force of test_search.

Both implementations of ``benchmark.search.dense`` are checked — the fused numba kernel (CPU) and the
torch operations (used on CUDA, forced here on the CPU) — on problems built to hit every branch:
probes with a single positive and probes with many, positives tied with each other, negatives tied
exactly with a positive score (duplicated mates), float16 storage, the distractor sweep, many small
blocks, and grids so coarse that almost every score falls in a "hard" bin.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_search import FARS, _write_roles, brute_force, check, unit32

from benchmark.search import dense, engine
from benchmark.search.run import SearchConfig, run_search, stream

SIZES = [50, 700]


def attacked(seed: int, n_p: int = 36, n_d: int = 2400, dim: int = 40, signal: float = 0.12):
    """Positives inside the negative bulk; 1-positive probes, tied positives, negatives tied with positives."""
    rng = np.random.default_rng(seed)
    n_id = 6
    centers = unit32(rng.normal(size=(n_id + 4, dim)))
    p_lab = rng.integers(0, n_id, n_p)
    m_lab = rng.integers(0, n_id, n_p + 8)
    p_lab[:4] = m_lab[:4] = np.arange(n_id, n_id + 4)  # four probes with exactly one positive each
    P = centers[p_lab] * signal + rng.normal(size=(n_p, dim)) / np.sqrt(dim)
    M = centers[m_lab] * signal + rng.normal(size=(len(m_lab), dim)) / np.sqrt(dim)
    m_lab[9], M[9] = m_lab[8], M[8]  # two identical mates: tied positive scores
    D = rng.normal(size=(n_d, dim))
    D[::61][: len(M)] = M[: len(D[::61])]  # negatives scoring exactly a positive's score
    return (
        (P, [f"p{i}" for i in range(n_p)], p_lab),
        (M, [f"m{i}" for i in range(len(m_lab))], m_lab),
        (D, [f"d{i}" for i in range(n_d)], np.full(n_d, -1)),
    )


def _search(tmp_path, prob, dtype, block_size, name):
    p, m, d = _write_roles(tmp_path, prob, dtype=dtype, shards=2)
    return run_search(
        SearchConfig(
            str(p),
            str(m),
            str(d),
            str(tmp_path / name),
            fars=FARS,
            device="cpu",
            progress=False,
            topk=3,
            block_size=block_size,
            distractor_sizes=SIZES,
        )
    )


def _check_sweep(metrics, ref):
    for entry in metrics["distractor_sweep"]["sizes"]:
        r1, tars = ref["sweep"][entry["distractors"]]
        assert entry["rank1"] == pytest.approx(r1, abs=0)
        assert [t["tar"] for t in entry["tar_at_far"]] == pytest.approx([tars[f] for f in FARS], abs=1e-12)


@pytest.mark.parametrize("kernel", [True, False], ids=["numba", "torch"])
@pytest.mark.parametrize("dtype,block_size", [(np.float32, 257), (np.float16, 1000)])
def test_dense_paths_match_brute_force(tmp_path, monkeypatch, kernel, dtype, block_size):
    if kernel and not dense.kernel_available():
        pytest.skip("numba not installed")
    monkeypatch.setattr(dense, "USE_KERNEL", kernel)
    prob = attacked(3)
    metrics = _search(tmp_path, prob, dtype, block_size, "out")
    stored = [(np.asarray(x, dtype=dtype), k, l) for x, k, l in prob]
    ref = brute_force(*stored[0], *stored[1], stored[2][0], FARS, sizes=SIZES + [len(prob[2][1])])
    assert np.median(ref["ranks"]) > 20  # really attacked
    assert (
        np.bincount(np.unique(np.nonzero(stored[0][2][:, None] == stored[1][2][None, :])[0], return_counts=True)[1]) > 0
    ).any()
    check(metrics, ref)
    _check_sweep(metrics, ref)
    ex = metrics["exactness"]
    assert ex["search_path"] == "float64 dense" and ex["auc_max_error"] == 0.0
    assert ex["refined_pairs"] > 0  # the exact ties went through dot64


def test_single_and_many_positive_probes_present():
    """The generator really makes probes with one positive and probes with many (guards the test above)."""
    (P, pk, pl), (M, mk, ml), (D, _, _) = attacked(3)
    counts = (np.asarray(pl)[:, None] == np.asarray(ml)[None, :]).sum(axis=1)
    assert (counts == 1).sum() >= 4 and counts.max() >= 5


@pytest.mark.parametrize("kernel", [True, False], ids=["numba", "torch"])
def test_coarse_grid_every_branch(tmp_path, monkeypatch, kernel):
    """Grids so coarse that most scores sit in hard bins (searched), still exact against brute force."""
    if kernel and not dense.kernel_available():
        pytest.skip("numba not installed")
    monkeypatch.setattr(dense, "USE_KERNEL", kernel)
    monkeypatch.setattr(dense, "AUC_GRID_BINS", 32)
    monkeypatch.setattr(dense, "RANK_TABLE_CELLS", 40)  # < 2 coarse bins per probe: one coarse bin
    prob = attacked(8, n_d=1500)
    metrics = _search(tmp_path, prob, np.float32, 300, "coarse")
    ref = brute_force(*prob[0], *prob[1], prob[2][0], FARS, sizes=SIZES + [len(prob[2][1])])
    check(metrics, ref)
    _check_sweep(metrics, ref)


def test_kernel_and_torch_partials_identical(monkeypatch):
    """Both implementations give the same additive state, block by block (several blocks, a sweep)."""
    if not dense.kernel_available():
        pytest.skip("numba not installed")
    stored = [(unit32(x), np.asarray(k), np.asarray(l)) for x, k, l in attacked(5, n_d=3000)]
    (P, pk, pl), (M, mk, ml), (D, _, _) = stored
    problem = engine.build_problem(P, pk, pl, M, mk, ml, D, FARS, [100, 1000], 7, 3)
    parts = []
    for kernel in (True, False):
        monkeypatch.setattr(dense, "USE_KERNEL", kernel)
        parts.append(stream(problem, "cpu", 512, progress=False))
    a, b = parts
    assert a.dense_cols == b.dense_cols == D.shape[0]
    assert np.array_equal(a.rank_hist, b.rank_hist) and np.array_equal(a.first_beater, b.first_beater)
    assert a.auc_num2 == b.auc_num2 and a.n_refined == b.n_refined > 0
    # and the exact AUC numerator / ranks equal integer counts over one float64 brute-force score matrix
    s_all = np.einsum("ik,jk->ij", P.astype(np.float64), np.vstack([M, D]).astype(np.float64))
    s, pos = s_all[:, M.shape[0] :], s_all[problem.pair_probe, problem.pair_mate]
    sp = np.sort(pos)
    num2 = int((2 * sp.size - np.searchsorted(sp, s.ravel(), "left") - np.searchsorted(sp, s.ravel(), "right")).sum())
    assert a.auc_num2 == num2
    ref = (s[problem.pair_probe] > pos[:, None]).sum(axis=1)
    assert np.array_equal(engine.rank_counts(a, problem), ref)
