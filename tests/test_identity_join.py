"""``mf2m search`` pairs probes with mates by identity name and never with the probe's own clean source.

Small random feature sets written with the package's writer (per-row names, mf2m.features.v2) and with
raw h5py (labels only, as a v1 set); metrics are checked against a float64 brute force over the pairs a
person would draw by hand.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from benchmark.features import write_feature_file, write_manifest
from benchmark.search.identity import IdentityJoinError, join_key
from benchmark.search.run import SearchConfig, run_search

DIM = 16


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def people(seed=0):
    """Mates: 4 people (A–D) × 3 images; probes: attacked copies of B, C, D images (every A image dropped)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(4, DIM)) * 2
    names = ["A", "B", "C", "D"]
    mate_names = [n for n in names for _ in range(3)]
    mate_keys = [f"{n}/{n}_{i}" for n in names for i in range(3)]
    M = centers[np.repeat(np.arange(4), 3)] + rng.normal(size=(12, DIM))
    src = [k for k in mate_keys if not k.startswith("A/")]
    probe_names = [k.split("/")[0] for k in src]
    # an attacked probe stays close to its own clean source: pairing it with that source would inflate rank-1
    P = M[[mate_keys.index(k) for k in src]] + 0.05 * rng.normal(size=(len(src), DIM))
    D = rng.normal(size=(300, DIM)) * 1.5
    return (P, [f"{k}.png" for k in src], probe_names, src), (M, mate_keys, mate_names), D


def brute_rank1(P, probe_names, probe_src, M, mate_keys, mate_names, D) -> tuple[float, int]:
    """Rank-1 over positive pairs (same name, mate ≠ the probe's source) and their number, in float64."""
    P, M, D = unit(np.asarray(P, np.float64)), unit(np.asarray(M, np.float64)), unit(np.asarray(D, np.float64))
    hits = []
    for i in range(len(P)):
        neg = D @ P[i]
        for j in range(len(M)):
            if mate_names[j] == probe_names[i] and mate_keys[j] != probe_src[i]:
                hits.append(not (neg > M[j] @ P[i]).any())
    return float(np.mean(hits)), len(hits)


def write_sets(tmp, names=True, sources=True):
    (P, pk, pn, ps), (M, mk, mn), D = people()
    own = {n: i for i, n in enumerate(sorted(set(pn)))}  # the probes' own label numbering (B=0, C=1, D=2)
    write_feature_file(
        tmp / "p.h5",
        P,
        pk,
        [own[n] for n in pn],
        "m",
        identities=pn if names else None,
        sources=ps if sources else None,
    )
    write_feature_file(tmp / "m.h5", M, mk, ["ABCD".index(n) for n in mn], "m", identities=mn if names else None)
    write_feature_file(tmp / "d.h5", D, [f"x/{i}.jpg" for i in range(len(D))], None, "m")
    return (P, pk, pn, ps), (M, mk, mn), D


def search(tmp, name="out", **kw):
    return run_search(
        SearchConfig(
            str(tmp / "p.h5"),
            str(tmp / "m.h5"),
            str(tmp / "d.h5"),
            str(tmp / name),
            fars=[1e-2],
            device="cpu",
            progress=False,
            topk=3,
            **kw,
        )
    )


def test_pairs_by_name_when_labels_shift_and_never_with_own_source(tmp_path):
    (P, pk, pn, ps), (M, mk, mn), D = write_sets(tmp_path)
    metrics = search(tmp_path)
    rank1, n_pos = brute_rank1(P, pn, ps, M, mk, mn, D)
    assert metrics["counts"]["positive_pairs"] == n_pos == 9 * 2
    assert metrics["rank1"] == rank1
    j = metrics["identity_join"]
    assert j["by"] == "name" and j["own_image_pairs_excluded"] == 9 and j["probes_without_pairs"] == 0
    # topk.csv flags same-identity matches by name, and never lists the probe's own source
    rows = (tmp_path / "out" / "topk.csv").read_text().splitlines()[1:]
    for row in rows:
        probe, _, gallery, role, same, _ = row.split(",")
        assert gallery != probe[:-4]
        assert int(same) == (role == "mate" and gallery.split("/")[0] == probe.split("/")[0])


def test_extension_differences_alone_exclude_the_own_image(tmp_path):
    """Without a sources column, ``B/B_0.png`` still is never paired with ``B/B_0``."""
    (P, pk, pn, ps), (M, mk, mn), D = write_sets(tmp_path, sources=False)
    assert join_key("B/B_0.png") == join_key("B/B_0") == "B/B_0" and join_key("a.b/c") == "a.b/c"
    metrics = search(tmp_path)
    assert metrics["counts"]["positive_pairs"] == 18 and metrics["identity_join"]["own_image_pairs_excluded"] == 9


def test_sets_without_names_fall_back_to_labels_with_a_warning_or_refuse(tmp_path, caplog):
    write_sets(tmp_path, names=False)
    with caplog.at_level(logging.WARNING):
        metrics = search(tmp_path)
    assert metrics["identity_join"]["by"] == "label"
    assert "no per-row 'identities'" in caplog.text and "integer label" in caplog.text
    with pytest.raises(IdentityJoinError, match="cannot pair probes with mates by identity name.*p.h5"):
        search(tmp_path, name="strict", join="names")


def test_v1_directory_names_come_from_the_manifest_identities(tmp_path):
    """An embed-written v1 set (labels + the manifest's identities list) is paired by those names."""
    (P, pk, pn, ps), (M, mk, mn), D = people()
    for role, X, keys, names in (("pv1", P, pk, pn), ("mv1", M, mk, mn)):
        folder = tmp_path / role
        folder.mkdir()
        ids = sorted(set(names))
        write_feature_file(folder / "part-00000.h5", X, keys, [ids.index(n) for n in names], "m")
        write_manifest(folder, "m", DIM, ["part-00000.h5"])
        man = json.loads((folder / "manifest.json").read_text())
        man.update(format="mf2m.features.v1", identities=ids)
        (folder / "manifest.json").write_text(json.dumps(man))
    write_feature_file(tmp_path / "d.h5", D, [f"x/{i}" for i in range(len(D))], None, "m")
    metrics = run_search(
        SearchConfig(
            str(tmp_path / "pv1"),
            str(tmp_path / "mv1"),
            str(tmp_path / "d.h5"),
            str(tmp_path / "o"),
            fars=[1e-2],
            device="cpu",
            progress=False,
        )
    )
    assert metrics["identity_join"]["by"] == "name"
    assert metrics["identity_join"]["names_from"]["probes"] == "the manifest's identities list"
    assert metrics["rank1"] == brute_rank1(P, pn, ps, M, mk, mn, D)[0]


def test_missing_mate_identity_is_an_error_or_a_counted_warning(tmp_path):
    (P, pk, pn, ps), (M, mk, mn), D = people()
    keep = [i for i, n in enumerate(mn) if n != "C"]
    write_feature_file(tmp_path / "p.h5", P, pk, None, "m", identities=pn, sources=ps)
    write_feature_file(tmp_path / "m.h5", M[keep], [mk[i] for i in keep], None, "m", identities=[mn[i] for i in keep])
    write_feature_file(tmp_path / "d.h5", D, [f"x/{i}" for i in range(len(D))], None, "m")
    with pytest.raises(
        IdentityJoinError,
        match=r"1 of 3 probe identities \(3 probes\) have no image among the "
        r"mates .*m.h5: C",
    ):
        search(tmp_path)
    metrics = search(tmp_path, name="lenient", allow_missing_mates=True)
    j = metrics["identity_join"]
    assert j["probe_identities_without_mates"] == 1 and j["probes_without_pairs"] == 3
    assert metrics["counts"]["probes"] == 9 and metrics["counts"]["positive_pairs"] == 12


def test_conflicting_names_for_one_image_are_refused(tmp_path):
    (P, pk, pn, ps), (M, mk, mn), D = people()
    wrong = ["C" if k == "B/B_1" else n for k, n in zip(mk, mn)]
    write_feature_file(tmp_path / "p.h5", P, pk, None, "m", identities=pn, sources=ps)
    write_feature_file(tmp_path / "m.h5", M, mk, None, "m", identities=wrong)
    write_feature_file(tmp_path / "d.h5", D, [f"x/{i}" for i in range(len(D))], None, "m")
    with pytest.raises(IdentityJoinError, match="conflicting identity names for image 'B/B_1': 'B' in the probes"):
        search(tmp_path)


def test_report_on_runs_without_metrics_fails_and_writes_nothing(tmp_path):
    """A run.json whose search folders are absent (e.g. a cache of another machine): an error, no dashes."""
    from benchmark.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(
        json.dumps(
            {
                "format": "mf2m.run.v1",
                "name": "x",
                "entries": [
                    {
                        "method": "mf2m",
                        "eval_model": "sface",
                        "attack_model": "sface",
                        "search": "../gone/search-1",
                        "attack": None,
                    }
                ],
            }
        )
    )
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "table1.csv").write_text("method,rank1\nmf2m,0.225\n")
    assert main(["report", "--runs", str(run), "--out", str(tmp_path / "report")]) != 0
    assert (tmp_path / "report" / "table1.csv").read_text() == "method,rank1\nmf2m,0.225\n"
