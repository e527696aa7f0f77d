"""Property-based tests (hypothesis) of ``mf2m search`` against the float64 brute force of ``test_search.py``.

Each example draws sizes (down to one probe, one mate, one distractor), a dimension, exact score ties,
float16 or float32 storage, a split of the gallery into shard files, a split of the work between processes
(ranks merged through partial files, as without torchrun), a block size, a noise list and probes whose
identity has no mate; the search must give the brute force's ranks, CMC, τ and TAR exactly, its AUC
within the reported bound, and per_probe.csv the brute force's best mate score and rank per probe.
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_search import brute_force, h5_write, sharded_write, unit32  # noqa: E402

from benchmark.search.run import SearchConfig, run_search  # noqa: E402

FARS = [1e-3, 1e-2, 0.1]


@st.composite
def problems(draw):
    """Features, keys and labels of the three roles plus noise keys, storage dtype and the run's splits."""
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    n_p, n_m, n_d = draw(st.integers(1, 10)), draw(st.integers(1, 12)), draw(st.integers(1, 150))
    dim = draw(st.integers(2, 12))
    n_id = draw(st.integers(1, 4))
    ties = draw(st.booleans())

    def vecs(n):
        if ties:  # entries in {-1, 0, 1}: scores are few exact values, so ties everywhere
            v = rng.integers(-1, 2, (n, dim)).astype(np.float64)
            v[np.abs(v).sum(1) == 0, 0] = 1.0
            return v
        return rng.normal(size=(n, dim))

    centers = vecs(n_id + 1)
    p_lab = rng.integers(0, n_id + 1, n_p)  # label n_id: probes whose identity no mate has
    m_lab = rng.integers(0, n_id, n_m)
    mix = lambda lab, n: np.where(rng.random((n, 1)) < 0.5, centers[lab], vecs(n))  # noqa: E731
    P, M, D = mix(p_lab, n_p), mix(m_lab, n_m), vecs(n_d)
    if n_d > 2 and draw(st.booleans()):
        D[: n_d // 3] = M[rng.integers(0, n_m, n_d // 3)]  # distractors tied with mates
    p_keys = [f"id{l}/p{i}.jpg" for i, l in enumerate(p_lab)]
    m_keys = [f"id{l}/m{i}.jpg" for i, l in enumerate(m_lab)]
    if draw(st.booleans()):  # a mate that is a probe's own image: never a pair
        m_keys[0], m_lab[0], M[0] = p_keys[0], p_lab[0], P[0]
    d_keys = [f"d/{i // 50}/{i}.jpg" for i in range(n_d)]
    everything = p_keys + m_keys + d_keys
    noise = draw(st.lists(st.sampled_from(everything), max_size=4, unique=True))
    return dict(
        P=P,
        pk=p_keys,
        pl=p_lab,
        M=M,
        mk=m_keys,
        ml=m_lab,
        D=D,
        dk=d_keys,
        noise=noise,
        dtype=draw(st.sampled_from([np.float32, np.float16])),
        shards=draw(st.integers(1, 3)),
        world=draw(st.integers(1, 3)),
        block=draw(st.integers(1, 64)),
    )


def _search(tmp: Path, pr: dict) -> dict:
    """Write the sets and the noise list, run every rank (ranks > 0 first; rank 0 merges), return metrics."""
    dt = pr["dtype"]
    h5_write(tmp / "p.h5", pr["P"], pr["pk"], pr["pl"], dtype=dt)
    h5_write(tmp / "m.h5", pr["M"], pr["mk"], pr["ml"], dtype=dt)
    sharded_write(tmp / "d", pr["D"], pr["dk"], np.full(len(pr["dk"]), -1), min(pr["shards"], len(pr["dk"])), dtype=dt)
    (tmp / "noise.txt").write_text("".join(f"{k}\n" for k in pr["noise"]))
    cfg = SearchConfig(
        str(tmp / "p.h5"),
        str(tmp / "m.h5"),
        str(tmp / "d"),
        str(tmp / "out"),
        fars=FARS,
        block_size=pr["block"],
        device="cpu",
        progress=False,
        topk=3,
        noise_lists=[str(tmp / "noise.txt")],
        allow_missing_mates=True,
    )
    saved = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    try:
        metrics = {}
        for rank in reversed(range(pr["world"])):
            os.environ.update(RANK=str(rank), WORLD_SIZE=str(pr["world"]), LOCAL_RANK="0")
            metrics = run_search(cfg)
        return metrics
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::sklearn.exceptions.UndefinedMetricWarning")
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(pr=problems())
def test_search_equals_float64_brute_force(pr):
    keep = {role: np.array([k not in set(pr["noise"]) for k in pr[f"{role}k"]], bool) for role in "pmd"}
    stored = {r: np.asarray(pr[r.upper()], dtype=pr["dtype"])[keep[r]] for r in "pmd"}
    keys = {r: [k for k, ok in zip(pr[f"{r}k"], keep[r]) if ok] for r in "pmd"}
    labels = {"p": pr["pl"][keep["p"]], "m": pr["ml"][keep["m"]]}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not keep["p"].any() or not keep["d"].any():
            with pytest.raises(ValueError, match="no (probes|distractors) left"):
                _search(tmp, pr)
            return
        ref = brute_force(stored["p"], keys["p"], labels["p"], stored["m"], keys["m"], labels["m"], stored["d"], FARS)
        if ref["n_pos"] == 0:
            with pytest.raises(ValueError, match="no positive pairs"):
                _search(tmp, pr)
            return
        metrics = _search(tmp, pr)
        with open(tmp / "out" / "per_probe.csv", newline="") as fh:
            per_probe = list(csv.DictReader(fh))
    assert metrics["counts"]["positive_pairs"] == ref["n_pos"]
    assert metrics["counts"]["noise_excluded"] == {
        role: int((~keep[r]).sum()) for role, r in (("probes", "p"), ("mates", "m"), ("distractors", "d"))
    }
    assert metrics["rank1"] == ref["rank1"]
    for k, rate in zip(metrics["cmc"]["ranks"], metrics["cmc"]["rates"]):
        assert rate == np.mean(ref["ranks"] <= k), k
    assert abs(metrics["auc"] - ref["auc"]) <= metrics["exactness"]["auc_max_error"] + 1e-12
    for entry in metrics["tar_at_far"]:
        tar, tau = ref["tar"][entry["far"]]
        assert abs(entry["threshold"] - tau) <= 1e-12 and entry["tar"] == tar, entry
    # per probe: the best mate's exact score and its rank (no mate: empty score, rank 0)
    P64, M64, D64 = (unit32(stored[r]).astype(np.float64) for r in "pmd")
    s_all = np.einsum("ik,jk->ij", P64, np.vstack([M64, D64]))
    s_pm, s_pd = s_all[:, : M64.shape[0]], s_all[:, M64.shape[0] :]
    assert [r["key"] for r in per_probe] == keys["p"]
    for i, row in enumerate(per_probe):
        mates = [
            j
            for j in range(len(keys["m"]))
            if labels["m"][j] == labels["p"][i] and labels["p"][i] >= 0 and keys["m"][j] != keys["p"][i]
        ]
        if not mates:
            assert row["best_mate_score"] == "" and row["rank"] == "0"
            continue
        best = max(s_pm[i, j] for j in mates)
        assert math.isclose(float(row["best_mate_score"]), best, rel_tol=0, abs_tol=1e-12)
        assert int(row["rank"]) == 1 + int((s_pd[i] > best).sum())


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 12).flatmap(
        lambda n: st.integers(1, 16).flatmap(
            lambda m: st.tuples(
                st.lists(
                    st.sampled_from([-math.inf, -1.0, -0.0, 0.0, 0.25, 0.5, 1.0, 0.3333333]),
                    min_size=n * m,
                    max_size=n * m,
                ),
                st.lists(st.integers(-1, 20), min_size=n * m, max_size=n * m),
                st.just((n, m)),
            )
        )
    )
)
def test_row_order_is_descending_score_then_ascending_index(case):
    """``topk.row_order``'s float32 key sort orders as its float64 path (a lexsort on −score, then index): ties
    (±0 included) by index."""
    from benchmark.search.topk import row_order

    vals, idx, shape = case
    vals = np.array(vals, np.float32).reshape(shape)
    idx = np.array(idx, np.int64).reshape(shape)
    order = row_order(vals, idx)
    ref = row_order(vals.astype(np.float64), idx)
    assert np.array_equal(np.take_along_axis(idx, order, 1), np.take_along_axis(idx, ref, 1))
    got, want = np.take_along_axis(vals, order, 1), np.take_along_axis(vals, ref, 1)
    assert np.array_equal(got, want)  # −0 == +0
