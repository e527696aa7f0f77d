"""The split stage of ``mf2m run``: plan the split from the listings, then prepare (align) and write each role.

Items of one role may come from several datasets (distractors from the main dataset and from
``data.distractors_from``; templates from ``data.templates_from``): face preparation groups items by the
root of the dataset each one comes from, so every dataset has its own prepared-crops folder in the cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_json, write_text
from ..manifest import build_manifest
from .config import SPLIT_PROTOCOL, RunConfig, split_request

log = logging.getLogger("benchmark.workflows.run")

NO_MATE = "no-mate-left"  # a probe whose identity lost every mate in face preparation cannot be scored


@dataclass
class SplitSources:
    """The datasets a split draws from: the main one, the templates' and the extra distractor datasets."""

    main: Any
    templates: Any
    extra: list[Any] = field(default_factory=list)

    def roots(self, plan) -> dict[str, dict[str, str]]:
        """``role → item key → root`` of the dataset each planned item comes from."""
        out = {role: {it.key: self.main.root for it in items} for role, items in plan.roles().items()}
        out["templates"] = {it.key: self.templates.root for it in plan.templates}
        for ds in self.extra:
            mine = {it.path for it in ds.items}
            for it in plan.distractors:
                if it.path in mine:
                    out["distractors"][it.key] = ds.root
        return out


def listing_fingerprint(spec: str) -> tuple[str, Any]:
    """A fingerprint of a dataset's listing (keys, identities, file sizes and mtimes) and the dataset."""
    from ..data.datasets import load_dataset

    dataset = load_dataset(spec)
    h = hashlib.sha256(spec.encode())
    for it in dataset.items:
        try:
            st = os.stat(it.path)
            h.update(f"{it.key}|{it.identity}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{it.key}|{it.identity}|missing\n".encode())
    return h.hexdigest(), dataset


def plan_split_of(cfg: RunConfig, dataset, listing: str) -> tuple[Any, SplitSources, dict[str, str]]:
    """The split plan of ``cfg`` (pure, from the listings), the datasets it draws from, the split stage's inputs.

    Every extra dataset's listing is an input (``distractors.0``, …), so changing one re-keys the split.
    With ``data.strict`` a shortfall of the plan is an error here, before any face is prepared.
    """
    from ..data.split import plan_split

    inputs = {"data": listing}
    templates = dataset
    if cfg.data.templates_from:
        inputs["templates"], templates = listing_fingerprint(cfg.data.templates_from)
    extra = []
    for i, spec in enumerate(cfg.data.distractors_from):
        inputs[f"distractors.{i}"], ds = listing_fingerprint(spec)
        extra.append(ds)
    plan = plan_split(
        dataset, split_request(cfg.data), templates if cfg.data.templates_from else None, distractors_from=extra
    )
    check_split(cfg, None, plan, "before face preparation")
    return plan, SplitSources(dataset, templates, extra), inputs


def check_split(cfg: RunConfig, record: dict[str, Any] | None, plan, when: str) -> dict[str, Any]:
    """The split's accounting (``record``, else the plan's); logs it; raises under ``data.strict``."""
    from ..data.split import SplitAccount, account

    acc = SplitAccount.from_json(record) if record else account(plan)
    final = when.startswith("after")
    if cfg.data.strict and acc.warnings:
        raise ValueError(
            f"--strict (data.strict): the split falls short of what {cfg.source or 'the config'} asks "
            f"for ({when}), so no attack, embedding or search was run:\n  " + "\n  ".join(acc.warnings)
        )
    if final:
        for r in acc.roles:
            log.info("split: %s%s", r.text(), f" ({'; '.join(r.reasons)})" if r.reasons else "")
        for w in acc.warnings:
            log.warning("%s", w)
    return acc.to_json()


def prepare_roles(
    cfg: RunConfig, plan, sources: SplitSources, progress: bool
) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """(``role → key → crop or image path``, ``role → key → failure reason``): photos aligned once per dataset root."""
    from ..data.prepare import PrepareConfig, PrepareItem, prepare_faces

    roles = plan.roles()
    failed: dict[str, dict[str, str]] = {role: {} for role in roles}
    paths = {role: {it.key: it.path for it in items} for role, items in roles.items()}
    root_of = sources.roots(plan)
    by_root: dict[str, list[tuple[str, Any]]] = {}
    for role, items in roles.items():
        for it in items:
            if it.needs_alignment:
                by_root.setdefault(root_of[role][it.key], []).append((role, it))
    for root, group in by_root.items():
        unique = list({it.key: PrepareItem(it.key, it.path, it.identity) for _, it in group}.values())
        prep_dir = Path(cfg.cache) / (
            "prepared-" + hashlib.sha256(f"{root}|{cfg.data.detector}".encode()).hexdigest()[:16]
        )
        prepared = prepare_faces(unique, prep_dir, PrepareConfig(detector=cfg.data.detector), progress=progress)
        ok = {k: str(p) for k, p in zip(prepared.keys, prepared.crop_paths)}
        reasons = {f["key"]: f["reason"] for f in prepared.failures}
        for role, it in group:
            if it.key in ok:
                paths[role][it.key] = ok[it.key]
            else:
                failed[role][it.key] = reasons.get(it.key, "not-prepared")
    if plan.mates:  # a probe identity without any mate left cannot be scored: its probes are dropped
        mate_ids = {it.identity for it in plan.mates if it.key not in failed["mates"]}
        for it in plan.probes:
            if it.identity not in mate_ids and it.key not in failed["probes"]:
                failed["probes"][it.key] = NO_MATE
    return paths, failed


def split_stage(cfg: RunConfig, plan, sources: SplitSources, folder: Path, progress: bool) -> None:
    """Write the planned probes, mates (when separate), templates and distractors as aligned-crop CSVs.

    Every shortfall (plan or preparation) is accounted in ``split.json`` (``accounting``).
    """
    from ..data.split import account

    roles = plan.roles()
    paths, failed = prepare_roles(cfg, plan, sources, progress)
    counts = {}
    for role, items in roles.items():
        kept = [it for it in items if it.key not in failed[role]]
        counts[role] = {
            "listed": len(items),
            "kept": len(kept),
            "identities": len({it.identity for it in kept}),
            "skipped": len(items) - len(kept),
        }
        write_csv(folder / f"{role}.csv", [(it.identity, paths[role][it.key], it.key) for it in kept])
    accounting = account(plan, failed)
    extra = {"distractors_datasets": [ds.describe() for ds in sources.extra]} if sources.extra else {}
    write_json(
        folder / "split.json",
        build_manifest(
            "split",
            {**asdict(cfg.data), "protocol": SPLIT_PROTOCOL},
            dataset=sources.main.describe(),
            templates_dataset=sources.templates.describe() if plan.templates_from else None,
            counts=counts,
            probe_identities=plan.probe_identities,
            template_identities=plan.template_identities,
            skipped=failed,
            excluded_probe_identity_images=plan.excluded,
            accounting=accounting.to_json(),
            **extra,
        ),
    )


def write_csv(path: Path, rows: list[tuple[str, str, str]]) -> None:
    """``identity,path,key,aligned`` rows (aligned crops), readable by ``csv:`` specs and ``mf2m attack``."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["identity", "path", "key", "aligned"])
    w.writerows([(i, str(Path(p).resolve()), k, 1) for i, p, k in rows])
    write_text(path, buf.getvalue())


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV with a header."""
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
