"""Gather what the report shows from stage outputs — manifests, ``metrics.json`` and CSV files only.

Nothing is recomputed here: rank-1, TAR and AUC come from a search stage's ``metrics.json``; the
mask detection rate and PSNR/SSIM are averages of the per-probe columns of an attack stage's
``probes.csv``.

A *run* directory (what ``mf2m run`` writes) holds ``run.json``::

    {"format": "mf2m.run.v1", "name": ..., "setting": {...},
     "entries": [{"method": "mf2m", "attack_model": "sface", "eval_model": "dlib",
                  "search": "<dir relative to the run>", "attack": "<dir or null>"}, ...]}

A plain search output (a directory with ``metrics.json``) or a directory of them is accepted too;
its method is the directory name (or ``LABEL=DIR`` on the command line).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RUN_FORMAT = "mf2m.run.v1"


@dataclass
class Entry:
    """One evaluated probe set: a method, the model it was attacked on and the model it was evaluated on."""

    method: str
    eval_model: str
    attack_model: str | None = None
    search_dir: Path | None = None
    attack_dir: Path | None = None
    run: str = ""  # name of the run it came from
    setting: dict[str, Any] = field(default_factory=dict)

    @property
    def white_box(self) -> bool:
        """True when the probes were attacked on the model that evaluates them (or not attacked at all)."""
        return self.attack_model is None or self.attack_model == self.eval_model


@dataclass
class Metrics:
    """The numbers of one entry (``None`` where the stage output does not exist or lacks them)."""

    rank1: float | None = None
    tar: dict[float, float] = field(default_factory=dict)  # far → tar
    thresholds: dict[float, float] = field(default_factory=dict)
    auc: float | None = None
    counts: dict[str, int] = field(default_factory=dict)
    mask_rate: float | None = None
    psnr: float | None = None
    ssim: float | None = None
    reference: str | None = None  # what PSNR/SSIM were measured against (dm or solid)
    attacked: int | None = None  # probes the attack wrote (status ok)
    attack_skipped: int | None = None
    identical: int = 0  # probes with PSNR = inf (unchanged image), left out of the mean
    sweep: list[dict[str, float]] = field(default_factory=list)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # "rank1", "tar@FAR", "mask_rate"
    interval_note: str = ""  # how the intervals were obtained (for table notes)

    def tar_at(self, far: float) -> float | None:
        """TAR at ``far`` (matched with a relative tolerance of 1e-6), or None."""
        for f, t in self.tar.items():
            if math.isclose(f, far, rel_tol=1e-6):
                return t
        return None


def model_groups(items: list[tuple[Entry, Metrics]]) -> dict[tuple[str, str | None], list[tuple[Entry, Metrics]]]:
    """Entries by (evaluation model, attack model of a black-box entry or None), sorted: one group per table or
    plot. The unmasked probes of a model join every group of that model (their own only when it has no other)."""
    groups: dict[tuple[str, str | None], list[tuple[Entry, Metrics]]] = {}
    for e, m in items:
        if e.method != "none" or not e.white_box:
            groups.setdefault((e.eval_model, None if e.white_box else e.attack_model), []).append((e, m))
    for e, m in items:
        if e.method == "none" and e.white_box:
            for k in [k for k in groups if k[0] == e.eval_model] or [(e.eval_model, None)]:
                groups.setdefault(k, []).append((e, m))
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")))


def read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON file, naming it in the error when it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def discover(spec: str) -> list[Entry]:
    """Entries of one ``--runs`` argument: ``[LABEL=]DIR`` (a run, a search output, or a folder of them)."""
    label, sep, path = spec.partition("=")
    if not sep:
        label, path = "", spec
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"--runs: {root} is not a directory")
    if (root / "run.json").is_file():
        return entries_of_run(root)
    if (root / "metrics.json").is_file():
        return [_search_entry(root, label or root.name)]
    found = sorted(p.parent for p in root.glob("*/metrics.json"))
    if not found:
        raise FileNotFoundError(f"--runs: {root} holds no run.json, metrics.json or */metrics.json")
    return [_search_entry(d, d.name) for d in found]


def entries_of_run(root: Path) -> list[Entry]:
    """The entries listed by ``root/run.json``, with paths resolved against ``root``."""
    run = read_json(root / "run.json")
    if run.get("format") != RUN_FORMAT:
        raise ValueError(f"{root / 'run.json'}: format is {run.get('format')!r}, expected {RUN_FORMAT!r}")
    out = []
    for e in run.get("entries", []):
        out.append(
            Entry(
                method=e["method"],
                eval_model=e["eval_model"],
                attack_model=e.get("attack_model"),
                search_dir=(root / e["search"]) if e.get("search") else None,
                attack_dir=(root / e["attack"]) if e.get("attack") else None,
                run=run.get("name", root.name),
                setting=run.get("setting", {}),
            )
        )
    return out


def _search_entry(directory: Path, label: str) -> Entry:
    model = "model"
    manifest = directory / "manifest.json"
    if manifest.is_file():
        m = read_json(manifest)
        model = (m.get("models") or {}).get("probes") or m.get("model") or (m.get("config") or {}).get("model") or model
    return Entry(method=label, eval_model=str(model), search_dir=directory, run=directory.name)


def load_metrics(entry: Entry) -> Metrics:
    """Read the entry's ``metrics.json`` and attack ``probes.csv`` (either may be absent)."""
    m = Metrics()
    if entry.search_dir is not None and (entry.search_dir / "metrics.json").is_file():
        path = entry.search_dir / "metrics.json"
        data = read_json(path)
        try:
            m.rank1 = float(data["rank1"])
            m.auc = float(data["auc"])
            for row in data.get("tar_at_far", []):
                m.tar[float(row["far"])] = float(row["tar"])
                if row.get("threshold") is not None:
                    m.thresholds[float(row["far"])] = float(row["threshold"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: missing or malformed field {exc}") from None
        m.counts = {k: int(v) for k, v in (data.get("counts") or {}).items() if isinstance(v, (int, float))}
        m.sweep = _sweep(data)
        _intervals(data.get("bootstrap"), m)
    if entry.attack_dir is not None and (entry.attack_dir / "probes.csv").is_file():
        _attack_stats(entry.attack_dir / "probes.csv", m)
    return m


def _intervals(boot: Any, m: Metrics) -> None:
    """The search stage's bootstrap intervals (``metrics.json`` ``bootstrap``), when it wrote them."""
    if not isinstance(boot, dict) or not boot.get("rank1"):
        return
    m.intervals["rank1"] = tuple(boot["rank1"])
    for row in boot.get("tar_at_far", []):
        if row.get("tar"):
            m.intervals[f"tar@{float(row['far']):g}"] = tuple(row["tar"])
    m.interval_note = (
        f"[lo, hi]: {100 * boot.get('level', 0.95):g} % bootstrap interval, {boot.get('replicates')} "
        f"replicates resampling the {boot.get('clusters')} probe identities"
    )


def _sweep(data: dict[str, Any]) -> list[dict[str, float]]:
    """Rank-1 per distractor-set size, from whichever key the search stage used for its sweep."""
    raw = data.get("distractor_sweep")
    if isinstance(raw, dict):  # the search stage's form: {"seed": ..., "sizes": [...]}
        raw = raw.get("sizes")
    if not isinstance(raw, list):
        return []
    out = []
    for row in raw:
        if not isinstance(row, dict):
            continue
        size = next((row[k] for k in ("distractors", "size", "n_distractors") if k in row), None)
        if size is not None and row.get("rank1") is not None:
            out.append({"distractors": float(size), "rank1": float(row["rank1"])})
    return sorted(out, key=lambda r: r["distractors"])


def _attack_stats(path: Path, m: Metrics) -> None:
    """Mask detection rate (P(masked) > 0.5) and mean PSNR/SSIM over the probes the attack wrote."""
    rows = read_csv_rows(path)
    ok = [r for r in rows if r.get("status") == "ok"]
    m.attacked, m.attack_skipped = len(ok), len(rows) - len(ok)
    scored = [r for r in ok if r.get("p_masked") not in (None, "")]
    p = [float(r["p_masked"]) for r in scored]
    m.mask_rate = sum(v > 0.5 for v in p) / len(p) if p else None
    if p and all(r.get("identity") for r in scored):
        from ..search.bootstrap import mean_interval

        m.intervals["mask_rate"] = mean_interval([v > 0.5 for v in p], [r["identity"] for r in scored])
    psnr = [float(r["psnr"]) for r in ok if r.get("psnr") not in (None, "")]
    ssim = [float(r["ssim"]) for r in ok if r.get("ssim") not in (None, "")]
    finite = [v for v in psnr if math.isfinite(v)]
    m.identical = len(psnr) - len(finite)
    m.psnr = sum(finite) / len(finite) if finite else None
    m.ssim = sum(ssim) / len(ssim) if ssim else None
    refs = {r.get("reference") for r in ok if r.get("reference")}
    m.reference = refs.pop() if len(refs) == 1 else None


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file with a header, as dicts (clear error naming the file when it has no header)."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames:
            raise ValueError(f"{path}: empty CSV (no header)")
        return list(reader)


def read_curve(path: Path, x_names: tuple[str, ...], y_names: tuple[str, ...]) -> tuple[list[float], list[float]]:
    """Two numeric columns of a curve CSV, found by the first matching header name (case-insensitive)."""
    rows = read_csv_rows(path)
    if not rows:
        return [], []
    header = {h.lower().strip(): h for h in rows[0]}
    xs = next((header[n] for n in x_names if n in header), None)
    ys = next((header[n] for n in y_names if n in header), None)
    if xs is None or ys is None:
        raise ValueError(f"{path}: expected columns {x_names[0]!r} and {y_names[0]!r}, found {list(rows[0])}")
    x, y = [], []
    for r in rows:
        if r[xs] in ("", None) or r[ys] in ("", None):
            continue
        x.append(float(r[xs]))
        y.append(float(r[ys]))
    return x, y
