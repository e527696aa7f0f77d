"""`mf2m report` on an `mf2m transfer` output: per-attack source × target tables, heatmaps, escaped names.

The transfer manifest here is written by hand (the rendering is under test; tests/test_defences_eot_verify.py
runs `mf2m transfer` for real on LFW and renders its output too).
"""

from __future__ import annotations

import csv
import json

EVIL_ATTACK = "adv<script>alert(1)</script> $\\x$"
EVIL_TARGET = "<img src=x onerror=alert(2)>"


def _record(far: float = 0.01) -> dict:
    cells = []
    values = {
        ("clean", "—", "sface"): (0.9, 0.8),
        ("clean", "—", EVIL_TARGET): (0.85, 0.7),
        (EVIL_ATTACK, "sface", "sface"): (0.125, 0.0625),
        (EVIL_ATTACK, "sface", EVIL_TARGET): (0.5, 0.375),
        (EVIL_ATTACK, "arcface", "sface"): (0.625, 0.25),
        (EVIL_ATTACK, "arcface", EVIL_TARGET): (0.75, 0.5),
    }
    rates = {"—": 0.0, "sface": 0.25, "arcface": 0.875}
    for (attack, source, target), (rank1, tar) in values.items():
        cells.append(
            {
                "attack": attack,
                "source": source,
                "target": target,
                "rank1": rank1,
                "tar": tar,
                "far": far,
                "mask_rate": rates[source],
                "probes": 8,
                "skipped": 0,
                "positive_pairs": 8,
                "negative_pairs": 100,
            }
        )
    return {
        "stage": "transfer",
        "cells": cells,
        "meta": {
            "pool": "8 probes of 4 identities, 100 distractors",
            "far": far,
            "mask_detector": "md",
            "sources": ["sface", "arcface"],
            "targets": ["sface", EVIL_TARGET],
        },
    }


def test_report_renders_transfer_matrices_heatmaps_and_escapes_names(tmp_path):
    from benchmark.cli import main

    run = tmp_path / "tr"
    run.mkdir()
    (run / "transfer.json").write_text(json.dumps(_record()))
    assert main(["report", "--runs", str(run), "--out", str(tmp_path / "rep")]) in (0, None)
    rep = tmp_path / "rep"
    [md_file] = sorted(rep.glob("transfer-*.md"))
    md = md_file.read_text()
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in md.splitlines()
        if line.startswith("| ") and "---" not in line
    }
    # columns: Rank-1 of sface, evil; TAR of sface, evil; mask rate
    assert rows["sface"] == ["0.1250", "0.5000", "0.0625", "0.3750", "0.2500"]
    assert rows["arcface"] == ["0.6250", "0.7500", "0.2500", "0.5000", "0.8750"]
    assert rows["clean (no attack)"] == ["0.9000", "0.8500", "0.8000", "0.7000", "0.0000"]
    assert "| sface (Rank-1) |" in md and "| sface (TAR@0.01) |" in md and "white-box" in md
    with open(md_file.with_suffix(".csv"), newline="") as fh:
        table = list(csv.DictReader(fh))
    assert float(next(r for r in table if r["source"] == "arcface")[f"tar@{EVIL_TARGET}"]) == 0.5
    assert md_file.with_suffix(".tex").is_file()
    pngs = sorted((rep / "plots").glob("transfer_*.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (rep / "index.html").read_text()
    assert "Transferability heatmaps" in page and page.count("data:image/png;base64") == 1
    assert "<script>" not in page and "<img src=x" not in page
    assert "adv&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x onerror=alert(2)&gt;" in page
    manifest = json.loads((rep / "manifest.json").read_text())
    assert md_file.name in manifest["outputs"] and f"plots/{pngs[0].name}" in manifest["outputs"]


def test_report_refuses_a_foreign_transfer_json(tmp_path, capsys):
    from benchmark.cli import main

    run = tmp_path / "tr"
    run.mkdir()
    (run / "transfer.json").write_text(json.dumps({"stage": "defend", "cells": []}))
    assert main(["report", "--runs", str(run), "--out", str(tmp_path / "rep")]) == 1
    assert "not an mf2m transfer manifest" in capsys.readouterr().err
    assert not (tmp_path / "rep").exists()
