"""``mf2m defend``: every defence × every attack on one probe pool → a leaderboard (CSV, Markdown, JSON).

For each attack the probes are masked/attacked once against the undefended models (*non-adaptive*
cells) and, for adversarial attacks, once more against each defended system (*adaptive* cells: the
attack differentiates through the defence, exactly or through its BPDA/straight-through surrogate).
Every cell is evaluated by the defended recognizer and mask detector; the *clean cost* is the change
of the same metrics on unmasked probes against the undefended system.

Layout of ``out/``::

    pool/probes.csv, distractors.csv, templates.csv   the seeded pool (identity,path,…)
    aligned.npz                                      clean probes + distractors, aligned (cache)
    attacks/<attack>/<defence>/                      ``mf2m attack`` outputs (resumable)
    cells/NN-<defence>-<attack>-<mode>/              each cell's metrics.json and per_probe.csv (see :mod:`.raw`)
    leaderboard.csv, leaderboard.md, leaderboard.html, leaderboard.json (manifest + every cell with its counts)
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..defences.api import Defence, InputTransform, attack_variant, load_defence, looks_random
from ..defences.defended import defend
from ..defences.metrics import mask_rate, search_metrics
from ..defences.raw import data_record, write_cell
from ..manifest import replace_strings
from ..report.leaderboard import add_clean_cost, write_leaderboard_files
from .config import check_attack
from .models import create_model

log = logging.getLogger(__name__)

#: EOT samples against stochastic defences: AutoAttack's randomized-defence setting (Croce & Hein 2020, EOT over 20)
DEFAULT_EOT_SAMPLES = 20


@dataclass
class AttackSpec:
    """One attack of the leaderboard: ``method`` of ``mf2m attack`` with hyper-parameter overrides."""

    name: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    adaptive: bool | list[str] = True  # also run it through each defence (adversarial methods only);
    # a list: only through the defences of these names or tags

    def adaptive_for(self, defence: Defence) -> bool:
        """Whether this attack gets an adaptive cell for ``defence`` (adversarial methods only)."""
        from attacks import is_adversarial

        if not is_adversarial(self.method):
            return False
        if isinstance(self.adaptive, bool):
            return self.adaptive
        return defence.name in self.adaptive or defence.tag in self.adaptive


@dataclass
class LeaderboardConfig:
    """Everything that decides a leaderboard (read from YAML; see configs/defences.yaml)."""

    data: str  # dataset spec of the pool source, e.g. lfw:PATH or folder:PATH
    out: str
    attacks: list[AttackSpec]
    defences: list[str]  # defence specs (the undefended system is always included)
    recognizer: str = "sface"
    mask_detector: str = "mf2m-maskdet"
    identities: int = 10
    max_images: int = 4
    distractors: int = 100
    templates: int = 50
    seed: int = 0
    device: str = "auto"
    batch_size: int = 16
    far: float = 1e-6
    eot_samples: int = DEFAULT_EOT_SAMPLES  # EOT draws per objective in adaptive attacks on stochastic defences

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> LeaderboardConfig:
        """Validate a parsed YAML mapping (unknown keys are errors naming ``source``)."""
        if not isinstance(raw, dict):
            raise ValueError(f"{source}: expected a mapping at the top level")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{source}: unknown keys {unknown} (known: {sorted(known)})")
        for key in ("data", "out"):
            if not raw.get(key):
                raise ValueError(f"{source}: '{key}' is required (or give --{key} on the command line)")
        attacks = []
        for i, a in enumerate(raw.get("attacks") or []):
            a = {"name": a, "method": a} if isinstance(a, str) else dict(a)
            a.setdefault("name", a.get("method"))
            bad = sorted(set(a) - set(AttackSpec.__dataclass_fields__))
            if bad or not a.get("method"):
                raise ValueError(
                    f"{source}: attacks[{i}] needs 'method' (and may have name, params, adaptive); got {a}"
                )
            ad = a.get("adaptive", True)
            if not isinstance(ad, bool) and not (isinstance(ad, list) and all(isinstance(x, str) for x in ad)):
                raise ValueError(
                    f"{source}: attacks[{i}].adaptive must be true, false or a list of defence names, got {ad!r}"
                )
            check_attack(a["method"], a.get("params"), f"{source}: attacks[{i}]")
            attacks.append(AttackSpec(**a))
        if not attacks:
            raise ValueError(f"{source}: list at least one attack under 'attacks'")
        names = [a.name for a in attacks]
        if len(set(names)) != len(names):
            raise ValueError(f"{source}: attack names must be unique, got {names}")
        defences = [str(d) for d in (raw.get("defences") or []) if str(d) != "none"]
        eot = raw.get("eot_samples", DEFAULT_EOT_SAMPLES)
        if isinstance(eot, bool) or not isinstance(eot, int) or eot < 1:
            raise ValueError(f"{source}: eot_samples must be an integer ≥ 1 (1 = no EOT), got {eot!r}")
        return cls(**{**raw, "attacks": attacks, "defences": defences})


def load_config(path: str | Path, **overrides: Any) -> LeaderboardConfig:
    """Read a leaderboard YAML file; non-None ``overrides`` replace its keys (``defences`` are appended)."""
    from .config import read_config

    path = Path(path)
    raw = read_config(path, "leaderboard config")
    extra = overrides.pop("defences", None) or []
    raw = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
    if extra:
        raw["defences"] = list(raw.get("defences") or []) + list(extra)
    return LeaderboardConfig.from_dict(raw, str(path))


# --------------------------------------------------------------------------------------------------
# Models and pool
# --------------------------------------------------------------------------------------------------


def build_pool_files(cfg: LeaderboardConfig, out: Path) -> dict[str, Path]:
    """Write the seeded pool: probes, distractors and DM templates (disjoint, distractors/templates from
    identities outside the probe set) as ``identity,path`` CSVs under ``out/pool``."""
    from ..atomic import write_text
    from ..data.datasets import load_dataset
    from ..data.pool import build_pool, items_csv, write_pool

    dataset = load_dataset(cfg.data)
    pool = build_pool(dataset, cfg.identities, cfg.max_images, cfg.seed, min_images=2)
    rng = np.random.default_rng(cfg.seed + 1)
    rest = [it for it in pool.rest if it.label >= 0]
    need = cfg.distractors + cfg.templates
    if len(rest) < need:
        raise ValueError(
            f"{cfg.data}: {len(rest)} images outside the probe identities, need {need} (distractors + templates)"
        )
    picked = [rest[i] for i in rng.choice(len(rest), size=need, replace=False)]
    dirs = out / "pool"
    write_pool(
        pool, dirs, {"data": cfg.data, "identities": cfg.identities, "max_images": cfg.max_images, "seed": cfg.seed}
    )
    write_text(dirs / "distractors.csv", items_csv(picked[: cfg.distractors]))
    write_text(dirs / "templates.csv", items_csv(picked[cfg.distractors :]))
    return {"probes": dirs / "probes.csv", "distractors": dirs / "distractors.csv", "templates": dirs / "templates.csv"}


def aligned_set(csv_path: Path, landmarker, cache: Path) -> tuple[list[str], list[str], np.ndarray, dict[str, str]]:
    """``(keys, identities, faces, skipped {key: reason})`` of a face CSV, aligned with dlib (cached)."""
    from attacks.templates import aligned_batch, list_faces

    from ..atomic import atomic_path

    items = list_faces(csv_path)
    sig = hashlib.sha256("\n".join(f"{it.key}|{it.path}" for it in items).encode()).hexdigest()
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["signature"]) == sig:
                skipped = dict(zip(z["skipped_keys"].tolist(), z["skipped_reasons"].tolist()))
                return z["keys"].tolist(), z["identities"].tolist(), z["faces"], skipped
    ok, faces, _, failed = aligned_batch(items, landmarker)
    keys, ids = [items[i].key for i in ok], [items[i].identity for i in ok]
    skipped = {items[i].key: reason for i, reason in failed.items()}
    with atomic_path(cache, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            keys=np.array(keys),
            identities=np.array(ids),
            faces=faces,
            signature=np.array(sig),
            skipped_keys=np.array(list(skipped), dtype=str),
            skipped_reasons=np.array(list(skipped.values()), dtype=str),
        )
    return keys, ids, faces, skipped


def slug(text: str) -> str:
    """A folder-safe name for a defence tag (readable prefix + 8 hex digits of its hash)."""
    head = re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:40].strip("_")
    return f"{head}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


# --------------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------------


def evaluate_cell(
    fr,
    md,
    probes: np.ndarray,
    probe_keys: list[str],
    probe_ids: list[str],
    clean: np.ndarray,
    clean_keys: list[str],
    clean_ids: list[str],
    distractors: np.ndarray,
    far: float,
    cache: dict | None = None,
    device: str = "cpu",
    outcomes: bool = False,
) -> dict[str, Any]:
    """Metrics of probe images ``probes`` under ``fr``/``md``: the search stage's Rank-1/TAR/AUC with the
    clean faces as mates and ``distractors`` as the gallery (see :mod:`benchmark.defences.metrics`), plus the mask rate.

    A probe's key equals its clean original's key, so that original is never its mate. ``cache``
    (optional) keeps the clean and distractor features of ``fr`` between cells. ``outcomes``: also
    return the per-probe outcomes (``cell["outcomes"]``, :func:`benchmark.defences.bootstrap.probe_outcomes`) for
    intervals and the per-probe CSV, and the detector's ``cell["p_masked"]``.
    """
    cache = {} if cache is None else cache
    key = (fr.name, fr.weights_hash(), id(clean), id(distractors))
    if key not in cache:
        cache[key] = (fr.embed(clean), fr.embed(distractors))
    clean_feats, dist_feats = cache[key]
    feats = fr.embed(probes)
    cell = search_metrics(feats, probe_keys, probe_ids, clean_feats, clean_keys, clean_ids, dist_feats, far, device)
    p_masked = md.p_masked(probes) if md is not None else None
    cell["mask_rate"] = mask_rate(p_masked) if md is not None else None
    if outcomes:
        from ..defences.bootstrap import probe_outcomes

        cell["outcomes"] = probe_outcomes(
            feats, probe_keys, probe_ids, clean_feats, clean_keys, clean_ids, dist_feats, far, p_masked
        )
        cell["p_masked"] = p_masked
    return cell


# --------------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------------


def _load_attacked(folder: Path, keys: list[str]) -> tuple[list[int], np.ndarray, dict[str, str]]:
    """Rows of ``keys`` the attack finished: ``(indices into keys, images, {key: reason} of the others)``."""
    from attacks.pipeline import read_rows

    from ..data.images import read_image

    rows = read_rows(folder / "rows.jsonl")
    idx, images, skipped = [], [], {}
    for i, key in enumerate(keys):
        row = rows.get(key)
        if row is None or row.get("status") != "ok":
            skipped[key] = row["status"] if row else "missing from the attack output"
            continue
        idx.append(i)
        images.append(read_image(folder / "images" / f"{key}.png"))
    return idx, (np.stack(images) if images else np.zeros((0, 112, 112, 3), np.uint8)), skipped


def run_leaderboard(
    cfg: LeaderboardConfig, progress: bool = True, models: tuple[Any, Any] | None = None, outcomes: dict | None = None
) -> dict[str, Any]:
    """Run (or resume) every attack and evaluate every defence × attack cell; writes the outputs.

    ``models``: ``(recognizer, mask_detector)`` objects to use instead of ``cfg.recognizer`` /
    ``cfg.mask_detector`` (library use with models outside the registry). ``outcomes``: a dict that is
    filled with every cell's per-probe outcomes, keyed ``(defence, attack, mode)`` (for bootstrap intervals).
    """
    from attacks.pipeline import AttackJob, read_rows, run_attack
    from attacks.templates import list_faces

    from ..atomic import write_json
    from ..device import resolve_device
    from ..manifest import build_manifest, portable
    from ..models.landmarks import DlibLandmarker

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    defences: list[Defence | None] = [None] + [load_defence(s) for s in cfg.defences]
    fr, md = (
        models
        if models is not None
        else (create_model(cfg.recognizer, device), create_model(cfg.mask_detector, device))
    )
    systems = {}
    for d in defences:
        name = "none" if d is None else d.tag
        if name in systems:
            raise ValueError(f"defence {name} is listed twice")
        systems[name] = (d, *((fr, md) if d is None else defend(d, fr, md, device)))
    files = build_pool_files(cfg, out)
    landmarker = DlibLandmarker()
    keys, ids, clean, skipped_clean = aligned_set(files["probes"], landmarker, out / "aligned_probes.npz")
    _, _, distractors, skipped_dist = aligned_set(files["distractors"], landmarker, out / "aligned_distractors.npz")
    log.info(
        "pool: %d probes aligned (%d skipped), %d distractors (%d skipped)",
        len(keys),
        len(skipped_clean),
        len(distractors),
        len(skipped_dist),
    )

    def attack(spec: AttackSpec, folder: Path, rec, det, eot: int = 1) -> Path:
        params = {**spec.params, **({"eot_samples": eot} if eot > 1 else {})}
        job = AttackJob(
            method=spec.method,
            probes=str(files["probes"]),
            templates=str(files["templates"]),
            out=str(folder),
            device=device,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            params=params,
        )
        run_attack(job, rec, det, landmarker=landmarker, progress=progress)
        return folder

    stochastic = {
        name: d is not None
        and (d.stochastic or (isinstance(d.impl, InputTransform) and looks_random(d.impl, clean[:4])))
        for name, (d, _, _) in systems.items()
    }
    for name, (d, _, _) in systems.items():
        if stochastic[name] and not d.stochastic:
            log.warning(
                "%s: apply() is not repeatable but the defence does not set stochastic=True; "
                "its adaptive attacks use EOT anyway",
                name,
            )
    cache: dict = {}
    rows: list[dict[str, Any]] = []
    sources = {it.key: it.source for it in list_faces(files["probes"])}  # probe key → the data set's key

    def add(
        defence_name,
        d,
        rec,
        det,
        attack_name,
        mode,
        gradient,
        images,
        idx,
        skipped,
        variant=None,
        eot=None,
        folder=None,
    ):
        if not idx:
            raise RuntimeError(
                f"{attack_name} ({mode}, defence {defence_name}): no probe was attacked "
                f"({len(skipped)} skipped: {_counts(skipped)})"
            )
        cell_keys, cell_ids = [keys[i] for i in idx], [ids[i] for i in idx]
        cell = evaluate_cell(
            rec, det, images, cell_keys, cell_ids, clean, keys, ids, distractors, cfg.far, cache, device, outcomes=True
        )
        if outcomes is not None:
            outcomes[(defence_name, attack_name, mode)] = cell["outcomes"]
        row = {
            "defence": defence_name,
            "kind": d.kind if d else "",
            "attack": attack_name,
            "mode": mode,
            "gradient": gradient,
            "variant": variant,
            "eot_samples": eot,
            "rank1": cell["rank1"],
            "tar": cell["tar"],
            "auc": cell["auc"],
            "mask_rate": cell["mask_rate"],
            "probes": cell["probes"],
            "skipped": len(skipped),
            "positive_pairs": cell["positive_pairs"],
            "negative_pairs": cell["negative_pairs"],
            "far_resolution": cell["far_resolution"],
            "skipped_reasons": _counts(skipped),
        }
        made = (
            read_rows(folder / "rows.jsonl") if folder is not None else {k: {"source": v} for k, v in sources.items()}
        )
        row["raw"] = write_cell(out, len(rows), row, cell_keys, cell_ids, cell["outcomes"], cell["p_masked"], made)
        rows.append(row)

    plain = {}
    for spec in cfg.attacks:
        plain[spec.name] = attack(spec, out / "attacks" / slug(spec.name) / "none", fr, md)
    for name, (d, rec, det) in systems.items():
        all_idx = list(range(len(keys)))
        add(name, d, rec, det, "clean", "—", None, clean, all_idx, {})
        for spec in cfg.attacks:
            idx, images, skipped = _load_attacked(plain[spec.name], keys)
            mode = "undefended" if d is None else "non-adaptive"
            add(name, d, rec, det, spec.name, mode, None, images, idx, skipped, folder=plain[spec.name])
            if d is None or not spec.adaptive_for(d):
                continue
            if not (rec.differentiable and det.differentiable):
                log.warning("%s: adaptive %s skipped (the defended models are not differentiable)", name, spec.name)
                continue
            eot = cfg.eot_samples if stochastic[name] else 1
            folder = attack(
                spec, out / "attacks" / slug(spec.name) / slug(name + (f"+eot{eot}" if eot > 1 else "")), rec, det, eot
            )
            idx, images, skipped = _load_attacked(folder, keys)
            add(
                name,
                d,
                rec,
                det,
                spec.name,
                "adaptive",
                d.gradient,
                images,
                idx,
                skipped,
                attack_variant(d, eot)
                if stochastic[name] == d.stochastic
                else f"{attack_variant(d, 1)} + EOT×{eot} (undeclared randomness)",
                eot,
                folder,
            )
    add_clean_cost(rows)
    data = data_record(cfg.data)
    meta = {
        "recognizer": fr.name,
        "mask_detector": md.name,
        "far": cfg.far,
        "pool": f"{len(keys)} probes of {len(set(ids))} identities, {len(distractors)} distractors from "
        f"{data['spec']} ({data['items']} images, listing sha256 {data['listing_sha256'][:12]})",
        "far_resolution": f"{rows[0]['far_resolution']:.2g}" if rows else None,
    }
    outputs = write_leaderboard_files(out, rows, meta)
    manifest = build_manifest(
        "defend",
        {**asdict(cfg), "device": device},
        data=data,
        models={
            n: {"defence": d.record() if d else None, "fr": r.identity(), "md": m.identity()}
            for n, (d, r, m) in systems.items()
        },
        pool={
            "probes": len(keys),
            "probes_skipped": skipped_clean,
            "distractors": len(distractors),
            "distractors_skipped": skipped_dist,
        },
        meta=meta,
        cells=rows,
        outputs=outputs,
    )
    # meant to be committed: the data set's path becomes $DATA/<name>, other paths relative or $TMPDIR/…
    manifest = replace_strings(manifest, cfg.data, data["spec"])
    write_json(out / "leaderboard.json", portable(manifest, hide_temp=True))
    return {"rows": rows, "meta": meta, "out": str(out)}


def _counts(skipped: dict[str, str]) -> dict[str, int]:
    from collections import Counter

    return dict(
        Counter(str(v).split(":")[0] + (":" + str(v).split(":")[1] if ":" in str(v) else "") for v in skipped.values())
    )
