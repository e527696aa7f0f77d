"""Committed results: every run folder under results/ re-derives its tables from its own raw outputs, and no
committed text file holds a path of the machine that produced it."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from rederive import table_files

ROOT = Path(__file__).resolve().parents[1]
RUNS = sorted(p.parent for p in (ROOT / "results").glob("*/run.json"))
# absolute paths into a user's or a machine's folders (docs may show /data/… as an example, never these)
MACHINE_PATH = re.compile(r"(?<![\w.~$])/(?:work|home|root|Users|tmp|mnt|scratch|private|var/folders)/[\w.-]")


def _has_raw(run: Path) -> bool:
    entries = json.loads((run / "run.json").read_text())["entries"]
    return bool(entries) and all((run / e["search"] / "metrics.json").is_file() for e in entries)


@pytest.mark.parametrize("run", RUNS, ids=[r.name for r in RUNS])
def test_committed_run_rederives_its_tables(run, tmp_path):
    """``mf2m report --runs results/<run> --out X`` reproduces the committed tables byte for byte."""
    if not _has_raw(run):
        pytest.skip(
            f"{run.relative_to(ROOT)} was committed without raw outputs (before OUT/raw/ existed); "
            "regenerate it with mf2m run"
        )
    from benchmark.cli import main

    assert main(["report", "--runs", str(run), "--out", str(tmp_path / "again")]) in (0, None)
    ours, again = table_files(run / "report"), table_files(tmp_path / "again")
    assert ours, f"{run}/report holds no tables"
    assert sorted(ours) == sorted(again)
    assert [n for n in ours if ours[n] != again[n]] == []
    record = json.loads((run / "run.json").read_text())
    assert record["complete"] and "+dirty" not in (record["git_commit"] or "+dirty"), record["git_commit"]
    for e in record["entries"]:
        per_probe = run / e["search"] / "per_probe.csv"
        assert per_probe.is_file() and per_probe.read_text().startswith("key,identity,source,best_mate_score")


def test_no_committed_record_holds_a_machine_path():
    """Results and the metadata of shipped weights (the records a run writes; docs may show example paths)."""
    files = subprocess.run(
        ["git", "ls-files", "results", "benchmarks/results", "benchmark/models/weights"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    found = []
    for name in files:
        try:
            text = (ROOT / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary files (weights, images)
        for m in MACHINE_PATH.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            found.append(f"{name}:{line}: {text[m.start() : m.start() + 60].splitlines()[0]}")
    assert not found, "\n".join(found[:20])


def test_report_of_a_run_without_metrics_fails_and_keeps_the_report_with_numbers(tmp_path, capsys):
    """A run.json that points into a cache that is not here: exit 1 naming the missing file; nothing overwritten."""
    from benchmark.cli import main

    run = tmp_path / "run"
    (run / "report").mkdir(parents=True)
    (run / "run.json").write_text(
        json.dumps(
            {
                "format": "mf2m.run.v1",
                "name": "r",
                "setting": {},
                "entries": [
                    {
                        "method": "dm",
                        "attack_model": "sface",
                        "eval_model": "sface",
                        "search": "../../.cache/mf2m/search-x",
                        "attack": None,
                    }
                ],
            }
        )
    )
    table = run / "report" / "table1.md"
    table.write_text("| Method | Rank-1 |\n| DM | 0.500 |\n")
    assert main(["report", "--runs", str(run), "--out", str(run / "report")]) == 1
    err = capsys.readouterr().err
    assert "no metrics" in err and "search-x/metrics.json" in err
    assert table.read_text() == "| Method | Rank-1 |\n| DM | 0.500 |\n"
    assert sorted(p.name for p in (run / "report").iterdir()) == ["table1.md"]


DEFENCES = ROOT / "results" / "defences"


def test_committed_defence_leaderboard_rederives(tmp_path, capsys):
    """``mf2m defend --render results/defences --out X`` rebuilds leaderboard.csv/.md/.html byte for byte from the
    committed cells (``cells/*/metrics.json``); every cell's ``per_probe.csv`` gives back its Rank-1, TAR and mask
    rate; the manifest names a clean commit and the data set by name and listing hash, not by a path."""
    from benchmark.cli import main
    from benchmark.defences.raw import read_per_probe

    assert main(["defend", "--render", str(DEFENCES), "--out", str(tmp_path / "again")]) == 0
    for name in ("leaderboard.csv", "leaderboard.md", "leaderboard.html"):
        assert (tmp_path / "again" / name).read_bytes() == (DEFENCES / name).read_bytes(), name
    record = json.loads((DEFENCES / "leaderboard.json").read_text())
    assert re.fullmatch(r"[0-9a-f]{40}", record["git_commit"] or ""), record["git_commit"]
    assert record["data"]["spec"] == "lfw:$DATA/lfw" and len(record["data"]["listing_sha256"]) == 64
    assert record["config"]["data"] == "lfw:$DATA/lfw"
    variants = {c["variant"] for c in record["cells"] if c["mode"] == "adaptive"}
    assert any("EOT×" in v for v in variants) and any("BPDA" in v for v in variants), variants
    source: dict[str, str] = {}
    for cell in record["cells"]:
        probes = read_per_probe(DEFENCES / cell["raw"] / "per_probe.csv")
        for p in probes:  # the data set's key of the clean image, the same in every cell
            assert source.setdefault(p["key"], p["source"]) == p["source"] and p["source"].startswith(p["identity"])
        pos = sum(p["positive_pairs"] for p in probes)
        assert len(probes) == cell["probes"] and pos == cell["positive_pairs"], cell["raw"]
        assert sum(p["rank1_hits"] for p in probes) / pos == pytest.approx(cell["rank1"], abs=1e-9), cell["raw"]
        adversarial = cell["attack"] in ("advnoise-dm-10", "mf2m-10+20")
        assert all((p["psnr"] is not None and p["psnr"] > 20 and 0 < p["ssim"] <= 1) == adversarial for p in probes)
        masked = [p["p_masked"] >= 0.5 for p in probes]
        assert sum(masked) / len(masked) == pytest.approx(cell["mask_rate"], abs=1e-12), cell["raw"]
        if cell["far_resolution"] > record["config"]["far"]:  # TAR at the largest negative score
            tau = max(p["best_distractor_score"] for p in probes)
            above = sum(sum(s > tau for s in p["mate_scores"]) for p in probes)
            assert above / pos == pytest.approx(cell["tar"], abs=1e-9), cell["raw"]
