"""``benchmark.evaluate``: one call benchmarks a defence and returns its leaderboard rows, writing nothing
unless an output folder is given (then the rows equal the written leaderboard's cells)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

import benchmark


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """SFace and a MaskNet with seeded random weights (the rates mean nothing; the orchestration is tested)."""
    import torch

    from benchmark.models.mask_detector import CNNMaskDetector, build_masknet, save_weights
    from benchmark.models.sface import SFaceRecognizer

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("md") / "md.pt"
    save_weights(path, build_masknet(), {"note": "random init, orchestration test"})
    return SFaceRecognizer(device="cpu"), CNNMaskDetector(path, device="cpu")


def _leftovers() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("mf2m-evaluate-*")}


def test_evaluate_a_defence_in_one_call(lfw_dir, models, tmp_path):
    settings = {"identities": 2, "max_images": 2, "distractors": 3, "templates": 3, "batch_size": 4}
    before = _leftovers()
    result = benchmark.evaluate(
        "jpeg:quality=40",
        data=f"folder:{lfw_dir / 'images'}",
        attacks=["solid"],
        device="cpu",
        models=models,
        **settings,
    )
    assert _leftovers() == before and result.out is None  # nothing left behind
    jpeg = "jpeg[apply_to=both,quality=40]"
    assert result.defence == jpeg
    assert [(r["attack"], r["mode"]) for r in result.rows] == [("clean", "—"), ("solid", "non-adaptive")]
    assert [(r["attack"], r["mode"]) for r in result.baseline] == [("clean", "—"), ("solid", "undefended")]
    solid = result.row("solid")
    assert solid["probes"] + solid["skipped"] == 4 and 0 <= solid["rank1"] <= 1 and 0 <= solid["auc"] <= 1
    assert result.row("clean")["clean_cost_rank1"] is not None
    with pytest.raises(KeyError):
        result.row("mf2m")

    written = benchmark.evaluate(
        "jpeg:quality=40",
        data=f"folder:{lfw_dir / 'images'}",
        attacks=["solid"],
        device="cpu",
        models=models,
        out=tmp_path / "lb",
        **settings,
    )
    cells = json.loads((tmp_path / "lb" / "leaderboard.json").read_text())["cells"]
    assert written.out == str(tmp_path / "lb")
    for ours, theirs in zip(written.rows, [c for c in cells if c["defence"] == jpeg]):
        for key in ("attack", "mode", "rank1", "tar", "auc", "mask_rate", "probes"):
            assert ours[key] == theirs[key], key
    # the same seeded pool and models: the in-memory call gave the same numbers
    for a, b in zip(result.rows, written.rows):
        assert (a["rank1"], a["tar"], a["auc"], a["mask_rate"]) == (b["rank1"], b["tar"], b["auc"], b["mask_rate"])
