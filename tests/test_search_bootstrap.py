"""The identity bootstrap of ``mf2m search`` against a direct computation over every negative."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmark.search import bootstrap
from benchmark.search.run import SearchConfig, run_search
from tests.test_search import _write_roles, make_problem, unit32


def direct_intervals(P, D, pair_probe, pos, ranks, clusters, fars, replicates, seed, level=0.95):
    """Replicate by replicate with every negative repeated by its probe's weight (np.repeat + sort)."""
    neg = unit32(P).astype(np.float32) @ unit32(D).astype(np.float32).T  # float32 scores, like the lists
    codes, of = np.unique(clusters, return_inverse=True)
    rng = np.random.default_rng(seed)
    r1, tars = [], {f: [] for f in fars}
    for _ in range(replicates):
        w = np.bincount(rng.integers(0, codes.size, codes.size), minlength=codes.size)[of]
        pw = w[pair_probe]
        r1.append((pw * (ranks == 1)).sum() / pw.sum())
        flat = np.repeat(neg.ravel().astype(np.float64), np.repeat(w, D.shape[0]))
        flat = np.sort(flat)[::-1]
        for f in fars:
            if f * flat.size >= 1:
                tau = flat[int(math.floor(f * flat.size))]
                tars[f].append((pw * (pos > tau)).sum() / pw.sum())
    q = [(1 - level) / 2, 1 - (1 - level) / 2]
    return np.quantile(r1, q), {f: np.quantile(t, q) for f, t in tars.items() if t}


@pytest.mark.parametrize("seed", [0, 1])
def test_identity_intervals_equal_the_direct_computation(seed):
    (P, pk, pl), (M, mk, ml), (D, dk, dl) = make_problem(seed, n_p=24, n_m=30, n_d=150)
    rng = np.random.default_rng(seed)
    pairs = [(i, j) for i in range(len(pl)) for j in range(len(ml)) if pl[i] == ml[j] and pk[i] != mk[j]]
    pair_probe = np.array([i for i, _ in pairs])
    pos = np.array([float(unit32(P)[i].astype(np.float64) @ unit32(M)[j].astype(np.float64)) for i, j in pairs])
    ranks = rng.integers(1, 4, pos.size)
    fars = [1e-3, 1e-2, 0.1]
    n_neg = len(pl) * len(D)
    k = min(bootstrap.k_max_for(fars, n_neg), len(D))
    top = bootstrap.top_negatives(unit32(P), unit32(D), k)
    got = bootstrap.identity_intervals(pair_probe, pos, ranks, np.asarray(pl), len(D), fars, top, 200, seed)
    r1, tars = direct_intervals(P, D, pair_probe, pos, ranks, np.asarray(pl), fars, 200, seed)
    assert got["rank1"] == pytest.approx(list(r1), abs=1e-12)
    for e in got["tar_at_far"]:
        assert e["tar"] == pytest.approx(list(tars[e["far"]]), abs=1e-12), e
    assert got["unit"] == "identity" and got["clusters"] == len(set(pl))
    # short lists (k_max below what a replicate needs) drop those replicates rather than guess
    short = bootstrap.identity_intervals(pair_probe, pos, ranks, np.asarray(pl), len(D), [0.1], top[:, :5], 200, seed)
    assert short["tar_at_far"][0]["tar"] is None and "cannot resolve" in short["tar_at_far"][0]["note"]


def test_search_writes_intervals_that_hold_the_point_estimates(tmp_path):
    prob = make_problem(3, n_p=30, n_m=36, n_d=400)
    p, m, d = _write_roles(tmp_path, prob, shards=2)
    metrics = run_search(
        SearchConfig(
            str(p),
            str(m),
            str(d),
            str(tmp_path / "out"),
            fars=[1e-3, 1e-2],
            device="cpu",
            progress=False,
            bootstrap=300,
        )
    )
    b = metrics["bootstrap"]
    assert b["replicates"] == 300 and b["level"] == 0.95
    assert b["rank1"][0] <= metrics["rank1"] <= b["rank1"][1]
    for e, point in zip(b["tar_at_far"], metrics["tar_at_far"]):
        assert e["far"] == point["far"] and e["tar"][0] <= point["tar"] <= e["tar"][1]
    off = run_search(
        SearchConfig(
            str(p), str(m), str(d), str(tmp_path / "off"), fars=[1e-3], device="cpu", progress=False, bootstrap=0
        )
    )
    assert "bootstrap" not in off


def test_mean_interval_resamples_identities():
    """Mask-rate interval: identities resampled as whole clusters (direct loop with the same draws)."""
    rng = np.random.default_rng(5)
    clusters = np.repeat(np.arange(20), 5)
    values = rng.random(100) < np.repeat(rng.random(20), 5)  # identity-correlated detections
    lo, hi = bootstrap.mean_interval(values, clusters, replicates=300, seed=2)
    draw = np.random.default_rng(2)
    means = []
    for _ in range(300):
        w = np.bincount(draw.integers(0, 20, 20), minlength=20)[clusters]
        means.append((w * values).sum() / w.sum())
    assert (lo, hi) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])), abs=1e-12)
    assert lo <= values.mean() <= hi and bootstrap.mean_interval([], []) is None


def test_tables_render_intervals_and_unresolved_tars():
    from benchmark.report.collect import Metrics
    from benchmark.report.render import to_csv
    from benchmark.report.tables import Column, Estimate, Table, fmt, tar_cell

    m = Metrics(
        rank1=0.5,
        tar={1e-3: 0.4, 1e-6: 0.3},
        counts={"negative_pairs": 10_000},
        intervals={"rank1": (0.4, 0.6), "tar@0.001": (0.35, 0.45)},
    )
    assert fmt(tar_cell(m, 1e-3), "tar") == "0.4000 [0.350, 0.450]"
    assert fmt(tar_cell(m, 1e-6), "tar") == "(0.3000)"  # 1e-6 · 10,000 < 1
    assert fmt(Estimate(0.25, (0.1, 0.4)), "percent") == "25.00% [10.0, 40.0]"
    t = Table(
        "t",
        "",
        [Column("Rank-1", "rank1"), Column("TAR", "tar", "tar")],
        [{"method": "dm", "rank1": Estimate(0.5, (0.4, 0.6)), "tar": tar_cell(m, 1e-6)}],
    )
    header, row = to_csv(t).splitlines()
    assert header == "method,rank1,tar,tar_resolved,rank1_lo,rank1_hi"
    assert row == "dm,0.5,0.3,0,0.4,0.6"
