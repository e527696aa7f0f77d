"""The raw outputs a run folder keeps beside its report, so that its tables re-derive from its own files.

``mf2m run`` copies every stage output the report reads out of the (git-ignored) cache into the run folder::

    OUT/raw/search/<model>/<method>/  metrics.json, cmc.csv, roc.csv, per_probe.csv, manifest.json
    OUT/raw/attack/<method>/          probes.csv, manifest.json
    OUT/raw/screen/                   screen.json, noise.txt (other datasets' photos of pool people, left out)

``run.json`` names these folders relative to ``OUT``, so ``mf2m report --runs OUT`` on a fresh checkout renders
the same tables.  ``per_probe.csv`` joins the search's per-probe columns (key, identity, source key, exact score
to the best mate, that mate, rank) with the attack's (P(masked), PSNR, SSIM).  Absolute paths of the machine
that ran are rewritten (``benchmark.manifest.portable``: relative to the working directory, ``$PREFIX/…``,
``$TMPDIR/…``) before anything is kept.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from ..atomic import write_json, write_text
from ..manifest import portable, replace_all
from ..safepath import check_name

RAW = "raw"
SEARCH_FILES = ("metrics.json", "cmc.csv", "roc.csv")
ATTACK_COLUMNS = ("p_masked", "psnr", "ssim")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _copy_json(src: Path, dst: Path, renames: dict[str, str] | None = None) -> None:
    """``src`` written to ``dst`` without paths of this machine, each ``renames`` key replaced by its value."""
    record = replace_all(json.loads(src.read_text(encoding="utf-8")), renames or {})
    write_json(dst, portable(record, hide_temp=True))


def keep_attack(out: Path, attack_dir: Path, method: str, renames: dict[str, str] | None = None) -> Path:
    """Copy an attack stage's ``probes.csv`` and ``manifest.json`` to ``OUT/raw/attack/<method>/`` (``renames``:
    strings the manifest must not keep, e.g. data set paths, → their portable names)."""
    dst = out / RAW / "attack" / check_name(method, "method")
    write_text(dst / "probes.csv", (attack_dir / "probes.csv").read_text(encoding="utf-8"))
    _copy_json(attack_dir / "manifest.json", dst / "manifest.json", renames)
    return dst


def keep_search(
    out: Path,
    search_dir: Path,
    method: str,
    model: str,
    attack_dir: Path | None,
    renames: dict[str, str] | None = None,
) -> Path:
    """Copy a search stage's outputs to ``OUT/raw/search/<model>/<method>/`` with the joined ``per_probe.csv``
    (``renames`` as in ``keep_attack``)."""
    dst = out / RAW / "search" / check_name(model, "model") / check_name(method, "method")
    for name in SEARCH_FILES:
        if name.endswith(".json"):
            _copy_json(search_dir / name, dst / name, renames)
        else:
            write_text(dst / name, (search_dir / name).read_text(encoding="utf-8"))
    _copy_json(search_dir / "manifest.json", dst / "manifest.json", renames)
    write_text(dst / "per_probe.csv", per_probe_csv(search_dir / "per_probe.csv", attack_dir))
    return dst


def keep_screen(out: Path, screen_dir: Path) -> Path:
    """Copy the identity screen's ``screen.json`` and ``noise.txt`` (the photos left out) to ``OUT/raw/screen/``."""
    dst = out / RAW / "screen"
    _copy_json(screen_dir / "screen.json", dst / "screen.json")
    write_text(dst / "noise.txt", (screen_dir / "noise.txt").read_text(encoding="utf-8"))
    return dst


def per_probe_csv(search_csv: Path, attack_dir: Path | None) -> str:
    """The search's ``per_probe.csv`` with the attack's P(masked), PSNR and SSIM of each probe (empty for clean ones).

    Attacked images keep the dataset key of their clean image (``attacked.csv``: identity, image path, key);
    the attack's own ``probes.csv`` names them by its key, the image's path under ``images/`` without ``.png``.
    """
    rows = _rows(search_csv)
    by_key: dict[str, dict[str, str]] = {}
    if attack_dir is not None:
        attack = {r["key"]: r for r in _rows(attack_dir / "probes.csv")}
        images = (attack_dir / "images").resolve()
        for r in _rows(attack_dir / "attacked.csv"):
            name = Path(r["path"]).resolve().relative_to(images).as_posix()
            by_key[r["key"]] = attack.get(name[:-4] if name.endswith(".png") else name, {})
    header = list(rows[0].keys()) if rows else ["key"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header + list(ATTACK_COLUMNS))
    for r in rows:
        extra = by_key.get(r["key"], {})
        w.writerow([r[h] for h in header] + [extra.get(c, "") for c in ATTACK_COLUMNS])
    return buf.getvalue()


def relative(path: Path, out: Path) -> str:
    """``path`` relative to the run folder, with forward slashes (what ``run.json`` records)."""
    return Path(os.path.relpath(path, out)).as_posix()
