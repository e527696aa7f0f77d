"""``mf2m attack --eot-samples``: recorded in the manifest, validated, and the same attack on deterministic models.

Uses the real registry models (SFace, the shipped mask detector) on insightface's shipped aligned sample face
(no ../shared needed).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest

from benchmark.data.images import read_image, write_png


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> Path:
    """probes/hanks/hanks_1.png: insightface's shipped 112×112 aligned face."""
    root = tmp_path_factory.mktemp("eot_cli")
    images = Path(list(importlib.util.find_spec("insightface").submodule_search_locations)[0]) / "data" / "images"
    write_png(root / "probes" / "hanks" / "hanks_1.png", read_image(images / "Tom_Hanks_54745.png"))
    return root / "probes"


def test_attack_cli_eot_samples(probes, tmp_path, capsys, caplog):
    """--eot-samples N reaches the attack (manifest), warns that the registry models are deterministic, and gives
    the same images as no EOT there (the mean of N identical objectives has the same gradient)."""
    from benchmark.cli import main

    common = ["attack", "--method", "fgsm", "--probes", str(probes), "--no-progress", "--device", "cpu"]
    with caplog.at_level(logging.WARNING):
        assert main(common + ["--out", str(tmp_path / "eot"), "--eot-samples", "3"]) in (0, None)
    assert "identical outputs on repeated passes" in caplog.text and "--eot-samples 3" in caplog.text
    manifest = json.loads((tmp_path / "eot" / "manifest.json").read_text())
    assert manifest["summary"]["attack_config"]["eot_samples"] == 3
    assert manifest["config"]["params"] == {"eot_samples": 3}
    assert main(common + ["--out", str(tmp_path / "plain")]) in (0, None)
    plain = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    assert "eot_samples" not in plain["summary"]["attack_config"]
    png = Path("images") / "hanks" / "hanks_1.png"
    assert (tmp_path / "eot" / png).read_bytes() == (tmp_path / "plain" / png).read_bytes()


def test_attack_cli_eot_samples_errors_and_help(probes, tmp_path, capsys):
    """0 draws and plain masks are refused before any model loads; --help documents the option."""
    from benchmark.cli import main

    base = ["attack", "--probes", str(probes), "--out", str(tmp_path / "o")]
    assert main(base + ["--method", "fgsm", "--eot-samples", "0"]) == 1
    assert "--eot-samples must be ≥ 1" in capsys.readouterr().err
    assert main(base + ["--method", "solid", "--eot-samples", "2"]) == 1
    assert "plain mask" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        main(["attack", "--help"])
    help_text = capsys.readouterr().out
    assert "--eot-samples" in help_text and "Expectation over Transformation" in help_text


def test_run_config_takes_eot_samples_per_method(tmp_path):
    """In a `mf2m run` config, attack.params.<method>.eot_samples is accepted; a bad value fails at load time."""
    import yaml

    from benchmark.workflows.config import load_config

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "demo.yaml").read_text())
    raw.setdefault("attack", {})["params"] = {"advnoise-dm": {"steps": 2, "eot_samples": 4}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(str(path), data="folder:x")
    assert cfg.attack.params["advnoise-dm"]["eot_samples"] == 4
    raw["attack"]["params"] = {"advnoise-dm": {"eot_sample": 4}}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="did you mean 'eot_samples'"):
        load_config(str(path), data="folder:x")
