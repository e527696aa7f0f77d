"""``mf2m transfer``: source × target transferability matrices, one per attack method.

Rows are white-box *source* recognizers (the attack is made against them, with the mask detector),
columns every available *target* recognizer. Each attack runs once per source on one seeded pool
(``mf2m attack``'s Python API, cached and resumable under ``OUT/attacks/<attack>/<source>``) and is
evaluated by every target with the search stage's engine (:func:`.metrics.search_metrics`, the same
protocol as the leaderboard): Rank-1, TAR at the lowest FAR the negatives resolve (1/N_neg) and the
mask detector's mask rate (a property of the attacked images, so one number per attack × source).

Outputs: ``transfer.csv`` (long form), ``transfer.md`` (a matrix per attack and metric),
``plots/transfer_<attack>_<metric>.png`` (heatmaps), ``report.html`` (tables + heatmaps) and
``transfer.json`` (manifest). The pool layout is the leaderboard's (``pool/``, ``aligned_*.npz``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..report.leaderboard import rows_csv
from .defend import AttackSpec, LeaderboardConfig

log = logging.getLogger(__name__)

CSV_FIELDS = (
    "attack",
    "source",
    "target",
    "rank1",
    "tar",
    "far",
    "mask_rate",
    "probes",
    "skipped",
    "positive_pairs",
    "negative_pairs",
)
HEAT_METRICS = (("rank1", "Rank-1"), ("tar", "TAR"))


@dataclass
class TransferConfig:
    """Pool settings (as the leaderboard's), attacks, sources and targets."""

    data: str
    out: str
    attacks: list[AttackSpec]
    sources: list[str] = field(default_factory=lambda: ["sface"])
    targets: list[str] = field(default_factory=list)  # empty: every available recognizer
    mask_detector: str = "mf2m-maskdet"
    identities: int = 10
    max_images: int = 4
    distractors: int = 100
    templates: int = 50
    seed: int = 0
    device: str = "auto"
    batch_size: int = 16

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> TransferConfig:
        """Validate a mapping (unknown keys are errors naming ``source``); attacks as in the leaderboard."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{source}: unknown keys {unknown} (known: {sorted(known)})")
        lb = LeaderboardConfig.from_dict(
            {"data": raw.get("data"), "out": raw.get("out"), "attacks": raw.get("attacks")}, source
        )
        for key in ("sources", "targets"):
            if not isinstance(raw.get(key, []), list) or not all(isinstance(m, str) for m in raw.get(key, [])):
                raise ValueError(f"{source}: {key} must be a list of recognizer names")
        if "sources" in raw and not raw["sources"]:
            raise ValueError(f"{source}: list at least one white-box source recognizer")
        return cls(**{**raw, "attacks": lb.attacks})

    def pool_config(self) -> LeaderboardConfig:
        """The leaderboard config whose pool this run shares."""
        return LeaderboardConfig(
            data=self.data,
            out=self.out,
            attacks=self.attacks,
            defences=[],
            identities=self.identities,
            max_images=self.max_images,
            distractors=self.distractors,
            templates=self.templates,
            seed=self.seed,
            device=self.device,
            batch_size=self.batch_size,
        )


def available_recognizers() -> list[str]:
    """Registry recognizers whose weights and runtime are present (``mf2m models``)."""
    from ..models import registry

    return [s.name for s in registry.list_models("recognizer") if not s.parametric and registry.status(s.name)[0]]


def run_transfer(cfg: TransferConfig, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every attack against every source and evaluate it on every target; write the outputs."""
    from attacks.pipeline import AttackJob, run_attack

    from ..atomic import write_json, write_text
    from ..defences.metrics import mask_rate, search_metrics
    from ..defences.raw import data_record
    from ..device import resolve_device
    from ..manifest import build_manifest, portable, replace_strings
    from ..models.landmarks import DlibLandmarker
    from .defend import _load_attacked, aligned_set, build_pool_files, create_model, slug

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    targets = cfg.targets or available_recognizers()
    if not targets:
        raise ValueError("no target recognizer is available (see `mf2m models`)")
    sources = {name: create_model(name, device) for name in cfg.sources}
    for name, model in sources.items():
        if not model.differentiable:
            raise ValueError(
                f"source {name} is not differentiable: white-box attacks need a gradient "
                "(`mf2m models` lists GRAD=yes models)"
            )
    models = {name: sources.get(name) or create_model(name, device) for name in targets}
    md = create_model(cfg.mask_detector, device)
    files = build_pool_files(cfg.pool_config(), out)
    landmarker = DlibLandmarker()
    keys, ids, clean, skipped_clean = aligned_set(files["probes"], landmarker, out / "aligned_probes.npz")
    _, _, distractors, skipped_dist = aligned_set(files["distractors"], landmarker, out / "aligned_distractors.npz")
    feats = {t: (m.embed(clean), m.embed(distractors)) for t, m in models.items()}
    far = 1.0 / (len(keys) * len(distractors))  # the lowest FAR the negatives resolve
    rows: list[dict[str, Any]] = []

    def cell(attack: str, source: str, images: np.ndarray, idx: list[int], skipped: dict, p_masked) -> None:
        rate = mask_rate(p_masked) if p_masked is not None else None
        for target, model in models.items():
            c_feats, d_feats = feats[target]
            m = search_metrics(
                model.embed(images),
                [keys[i] for i in idx],
                [ids[i] for i in idx],
                c_feats,
                keys,
                ids,
                d_feats,
                far,
                device,
            )
            rows.append(
                {
                    "attack": attack,
                    "source": source,
                    "target": target,
                    "rank1": m["rank1"],
                    "tar": m["tar"],
                    "far": far,
                    "mask_rate": rate,
                    "probes": m["probes"],
                    "skipped": len(skipped),
                    "positive_pairs": m["positive_pairs"],
                    "negative_pairs": m["negative_pairs"],
                }
            )

    cell("clean", "—", clean, list(range(len(keys))), {}, md.p_masked(clean))
    for spec in cfg.attacks:
        for source, fr in sources.items():
            folder = out / "attacks" / slug(spec.name) / slug(source)
            job = AttackJob(
                method=spec.method,
                probes=str(files["probes"]),
                templates=str(files["templates"]),
                out=str(folder),
                device=device,
                batch_size=cfg.batch_size,
                seed=cfg.seed,
                params=dict(spec.params),
            )
            run_attack(job, fr, md, landmarker=landmarker, progress=progress)
            idx, images, skipped = _load_attacked(folder, keys)
            if not idx:
                raise RuntimeError(f"{spec.name} against {source}: no probe was attacked ({len(skipped)} skipped)")
            cell(spec.name, source, images, idx, skipped, md.p_masked(images))
    data = data_record(cfg.data)
    meta = {
        "pool": f"{len(keys)} probes of {len(set(ids))} identities, {len(distractors)} distractors from "
        f"{data['spec']} ({data['items']} images, listing sha256 {data['listing_sha256'][:12]})",
        "far": far,
        "mask_detector": md.name,
        "sources": list(sources),
        "targets": list(models),
    }
    plots = write_heatmaps(rows, out / "plots")
    write_text(out / "transfer.csv", render_csv(rows))
    write_text(out / "transfer.md", render_markdown(rows, meta))
    write_text(out / "report.html", render_html(rows, meta, plots))
    manifest = build_manifest(
        "transfer",
        {**asdict(cfg), "device": device},
        data=data,
        meta=meta,
        cells=rows,
        models={
            "sources": {n: m.identity() for n, m in sources.items()},
            "targets": {n: m.identity() for n, m in models.items()},
            "mask_detector": md.identity(),
        },
        pool={
            "probes": len(keys),
            "probes_skipped": skipped_clean,
            "distractors": len(distractors),
            "distractors_skipped": skipped_dist,
        },
        outputs={
            "csv": "transfer.csv",
            "markdown": "transfer.md",
            "html": "report.html",
            "plots": [str(p.relative_to(out)) for p in plots],
        },
    )
    # the data set's path becomes $DATA/<name> (see .raw.data_record), other paths relative or $TMPDIR/…
    write_json(out / "transfer.json", portable(replace_strings(manifest, cfg.data, data["spec"]), hide_temp=True))
    return {"rows": rows, "meta": meta, "out": str(out), "plots": plots}


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def matrix(rows: list[dict[str, Any]], attack: str, metric: str) -> tuple[list[str], list[str], np.ndarray]:
    """``(sources, targets, values)`` of one attack's metric (NaN where missing)."""
    sel = [r for r in rows if r["attack"] == attack]
    sources = list(dict.fromkeys(r["source"] for r in sel))
    targets = list(dict.fromkeys(r["target"] for r in sel))
    values = np.full((len(sources), len(targets)), np.nan)
    for r in sel:
        if r[metric] is not None:
            values[sources.index(r["source"]), targets.index(r["target"])] = r[metric]
    return sources, targets, values


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"


def render_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """Per attack: a source × target matrix of Rank-1 and of TAR, with each source's mask rate."""
    lines = [
        "# Transferability — source (white-box) × target recognizer",
        "",
        f"Pool: {meta['pool']}. TAR at FAR = {meta['far']:.3g} (the lowest the negatives resolve: "
        f"1 / probe × distractor pairs). Mask rate: {meta['mask_detector']} on the attacked images "
        "(one value per source). The diagonal is white-box; off-diagonal cells are black-box transfer.",
        "",
    ]
    for attack in dict.fromkeys(r["attack"] for r in rows):
        for metric, title in HEAT_METRICS:
            sources, targets, values = matrix(rows, attack, metric)
            rate = {r["source"]: r["mask_rate"] for r in rows if r["attack"] == attack}
            lines += [
                f"## {attack} — {title}",
                "",
                "| source \\ target | " + " | ".join(targets) + " | Mask rate |",
                "|---|" + "---:|" * (len(targets) + 1),
            ]
            for i, s in enumerate(sources):
                lines.append(f"| {s} | " + " | ".join(_fmt(v) for v in values[i]) + f" | {_fmt(rate[s])} |")
            lines.append("")
    return "\n".join(lines)


def render_csv(rows: list[dict[str, Any]]) -> str:
    """Long-form rows (one per attack × source × target)."""
    return rows_csv(rows, CSV_FIELDS)


def write_heatmaps(rows: list[dict[str, Any]], folder: Path) -> list[Path]:
    """One heatmap PNG per attack × metric (rows: sources, columns: targets, values printed in the cells)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..atomic import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for attack in dict.fromkeys(r["attack"] for r in rows if r["attack"] != "clean"):
        for metric, title in HEAT_METRICS:
            sources, targets, values = matrix(rows, attack, metric)
            fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(targets), 1.2 + 0.6 * len(sources)))
            im = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
            ax.set_xticks(range(len(targets)), targets)
            ax.set_yticks(range(len(sources)), sources)
            ax.set_xlabel("target (evaluated by)")
            ax.set_ylabel("source (white-box)")
            ax.set_title(f"{attack}: {title}")
            for i in range(len(sources)):
                for j in range(len(targets)):
                    v = values[i, j]
                    ax.text(
                        j,
                        i,
                        "n/a" if np.isnan(v) else f"{v:.2f}",
                        ha="center",
                        va="center",
                        color="white" if np.isnan(v) or v < 0.6 else "black",
                    )
            fig.colorbar(im, ax=ax)
            fig.tight_layout()
            path = folder / f"transfer_{_safe(attack)}_{metric}.png"
            with atomic_path(path, suffix=".png") as tmp:
                fig.savefig(tmp, format="png", dpi=100)
            plt.close(fig)
            paths.append(path)
    return paths


def _safe(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def render_html(rows: list[dict[str, Any]], meta: dict[str, Any], plots: list[Path]) -> str:
    """A standalone page (the report stage's renderer): the long table and the heatmaps."""
    from ..report.html import render_page
    from ..report.tables import Column, Table

    table = Table(
        "transfer",
        "Transferability: attack × source → target",
        [
            Column("Attack", "attack", "text"),
            Column("Source", "source", "text"),
            Column("Target", "target", "text"),
            Column("Rank-1", "rank1"),
            Column(f"TAR@{meta['far']:.2g}", "tar"),
            Column("Mask rate", "mask_rate"),
            Column("Probes", "probes", "int"),
            Column("Skipped", "skipped", "int"),
        ],
        rows,
        notes=[f"Pool: {meta['pool']}.", "TAR at the lowest FAR the negatives resolve."],
    )
    figs = [(p, p.stem.replace("transfer_", "").replace("_", " ")) for p in plots]
    return render_page("mf2m transferability", [], [table], [("Heatmaps", figs)])
