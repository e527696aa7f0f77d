"""``mf2m run CONFIG``: split → prepare → attack → embed → search → report, through the stage cache.

Each stage output is a content-addressed folder of the cache (``cache.py``); anything whose inputs
changed gets a new key and is recomputed. ``OUT/run.json`` lists the evaluated probe sets for
``mf2m report`` and records every stage (cached or run, seconds); the outputs the report reads are
copied out of the cache into ``OUT/raw/`` (``benchmark.report.raw``), which ``run.json`` names, so a
committed run folder re-renders its tables without the cache.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..manifest import build_manifest, sha256_file
from ..report import raw
from ..report.collect import RUN_FORMAT
from .cache import Cache, StageResult
from .config import DATA_ENV, SPLIT_PROTOCOL, DataConfig, RunConfig, load_config
from .models import Models
from .overlap import screen_stage, screen_summary
from .splits import check_split, listing_fingerprint, plan_split_of, read_csv, split_stage, write_csv

__all__ = [
    "DATA_ENV",
    "DataConfig",
    "RunConfig",
    "check_split",
    "listing_fingerprint",
    "load_config",
    "plan_split_of",
    "read_csv",
    "run_pipeline",
    "split_stage",
    "write_csv",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------
# stages


def attack_stage(
    cfg: RunConfig, method: str, split_dir: Path, folder: Path, device: str, progress: bool, models: Models
) -> None:
    """``mf2m attack`` on the probe pool, then ``attacked.csv``/``mates.csv`` keyed like the clean probes."""
    from attacks import base_of
    from attacks.pipeline import AttackJob, run_attack
    from attacks.templates import list_faces

    a = cfg.attack
    job = AttackJob(
        method=method,
        probes=str(split_dir / "probes.csv"),
        templates=str(split_dir / "templates.csv") if base_of(method) == "dm" else None,
        out=str(folder),
        fr=a.fr,
        md=a.md,
        device=device,
        batch_size=a.batch_size,
        seed=a.seed,
        params=dict(a.params.get(method, {})),
        mask_colour=a.mask_colour,
        precision=a.precision,
    )
    job.check()
    fr, md = models.get(a.fr), models.get(a.md)
    for model, what in ((fr, "attack.fr"), (md, "attack.md")):
        if not getattr(model, "differentiable", False):
            raise ValueError(f"{what} {model.name} is not differentiable; the attacks need white-box models")
    run_attack(job, fr, md, progress=progress)
    # map the attack's keys (identity/stem) back to the dataset keys of the clean probes
    clean = read_csv(split_dir / "probes.csv")
    by_path = {str(Path(r["path"]).resolve()): r for r in clean}
    key_of = {it.key: by_path[str(Path(it.path).resolve())]["key"] for it in list_faces(split_dir / "probes.csv")}
    rows = [r for r in read_csv(folder / "probes.csv") if r["status"] == "ok"]
    images = folder.resolve() / "images"  # absolute, like the split's paths (keys see them as $CACHE/…)
    attacked = [(r["identity"], str(images / f"{r['key']}.png"), key_of[r["key"]]) for r in rows]
    write_csv(folder / "attacked.csv", attacked)
    present = {r["identity"] for r in rows}
    # mates: the clean images of the identities that still have a probe (labels must index the same names)
    write_csv(folder / "mates.csv", [(r["identity"], r["path"], r["key"]) for r in clean if r["identity"] in present])


def embed_stage(
    cfg: RunConfig, model: str, csv_path: Path, folder: Path, device: str, progress: bool, models: Models
) -> None:
    """``mf2m embed`` of an aligned-crop CSV."""
    from ..embed.engine import EmbedConfig, run_embed

    run_embed(
        EmbedConfig(
            data=f"csv:{csv_path}?aligned=1",
            model=model,
            out=str(folder / "features"),
            flip=cfg.evaluate.flip,
            batch_size=cfg.evaluate.batch_size,
            device=device,
            workers=0,
            precision=cfg.evaluate.precision,
            progress=progress,
        ),
        recognizer=models.get(model),
    )


def search_stage(
    cfg: RunConfig,
    probes: Path,
    mates: Path,
    distractors: Path,
    folder: Path,
    device: str,
    progress: bool,
    noise: list[Path] | None = None,
) -> None:
    """``mf2m search`` of one probe set against its mates and the distractors (less the ``noise`` lists' keys)."""
    from ..search.run import SearchConfig, run_search

    run_search(
        SearchConfig(
            probes=str(probes),
            mates=str(mates),
            distractors=str(distractors),
            out=str(folder),
            fars=list(cfg.evaluate.fars),
            distractor_sizes=list(cfg.evaluate.distractor_sizes),
            device=device,
            seed=cfg.data.seed,
            progress=progress,
            noise_lists=[str(n) for n in noise or ()],
        )
    )


# ---------------------------------------------------------------------------------------------------
# the run


def run_pipeline(
    cfg: RunConfig,
    progress: bool = True,
    model_factory: Callable[[str], Any] | None = None,
    data_warning: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) every stage of ``cfg`` and the report; returns the run record (also ``OUT/run.json``).

    ``model_factory(name)`` creates recognizers and mask detectors (default: the model registry).
    ``data_warning`` (e.g. "these faces are far too few") is stored in the run's setting and shown at the
    top of the report page.
    """
    from ..device import resolve_device
    from ..report.build import ReportOptions, build_report

    if not cfg.data.spec:
        raise ValueError(f"no data: give --data DIR (or set ${DATA_ENV}) or data.spec in {cfg.source}")
    from ..precision import attack_plan, plan

    device = resolve_device(cfg.device)
    # resolved precisions are part of the cache keys: a bf16 result is never reused as a float32 one
    attack_precision = attack_plan(cfg.attack.precision, device).precision
    embed_precision = plan(cfg.evaluate.precision, device).precision
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / raw.RAW, ignore_errors=True)  # derived from the cache: rebuilt below, no stale methods
    names = data_spec_names(cfg)  # data set paths → KIND:$DATA/… in every file meant to be committed
    cache = Cache(cfg.cache, store=cfg.store, renames=names)
    started = time.time()
    listed = noise_lists(cfg)
    listing, dataset = listing_fingerprint(cfg.data.spec)
    plan, sources, inputs = plan_split_of(cfg, dataset, listing)
    split_conf = {k: v for k, v in asdict(cfg.data).items() if k != "strict"}
    split = cache.run(
        "split",
        "probes/templates/distractors",
        {**split_conf, "protocol": SPLIT_PROTOCOL},
        inputs,
        lambda f: split_stage(cfg, plan, sources, f, progress),
    )
    split_record = json.loads((split.dir / "split.json").read_text())
    counts = split_record["counts"]
    accounting = check_split(cfg, split_record.get("accounting"), plan, "after face preparation")
    # an attack reads only the probes and the templates: other split changes do not rerun it
    split_fp = {r: cache.fingerprint(split.dir / f"{r}.csv") for r in ("probes", "templates")}
    separate_mates = (split.dir / "mates.csv").is_file()
    models = Models(model_factory)

    def attack(method: str) -> StageResult:
        a = cfg.attack
        conf = {
            "method": method,
            "fr": models.identity(a.fr),
            "md": models.identity(a.md),
            "seed": a.seed,
            "mask_colour": a.mask_colour,
            "params": a.params.get(method, {}),
            "precision": attack_precision,
        }
        return cache.run(
            "attack",
            method,
            conf,
            split_fp,
            lambda f, m=method: attack_stage(cfg, m, split.dir, f, device, progress, models),
            keep=True,
        )

    def embed(
        model: str, csv_path: Path, label: str, source: StageResult, images: bool = True, keep: bool = True
    ) -> StageResult:
        """Embed ``csv_path`` (written by ``source``; ``images``: its images are ``source``'s own; ``keep``: copy the
        features to the stage store)."""
        conf = {"model": models.identity(model), "flip": cfg.evaluate.flip, "precision": embed_precision}

        def work(folder: Path) -> None:
            if images:
                cache.full(source)  # a stage restored from the store without its images runs again first
            embed_stage(cfg, model, csv_path, folder, device, progress, models)

        return cache.run(
            "embed",
            f"{label} on {model}",
            conf,
            {"csv": cache.fingerprint(csv_path), "from": source.fingerprint},
            work,
            "features/manifest.json",
            keep=keep,
        )

    # every attack, each followed by its embeddings on every model: the costly, stored stages first, so that
    # a run stopped part-way leaves whole methods in the stage store
    methods = [m for m in cfg.attack.methods if m != "none"]
    attacks: dict[str, StageResult] = {}
    attacked: dict[tuple[str, str], tuple[StageResult, StageResult | None]] = {}
    for method in methods:
        att = attacks[method] = attack(method)
        for model in cfg.evaluate.models:
            p = embed(model, att.dir / "attacked.csv", method, att)
            m = None if separate_mates else embed(model, att.dir / "mates.csv", f"mates of {method}", att, images=False)
            attacked[model, method] = (p, m)

    clean, dist, pool_mates = {}, {}, {}
    for model in cfg.evaluate.models:
        clean[model] = embed(model, split.dir / "probes.csv", "clean probes", split)
        # the distractors' features are large and derived from third-party photos: computed in every sitting
        dist[model] = embed(model, split.dir / "distractors.csv", "distractors", split, keep=False)
        # separate mates (data.probes_per_identity): the split's clean mates, one gallery for every method;
        # else each probe set's mates are the clean probes (of the identities an attack kept)
        pool_mates[model] = embed(model, split.dir / "mates.csv", "mates", split) if separate_mates else None
    refs = {m: (pool_mates[m] or clean[m], dist[m]) for m in cfg.evaluate.models}
    screen = identity_screen(cfg, cache, split, refs)
    screened = screen_summary(screen.dir) if screen else None  # read once: every run.json write names it
    if screened:
        log.info("%s", screened)
    noise = ([screen.dir / "noise.txt"] if screen else []) + listed
    listed_summary = noise_summary(listed)
    listed_keys = {f"noise:{n.as_posix()}": sha256_file(n) for n in listed}  # part of every search's key
    if screen:
        raw.keep_screen(out, screen.dir)  # what was left out and why, committed with the run

    entries: list[dict[str, Any]] = []
    image_dirs: dict[Path, Path] = {}  # kept attack folder → its cache folder (the example images)
    for model in cfg.evaluate.models:
        clean_m, dist_m, pool_m = clean[model], dist[model], pool_mates[model]
        for method in cfg.attack.methods:
            if method == "none":
                p, m, attack_dir, attack_model = clean_m, pool_m or clean_m, None, None
            else:
                p, own_mates = attacked[model, method]
                m = pool_m or own_mates
                attack_dir, attack_model = attacks[method].dir, cfg.attack.fr
            conf = {"fars": cfg.evaluate.fars, "sizes": cfg.evaluate.distractor_sizes, "seed": cfg.data.seed}
            s = cache.run(
                "search",
                f"{method} on {model}",
                conf,
                {
                    "probes": p.fingerprint,
                    "mates": m.fingerprint,
                    "distractors": dist_m.fingerprint,
                    **({"noise": screen.fingerprint} if screen else {}),
                    **listed_keys,
                },
                lambda f, p=p, m=m, d=dist_m: search_stage(
                    cfg, p.dir / "features", m.dir / "features", d.dir / "features", f, device, progress, noise
                ),
                "metrics.json",
            )
            kept_attack = raw.keep_attack(out, attack_dir, method, names) if attack_dir else None
            if kept_attack is not None and not attacks[method].light:
                image_dirs[kept_attack.resolve()] = attack_dir
            kept = raw.keep_search(out, s.dir, method, model, attack_dir, names)
            entries.append(
                {
                    "method": method,
                    "attack_model": attack_model,
                    "eval_model": model,
                    "search": raw.relative(kept, out),
                    "attack": raw.relative(kept_attack, out) if kept_attack else None,
                }
            )
            _write_run(
                cfg,
                out,
                entries,
                cache,
                counts,
                started,
                complete=False,
                data_warning=data_warning,
                split=accounting,
                screen=screened,
                noise=listed_summary,
            )
    record = _write_run(
        cfg,
        out,
        entries,
        cache,
        counts,
        started,
        complete=True,
        data_warning=data_warning,
        split=accounting,
        screen=screened,
        noise=listed_summary,
    )
    r = cfg.report
    build_report(
        [str(out)],
        out / "report",
        ReportOptions(
            far=r.far,
            paper=r.paper,
            examples=r.examples,
            title=f"MF²M benchmark — {cfg.name}",
            image_dirs=image_dirs,
            renames=names,
        ),
    )
    ran = sum(not x["cached"] for x in cache.records)
    restored = sum(bool(x.get("restored")) for x in cache.records)
    record["summary"] = (
        f"{len(entries)} probe sets evaluated; {ran} stage(s) run, "
        f"{len(cache.records) - ran} reused from the cache"
        + (f" ({restored} restored from the stage store {cfg.store})" if restored else "")
        + f", {time.time() - started:.0f} s"
    )
    return record


def _write_run(
    cfg: RunConfig,
    out: Path,
    entries: list,
    cache: Cache,
    counts: dict,
    started: float,
    complete: bool,
    data_warning: str | None = None,
    split: dict[str, Any] | None = None,
    screen: str | None = None,
    noise: str | None = None,
) -> dict[str, Any]:
    kind = cfg.data.spec.split(":", 1)[0] if ":" in (cfg.data.spec or "") else "folder"
    setting = {
        "data": cfg.data.spec,
        "data_kind": kind,
        "white_box": cfg.attack.fr,
        "mask_detector": cfg.attack.md,
        "eval_models": ", ".join(cfg.evaluate.models),
        "probe_identities": counts["probes"]["identities"],
        "probe_images": counts["probes"]["kept"],
        "templates": counts["templates"]["kept"],
        "distractors": counts["distractors"]["kept"],
        "device": cfg.device,
    }
    if "mates" in counts:
        setting["mates"] = counts["mates"]["kept"]
    if cfg.data.distractors_from:
        setting["distractors_from"] = ", ".join(cfg.data.distractors_from)
    if data_warning:
        setting["data_warning"] = data_warning
    if split:
        setting["split"] = split["summary"]
        if split["warnings"]:
            setting["split_warnings"] = list(split["warnings"])
    if screen:
        setting["screen"] = screen
    if noise:
        setting["noise_lists"] = noise
    record = build_manifest(
        "run",
        _jsonable(asdict(cfg)),
        format=RUN_FORMAT,
        name=cfg.name,
        setting=setting,
        entries=entries,
        stages=cache.records,
        complete=complete,
        seconds=round(time.time() - started, 1),
        split=split,
    )
    record = raw.portable(data_paths_portable(record, cfg))  # no path of this machine in a file meant to be committed
    write_json(out / "run.json", record)
    return record


def noise_lists(cfg: RunConfig) -> list[Path]:
    """``evaluate.noise_lists`` as paths, each checked to exist before any stage runs."""
    paths = [Path(p) for p in cfg.evaluate.noise_lists]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"evaluate.noise_lists: not found: {', '.join(missing)} (paths are relative to {Path.cwd()})"
        )
    return paths


def noise_summary(paths: list[Path]) -> str | None:
    """What the noise lists leave out, for run.json and the table captions."""
    if not paths:
        return None
    from ..features.sets import read_lines

    parts = [f"{p.as_posix()} ({len(read_lines(p))} entries)" for p in paths]
    return "Noise lists (left out of every search): " + ", ".join(parts)


def identity_screen(
    cfg: RunConfig, cache: Cache, split: StageResult, refs: dict[str, tuple[StageResult, StageResult]]
) -> StageResult | None:
    """The screen stage (None without other datasets): distractors of other datasets may hold pool people under
    other names; found on the clean features, ``refs``: model → (mates stage, distractors stage)."""
    if not cfg.data.distractors_from:
        return None
    return cache.run(
        "screen",
        "pool people among other datasets",
        {"models": sorted(refs)},
        {f"{m}:{role}": s.fingerprint for m, pair in refs.items() for role, s in zip(("mates", "dist"), pair)},
        lambda f: screen_stage(
            split.dir,
            {m: a.dir / "features" for m, (a, _) in refs.items()},
            {m: b.dir / "features" for m, (_, b) in refs.items()},
            f,
        ),
        "noise.txt",
    )


def data_spec_names(cfg: RunConfig) -> dict[str, str]:
    """Every dataset spec of ``cfg`` → its portable form ``KIND:$DATA/…``: ``$DATA`` is the folder that holds the
    main data set (``lfw:/data/lfw`` → ``lfw:$DATA/lfw``; ``folder:/data/celeba/images`` →
    ``folder:$DATA/celeba/images``); a data set outside it keeps only its folder name. Longest spec first."""
    from ..data.datasets import parse_spec

    specs = [s for s in (cfg.data.spec, cfg.data.templates_from, *cfg.data.distractors_from) if s]
    if not specs:
        return {}
    data_root = parse_spec(specs[0])[1].resolve().parent
    names = {}
    for spec in sorted(set(specs), key=len, reverse=True):
        kind, path, options = parse_spec(spec)
        where = path.resolve()
        rel = where.relative_to(data_root).as_posix() if where.is_relative_to(data_root) else where.name
        query = ("?" + "&".join(f"{k}={v}" for k, v in sorted(options.items()))) if options else ""
        names[spec] = f"{kind}:$DATA/{rel}{query}"
    return names


def data_paths_portable(record: dict[str, Any], cfg: RunConfig) -> dict[str, Any]:
    """``record`` with every dataset spec of ``cfg`` in its portable form (``data_spec_names``)."""
    from ..manifest import replace_all

    return replace_all(record, data_spec_names(cfg))


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
