"""The content-addressed stage cache of the workflows.

Every stage output lives in ``CACHE/<stage>-<key>/`` where ``key`` is the SHA-256 of the stage's
settings, of the fingerprints of its inputs and of the source code that implements the stage
(``benchmark.manifest.code_fingerprint``). A folder whose ``.stage.json`` holds the key is reused; a
folder without one is an interrupted stage and is resumed.

A *stage store* (``Cache(root, store=DIR)``) keeps a copy of each finished stage run with ``keep=True``,
without its images and intermediate arrays (``LEFT_OUT``): small enough to commit, so that a long run continues from a
fresh checkout. A stage found only in the store is restored into the cache as a *light* folder; whoever
needs its images calls ``Cache.full``, which runs the stage again in place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..manifest import code_fingerprint, portable, sha256_file

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
    light: bool = False  # restored from the stage store without its images
    rerun: Callable[[], StageResult] | None = field(default=None, repr=False, compare=False)


#: files a stage store leaves out: images, and intermediate arrays (an attack's template bank)
LEFT_OUT = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".npz"})
MARKER = ".stage.json"
#: files whose paths into the cache a store rewrites as ``$CACHE/…`` (and back on restore)
TEXT_SUFFIXES = frozenset({".csv", ".json", ".jsonl", ".txt"})
PLACEHOLDER = b"$CACHE/"


def _marker(folder: Path, key: str) -> dict[str, Any] | None:
    """The finished-stage marker of ``folder`` when it holds ``key``, else None."""
    path = folder / MARKER
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    return record if record.get("key") == key else None


def _copy_light(src: Path, dst: Path, rewrite: Callable[[bytes], bytes]) -> None:
    """Copy ``src`` to ``dst`` without ``LEFT_OUT`` files, text files through ``rewrite``, the marker last (so a
    killed copy is not a finished one); the copy's marker says ``light`` when a file was left out."""
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dropped = False
    for f in sorted(src.rglob("*")):
        if not f.is_file() or f.name == MARKER:
            continue
        if f.suffix.lower() in LEFT_OUT:
            dropped = True
            continue
        target = tmp / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        if f.suffix.lower() in TEXT_SUFFIXES:
            target.write_bytes(rewrite(f.read_bytes()))
        else:
            shutil.copy2(f, target)
    record = json.loads((src / MARKER).read_text(encoding="utf-8"))
    record["light"] = bool(record.get("light")) or dropped
    write_json(tmp / MARKER, record)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


class Cache:
    """Content-addressed stage folders under one root, with a record of every stage of this run.

    ``store``: a folder that keeps a light copy (no images) of every finished stage whose kind is in
    ``run(..., keep=True)``; a stage missing from the cache is restored from it.
    """

    def __init__(
        self, root: str | os.PathLike, store: str | os.PathLike | None = None, renames: dict[str, str] | None = None
    ):
        self.root = Path(root)
        self.store = Path(store) if store else None
        self.renames = dict(renames or {})  # strings the store writes otherwise (the data sets' paths → $DATA/…)
        self.records: list[dict[str, Any]] = []

    def run(
        self,
        stage: str,
        label: str,
        config: dict[str, Any],
        inputs: dict[str, str],
        work: Callable[[Path], None],
        fingerprint_file: str | None = None,
        light_ok: bool = True,
        keep: bool = False,
    ) -> StageResult:
        """Reuse ``stage``'s folder for (config, inputs) when complete, else run ``work(folder)`` (resuming).

        With ``light_ok`` a light folder (or one restored from the store) counts as complete; with ``keep`` the
        finished stage is copied to the store (and looked for there).
        """
        key = stage_key(stage, config, inputs)
        folder = self.root / f"{stage}-{key[:16]}"
        t0 = time.time()
        marker = _marker(folder, key)
        restored = False
        if marker is None and light_ok and keep and self._in_store(folder.name, key):
            _copy_light(self.store / folder.name, folder, self._localize)
            marker, restored = _marker(folder, key), True
            log.info("%-8s %-40s restored from the stage store %s", stage, label, self.store)
        if marker is not None and (light_ok or not marker.get("light")):
            cached = True
            fp = marker["fingerprint"]
            if not restored:
                log.info("%-8s %-40s cached (%s)", stage, label, folder)
        else:
            if marker is not None:  # a light folder, and the images are needed: run the stage again
                shutil.rmtree(folder)
            cached = False
            folder.mkdir(parents=True, exist_ok=True)
            log.info("%-8s %-40s running → %s", stage, label, folder)
            work(folder)
            fp_src = folder / fingerprint_file if fingerprint_file else None
            fp = sha256_file(fp_src) if fp_src is not None and fp_src.is_file() else key
            marker = {
                "stage": stage,
                "label": label,
                "key": key,
                "config": config,
                "inputs": inputs,
                "fingerprint": fp,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": round(time.time() - t0, 1),  # how long the work took (kept in the store)
            }
            write_json(folder / MARKER, marker)
            if self.store is not None and keep:
                _copy_light(folder, self.store / folder.name, self._to_store)
        res = StageResult(
            stage,
            key,
            folder,
            fp,
            cached,
            round(time.time() - t0, 2),
            light=bool(marker.get("light")),
            rerun=lambda: self.run(stage, label, config, inputs, work, fingerprint_file, light_ok=False, keep=keep),
        )
        self.records.append(
            {
                "stage": stage,
                "label": label,
                "key": key,
                "dir": str(folder),
                "cached": cached,
                "seconds": res.seconds,
                **({"restored": True} if restored else {}),
            }
        )
        return res

    def _placehold(self, data: bytes) -> bytes:
        """``data`` with this cache folder's location (absolute, as resolved or not) replaced by ``$CACHE/``."""
        prefixes = {str(self.root.resolve()), os.path.abspath(self.root)}
        for prefix in sorted(prefixes, key=len, reverse=True):
            data = data.replace(prefix.encode() + b"/", PLACEHOLDER)
        return data

    def _to_store(self, data: bytes) -> bytes:
        """A text file as the store keeps it: ``$CACHE/…``, ``renames`` applied, no path of this machine."""
        data = self._placehold(data)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return data
        for old, new in self.renames.items():
            text = text.replace(old, new)
        return portable(text, hide_temp=True).encode("utf-8")

    def _localize(self, data: bytes) -> bytes:
        return data.replace(PLACEHOLDER, str(self.root.resolve()).encode() + b"/")

    def fingerprint(self, path: Path) -> str:
        """SHA-256 of a file the stages wrote, with the cache folder's location replaced by ``$CACHE/``: keys built
        from it do not depend on where the checkout is (what lets a stage store serve a fresh clone)."""
        return hashlib.sha256(self._placehold(path.read_bytes())).hexdigest()

    def _in_store(self, name: str, key: str) -> bool:
        return self.store is not None and _marker(self.store / name, key) is not None

    def full(self, result: StageResult) -> StageResult:
        """``result`` with its images: a light stage runs again in its folder (recorded like any stage)."""
        if not result.light or result.rerun is None:
            return result
        return result.rerun()
