"""Reading the YAML files of mf2m (experiment configs, leaderboard configs) with clear errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def read_yaml_mapping(path: str | os.PathLike, what: str = "config") -> dict[str, Any]:
    """The top-level mapping of a YAML file; a missing file, invalid YAML or a non-mapping names the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: the {what} must be a mapping")
    return raw
