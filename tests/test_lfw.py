"""LFW protocol files, the fold/threshold logic (against brute force) and `mf2m lfw` on a small subset.

The pair files here are written by the tests in the official format (the shared copy of LFW has no
pairs.txt); the end-to-end check needs ../shared/data/lfw and the model registry.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from benchmark.data.lfw import LfwImage, list_images, list_people, load_pairs, make_pairs, parse_pairs, parse_people
from benchmark.workflows.lfw_check import accuracy_at, best_threshold, cross_validate


def _brute_threshold(scores, same):
    """Every midpoint / end candidate tried one by one; first best (smallest) threshold."""
    u = np.unique(scores)
    cands = [u[0] - 1.0] + [(a + b) / 2 for a, b in zip(u[:-1], u[1:])] + [u[-1] + 1.0]
    accs = [np.mean([(s > t) == y for s, y in zip(scores, same)]) for t in cands]
    k = int(np.argmax(accs))
    return cands[k], accs[k]


@pytest.mark.parametrize("seed", range(6))
def test_best_threshold_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 80))
    same = rng.random(n) < 0.5
    scores = np.round(rng.normal(same * 0.6, 0.3), 1)  # rounding makes ties
    t, acc = best_threshold(scores, same)
    bt, bacc = _brute_threshold(scores, same)
    assert acc == pytest.approx(bacc) and t == pytest.approx(bt)
    assert accuracy_at(scores, same, t) == pytest.approx(acc)


def test_cross_validation_matches_a_direct_loop():
    rng = np.random.default_rng(1)
    folds = np.repeat(np.arange(10), 40)
    same = np.tile(np.r_[np.ones(20, bool), np.zeros(20, bool)], 10)
    scores = rng.normal(same * 0.5, 0.25)
    got = cross_validate(scores, same, folds)
    assert [f["fold"] for f in got] == list(range(1, 11))
    for f in got:
        k = f["fold"] - 1
        t, _ = _brute_threshold(scores[folds != k], same[folds != k])
        test = folds == k
        assert f["accuracy"] == pytest.approx(np.mean((scores[test] > t) == same[test]))
        assert f["pairs"] == 40
    # separable scores give 100%
    perfect = cross_validate(np.where(same, 1.0, -1.0), same, folds)
    assert all(f["accuracy"] == 1.0 for f in perfect)


def _write_pairs(path, folds):
    """folds: list of (matched [(name,i,j)], mismatched [(n1,i,n2,j)]) with equal lengths."""
    per = len(folds[0][0])
    lines = [f"{len(folds)}\t{per}"]
    for m, mm in folds:
        lines += ["\t".join(map(str, x)) for x in m] + ["\t".join(map(str, x)) for x in mm]
    path.write_text("\n".join(lines) + "\n")


def test_pairs_with_absent_files_are_reported(lfw_dir, tmp_path):
    pairs = tmp_path / "pairs.txt"
    _write_pairs(
        pairs,
        [
            (
                [("Abdullah_Gul", 1, 2), ("Nobody_Here", 1, 2)],
                [("Aaron_Eckhart", 1, "Abdullah_Gul", 3), ("Aaron_Eckhart", 1, "Abdullah_Gul", 99)],
            )
        ],
    )
    got = load_pairs(lfw_dir, pairs)
    assert (got.n_folds, got.per_fold) == (1, 2)
    assert len(got.pairs) == 2 and len(got.missing) == 2
    rep = got.report()
    assert rep["pairs_missing_files"] == 2 and rep["pairs_listed"] == 4
    assert "Nobody_Here/Nobody_Here_0001.jpg" in rep["missing_examples"][0]
    assert "Abdullah_Gul/Abdullah_Gul_0099.jpg" in rep["missing_examples"][1]
    assert [it.key for it in got.items()] == [
        "Abdullah_Gul/Abdullah_Gul_0001.jpg",
        "Abdullah_Gul/Abdullah_Gul_0002.jpg",
        "Aaron_Eckhart/Aaron_Eckhart_0001.jpg",
        "Abdullah_Gul/Abdullah_Gul_0003.jpg",
    ]


def test_malformed_pairs_files_name_the_line(tmp_path):
    bad = tmp_path / "pairs.txt"
    bad.write_text("2\t1\nA\t1\t2\nA\t1\tB\t2\n")
    with pytest.raises(ValueError, match="header promises"):
        parse_pairs(bad)
    bad.write_text("1\t1\nA\t1\t2\nA\t1\t2\n")
    with pytest.raises(ValueError, match=r"pairs.txt:3: expected a mismatched"):
        parse_pairs(bad)
    bad.write_text("ten\t300\n")
    with pytest.raises(ValueError, match="header"):
        parse_pairs(bad)
    with pytest.raises(FileNotFoundError, match="lfw-pairs"):
        parse_pairs(tmp_path / "absent.txt")
    dev = tmp_path / "pairsDevTest.txt"  # one-number header = one fold
    dev.write_text("1\nA\t1\t2\nA\t1\tB\t2\n")
    n_folds, per, pairs = parse_pairs(dev)
    assert (n_folds, per, len(pairs)) == (1, 1, 2) and pairs[0].same and not pairs[1].same


def test_parse_people(tmp_path):
    p = tmp_path / "people.txt"
    p.write_text("2\n2\nA\t3\nB\t1\n1\nC\t2\n")
    assert parse_people(p) == [(0, "A", 3), (0, "B", 1), (1, "C", 2)]
    d = tmp_path / "peopleDevTrain.txt"
    d.write_text("2\nA\t3\nB\t1\n")
    assert parse_people(d) == [(0, "A", 3), (0, "B", 1)]


def test_make_pairs_follows_the_protocol(lfw_dir, tmp_path):
    out = make_pairs(lfw_dir, tmp_path / "pairs.txt", n_folds=3, per_fold=20, seed=7)
    n_folds, per, pairs = parse_pairs(out)
    assert (n_folds, per, len(pairs)) == (3, 20, 120)
    assert load_pairs(lfw_dir, out).missing == []  # only files that exist
    people = [{im.name for p in pairs if p.fold == k for im in (p.a, p.b)} for k in range(3)]
    assert all(not (a & b) for a, b in itertools.combinations(people, 2))  # identity-disjoint folds
    assert all(p.a.name == p.b.name and p.a.number != p.b.number for p in pairs if p.same)
    assert all(p.a.name != p.b.name for p in pairs if not p.same)
    assert len({(p.a, p.b) for p in pairs}) == 120
    assert make_pairs(lfw_dir, tmp_path / "again.txt", n_folds=3, per_fold=20, seed=7).read_text() == out.read_text()


def test_list_images(lfw_dir):
    people = list_people(lfw_dir)
    assert len(people) > 5000 and people["Abdullah_Gul"][:3] == [1, 2, 3]
    rel = list_images(lfw_dir)
    assert len(rel) == sum(len(v) for v in people.values())
    assert LfwImage("Abdullah_Gul", 1).path(lfw_dir / "images").is_file()


@pytest.mark.slow
def test_lfw_command_on_a_small_subset(lfw_dir, tmp_path):
    """60 pairs (2 folds × 15 + 15) through detect → align → SFace from the registry, plus absent files."""
    pytest.importorskip("benchmark.models.registry")
    from benchmark.cli import main

    sub = tmp_path / "pairs.txt"
    make_pairs(lfw_dir, sub, n_folds=2, per_fold=15, seed=3)
    lines = sub.read_text().splitlines()
    lines[1] = "Nobody_Here\t1\t2"  # a pair naming absent files
    sub.write_text("\n".join(lines) + "\n")
    out = tmp_path / "lfw.json"
    assert (
        main(
            [
                "lfw",
                "--data",
                str(lfw_dir),
                "--pairs",
                str(sub),
                "--model",
                "sface",
                "--out",
                str(out),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert res["pairs_listed"] == 60 and res["pairs_used"] + res["pairs_skipped"] == 60
    assert res["skipped_by_reason"].get("missing-file") == 1 and len(res["folds"]) == 2
    assert res["mean_accuracy"] >= 0.9, res["folds"]
    assert res["manifest"]["stage"] == "lfw"
    # the second model reuses the cached detections: nothing is prepared again
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "lfw.json.prepared" / "parts").glob("*.json")}
    res2 = (
        json.loads(out.read_text())
        if main(
            ["lfw", "--data", str(lfw_dir), "--pairs", str(sub), "--model", "sface", "--out", str(out), "--no-progress"]
        )
        == 0
        else None
    )
    assert res2["mean_accuracy"] == res["mean_accuracy"]
    assert {p: p.stat().st_mtime_ns for p in before} == before
