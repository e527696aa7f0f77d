"""The content-addressed stage cache of the workflows.

Every stage output lives in ``CACHE/<stage>-<key>/`` where ``key`` is the SHA-256 of the stage's
settings, of the fingerprints of its inputs and of the source code that implements the stage
(``benchmark.manifest.code_fingerprint``). A folder whose ``.stage.json`` holds the key is reused; a
folder without one is an interrupted stage and is resumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..manifest import code_fingerprint, sha256_file

log = logging.getLogger(__name__)


def stage_key(stage: str, config: dict[str, Any], inputs: dict[str, str]) -> str:
    """SHA-256 of the stage name, its settings, its inputs' fingerprints and its code (canonical JSON)."""
    blob = json.dumps(
        {"stage": stage, "config": config, "inputs": inputs, "code": code_fingerprint(stage)},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class StageResult:
    """Where a stage's output is, its key and what it produces for the next stages."""

    stage: str
    key: str
    dir: Path
    fingerprint: str  # what downstream keys are built from
    cached: bool
    seconds: float


class Cache:
    """Content-addressed stage folders under one root, with a record of every stage of this run."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.records: list[dict[str, Any]] = []

    def run(
        self,
        stage: str,
        label: str,
        config: dict[str, Any],
        inputs: dict[str, str],
        work: Callable[[Path], None],
        fingerprint_file: str | None = None,
    ) -> StageResult:
        """Reuse ``stage``'s folder for (config, inputs) when complete, else run ``work(folder)`` (resuming)."""
        key = stage_key(stage, config, inputs)
        folder = self.root / f"{stage}-{key[:16]}"
        marker = folder / ".stage.json"
        t0 = time.time()
        cached = False
        if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("key") == key:
            cached = True
            fp = json.loads(marker.read_text(encoding="utf-8"))["fingerprint"]
            log.info("%-8s %-40s cached (%s)", stage, label, folder)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            log.info("%-8s %-40s running → %s", stage, label, folder)
            work(folder)
            fp_src = folder / fingerprint_file if fingerprint_file else None
            fp = sha256_file(fp_src) if fp_src is not None and fp_src.is_file() else key
            write_json(
                marker,
                {
                    "stage": stage,
                    "label": label,
                    "key": key,
                    "config": config,
                    "inputs": inputs,
                    "fingerprint": fp,
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
            )
        res = StageResult(stage, key, folder, fp, cached, round(time.time() - t0, 2))
        self.records.append(
            {"stage": stage, "label": label, "key": key, "dir": str(folder), "cached": cached, "seconds": res.seconds}
        )
        return res
