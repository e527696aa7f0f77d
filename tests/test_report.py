"""The report stage: tables, plots and the HTML page read from stage outputs.

The search outputs used here are computed in the test by a brute-force numpy reference (float64 scores,
sklearn AUC) on small random problems with planted identity structure, so every number the tables show
can be checked against an independent computation.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from benchmark.atomic import write_json
from benchmark.cli import main as mf2m
from benchmark.report import paper_numbers as P
from benchmark.report.build import ReportOptions, build_report, collect
from benchmark.report.render import to_csv, to_latex, to_markdown
from benchmark.report.tables import Unresolved, fmt, paper_model, table1, table2
from benchmark.report.tar_tables import tar_tables

FARS = (1e-6, 1e-4, 1e-2)


def brute_force(probes, p_lab, mates, m_lab, distractors, fars=FARS):
    """Reference metrics of the MegaFace protocol (positive pairs: same label; negatives: all p × d)."""
    from sklearn.metrics import roc_auc_score

    s_pm = probes.astype(np.float64) @ mates.T.astype(np.float64)
    s_pd = probes.astype(np.float64) @ distractors.T.astype(np.float64)
    pos_i, pos_j = np.nonzero(p_lab[:, None] == m_lab[None, :])
    pos = s_pm[pos_i, pos_j]
    ranks = 1 + (s_pd[pos_i] > pos[:, None]).sum(1)
    neg = np.sort(s_pd.ravel())[::-1]
    tar = []
    for far in fars:
        k = int(np.floor(far * neg.size))
        tau = neg[min(k, neg.size - 1)]
        tar.append({"far": far, "tar": float(np.mean(pos > tau)), "threshold": float(tau)})
    y = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    auc = float(roc_auc_score(y, np.r_[pos, neg]))
    cmc_ranks = [1, 2, 5, 10, 100, 1000]
    metrics = {
        "counts": {
            "probes": len(probes),
            "mates": len(mates),
            "distractors": len(distractors),
            "positive_pairs": int(pos.size),
            "negative_pairs": int(neg.size),
        },
        "rank1": float(np.mean(ranks == 1)),
        "cmc": {"ranks": cmc_ranks, "rates": [float(np.mean(ranks <= k)) for k in cmc_ranks]},
        "tar_at_far": tar,
        "auc": auc,
    }
    steps = np.unique(ranks)
    cmc = [(int(r), float(np.mean(ranks <= r))) for r in steps]
    grid = np.logspace(-4, 0, 9)
    roc = []
    for far in grid:
        k = int(np.floor(far * neg.size))
        tau = neg[min(k, neg.size - 1)]
        roc.append((float(far), float(np.mean(pos > tau)), float(tau)))
    return metrics, cmc, roc


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_search(folder: Path, noise: float, seed: int, model: str = "toy") -> dict:
    """A search output folder for a toy problem whose probes are perturbed by ``noise`` (more → harder)."""
    rng = np.random.default_rng(seed)
    ids, per, dim = 6, 3, 32
    centres = _unit(rng.normal(size=(ids, dim)))
    lab = np.repeat(np.arange(ids), per)
    mates = _unit(centres[lab] + 0.3 * rng.normal(size=(lab.size, dim)))
    probes = _unit(centres[lab] + noise * rng.normal(size=(lab.size, dim)))
    distractors = _unit(rng.normal(size=(200, dim)))
    metrics, cmc, roc = brute_force(probes, lab, mates, lab, distractors)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "metrics.json", metrics)
    with open(folder / "cmc.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["rank", "rate"])
        w.writerows(cmc)
    with open(folder / "roc.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["far", "tar", "threshold"])
        w.writerows(roc)
    write_json(folder / "manifest.json", {"stage": "search", "model": model})
    return metrics


def write_attack(folder: Path, p_masked: list[float], psnr: list[float], reference: str) -> None:
    """An attack output folder: probes.csv with the given per-probe values, plus 112×112 result images."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(p_masked))
    with open(folder / "probes.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "key",
                "identity",
                "template",
                "template_similarity",
                "fr_distance",
                "fr_cosine",
                "p_masked",
                "reference",
                "psnr",
                "ssim",
                "status",
            ]
        )
        for i, (p, s) in enumerate(zip(p_masked, psnr)):
            key = f"id{i % 3}/img{i}"
            w.writerow([key, f"id{i % 3}", "", "", 0.5, 0.8, p, reference, s, 0.95, "ok"])
            (folder / "images" / f"id{i % 3}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(folder / "images" / f"{key}.png")
        w.writerow(["id9/broken", "id9", "", "", "", "", "", "", "", "", "skipped:landmarks:no face"])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> tuple[Path, dict]:
    """A run folder (run.json) with white-box entries for 4 methods and black-box entries for 2."""
    root = tmp_path_factory.mktemp("run")
    truth = {}
    entries = []
    for i, (method, noise) in enumerate([("none", 0.2), ("solid", 0.5), ("dm", 0.8), ("mf2m", 2.0)]):
        truth[("white", method)] = write_search(root / "search" / f"{method}-A", noise, seed=10 + i)
        attack = None
        if method != "none":
            attack = f"attack/{method}"
            write_attack(
                root / attack,
                [0.9, 0.2, 0.7, 0.6] if method == "solid" else [0.1, 0.3, 0.8, 0.2],
                [30.0, 32.0, float("inf"), 34.0],
                "solid" if method == "solid" else "dm",
            )
        entries.append(
            {
                "method": method,
                "attack_model": None if method == "none" else "A",
                "eval_model": "A",
                "search": f"search/{method}-A",
                "attack": attack,
            }
        )
    for i, (method, noise) in enumerate([("none", 0.25), ("mf2m", 1.0)]):
        truth[("black", method)] = write_search(root / "search" / f"{method}-B", noise, seed=20 + i)
        entries.append(
            {
                "method": method,
                "attack_model": None if method == "none" else "A",
                "eval_model": "B",
                "search": f"search/{method}-B",
                "attack": f"attack/{method}" if method != "none" else None,
            }
        )
    write_json(
        root / "run.json",
        {
            "format": "mf2m.run.v1",
            "name": "toy",
            "setting": {"data": "toy vectors", "data_kind": "synthetic"},
            "entries": entries,
        },
    )
    return root, truth


def _md_row(md: str, label: str) -> list[str]:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == label:
            return cells
    raise AssertionError(f"row {label!r} not in table:\n{md}")


def test_table1_matches_brute_force(run_dir):
    root, truth = run_dir
    items = collect([str(root)])
    t = table1(items, far=1e-2, paper="auto")
    ours = t[0]
    md = to_markdown(ours)
    for method, lab in (("none", "No mask"), ("solid", "Solid-color †"), ("dm", "DM"), ("mf2m", "MF²M")):
        ref = truth[("white", method)]
        row = next(r for r in ours.rows if r["method"] == method)
        assert row["rank1"] == pytest.approx(ref["rank1"], abs=1e-12)
        assert row["auc"] == pytest.approx(ref["auc"], abs=1e-12)
        assert row["tar"] == pytest.approx(next(x["tar"] for x in ref["tar_at_far"] if x["far"] == 1e-2))
        cells = _md_row(md, lab)
        assert cells[1] == fmt(ref["rank1"], "rate")
    # the toy problem really separates the methods: harder probes, lower rank-1
    assert truth[("white", "none")]["rank1"] > truth[("white", "mf2m")]["rank1"]
    # rows of methods that were not run are dashes, not zeros
    assert _md_row(md, "FGSM")[1:] == ["—"] * 6
    # mask rate = fraction of ok probes with P(masked) > 0.5; the skipped row is not counted
    solid = next(r for r in ours.rows if r["method"] == "solid")
    assert solid["mask_rate"] == pytest.approx(3 / 4)
    assert solid["attack_skipped"] == 1
    # PSNR mean leaves out the unchanged image (inf)
    assert solid["psnr"] == pytest.approx(32.0)
    # the setting differs from the paper's: the paper's table comes separately, with the reason
    assert t[1].name == "table1_paper" and "data toy vectors" in " ".join(t[1].notes)
    assert "Rank-1 (paper)" not in md


def test_csv_and_latex(run_dir):
    root, truth = run_dir
    t = table1(collect([str(root)]), far=1e-2)[0]
    rows = list(csv.DictReader(to_csv(t).splitlines()))
    assert [r["method"] for r in rows] == list(P.METHOD_ORDER)
    none = next(r for r in rows if r["method"] == "none")
    assert float(none["rank1"]) == truth[("white", "none")]["rank1"]  # full precision
    assert next(r for r in rows if r["method"] == "fgsm")["rank1"] == ""  # missing → empty
    tex = to_latex(t)
    body = [ln for ln in tex.splitlines() if ln.endswith(r"\\") and "&" in ln]
    assert len(body) == len(P.METHOD_ORDER) + 1
    assert all(ln.count("&") == len(t.columns) - 1 for ln in body)
    assert "MF$^2$M" in tex and r"\%" in tex and r"\begin{tabular}" in tex and "—" not in tex


def test_table2_black_box(run_dir):
    root, truth = run_dir
    t = table2(collect([str(root)]), far=1e-2)
    ours = t[0]
    assert ours.name == "table2"
    row = next(r for r in ours.rows if r["method"] == "mf2m")
    assert row["b:rank1"] == pytest.approx(truth[("black", "mf2m")]["rank1"])
    clean = next(r for r in ours.rows if r["method"] == "none")
    assert clean["b:auc"] == pytest.approx(truth[("black", "none")]["auc"])
    assert next(r for r in ours.rows if r["method"] == "dm")["b:rank1"] is None
    assert t[1].name == "table2_paper"


def test_tar_tables_hold_every_far(run_dir):
    """One table per evaluation model (black-box: per attack model), every FAR against the brute force."""
    root, truth = run_dir
    tables = {t.name: t for t in tar_tables(collect([str(root)]))}
    assert sorted(tables) == ["tar_a", "tar_b_from_a"]
    white, black = tables["tar_a"], tables["tar_b_from_a"]
    assert [c.title for c in white.columns[1:]] == ["TAR@1e-6 FAR", "TAR@1e-4 FAR", "TAR@1e-2 FAR"]
    for (kind, method), ref in truth.items():
        table = white if kind == "white" else black
        row = next(r for r in table.rows if r["method"] == method)
        n_neg = ref["counts"]["negative_pairs"]
        for x in ref["tar_at_far"]:
            cell = row[f"tar@{x['far']:g}"]
            assert float(cell) == pytest.approx(x["tar"], abs=1e-12)
            assert isinstance(cell, Unresolved) == (x["far"] * n_neg < 1)
    # the unmasked probes of B are the reference row of the black-box table; methods not run are dashes
    assert next(r for r in black.rows if r["method"] == "none")["tar@0.01"] is not None
    assert _md_row(to_markdown(black), "DM")[1:] == ["—"] * 3
    rows = list(csv.DictReader(to_csv(white).splitlines()))
    none = next(r for r in rows if r["method"] == "none")
    assert none["tar@1e-06_resolved"] == "0" and none["tar@0.01_resolved"] == "1"
    assert "not resolved" in " ".join(white.notes) and "black-box, probes attacked on A" in black.caption


def test_paper_numbers_exact_and_beside_ours_when_setting_matches(tmp_path):
    # spot checks against the paper's Table 1 and Table 2
    assert P.TABLE1["solid"] == {
        "rank1": 0.7389,
        "tar": 0.7470,
        "auc": 0.9986,
        "mask_rate": 0.9053,
        "psnr": None,
        "ssim": None,
    }
    assert P.TABLE1["mf2m"]["tar"] == 2.02e-5 and P.TABLE1["advnoise-dm"]["psnr"] == 38.76
    assert P.TABLE2["cosface-r34"]["mf2m"] == {"rank1": 0.0546, "tar": 0.0508, "auc": 0.9212}
    assert P.TABLE2["cosface-r50"]["dm"]["tar"] == 0.6520
    assert paper_model("arcface_r50") == "arcface-r50" and paper_model("cosface-resnet34") == "cosface-r34"
    assert paper_model("sface") is None
    metrics = write_search(tmp_path / "s", 0.5, seed=3)
    write_json(
        tmp_path / "run.json",
        {
            "format": "mf2m.run.v1",
            "name": "mf",
            "setting": {"data": "megaface-probes:/x", "data_kind": "megaface-probes"},
            "entries": [
                {"method": "solid", "attack_model": "arcface-r50", "eval_model": "arcface-r50", "search": "s"},
                {"method": "solid", "attack_model": "arcface-r50", "eval_model": "cosface-r34", "search": "s"},
            ],
        },
    )
    items = collect([str(tmp_path)])
    t1 = table1(items, far=1e-6)
    assert len(t1) == 1
    row = next(r for r in t1[0].rows if r["method"] == "solid")
    assert row["p_rank1"] == 0.7389 and row["rank1"] == metrics["rank1"]
    assert "Rank-1 (paper)" in to_markdown(t1[0])
    t2 = table2(items, far=1e-6)
    assert len(t2) == 1
    assert next(r for r in t2[0].rows if r["method"] == "solid")["cosface-r34:p_rank1"] == 0.7641


def test_build_report_writes_everything_offline(run_dir, tmp_path):
    root, _ = run_dir
    out = tmp_path / "report"
    manifest = build_report([str(root)], out, ReportOptions(far=1e-2, examples=2))
    for name in (
        "table1.md",
        "table1.csv",
        "table1.tex",
        "table2.md",
        "table1_paper.md",
        "report.md",
        "index.html",
        "plots/cmc_a.png",
        "plots/roc_a.png",
        "plots/cmc_b_from_a.png",
        "examples/mf2m.png",
        "examples/overview.png",
        "manifest.json",
    ):
        assert (out / name).is_file(), name
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") >= 6
    assert not re.search(r"""(src|href)=["']https?:""", page)  # nothing to fetch
    assert "<script" not in page
    assert len(manifest["inputs"]) >= 10 and all(len(h) == 64 for h in manifest["inputs"].values())
    from PIL import Image

    with Image.open(out / "plots" / "cmc_a.png") as im:
        assert im.size[0] > 300


def test_report_cli_uses_the_runs_own_settings(run_dir, tmp_path):
    """Without --far the TAR column is at the run's report.far (so the run's tables re-derive); --far overrides."""
    import shutil

    root = tmp_path / "run"
    shutil.copytree(run_dir[0], root)
    record = json.loads((root / "run.json").read_text())
    record["config"] = {"report": {"far": 1e-4, "paper": "never", "examples": 0}}
    (root / "run.json").write_text(json.dumps(record))
    assert mf2m(["report", "--runs", str(root), "--out", str(tmp_path / "own")]) == 0
    own = (tmp_path / "own" / "table1.md").read_text()
    assert "TAR@1e-4 FAR" in own and not (tmp_path / "own" / "table1_paper.md").exists()
    assert mf2m(["report", "--runs", str(root), "--out", str(tmp_path / "given"), "--far", "1e-2"]) == 0
    assert "TAR@1e-2 FAR" in (tmp_path / "given" / "table1.md").read_text()


def test_comparison_with_the_paper_is_at_the_papers_far(run_dir):
    """Whatever FAR Table 1 shows, ours beside the paper's TAR is at 1e-6 when the searches computed it."""
    from benchmark.report.compare import comparison_tables

    root, truth = run_dir
    table = comparison_tables(collect([str(root)]), far=1e-2)[0]
    assert ("TAR@1e-06 FAR", 3) in table.groups and not any("Our TAR is at" in n for n in table.notes)
    mf2m_row = next(r for r in table.rows if r["method"] == "mf2m")
    assert mf2m_row["tar"] == next(x["tar"] for x in truth[("white", "mf2m")]["tar_at_far"] if x["far"] == 1e-6)


def test_report_cli_and_bad_input(run_dir, tmp_path, capsys):
    root, _ = run_dir
    assert mf2m(["report", "--runs", str(root), "--out", str(tmp_path / "r"), "--far", "1e-2", "--examples", "0"]) == 0
    assert (tmp_path / "r" / "table1.md").is_file()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text("{not json")
    assert mf2m(["report", "--runs", str(bad), "--out", str(tmp_path / "r2")]) == 1
    err = capsys.readouterr().err
    assert "metrics.json" in err and "not valid JSON" in err
    assert mf2m(["report", "--runs", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r3")]) == 1


def test_search_folders_without_run_json(run_dir, tmp_path):
    root, truth = run_dir
    items = collect([f"mf2m={root / 'search' / 'mf2m-A'}", f"solid={root / 'search' / 'solid-A'}"])
    assert sorted(e.method for e, _ in items) == ["mf2m", "solid"]
    t = table1(items, far=1e-2)[0]
    assert next(r for r in t.rows if r["method"] == "mf2m")["rank1"] == truth[("white", "mf2m")]["rank1"]


def test_defence_leaderboard_joins_the_html_report(tmp_path):
    """The committed LFW leaderboard (``mf2m defend`` output) becomes a table of the report and its page."""

    from benchmark.report.build import build_report

    board = Path(__file__).resolve().parents[1] / "results" / "defences"
    if not (board / "leaderboard.json").is_file():
        pytest.skip("no committed leaderboard")
    build_report([str(board)], tmp_path / "rep")
    cells = json.loads((board / "leaderboard.json").read_text())["cells"]
    md = (tmp_path / "rep" / "defence-leaderboard.md").read_text()
    assert md.count("\n| ") == len(cells) + 1  # header + one row per cell
    assert "Defence leaderboard" in (tmp_path / "rep" / "index.html").read_text()
