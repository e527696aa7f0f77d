"""Split a face dataset into probes, DM templates and distractors, and account for every shortfall.

:func:`plan_split` is pure and fast (it reads the file listing, decodes nothing): it picks the probe
pool (:func:`~benchmark.data.pool.build_pool`), then the template identities among the *non-probe*
identities, then the distractors among the identities left, and records why each role got fewer
images than asked for. :func:`account` adds what face preparation lost and returns, per role, the
requested, planned and obtained sizes with their reasons, plus the shortfall warnings.

Template rule (split protocol 3): templates take at most ``template_share`` (default a tenth) of the
non-probe identities, at least one when any were asked for and two non-probe identities exist, and
never the last one — so a folder of a few hundred people keeps most of them in the gallery.
With ``templates_from`` (another dataset) the templates come from there and the gallery keeps every
non-probe identity. Leftover images of probe identities (beyond ``max_images``) are neither templates
nor distractors, and are removed *before* the distractor sample, so ``distractors: N`` gives N.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .datasets import Dataset, Item
from .pool import build_pool

TEMPLATE_SHARE = 0.1  # templates take at most this fraction of the non-probe identities
TOLERANCE = 0.10  # a shortfall beyond this fraction of a requested size is a warning
ROLES = ("probe identities", "probes", "mates", "templates", "distractors")


@dataclass(frozen=True)
class SplitRequest:
    """The sizes a run asks for (the ``data:`` section of a config)."""

    identities: int
    max_images: int | None = 20
    min_images: int = 2
    templates: int = 200
    distractors: int | None = None
    seed: int = 0
    template_share: float = TEMPLATE_SHARE
    probes_per_identity: int | None = None  # None: every pool image is a probe (mates: the other probes)

    def check(self) -> None:
        """Raise ``ValueError`` for sizes that cannot mean anything."""
        if self.probes_per_identity is not None:
            if self.probes_per_identity < 1:
                raise ValueError(f"data.probes_per_identity must be ≥ 1 or null, got {self.probes_per_identity}")
            if self.min_images <= self.probes_per_identity:
                raise ValueError(
                    f"data.min_images ({self.min_images}) must exceed data.probes_per_identity "
                    f"({self.probes_per_identity}) so that every probe identity keeps a mate"
                )
        if self.templates < 0:
            raise ValueError(f"data.templates must be ≥ 0, got {self.templates}")
        if self.distractors is not None and self.distractors < 0:
            raise ValueError(f"data.distractors must be ≥ 0 or null (all), got {self.distractors}")
        if not 0 < self.template_share <= 1:
            raise ValueError(f"data.template_share must be in (0, 1], got {self.template_share}")


@dataclass
class SplitPlan:
    """Items per role chosen from the listing, and why a role got fewer than requested (before preparation)."""

    request: SplitRequest
    probes: list[Item]
    templates: list[Item]
    distractors: list[Item]
    probe_identities: list[str]
    template_identities: list[str]
    excluded: dict[str, int]  # probe identities' leftover images kept out of the gallery
    reasons: dict[str, list[str]] = field(default_factory=dict)
    templates_from: str | None = None  # spec of the template dataset, None: the same dataset
    mates: list[Item] = field(default_factory=list)  # clean mates apart from the probes (probes_per_identity)
    distractors_from: list[str] = field(default_factory=list)  # specs of extra distractor datasets

    def roles(self) -> dict[str, list[Item]]:
        """The image lists written by the split stage (``mates`` only when they are not the probes)."""
        roles = {"probes": self.probes, "templates": self.templates, "distractors": self.distractors}
        if self.mates:
            roles["mates"] = self.mates
        return roles


@dataclass
class RoleCount:
    """Requested, planned (listing) and obtained (after face preparation) sizes of one role."""

    role: str
    requested: int | None  # the config's number (None: all that qualify)
    cap: bool  # requested is an upper bound ("up to"), not a target
    planned: int
    obtained: int
    reasons: list[str]

    def short(self, tolerance: float = TOLERANCE) -> bool:
        """Below the requested target, or below the plan (preparation failures), by more than ``tolerance``."""
        target = self.requested is not None and not self.cap and self.obtained < (1 - tolerance) * self.requested
        lost = self.planned > 0 and self.obtained < (1 - tolerance) * self.planned
        return target or lost

    def text(self) -> str:
        """``templates 29 of 300 requested`` / ``12 probes (up to 12)`` / ``300 distractors``."""
        if self.requested is None:
            base = f"{self.obtained:,} {self.role}"
            return base if self.obtained == self.planned else f"{base} of {self.planned:,} planned"
        if self.cap and self.obtained < self.requested:
            return f"{self.obtained:,} {self.role} (up to {self.requested:,})"
        if self.obtained == self.requested or self.cap:
            return f"{self.obtained:,} {self.role}"
        return f"{self.role} {self.obtained:,} of {self.requested:,} requested"


@dataclass
class SplitAccount:
    """Every role's sizes and reasons, the shortfall warnings, and a one-line summary for captions."""

    roles: list[RoleCount]
    warnings: list[str]

    def role(self, name: str) -> RoleCount:
        """The count of one role (see ``ROLES``)."""
        return next(r for r in self.roles if r.role == name)

    def summary(self) -> str:
        """``Split: 6 probe identities, 12 probes (up to 12), …; templates: capped at …`` (for captions)."""
        parts = []
        for r in self.roles:
            short = r.obtained < (r.planned if r.requested is None or r.cap else r.requested)
            parts.append(r.text() + (f" ({'; '.join(r.reasons)})" if short and r.reasons else ""))
        return "Split: " + ", ".join(parts) + "."

    def to_json(self) -> dict[str, Any]:
        """What ``split.json`` and ``run.json`` record."""
        return {
            "roles": {r.role: {k: v for k, v in asdict(r).items() if k != "role"} for r in self.roles},
            "warnings": list(self.warnings),
            "summary": self.summary(),
            "tolerance": TOLERANCE,
        }

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> SplitAccount:
        """Read back :meth:`to_json`."""
        roles = [RoleCount(role=name, **values) for name, values in record["roles"].items()]
        return cls(roles, list(record.get("warnings", ())))


def template_limit(n_nonprobe: int, requested: int, share: float) -> int:
    """How many template identities the gallery can spare: ⌊share · n⌋, ≥ 1 if asked and n ≥ 2, ≤ n − 1."""
    if requested <= 0 or n_nonprobe < 2:
        return 0
    return min(requested, max(1, math.floor(share * n_nonprobe + 1e-9)), n_nonprobe - 1)


def plan_split(
    dataset: Dataset,
    request: SplitRequest,
    templates_from: Dataset | None = None,
    distractors_from: Sequence[Dataset] = (),
) -> SplitPlan:
    """Choose probes (and mates), templates and distractors from the listing (seeded; nothing is decoded).

    ``probes_per_identity`` N: N images of each pool identity are probes, its other pool images the mates.
    ``distractors_from``: more datasets whose every image joins the gallery (identities named like a probe
    identity are left out and counted; a key also present in the main dataset is an error).
    """
    request.check()
    r = request
    pool = build_pool(dataset, r.identities, r.max_images, r.seed, r.min_images)
    probe_ids = set(pool.identities)
    reasons: dict[str, list[str]] = {role: [] for role in ROLES}
    probes, mates = _probes_and_mates(pool.probes, r, np.random.default_rng(r.seed + 2))
    by_id = Counter(it.identity for it in dataset.items if it.identity in probe_ids)
    if r.max_images is not None:
        few = [n for n in (by_id[i] for i in pool.identities) if n < r.max_images]
        if few:
            reasons["probes"].append(
                f"{len(few)} of the {len(pool.identities)} probe identities have fewer "
                f"than {r.max_images} images (data.max_images)"
            )
    leftovers = [it for it in pool.rest if it.identity in probe_ids]
    rest = [it for it in pool.rest if it.identity not in probe_ids]
    nonprobe_ids = sorted({it.identity for it in rest if it.identity})
    rng = np.random.default_rng(r.seed + 1)
    if templates_from is None:
        n_t = template_limit(len(nonprobe_ids), r.templates, r.template_share)
        if n_t < r.templates:
            reasons["templates"].append(_template_reason(len(nonprobe_ids), r, n_t))
        template_ids = sorted(nonprobe_ids[i] for i in rng.choice(len(nonprobe_ids), size=n_t, replace=False))
        templates = _first_per_identity(rest, set(template_ids))
    else:
        templates, template_ids = _templates_from(templates_from, probe_ids, r, rng, reasons["templates"])
    chosen = set(template_ids) if templates_from is None else set()
    gallery = [it for it in rest if it.identity not in chosen]
    held = len(rest) - len(gallery)
    gallery += _extra_distractors(distractors_from, probe_ids, {it.key for it in dataset.items}, reasons["distractors"])
    distractors = gallery
    if r.distractors is not None and len(gallery) > r.distractors:
        idx = np.sort(rng.choice(len(gallery), size=r.distractors, replace=False))
        distractors = [gallery[i] for i in idx]
    else:  # the gallery is all that is left: say what else took the folder's images
        if held:
            reasons["distractors"].append(f"{len(chosen)} template identities hold {held} images out of the gallery")
        if leftovers:
            reasons["distractors"].append(f"{len(leftovers)} leftover images of probe identities are never distractors")
        if r.distractors is not None and len(gallery) < r.distractors:
            reasons["distractors"].append(f"only {len(gallery)} images are left for the gallery")
    return SplitPlan(
        request=r,
        probes=probes,
        templates=templates,
        distractors=distractors,
        probe_identities=pool.identities,
        template_identities=template_ids,
        excluded={"templates": 0, "distractors": len(leftovers)},
        reasons=reasons,
        templates_from=templates_from.spec if templates_from is not None else None,
        mates=mates,
        distractors_from=[d.spec for d in distractors_from],
    )


def _probes_and_mates(
    pool_items: list[Item], r: SplitRequest, rng: np.random.Generator
) -> tuple[list[Item], list[Item]]:
    """(probes, mates): every pool image a probe (no separate mates), or N seeded probes per identity."""
    if r.probes_per_identity is None:
        return pool_items, []
    by_id: dict[str, list[Item]] = {}
    for it in pool_items:
        by_id.setdefault(it.identity, []).append(it)
    chosen: set[str] = set()
    for name in sorted(by_id):
        items = by_id[name]
        idx = rng.choice(len(items), size=min(r.probes_per_identity, len(items)), replace=False)
        chosen.update(items[i].key for i in idx)
    return [it for it in pool_items if it.key in chosen], [it for it in pool_items if it.key not in chosen]


def _extra_distractors(
    datasets: Sequence[Dataset], probe_ids: set[str], keys: set[str], reasons: list[str]
) -> list[Item]:
    """Every image of ``datasets`` except identities named like a probe identity (counted in ``reasons``)."""
    out: list[Item] = []
    for ds in datasets:
        clash = sorted({it.identity for it in ds.items if it.identity in probe_ids})
        if clash:
            reasons.append(
                f"{len(clash)} identities of {ds.spec} share a name with a probe identity and are "
                f"left out ({', '.join(clash[:3])}{', …' if len(clash) > 3 else ''})"
            )
        for it in ds.items:
            if it.identity in probe_ids:
                continue
            if it.key in keys:
                raise ValueError(
                    f"distractor dataset {ds.spec}: key {it.key!r} is also a key of another dataset "
                    "of the run; keys must be unique across the datasets"
                )
            keys.add(it.key)
            out.append(it)
    return out


def _template_reason(n_nonprobe: int, r: SplitRequest, n_t: int) -> str:
    if n_nonprobe < 2:
        return f"only {n_nonprobe} non-probe identities: none can be spared from the gallery"
    if n_t == n_nonprobe - 1:
        return f"only {n_nonprobe} non-probe identities and the gallery keeps at least one"
    return (
        f"capped at data.template_share = {r.template_share:g} of the {n_nonprobe} non-probe identities so "
        f"that the other {n_nonprobe - n_t} stay in the gallery"
    )


def _first_per_identity(items: list[Item], identities: set[str]) -> list[Item]:
    """The first item (by key order) of each identity in ``identities``."""
    out, seen = [], set()
    for it in items:
        if it.identity in identities and it.identity not in seen:
            out.append(it)
            seen.add(it.identity)
    return out


def _templates_from(
    source: Dataset, probe_ids: set[str], r: SplitRequest, rng: np.random.Generator, reasons: list[str]
) -> tuple[list[Item], list[str]]:
    """Template identities drawn from another dataset (never one named like a probe identity)."""
    names = sorted({it.identity for it in source.items if it.identity})
    clash = [n for n in names if n in probe_ids]
    if clash:
        reasons.append(f"{len(clash)} identities of {source.spec} share a name with a probe identity and are left out")
    names = [n for n in names if n not in probe_ids]
    n_t = min(r.templates, len(names))
    if n_t < r.templates:
        reasons.append(f"{source.spec} has only {len(names)} usable identities")
    ids = sorted(names[i] for i in rng.choice(len(names), size=n_t, replace=False)) if n_t else []
    return _first_per_identity(source.items, set(ids)), ids


def account(
    plan: SplitPlan, failures: Mapping[str, Mapping[str, str]] | None = None, tolerance: float = TOLERANCE
) -> SplitAccount:
    """Requested / planned / obtained per role; ``failures[role][key]`` = why face preparation lost ``key``."""
    failures = failures or {}
    r = plan.request
    kept = {role: [it for it in items if it.key not in failures.get(role, {})] for role, items in plan.roles().items()}
    reasons = {role: list(v) for role, v in plan.reasons.items()}
    for role in ("probes", "templates", "distractors"):
        lost = failures.get(role, {})
        if lost:
            why = ", ".join(f"{k} {n}" for k, n in sorted(Counter(lost.values()).items()))
            reasons[role].append(f"{len(lost)} failed face preparation ({why})")
    kept_ids = Counter(it.identity for it in kept["probes"])
    planned_ids = Counter(it.identity for it in plan.probes)
    gone = len(planned_ids) - len(kept_ids)
    if gone:
        reasons["probe identities"].append(f"{gone} lost every image in face preparation")
    if plan.mates:
        lost = failures.get("mates", {})
        if lost:
            reasons["mates"].append(f"{len(lost)} failed face preparation")
        mates_planned, mates_kept = len(plan.mates), len(kept["mates"])
        mate_ids = {it.identity for it in kept["mates"]}
        lone = sum(1 for i in kept_ids if i not in mate_ids)
        if lone:
            reasons["mates"].append(f"{lone} probe identities have no mate left after face preparation")
    else:
        mates_planned = sum(n for n in planned_ids.values() if n >= 2)
        mates_kept = sum(n for n in kept_ids.values() if n >= 2)
        lone = sum(1 for i, n in kept_ids.items() if n == 1 and planned_ids[i] >= 2)
        if lone:
            reasons["mates"].append(
                f"{lone} probe(s) have no other image of their identity left after face preparation"
            )
    per_identity = r.probes_per_identity if r.probes_per_identity is not None else r.max_images
    cap = None if per_identity is None else r.identities * per_identity
    roles = [
        RoleCount(
            "probe identities", r.identities, False, len(planned_ids), len(kept_ids), reasons["probe identities"]
        ),
        RoleCount("probes", cap, True, len(plan.probes), len(kept["probes"]), reasons["probes"]),
        RoleCount("mates", None, False, mates_planned, mates_kept, reasons["mates"]),
        RoleCount("templates", r.templates, False, len(plan.templates), len(kept["templates"]), reasons["templates"]),
        RoleCount(
            "distractors", r.distractors, False, len(plan.distractors), len(kept["distractors"]), reasons["distractors"]
        ),
    ]
    warnings = [_warning(c, plan) for c in roles if c.short(tolerance)]
    return SplitAccount(roles, warnings)


_HINTS = {
    "templates": "lower data.templates, raise data.template_share, or take templates from another folder "
    "(data.templates_from=DIR) so the gallery keeps every identity",
    "distractors": "use a larger folder, lower data.distractors or data.templates, or set data.templates_from=DIR",
}


def _warning(c: RoleCount, plan: SplitPlan) -> str:
    if c.requested is not None and not c.cap and c.obtained < (1 - TOLERANCE) * c.requested:
        ref, what = c.requested, "requested"
    else:
        ref, what = c.planned, "listed"
    pct = 100 * (1 - c.obtained / ref) if ref else 0
    hint = _HINTS.get(c.role, "see 'skipped' in split.json for the images face preparation lost")
    why = "; ".join(c.reasons) or "no reason recorded"
    return f"split: {c.obtained:,} {c.role} of {ref:,} {what} ({pct:.0f} % short): {why}. To avoid it: {hint}."
