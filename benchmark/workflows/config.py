"""Experiment configs: the YAML file of ``mf2m run``/``mf2m demo`` read into typed dataclasses.

``load_config`` is the one loader: it validates every section (unknown keys, unknown methods, misspelt
attack hyper-parameters, split sizes) before anything runs and applies ``--set SECTION.KEY=VALUE``
overrides. ``typed_section`` is shared with the ``mf2m defend`` config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DATA_ENV = "MF2M_DATA"
CACHE_ENV = "MF2M_CACHE"
SPLIT_PROTOCOL = 3  # 2: leftover images of probe identities are never distractors or templates;
# 3: templates drawn among non-probe identities, capped by data.template_share, and
#    leftovers removed before the distractor sample (benchmark/data/split.py)


def all_methods(builtin_only: bool = False) -> list[str]:
    """``none`` (the clean probes) and every attack method of the registry (``attacks.list_attacks``)."""
    from attacks import list_attacks

    return ["none", *list_attacks(builtin_only)]


@dataclass
class DataConfig:
    """Where faces come from and how they are split into probes, templates and distractors."""

    spec: str | None = None  # dataset spec (lfw:DIR, folder:DIR, …); None: --data or $MF2M_DATA
    identities: int = 80  # probe identities (the paper: 80 FaceScrub celebrities)
    max_images: int | None = 20  # probe images per identity at most
    min_images: int = 2  # a probe identity needs a mate
    templates: int = 200  # identities held out of the distractors as DM templates (1 image each)
    distractors: int | None = None  # at most this many distractor images (seeded sample); None: all
    seed: int = 0
    detector: str = "dlib-hog"  # face preparation for photos (see `mf2m prepare`)
    template_share: float = 0.1  # templates take at most this share of the non-probe identities
    templates_from: str | None = None  # dataset spec of a separate template folder: the gallery keeps everyone
    strict: bool = False  # a split shortfall (> 10 % of a requested size) is an error (--strict)
    probes_per_identity: int | None = None  # N seeded probes per pool identity, its other pool images the mates
    distractors_from: list[str] = field(default_factory=list)  # dataset specs whose every image is a distractor


@dataclass
class AttackSettings:
    """The white-box models and the methods to run."""

    fr: str = "sface"
    md: str = "mf2m-maskdet"
    methods: list[str] = field(default_factory=lambda: all_methods(builtin_only=True))
    batch_size: int = 16
    mask_colour: str = "blue"
    seed: int = 0
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # method → hyper-parameter overrides
    precision: str = "auto"  # FR+MD forward+backward (auto → float32 until parity is shown)


@dataclass
class EvalSettings:
    """Models the probe sets are evaluated on, and the search settings."""

    models: list[str] = field(default_factory=lambda: ["sface"])
    fars: list[float] = field(default_factory=lambda: [1e-6, 1e-5, 1e-4, 1e-3])
    distractor_sizes: list[int] = field(default_factory=list)
    # MegaFace-style noise lists (keys or photo paths, # comments): left out of every search, e.g. a data
    # set's own label errors that put a pool person among the distractors
    noise_lists: list[str] = field(default_factory=list)
    flip: bool = False
    batch_size: int = 64
    precision: str = "auto"  # embed arithmetic: auto → bf16 on CPUs with bf16 units, fp16 on CUDA


@dataclass
class ReportSettings:
    """What the report shows."""

    far: float = 1e-6
    paper: str = "auto"
    examples: int = 3


@dataclass
class RunConfig:
    """A whole experiment (one YAML file)."""

    name: str
    out: str
    cache: str = ".cache/mf2m"
    store: str | None = None  # stage store: finished attacks and embeddings without images (committable)
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    attack: AttackSettings = field(default_factory=AttackSettings)
    evaluate: EvalSettings = field(default_factory=EvalSettings)
    report: ReportSettings = field(default_factory=ReportSettings)
    source: str = ""  # the YAML file


def typed_section(cls, raw: dict[str, Any] | None, where: str):
    """``cls(**raw)`` with a clear error naming unknown keys."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(raw).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return cls(**raw)


def read_config(path: str | os.PathLike, what: str = "config", overrides: list[str] | None = None) -> dict[str, Any]:
    """The top-level mapping of a YAML config file, with ``--set`` overrides (``SECTION.KEY=VALUE``) applied."""
    from ..yamlfile import read_yaml_mapping

    raw = read_yaml_mapping(Path(path), what)
    for item in overrides or ():
        _apply_override(raw, item, Path(path))
    return raw


def check_attack(method: str, params: dict[str, Any] | None, where: str) -> None:
    """An attack method of the registry with hyper-parameters its class takes (errors name ``where``)."""
    from attacks import ATTACKS, check_params, list_attacks

    if method not in ATTACKS:
        raise ValueError(f"{where}: unknown attack method {method!r}; choose from {', '.join(list_attacks())}")
    check_params(method, params or {}, where)


def load_config(
    path: str | os.PathLike,
    data: str | None = None,
    out: str | None = None,
    device: str | None = None,
    methods: list[str] | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """Read a YAML experiment config into typed dataclasses, with command-line overrides.

    ``overrides`` are ``SECTION.KEY=VALUE`` strings (VALUE parsed as YAML), e.g. ``data.identities=20``
    or ``attack.params={mf2m: {kernel_steps: 80}}``; they are applied before validation.
    """
    path = Path(path)
    raw = read_config(path, "config", overrides)
    sections = {"data": DataConfig, "attack": AttackSettings, "evaluate": EvalSettings, "report": ReportSettings}
    top = {k: v for k, v in raw.items() if k not in sections}
    unknown = sorted(set(top) - {"name", "out", "cache", "store", "device"})
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}")
    cfg = RunConfig(
        name=str(top.get("name") or path.stem),
        out=str(top.get("out") or f"results/{path.stem}"),
        cache=str(os.environ.get(CACHE_ENV) or top.get("cache") or ".cache/mf2m"),
        store=str(top["store"]) if top.get("store") else None,
        device=str(top.get("device") or "auto"),
        **{k: typed_section(c, raw.get(k), f"{path}: {k}") for k, c in sections.items()},
        source=str(path),
    )
    if data:
        cfg.data.spec = data
    cfg.data.spec = cfg.data.spec or os.environ.get(DATA_ENV)
    if out:
        cfg.out = out
    if device:
        cfg.device = device
    if methods:
        cfg.attack.methods = list(methods)
    known = all_methods()
    bad = [m for m in cfg.attack.methods if m not in known]
    if bad:
        raise ValueError(f"{path}: unknown method(s) {', '.join(bad)}; choose from {', '.join(known)}")
    for method, params in cfg.attack.params.items():
        if method not in known or method == "none":
            raise ValueError(f"{path}: attack.params: unknown method {method!r}; choose from {', '.join(known[1:])}")
        check_attack(method, params, f"{path}: attack.params.{method}")
    if not cfg.evaluate.models:
        raise ValueError(f"{path}: evaluate.models is empty")
    if cfg.report.far not in cfg.evaluate.fars:
        raise ValueError(f"{path}: report.far {cfg.report.far:g} is not among evaluate.fars")
    try:
        check_data(cfg.data)
        split_request(cfg.data).check()
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return cfg


def check_data(d: DataConfig) -> None:
    """Types of the ``data:`` keys that ``SplitRequest.check`` does not see (``ValueError`` naming the key)."""
    ppi = d.probes_per_identity
    if ppi is not None and (isinstance(ppi, bool) or not isinstance(ppi, int)):
        raise ValueError(f"data.probes_per_identity must be an integer or null, got {ppi!r}")
    extra = d.distractors_from
    if isinstance(extra, str):
        extra = d.distractors_from = [extra]
    if extra is None:
        extra = d.distractors_from = []
    if not isinstance(extra, list) or not all(isinstance(s, str) and s.strip() for s in extra):
        raise ValueError(f"data.distractors_from must be a list of dataset specs (e.g. [folder:DIR]), got {extra!r}")
    if len(set(extra)) != len(extra):
        raise ValueError(f"data.distractors_from names a dataset twice: {extra!r}")
    if d.spec and d.spec in extra:
        raise ValueError(
            f"data.distractors_from repeats the main dataset {d.spec!r}; its non-probe images are distractors already"
        )


def _apply_override(raw: dict[str, Any], item: str, path: Path) -> None:
    """Set ``raw[section][key]`` (or ``raw[key]``) from one ``--set KEY=VALUE`` string."""
    import yaml

    name, sep, text = item.partition("=")
    parts = name.strip().split(".")
    if not sep or not all(parts) or len(parts) > 2:
        raise ValueError(f"--set {item!r}: expected SECTION.KEY=VALUE (e.g. data.identities=20) or KEY=VALUE")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"--set {item!r}: VALUE is not valid YAML ({exc})") from None
    target = raw
    if len(parts) == 2:
        target = raw.setdefault(parts[0], {})
        if not isinstance(target, dict):
            raise ValueError(f"--set {item!r}: {path} has no section {parts[0]!r}")
    target[parts[-1]] = value


def split_request(d: DataConfig):
    """The split sizes of a ``data:`` section."""
    from ..data.split import SplitRequest

    return SplitRequest(
        identities=d.identities,
        max_images=d.max_images,
        min_images=d.min_images,
        templates=d.templates,
        distractors=d.distractors,
        seed=d.seed,
        template_share=d.template_share,
        probes_per_identity=d.probes_per_identity,
    )
