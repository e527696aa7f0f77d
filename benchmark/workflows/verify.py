"""Verified leaderboard submissions: ``mf2m defend --verify SUBMISSION``.

A submission (YAML, schema ``mf2m.submission.v1``) names a defence, pins the package that provides it
and the SHA-256 of every weight file it loads, states the benchmark settings and the claimed
leaderboard row::

    schema: mf2m.submission.v1
    defence: jpeg:quality=50              # registered name or module:callable, with parameters
    package: {name: mf2m, version: 0.1.0} # the installed distribution must have exactly this version
    weights:                              # files the defence loads (paths relative to this file)
      - {path: weights/my_detector.pt, sha256: 3f1c…}
    benchmark:                            # leaderboard settings (configs/defences.yaml keys, no data/out/seed)
      identities: 8
      max_images: 3
      distractors: 100
      templates: 40
      attacks: [solid]
    claim: {attack: solid, mode: non-adaptive, rank1: 0.92, tar: 0.40, mask_rate: 0.05}
    tolerance: {rank1: 0.02, tar: 0.02, mask_rate: 0.02}   # optional; added to the bootstrap interval

Verification checks the package version and the weight hashes (a mismatch is a *rejected* verdict and
nothing runs), draws the probe pool with a seed chosen at verification time (so a claim cannot be tuned
to one pool), re-runs the claimed cell, and accepts each claimed number when it lies inside the
bootstrap interval over probes (level ``confidence``) widened by its tolerance. The verification
record (``OUT/verification.json``) holds the submission and its hash, the checks, the seed, the measured
numbers with their intervals, and the verdict.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA = "mf2m.submission.v1"
RECORD_SCHEMA = "mf2m.verification.v1"
CLAIM_METRICS = ("rank1", "tar", "mask_rate")
MODES = ("adaptive", "non-adaptive", "undefended", "—")
DEFAULT_TOLERANCE = 0.02  # per metric, on top of the bootstrap interval (platform/rounding differences)
MAX_TOLERANCE = 0.1  # a submission may not widen the interval more than this
KNOWN_KEYS = {"schema", "defence", "package", "weights", "benchmark", "claim", "tolerance", "notes"}


@dataclass
class Submission:
    """A parsed, validated submission file."""

    path: Path
    sha256: str
    defence: str
    package: dict[str, str]
    weights: list[dict[str, str]]
    benchmark: dict[str, Any]
    claim: dict[str, Any]
    tolerance: dict[str, float] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)


def _fail(path: Path, msg: str) -> ValueError:
    return ValueError(f"submission {path}: {msg}")


def _checked_claim(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """The submission's ``claim``: attack, mode and at least one metric in [0, 1]."""
    claim = raw.get("claim")
    if not isinstance(claim, dict) or not claim.get("attack") or claim.get("mode") not in MODES:
        raise _fail(path, f"'claim' needs attack, mode (one of {', '.join(MODES)}) and claimed metrics")
    claimed = [m for m in CLAIM_METRICS if claim.get(m) is not None]
    if not claimed:
        raise _fail(path, f"'claim' states none of {', '.join(CLAIM_METRICS)}")
    for m in claimed:
        if not isinstance(claim[m], (int, float)) or not 0 <= claim[m] <= 1:
            raise _fail(path, f"claim.{m} must be a number in [0, 1], got {claim[m]!r}")
    return claim


def _checked_tolerance(path: Path, raw: dict[str, Any]) -> dict[str, float]:
    """Per-metric tolerances (defaults where not given), each in [0, MAX_TOLERANCE]."""
    tol = raw.get("tolerance") or {}
    if not isinstance(tol, dict) or not set(tol) <= set(CLAIM_METRICS):
        raise _fail(path, f"'tolerance' maps {', '.join(CLAIM_METRICS)} to numbers")
    for m, v in tol.items():
        if not isinstance(v, (int, float)) or not 0 <= v <= MAX_TOLERANCE:
            raise _fail(path, f"tolerance.{m} must be in [0, {MAX_TOLERANCE}], got {v!r}")
    return {m: float(tol.get(m, DEFAULT_TOLERANCE)) for m in CLAIM_METRICS}


def load_submission(path: str | Path) -> Submission:
    """Read and validate a submission YAML (errors name the file and the field)."""
    from ..yamlfile import read_yaml_mapping

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"submission file not found: {path}")
    raw = read_yaml_mapping(path, "submission")
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        raise _fail(path, f"unknown keys {unknown} (known: {sorted(KNOWN_KEYS)})")
    if raw.get("schema") != SCHEMA:
        raise _fail(path, f"schema must be {SCHEMA!r}, got {raw.get('schema')!r}")
    if not isinstance(raw.get("defence"), str) or not raw["defence"].strip():
        raise _fail(path, "'defence' must name the defence (registered name or module:callable, with parameters)")
    pkg = raw.get("package")
    if not isinstance(pkg, dict) or not pkg.get("name") or not pkg.get("version"):
        raise _fail(path, "'package' must give the providing distribution's name and pinned version")
    weights = raw.get("weights") or []
    if not isinstance(weights, list) or not all(
        isinstance(w, dict) and w.get("path") and w.get("sha256") for w in weights
    ):
        raise _fail(path, "'weights' must be a list of {path, sha256}")
    bench = raw.get("benchmark")
    if not isinstance(bench, dict) or not bench.get("attacks"):
        raise _fail(path, "'benchmark' must be a mapping of leaderboard settings with an 'attacks' list")
    for key in ("data", "out", "seed", "defences"):
        if key in bench:
            raise _fail(path, f"benchmark.{key} is set by the verifier, not the submission")
    claim, tol = _checked_claim(path, raw), _checked_tolerance(path, raw)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return Submission(
        path, sha, raw["defence"].strip(), {k: str(v) for k, v in pkg.items()}, weights, bench, claim, tol, raw
    )


def check_package(sub: Submission) -> dict[str, Any]:
    """The pinned distribution's installed version against the submission's pin."""
    from importlib.metadata import PackageNotFoundError, version

    name, pinned = sub.package["name"], sub.package["version"]
    try:
        installed = version(name)
    except PackageNotFoundError:
        installed = None
    ok = installed == pinned
    msg = (
        "ok"
        if ok
        else (
            f"package {name} is not installed"
            if installed is None
            else f"package {name} is {installed}, the submission pins {pinned}"
        )
    )
    return {"name": name, "pinned": pinned, "installed": installed, "ok": ok, "message": msg}


def check_weights(sub: Submission) -> list[dict[str, Any]]:
    """SHA-256 of every listed weight file (paths relative to the submission file) against its pin."""
    from ..manifest import sha256_file

    results = []
    for w in sub.weights:
        path = Path(w["path"])
        path = path if path.is_absolute() else sub.path.parent / path
        actual = sha256_file(path) if path.is_file() else None
        ok = actual == str(w["sha256"]).lower()
        msg = "ok" if ok else ("file not found" if actual is None else "SHA-256 does not match")
        results.append(
            {
                "path": str(w["path"]),
                "resolved": str(path),
                "expected": str(w["sha256"]).lower(),
                "actual": actual,
                "ok": ok,
                "message": msg,
            }
        )
    return results


def compare(
    claim: dict[str, Any], measured: dict[str, dict[str, Any]], tolerance: dict[str, float]
) -> tuple[dict[str, Any], list[str]]:
    """Each claimed metric against ``[low − tol, high + tol]``: ``({metric: result}, reasons for rejection)``."""
    results, reasons = {}, []
    for m in CLAIM_METRICS:
        if claim.get(m) is None:
            continue
        got = measured.get(m) or {}
        lo, hi, tol, c = got.get("low"), got.get("high"), tolerance[m], float(claim[m])
        if lo is None or hi is None:
            results[m] = {"claimed": c, "ok": False, "why": "not measurable on this pool"}
            reasons.append(f"{m}: not measurable on the verification pool")
            continue
        ok = lo - tol <= c <= hi + tol
        direction = "" if ok else ("inflated" if c > hi + tol else "understated")
        results[m] = {
            "claimed": c,
            "measured": got.get("point"),
            "interval": [lo, hi],
            "tolerance": tol,
            "accepted_range": [lo - tol, hi + tol],
            "ok": ok,
            **({"direction": direction} if direction else {}),
        }
        if not ok:
            reasons.append(
                f"{m}: claimed {c:.4f} is outside the accepted range [{lo - tol:.4f}, {hi + tol:.4f}] "
                f"(measured {got.get('point'):.4f}, {got.get('level', 0.95):.0%} bootstrap interval "
                f"[{lo:.4f}, {hi:.4f}] ± tolerance {tol}; {direction})"
            )
    return results, reasons


def verify(
    submission: str | Path,
    data: str,
    out: str | Path,
    seed: int | None = None,
    device: str = "auto",
    confidence: float = 0.95,
    n_boot: int = 2000,
    progress: bool = True,
    models: tuple[Any, Any] | None = None,
) -> dict[str, Any]:
    """Verify a submission: checks, a fresh-seeded re-run of the claimed cell, bootstrap comparison.

    Writes ``OUT/verification.json`` (also when a check rejects the submission before any run) and
    returns the record. ``seed`` is drawn now unless given (give it only to reproduce a record).
    """
    from ..atomic import write_json
    from ..defences.api import load_defence
    from ..defences.bootstrap import bootstrap
    from ..manifest import build_manifest
    from .defend import LeaderboardConfig, run_leaderboard

    sub = load_submission(submission)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed = secrets.randbits(31) if seed is None else int(seed)
    package, weights = check_package(sub), check_weights(sub)
    record: dict[str, Any] = {
        "schema": RECORD_SCHEMA,
        "submission": {"path": str(sub.path), "sha256": sub.sha256, "content": sub.raw},
        "checks": {"package": package, "weights": weights},
        "seed": seed,
        "seed_drawn_at_verification": True,
        "data": data,
        "confidence": confidence,
        "n_boot": n_boot,
        "tolerance": sub.tolerance,
        "claim": sub.claim,
    }
    reasons = ([package["message"]] if not package["ok"] else []) + [
        f"weights {w['path']}: {w['message']}" for w in weights if not w["ok"]
    ]
    if reasons:
        record.update(verdict="rejected", reasons=reasons, measured=None)
        write_json(out / "verification.json", build_manifest("verify", {"submission": str(sub.path)}, **record))
        return record

    defence = load_defence(sub.defence)
    cfg = LeaderboardConfig.from_dict(
        {
            **sub.benchmark,
            "data": data,
            "out": str(out / "run"),
            "seed": seed,
            "device": device,
            "defences": [sub.defence],
        },
        f"{sub.path}: benchmark",
    )
    claim_attack = sub.claim["attack"]
    if claim_attack != "clean":
        cfg.attacks = [a for a in cfg.attacks if a.name == claim_attack]
        if not cfg.attacks:
            raise ValueError(f"submission {sub.path}: claim.attack {claim_attack!r} is not among benchmark.attacks")
    outcomes: dict = {}
    result = run_leaderboard(cfg, progress=progress, models=models, outcomes=outcomes)
    name = "none" if sub.claim["mode"] == "undefended" else defence.tag
    key = (name, claim_attack, "—" if claim_attack == "clean" else sub.claim["mode"])
    if key not in outcomes:
        have = sorted({k for k in outcomes})
        raise ValueError(f"submission {sub.path}: the claimed row {key} was not produced (rows: {have})")
    row = next(r for r in result["rows"] if (r["defence"], r["attack"], r["mode"]) == key)
    measured = bootstrap(outcomes[key], n_boot=n_boot, level=confidence, seed=seed)
    for m in CLAIM_METRICS:  # the engine's point estimate is the number reported
        measured[m]["engine"] = row.get(m)
    results, reasons = compare(sub.claim, measured, sub.tolerance)
    record.update(
        verdict="verified" if not reasons else "rejected",
        reasons=reasons,
        comparison=results,
        measured=measured,
        row={k: v for k, v in row.items() if k != "skipped_reasons"},
        defence=defence.record(),
        defence_digest=defence.digest(),
        models=_model_identities(out / "run" / "leaderboard.json"),
        benchmark=asdict(cfg),
    )
    write_json(out / "verification.json", build_manifest("verify", {"submission": str(sub.path)}, **record))
    return record


def _model_identities(leaderboard_json: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(leaderboard_json.read_text(encoding="utf-8")).get("models", {})
    except (OSError, ValueError):
        return {}


def render_record(record: dict[str, Any]) -> str:
    """A short human-readable summary of a verification record."""
    lines = [
        f"verdict: {record['verdict'].upper()}  (submission {record['submission']['path']}, "
        f"sha256 {record['submission']['sha256'][:12]}…, seed {record['seed']})"
    ]
    pkg = record["checks"]["package"]
    lines.append(f"package {pkg['name']}: pinned {pkg['pinned']}, installed {pkg['installed']} — {pkg['message']}")
    for w in record["checks"]["weights"]:
        lines.append(f"weights {w['path']}: {w['message']}")
    for m, r in (record.get("comparison") or {}).items():
        if "interval" in r:
            lines.append(
                f"{m}: claimed {r['claimed']:.4f}, measured {r['measured']:.4f}, accepted "
                f"[{r['accepted_range'][0]:.4f}, {r['accepted_range'][1]:.4f}] — {'ok' if r['ok'] else 'NO'}"
            )
    lines += [f"reason: {r}" for r in record.get("reasons", [])]
    return "\n".join(lines)
