"""The metrics of one leaderboard cell.

Identification and verification come from the **search stage's engine** (``benchmark.search``): the
leaderboard hands it in-memory feature sets and reads back exactly what ``mf2m search`` reports —
same protocol (docs/protocol.md §2), same exact float64 decisions:

* probes  = the attacked/masked faces (key = the face's key, label = its identity index),
* mates   = the clean faces of the pool (same keys: a probe is never paired with its own original),
* distractors = the gallery faces of other people.

So **Rank-1** = fraction of (probe, clean mate) pairs that no distractor beats, **TAR@FAR** with the
threshold the (⌊FAR·N_neg⌋+1)-th largest probe–distractor score, **AUC** over positive pairs vs
probe–distractor pairs. Only the defence-specific numbers live here: the **mask detection rate**
(fraction of probes with ``p_masked ≥ 0.5``); the clean cost is a difference of two cells
(``leaderboard.add_clean_cost``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _unit(features: np.ndarray, what: str) -> np.ndarray:
    """float32 unit rows (the feature-set loader's normalisation); zero or non-finite rows are errors."""
    from ..features import normalize_rows
    return normalize_rows(features, what)


def search_metrics(probe_feats: np.ndarray, probe_keys: Sequence[str], probe_ids: Sequence[str],
                   mate_feats: np.ndarray, mate_keys: Sequence[str], mate_ids: Sequence[str],
                   distractor_feats: np.ndarray, far: float = 1e-6, device: str = "cpu") -> dict[str, Any]:
    """Rank-1, TAR@``far``, AUC (and counts) of in-memory feature sets, computed by the search engine.

    Identities are any hashable labels (mapped to label indices here); keys pair a probe with its own
    clean original, which is never its mate.
    """
    from ..search import engine
    from ..search.run import SearchConfig, compute_metrics, roc_grid, stream
    if len(probe_feats) != len(probe_keys) or len(probe_keys) != len(probe_ids):
        raise ValueError(f"{len(probe_feats)} probe features, {len(probe_keys)} keys and {len(probe_ids)} "
                         "identities do not line up")
    if len(mate_feats) != len(mate_keys) or len(mate_keys) != len(mate_ids):
        raise ValueError(f"{len(mate_feats)} mate features, {len(mate_keys)} keys and {len(mate_ids)} "
                         "identities do not line up")
    if not len(distractor_feats):
        raise ValueError("the search protocol needs at least one distractor")
    names = {name: i for i, name in enumerate(sorted(set(map(str, probe_ids)) | set(map(str, mate_ids))))}
    probes, mates = _unit(probe_feats, "probes"), _unit(mate_feats, "mates")
    distractors = _unit(distractor_feats, "distractors")
    cfg = SearchConfig(probes="<leaderboard probes>", mates="<leaderboard mates>",
                       distractors="<leaderboard distractors>", out="", fars=[float(far)], ranks=[1],
                       topk=0, device=device, progress=False)
    n_neg = len(probes) * len(distractors)
    problem = engine.build_problem(
        probes, np.asarray(probe_keys, dtype=str), np.array([names[str(s)] for s in probe_ids], np.int64),
        mates, np.asarray(mate_keys, dtype=str), np.array([names[str(s)] for s in mate_ids], np.int64),
        distractors, roc_grid(n_neg, cfg.fars, cfg.roc_per_decade), (), cfg.seed, cfg.topk)
    part = stream(problem, device, cfg.block_size, progress=False)
    metrics, _ = compute_metrics(part, problem, cfg, len(probes), len(mates))
    (tar,) = metrics["tar_at_far"]
    counts = metrics["counts"]
    return {"rank1": metrics["rank1"], "tar": tar["tar"], "threshold": tar["threshold"], "auc": metrics["auc"],
            "far": float(far), "far_resolution": 1.0 / n_neg, "positive_pairs": counts["positive_pairs"],
            "negative_pairs": counts["negative_pairs"], "probes": counts["probes"],
            "auc_max_error": float(metrics["exactness"]["auc_max_error"]),
            "genuine_mean": float(problem.pos_scores.mean()) if problem.n_pos else None}


def mask_rate(p_masked: np.ndarray, threshold: float = 0.5) -> float | None:
    """Fraction of faces the detector calls masked (``None`` for no faces)."""
    p = np.asarray(p_masked, np.float64)
    return float((p >= threshold).mean()) if len(p) else None
