"""The search stage as a library: feature arrays in, exact MegaFace-protocol metrics out, nothing written.

``evaluate`` runs the same engine, with the same pairing rules, as ``mf2m search``: probes and mates are
paired by identity *name* (one shared code per name), a probe is never paired with the mate that has its
own key (image extensions ignored, as in ``search/identity.py``), every probe × distractor score is a
negative. Rank-1, CMC, TAR@FAR and AUC are therefore those ``mf2m search`` writes to ``metrics.json`` for
the same rows.

Examples::

    >>> result = evaluate(probes=P, mates=M, distractors=D, probe_keys=pk, mate_keys=mk,
    ...                   probe_identities=pid, mate_identities=mid, fars=[1e-4])   # doctest: +SKIP
    >>> result.rank1, result.tar_at_far[1e-4], result.counts["negative_pairs"]     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .defaults import DEFAULT_FARS, DEFAULT_RANKS

__all__ = ["SearchResult", "SearchSettings", "evaluate"]


@dataclass
class SearchSettings:
    """The settings of an in-memory search (the file-free part of ``SearchConfig``)."""

    fars: list[float] = field(default_factory=lambda: list(DEFAULT_FARS))
    ranks: list[int] = field(default_factory=lambda: list(DEFAULT_RANKS))
    roc_per_decade: int = 5
    block_size: int = 8192
    precision: str = "fp32"
    seed: int = 0
    progress: bool = False
    probes: str = "the probes"  # how error messages name the probe set
    mates: str = "the mates"  # … and the mate set


@dataclass
class SearchResult:
    """Metrics of one search; ``metrics`` is the full record (as in ``metrics.json``, without the outputs)."""

    rank1: float
    cmc: dict[int, float]  # rank → identification rate
    tar_at_far: dict[float, float]  # FAR → TAR
    thresholds: dict[float, float]  # FAR → score threshold τ
    auc: float
    counts: dict[str, int]
    genuine_mean: float  # mean score of the positive (probe, mate) pairs
    metrics: dict[str, Any]
    curves: dict[str, Any] = field(repr=False, default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        """Mapping-style access to the fields (``result["rank1"]``)."""
        return getattr(self, name)


def _unit(x: np.ndarray, what: str) -> np.ndarray:
    from benchmark.features import normalize_rows

    return normalize_rows(np.asarray(x), what)


def _aligned(features: np.ndarray, keys: Sequence[str], identities: Sequence[str], role: str) -> None:
    if not (len(features) == len(keys) == len(identities)):
        raise ValueError(
            f"{role}: {len(features)} features, {len(keys)} keys and {len(identities)} identities do not line up"
        )


def evaluate(
    *,
    probes: np.ndarray,
    mates: np.ndarray,
    distractors: np.ndarray,
    probe_keys: Sequence[str],
    mate_keys: Sequence[str],
    probe_identities: Sequence[str],
    mate_identities: Sequence[str],
    fars: Sequence[float] = DEFAULT_FARS,
    ranks: Sequence[int] = DEFAULT_RANKS,
    device: str = "cpu",
    block_size: int = 8192,
    precision: str = "fp32",
) -> SearchResult:
    """Exact rank-1, CMC, TAR@FAR and AUC of probe, mate and distractor feature arrays (rows are features).

    Features are normalised to unit float32 rows (zero or non-finite rows are errors). ``*_identities`` are
    identity names ("" = unknown, never paired); ``*_keys`` name the images, so a probe made from a mate's
    image (same key, extension ignored) is not paired with it. ``device``: ``cpu``, ``cuda``, ``auto``.
    """
    from benchmark.device import resolve_device

    from . import engine
    from .identity import _codes, join_key
    from .run import compute_metrics, resolve_search_precision, roc_grid, stream

    _aligned(probes, probe_keys, probe_identities, "probes")
    _aligned(mates, mate_keys, mate_identities, "mates")
    if not len(distractors):
        raise ValueError("the search protocol needs at least one distractor")
    if not len(probes):
        raise ValueError("no probes")
    device = resolve_device(device)
    settings = SearchSettings(
        fars=[float(f) for f in fars], ranks=[int(r) for r in ranks], block_size=block_size, precision=precision
    )
    p, m, d = _unit(probes, "probes"), _unit(mates, "mates"), _unit(distractors, "distractors")
    p_codes, m_codes, _ = _codes(np.asarray(probe_identities, dtype=str), np.asarray(mate_identities, dtype=str))
    p_keys = np.asarray([join_key(str(k)) for k in probe_keys], dtype=str)
    m_keys = np.asarray([join_key(str(k)) for k in mate_keys], dtype=str)
    n_neg = len(p) * len(d)
    problem = engine.build_problem(
        p,
        p_keys,
        p_codes,
        m,
        m_keys,
        m_codes,
        d,
        roc_grid(n_neg, settings.fars, settings.roc_per_decade),
        [],
        settings.seed,
        0,
    )
    resolved = resolve_search_precision(precision, device)
    part = stream(problem, device, block_size, progress=False, precision=resolved[0])
    metrics, curves = compute_metrics(part, problem, settings, len(p), len(m), device, resolved)
    tar = {float(e["far"]): float(e["tar"]) for e in metrics["tar_at_far"]}
    tau = {float(e["far"]): float(e["threshold"]) for e in metrics["tar_at_far"]}
    cmc = dict(zip(metrics["cmc"]["ranks"], metrics["cmc"]["rates"]))
    return SearchResult(
        rank1=metrics["rank1"],
        cmc=cmc,
        tar_at_far=tar,
        thresholds=tau,
        auc=metrics["auc"],
        counts=dict(metrics["counts"]),
        genuine_mean=float(problem.pos_scores.mean()),
        metrics=metrics,
        curves=curves,
    )
