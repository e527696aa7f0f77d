"""The metrics of one leaderboard cell.

Identification and verification come from the **search stage** on arrays (:func:`benchmark.search.evaluate`):
the leaderboard hands it in-memory feature sets and reads back exactly what ``mf2m search`` reports —
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


def _tokens(*labels: Sequence[Any]) -> list[list[str]]:
    """Each label as an opaque token (``str`` of it, then zero-padded rank among the sorted distinct ones).

    Tokens compare and sort like the labels' strings but carry no image extension and are never empty, so
    ``evaluate`` pairs them exactly as given (no extension stripping, no "" = unknown identity).
    """
    texts = [[str(x) for x in group] for group in labels]
    distinct = sorted(set().union(*texts))
    width = len(str(len(distinct)))
    index = {t: f"{i:0{width}d}" for i, t in enumerate(distinct)}
    return [[index[t] for t in group] for group in texts]


def search_metrics(
    probe_feats: np.ndarray,
    probe_keys: Sequence[str],
    probe_ids: Sequence[str],
    mate_feats: np.ndarray,
    mate_keys: Sequence[str],
    mate_ids: Sequence[str],
    distractor_feats: np.ndarray,
    far: float = 1e-6,
    device: str = "cpu",
) -> dict[str, Any]:
    """Rank-1, TAR@``far``, AUC (and counts) of in-memory feature sets, by :func:`benchmark.search.evaluate`.

    Identities are any labels and keys any strings, both compared as given (``str`` of each); keys pair a
    probe with its own clean original, which is never its mate. The search runs in float32 (``fp32``).
    """
    from ..search import evaluate

    p_keys, m_keys = _tokens(probe_keys, mate_keys)
    p_ids, m_ids = _tokens(probe_ids, mate_ids)
    result = evaluate(
        probes=probe_feats,
        mates=mate_feats,
        distractors=distractor_feats,
        probe_keys=p_keys,
        mate_keys=m_keys,
        probe_identities=p_ids,
        mate_identities=m_ids,
        fars=[float(far)],
        ranks=[1],
        device=device,
        precision="fp32",
    )
    counts = result.counts
    return {
        "rank1": result.rank1,
        "tar": result.tar_at_far[float(far)],
        "threshold": result.thresholds[float(far)],
        "auc": result.auc,
        "far": float(far),
        "far_resolution": 1.0 / counts["negative_pairs"],
        "positive_pairs": counts["positive_pairs"],
        "negative_pairs": counts["negative_pairs"],
        "probes": counts["probes"],
        "auc_max_error": float(result.metrics["exactness"]["auc_max_error"]),
        "genuine_mean": result.genuine_mean,
    }


def mask_rate(p_masked: np.ndarray, threshold: float = 0.5) -> float | None:
    """Fraction of faces the detector calls masked (``None`` for no faces)."""
    p = np.asarray(p_masked, np.float64)
    return float((p >= threshold).mean()) if len(p) else None
