"""The metrics of one leaderboard cell (brute force, for probe pools of up to a few thousand faces).

Protocol (MegaFace-style, as in the paper): every probe ``i`` (masked/attacked) is compared with the
gallery = the distractors + the clean images of the pool except its own clean original.

* **Rank-1**: over all (probe ``i``, mate ``j``) pairs — ``j`` a clean image of the same identity,
  ``j ≠ i`` — the fraction where the mate scores strictly higher than every gallery face of another
  identity (ties count as misses).
* **TAR@FAR**: genuine scores are the (probe, mate) cosines, impostor scores the (probe, other
  identity) cosines; the threshold lets at most ``floor(far · n_impostors)`` impostors through and
  TAR is the fraction of genuine scores strictly above it. With fewer than ``1/far`` impostors this
  is TAR at the largest impostor score; ``far_resolution`` (``1/n_impostors``) says how fine it is.
* **AUC**: ROC AUC of genuine vs impostor scores (scikit-learn).
* **mask rate**: the fraction of probes with ``p_masked ≥ 0.5``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> tuple[float, float]:
    """``(TAR, threshold)``: the fraction of ``genuine`` above the threshold admitting ≤ ``far`` of ``impostor``."""
    genuine, impostor = np.asarray(genuine, np.float64), np.asarray(impostor, np.float64)
    if not len(genuine) or not len(impostor):
        raise ValueError("TAR@FAR needs genuine and impostor scores")
    allowed = int(np.floor(far * len(impostor)))
    ordered = np.sort(impostor)[::-1]
    threshold = float(ordered[min(allowed, len(ordered) - 1)])
    return float((genuine > threshold).mean()), threshold


def identification_verification(probe_feats: np.ndarray, probe_ids: Sequence[str], clean_feats: np.ndarray,
                                 distractor_feats: np.ndarray, far: float = 1e-6) -> dict[str, Any]:
    """Rank-1, TAR@``far`` and AUC of probes (row ``i`` of ``probe_feats`` is a version of clean row ``i``)."""
    from sklearn.metrics import roc_auc_score
    probe_feats = np.asarray(probe_feats, np.float32)
    clean_feats = np.asarray(clean_feats, np.float32)
    ids = np.asarray(probe_ids)
    if probe_feats.shape != clean_feats.shape or len(ids) != len(probe_feats):
        raise ValueError(f"probe features {probe_feats.shape}, clean features {clean_feats.shape} and "
                         f"{len(ids)} identities do not line up")
    n = len(ids)
    s_clean = probe_feats @ clean_feats.T                                # (n, n)
    s_dist = probe_feats @ np.asarray(distractor_feats, np.float32).T    # (n, m)
    same = ids[:, None] == ids[None, :]
    mate = same & ~np.eye(n, dtype=bool)
    other = ~same
    best_other = np.max(np.where(other, s_clean, -np.inf), axis=1)
    if s_dist.shape[1]:
        best_other = np.maximum(best_other, s_dist.max(axis=1))
    hits = (s_clean > best_other[:, None]) & mate
    n_pairs = int(mate.sum())
    if not n_pairs:
        raise ValueError("no probe has a mate (another image of its identity): need ≥ 2 images per identity")
    genuine = s_clean[mate]
    impostor = np.concatenate([s_clean[other], s_dist.ravel()])
    tar, threshold = tar_at_far(genuine, impostor, far)
    labels = np.r_[np.ones(len(genuine)), np.zeros(len(impostor))]
    return {"rank1": float(hits.sum() / n_pairs), "tar": tar, "auc": float(roc_auc_score(labels, np.r_[genuine, impostor])),
            "far": far, "threshold": threshold, "far_resolution": 1.0 / len(impostor),
            "pairs": n_pairs, "genuine": int(len(genuine)), "genuine_mean": float(genuine.mean()), "impostors": int(len(impostor)), "probes": n}


def mask_rate(p_masked: np.ndarray, threshold: float = 0.5) -> float | None:
    """Fraction of faces the detector calls masked (``None`` for no faces)."""
    p = np.asarray(p_masked, np.float64)
    return float((p >= threshold).mean()) if len(p) else None
