"""``benchmark.search.evaluate`` on arrays gives exactly the metrics ``mf2m search`` writes for the same rows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.features import write_feature_file

FARS = [1e-3, 1e-2, 1e-1]


def _problem(seed: int, n_ids: int = 12, n_d: int = 700, dim: int = 32):
    """Probes near their identity's centre, two mates per identity, unrelated distractors, float32 rows."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim))
    names = [f"person_{i:02d}" for i in range(n_ids)]
    mate_ids = [names[i] for i in range(n_ids) for _ in range(2)]
    mates = np.stack([centres[names.index(n)] + rng.normal(scale=0.9, size=dim) for n in mate_ids])
    mate_keys = [f"{n}/img{j % 2}.jpg" for j, n in enumerate(mate_ids)]
    probe_ids = [names[i] for i in range(n_ids) for _ in range(2)]
    probes = np.stack([centres[names.index(n)] + rng.normal(scale=1.2, size=dim) for n in probe_ids])
    # the first probe of each person is made from its first mate image (another extension): never its mate
    probe_keys = [f"{n}/img0.png" if j % 2 == 0 else f"{n}/probe{j}.png" for j, n in enumerate(probe_ids)]
    distractors = rng.normal(size=(n_d, dim))
    return (
        (probes.astype(np.float32), probe_keys, probe_ids),
        (mates.astype(np.float32), mate_keys, mate_ids),
        distractors.astype(np.float32),
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_evaluate_on_arrays_equals_mf2m_search_on_files(tmp_path, seed):
    from benchmark.search import evaluate

    (P, pk, pid), (M, mk, mid), D = _problem(seed)
    dk = [f"flickr/{i}.jpg" for i in range(len(D))]
    write_feature_file(tmp_path / "probes.h5", P, pk, None, "toy", identities=pid)
    write_feature_file(tmp_path / "mates.h5", M, mk, None, "toy", identities=mid)
    write_feature_file(tmp_path / "distractors.h5", D, dk, None, "toy")
    out = tmp_path / "out"
    rc = main(
        [
            "search",
            "--probes",
            str(tmp_path / "probes.h5"),
            "--mates",
            str(tmp_path / "mates.h5"),
            "--distractors",
            str(tmp_path / "distractors.h5"),
            "--out",
            str(out),
            "--far",
            *map(str, FARS),
            "--block-size",
            "128",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert rc == 0
    files = json.loads((out / "metrics.json").read_text())

    result = evaluate(
        probes=P,
        mates=M,
        distractors=D,
        probe_keys=pk,
        mate_keys=mk,
        probe_identities=pid,
        mate_identities=mid,
        fars=FARS,
        device="cpu",
        block_size=128,
    )
    assert result.rank1 == files["rank1"]
    assert list(result.cmc) == files["cmc"]["ranks"] and list(result.cmc.values()) == files["cmc"]["rates"]
    assert result.tar_at_far == {e["far"]: e["tar"] for e in files["tar_at_far"]}
    assert result.thresholds == {e["far"]: e["threshold"] for e in files["tar_at_far"]}
    assert result.auc == files["auc"]
    for name in ("probes", "mates", "distractors", "positive_pairs", "negative_pairs"):
        assert result.counts[name] == files["counts"][name], name
    # the own-source rule held: 2 mates per person, the first probe of each shares a key with one of them
    assert result.counts["positive_pairs"] == 12 * 2 * 2 - 12
    assert 0.0 < result.rank1 < 1.0 and result["auc"] == result.auc


def test_evaluate_checks_its_inputs():
    from benchmark.search import evaluate

    (P, pk, pid), (M, mk, mid), D = _problem(3, n_d=50)
    with pytest.raises(ValueError, match="do not line up"):
        evaluate(
            probes=P,
            mates=M,
            distractors=D,
            probe_keys=pk[:-1],
            mate_keys=mk,
            probe_identities=pid,
            mate_identities=mid,
        )
    with pytest.raises(ValueError, match="distractor"):
        evaluate(
            probes=P, mates=M, distractors=D[:0], probe_keys=pk, mate_keys=mk, probe_identities=pid, mate_identities=mid
        )
    bad = P.copy()
    bad[0] = 0.0
    with pytest.raises(ValueError):
        evaluate(
            probes=bad, mates=M, distractors=D, probe_keys=pk, mate_keys=mk, probe_identities=pid, mate_identities=mid
        )


def test_evaluate_agrees_with_the_defence_cells_search_metrics():
    """The leaderboard's in-memory cell metrics (``defences.metrics.search_metrics``) are the same numbers."""
    from benchmark.defences.metrics import search_metrics
    from benchmark.search import evaluate

    (P, pk, pid), (M, mk, mid), D = _problem(5, n_d=300)
    pk = [k.rsplit(".", 1)[0] for k in pk]  # search_metrics compares keys as given
    mk = [k.rsplit(".", 1)[0] for k in mk]
    cell = search_metrics(P, pk, pid, M, mk, mid, D, far=1e-2)
    result = evaluate(
        probes=P,
        mates=M,
        distractors=D,
        probe_keys=pk,
        mate_keys=mk,
        probe_identities=pid,
        mate_identities=mid,
        fars=[1e-2],
    )
    assert (result.rank1, result.tar_at_far[1e-2], result.thresholds[1e-2], result.auc) == (
        cell["rank1"],
        cell["tar"],
        cell["threshold"],
        cell["auc"],
    )
    assert result.counts["positive_pairs"] == cell["positive_pairs"]


def test_search_metrics_is_evaluate_with_keys_and_labels_as_given():
    """``search_metrics`` returns ``evaluate``'s numbers but pairs keys and identity labels exactly as given:
    ``a.png`` and ``a.jpg`` are two images, ``""`` and ints are ordinary labels."""
    from benchmark.defences.metrics import search_metrics
    from benchmark.search import evaluate

    (P, pk, pid), (M, mk, mid), D = _problem(7, n_d=200)
    cell = search_metrics(P, pk, pid, M, mk, mid, D, far=1e-2)
    # every probe has both mates of its person: the own-source rule never fires for keys that differ as given
    assert cell["positive_pairs"] == 12 * 2 * 2
    stripped = evaluate(
        probes=P,
        mates=M,
        distractors=D,
        probe_keys=pk,
        mate_keys=mk,
        probe_identities=pid,
        mate_identities=mid,
        fars=[1e-2],
    )
    assert stripped.counts["positive_pairs"] == 12 * 2 * 2 - 12  # evaluate ignores image extensions
    given = [f"{i}" for i in range(len(pk))]  # the same pairs, keys without extensions
    same = evaluate(
        probes=P,
        mates=M,
        distractors=D,
        probe_keys=given,
        mate_keys=[f"m{i}" for i in range(len(mk))],
        probe_identities=pid,
        mate_identities=mid,
        fars=[1e-2],
    )
    assert cell == {
        "rank1": same.rank1,
        "tar": same.tar_at_far[1e-2],
        "threshold": same.thresholds[1e-2],
        "auc": same.auc,
        "far": 1e-2,
        "far_resolution": 1 / (len(P) * len(D)),
        "positive_pairs": 48,
        "negative_pairs": len(P) * len(D),
        "probes": len(P),
        "auc_max_error": same.metrics["exactness"]["auc_max_error"],
        "genuine_mean": same.genuine_mean,
    }
    # labels are compared as given (str of each): "" is an identity like any other, ints work
    codes = {n: ("" if n == pid[0] else i) for i, n in enumerate(sorted(set(pid)))}
    relabelled = search_metrics(P, pk, [codes[n] for n in pid], M, mk, [codes[n] for n in mid], D, far=1e-2)
    assert relabelled == cell


def test_evaluate_genuine_mean_and_no_positive_pairs():
    """``genuine_mean`` is the mean score of the positive pairs; sets sharing no identity are an error."""
    from benchmark.search import evaluate

    (P, pk, pid), (M, mk, mid), D = _problem(9, n_d=60)
    result = evaluate(
        probes=P,
        mates=M,
        distractors=D,
        probe_keys=pk,
        mate_keys=mk,
        probe_identities=pid,
        mate_identities=mid,
        fars=[1e-1],
    )
    p = P / np.linalg.norm(P, axis=1, keepdims=True)
    m = M / np.linalg.norm(M, axis=1, keepdims=True)
    pairs = [
        float(p[i].astype(np.float64) @ m[j].astype(np.float64))
        for i in range(len(p))
        for j in range(len(m))
        if pid[i] == mid[j] and pk[i].rsplit(".", 1)[0] != mk[j].rsplit(".", 1)[0]
    ]
    assert len(pairs) == result.counts["positive_pairs"]
    assert result.genuine_mean == pytest.approx(np.mean(pairs), abs=1e-6)
    with pytest.raises(ValueError, match="no positive pairs.*the mates"):
        evaluate(
            probes=P,
            mates=M,
            distractors=D,
            probe_keys=pk,
            mate_keys=mk,
            probe_identities=pid,
            mate_identities=[f"other_{n}" for n in mid],
        )
