"""The workflows share one config reader and one attack check: run and defend configs reject the same mistakes."""

from __future__ import annotations

import pytest

from benchmark.workflows.config import read_config
from benchmark.workflows.defend import LeaderboardConfig, load_config


def test_leaderboard_config_rejects_unknown_methods_and_parameters():
    base = {"data": "folder:x", "out": "o"}
    with pytest.raises(ValueError, match=r"attacks\[0\]: unknown attack method 'mf3m'"):
        LeaderboardConfig.from_dict({**base, "attacks": ["mf3m"]})
    with pytest.raises(ValueError, match="did you mean 'kernel_steps'"):
        LeaderboardConfig.from_dict({**base, "attacks": [{"method": "mf2m", "params": {"kernel_step": 3}}]})
    cfg = LeaderboardConfig.from_dict({**base, "attacks": [{"method": "mf2m", "params": {"kernel_steps": 3}}]})
    assert cfg.attacks[0].params == {"kernel_steps": 3}


def test_read_config_applies_set_overrides(tmp_path):
    path = tmp_path / "lb.yaml"
    path.write_text("data: folder:x\nout: o\nattacks: [solid]\nidentities: 4\n")
    raw = read_config(path, "leaderboard config", ["identities=6", "seed=3"])
    assert raw["identities"] == 6 and raw["seed"] == 3 and raw["attacks"] == ["solid"]
    cfg = load_config(path, defences=["jpeg"])
    assert cfg.identities == 4 and cfg.defences == ["jpeg"]
