"""Low-precision screening of the search (bf16 / fp16 blocks, float32 rescoring): bounds and exactness.

Problems are built to sit inside the screening bound — distractors closer to a positive than the bound,
τ among many negatives within the bound, pairs of distractors that differ in float16 but round to the
same bf16 vector — and every path (bf16 fused CPU scan, bf16 torch path as on GPUs, fp16, float32,
dense float64) must give the float64 brute force's ranks, CMC, τ and TAR, and an AUC within its bound.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from test_search import FARS, _planted, _write_roles, brute_force, check, unit32

from benchmark.device import resolve_precision
from benchmark.search import engine, screen
from benchmark.search import run as run_mod
from benchmark.search.run import SearchConfig, run_search


def _ulp_ok(out: str) -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=2000) * 10 ** rng.uniform(-6, 0, 2000), [0.0, -0.0, 1.0, -1.0, 0.5]])
    f = screen.floor_to(x, out)
    assert (f <= x).all()
    lp = screen.torch_dtype(out)
    assert np.array_equal(torch.from_numpy(f).to(lp).float().numpy(), f)  # on the format's grid
    assert (x - f <= screen.ulp(x, out) + 1e-300).all()  # and within one ulp below x


@pytest.mark.parametrize("out", ["bf16", "fp16"])
def test_floor_to_is_a_grid_value_below(out):
    _ulp_ok(out)
    assert screen.floor_to(np.array([-np.inf, np.inf]), out).tolist() == [-np.inf, np.inf]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_screen_error_bound_holds_on_every_entry(precision):
    """|screened value − exact score| ≤ E_i + ulp(value) for every entry of a block (float16-stored rows)."""
    rng = np.random.default_rng(1)
    P = unit32(rng.normal(size=(64, 256)).astype(np.float16))
    D = unit32(rng.normal(size=(500, 256)).astype(np.float16))
    D[:32] = unit32(P[:32] + 0.05 * D[:32])  # high scores too, where the output ulp is largest
    sc = screen.Screen.build(precision, torch.from_numpy(P), engine.gemm_error_bound(256))
    vals, err = sc.block(torch.from_numpy(D))
    v = vals.float().numpy()
    exact = P.astype(np.float64) @ D.astype(np.float64).T
    slack = err[:, None] + screen.ulp(v, sc.out)
    assert (np.abs(v - exact) <= slack).all()
    assert err.max() < (0.006 if precision == "bf16" else 0.001)  # a useful bound, not a vacuous one
    assert np.abs(v - exact).max() > 1e-5  # the screen really is coarse


def _inside_the_bound(seed: int = 5):
    """Clean planted data plus distractors built within 1e-4…3e-3 of positive scores, and float16
    twins that differ below bf16 precision."""
    (P, pk, pl), (M, mk, ml), (D, dk, dl) = _planted(seed, 8, 48, 6000, 64, signal=1.1)
    rng = np.random.default_rng(seed)
    Pu, Mu = unit32(P).astype(np.float64), unit32(M).astype(np.float64)
    crafted = []
    for i in range(P.shape[0]):
        mates = np.flatnonzero(np.asarray(ml) == pl[i])
        s = Pu[i] @ Mu[mates].T
        for target in (s.min(), s.max()):
            for delta in (-3e-3, -4e-4, -1e-4, 1e-4, 4e-4, 3e-3):
                u = rng.normal(size=P.shape[1])
                u -= (u @ Pu[i]) * Pu[i]
                u /= np.linalg.norm(u)
                c = min(max(target + delta, -1.0), 1.0)
                crafted.append(c * Pu[i] + np.sqrt(1 - c * c) * u)
    crafted = np.asarray(crafted)
    twins = crafted[::3].astype(np.float16)
    bump = np.zeros_like(twins)
    bump[:, 0] = np.spacing(twins[:, 0])  # one float16 ulp: invisible after bf16 rounding
    twins = twins + bump
    D = np.vstack([D, crafted, twins])
    dk = list(dk) + [f"c{i}" for i in range(len(crafted) + len(twins))]
    return (P, pk, pl), (M, mk, ml), (D, dk, np.full(len(dk), -1))


@pytest.fixture(scope="module")
def inside(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inside")
    prob = _inside_the_bound()
    paths = _write_roles(tmp, prob, dtype=np.float16, shards=2)
    stored = [(np.asarray(x, np.float16), k, lab) for x, k, lab in prob]
    ref = brute_force(*stored[0], *stored[1], stored[2][0], FARS, sizes=(500, 3000), seed=0)
    return tmp, paths, stored, ref


def test_problem_really_sits_inside_the_bound(inside):
    """The crafted problem exercises the bound: negatives within it of positives and of τ."""
    _, _, stored, ref = inside
    (P, _, pl), (M, _, ml), (D, _, _) = stored
    Pu, Mu, Du = (unit32(x).astype(np.float64) for x in (P, M, D))
    near_pos = 0
    for i in range(Pu.shape[0]):
        s_pos = Pu[i] @ Mu[np.asarray(ml) == pl[i]].T
        s_neg = Pu[i] @ Du.T
        near_pos += int((np.abs(s_neg[:, None] - s_pos[None, :]) < 1e-3).sum())
    neg = Pu @ Du.T
    tau = ref["tar"][1e-3][1]
    assert near_pos > 100
    assert int((np.abs(neg - tau) < 2e-3).sum()) >= 10


@pytest.mark.parametrize("precision,fused", [("bf16", True), ("bf16", False), ("fp16", True), ("fp32", True)])
def test_every_path_matches_brute_force_inside_the_bound(inside, monkeypatch, precision, fused):
    tmp, (p, m, d), stored, ref = inside
    monkeypatch.setattr(run_mod, "stream", functools.partial(run_mod.stream, fused=fused))
    for bs in (333, 2048):
        metrics = run_search(
            SearchConfig(
                str(p),
                str(m),
                str(d),
                str(tmp / f"{precision}{fused}{bs}"),
                fars=FARS,
                device="cpu",
                progress=False,
                topk=4,
                block_size=bs,
                precision=precision,
                distractor_sizes=[500, 3000],
            )
        )
        check(metrics, ref)
        for entry in metrics["distractor_sweep"]["sizes"]:
            if entry["distractors"] in ref["sweep"]:
                r1, tars = ref["sweep"][entry["distractors"]]
                assert entry["rank1"] == r1
                assert [t["tar"] for t in entry["tar_at_far"]] == pytest.approx([tars[f] for f in FARS], abs=1e-12)
        prec = metrics["exactness"]["precision"]
        assert prec["requested"] == prec["resolved"] == precision
        if precision == "fp32":
            assert prec["screened_columns"] == 0
        else:
            assert metrics["exactness"]["search_path"].startswith(f"{precision} screening")
            assert prec["screened_columns"] > 0 and prec["rescored_pairs"] > 0
            assert 0 < prec["screen_error_bound"] < 0.01


def test_dense_data_is_not_screened(tmp_path):
    """Attacked-like data takes the dense float64 path whatever the precision, and says so."""
    prob = _planted(7, 10, 40, 3000, 48, signal=0.15)
    p, m, d = _write_roles(tmp_path, prob, shards=2)
    metrics = run_search(
        SearchConfig(
            str(p),
            str(m),
            str(d),
            str(tmp_path / "o"),
            fars=FARS,
            device="cpu",
            progress=False,
            topk=3,
            block_size=500,
            precision="bf16",
        )
    )
    check(metrics, brute_force(*prob[0], *prob[1], prob[2][0], FARS))
    ex = metrics["exactness"]
    assert ex["search_path"] == "float64 dense"
    assert ex["precision"]["screened_columns"] == 0 and "dense" in ex["precision"]["note"]


def test_screening_declined_when_the_auc_split_costs_too_much(tmp_path, monkeypatch):
    prob = _planted(3, 8, 40, 4000, 64, signal=1.1)
    p, m, d = _write_roles(tmp_path, prob, shards=1)
    monkeypatch.setattr(screen, "MAX_RESCORED", 0.0)
    metrics = run_search(
        SearchConfig(
            str(p),
            str(m),
            str(d),
            str(tmp_path / "o"),
            fars=FARS,
            device="cpu",
            progress=False,
            topk=3,
            block_size=700,
            precision="bf16",
        )
    )
    check(metrics, brute_force(*prob[0], *prob[1], prob[2][0], FARS))
    ex = metrics["exactness"]
    assert ex["search_path"] == "float32 + refinement"
    assert ex["precision"]["screened_columns"] == 0 and "declined" in ex["precision"]["note"]


def test_auto_precision_is_recorded(tmp_path):
    prob = _planted(2, 6, 20, 800, 32, signal=1.1)
    p, m, d = _write_roles(tmp_path, prob, shards=1)
    metrics = run_search(
        SearchConfig(str(p), str(m), str(d), str(tmp_path / "o"), fars=FARS, device="cpu", progress=False, topk=2)
    )
    prec = metrics["exactness"]["precision"]
    assert prec["requested"] == "auto"
    assert (prec["resolved"], prec["reason"]) == resolve_precision("auto", "cpu")
    with pytest.raises(ValueError, match="--precision"):
        run_search(
            SearchConfig(
                str(p), str(m), str(d), str(tmp_path / "x"), fars=FARS, device="cpu", progress=False, precision="int8"
            )
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_cuda_paths_match_brute_force_inside_the_bound(inside, precision):
    """On a GPU: tensor-core screening (fp16/bf16, float32 output where torch offers it) and float32."""
    tmp, (p, m, d), stored, ref = inside
    metrics = run_search(
        SearchConfig(
            str(p),
            str(m),
            str(d),
            str(tmp / f"cuda{precision}"),
            fars=FARS,
            device="cuda",
            progress=False,
            topk=4,
            block_size=1024,
            precision=precision,
            distractor_sizes=[500, 3000],
        )
    )
    check(metrics, ref)
    assert metrics["exactness"]["precision"]["resolved"] == precision
