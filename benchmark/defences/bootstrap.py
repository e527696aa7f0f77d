"""Per-probe outcomes of one leaderboard cell and bootstrap intervals over probes.

The point estimates of a cell come from the search engine (:mod:`.metrics`). To say how far another
probe pool may move them, the same decisions are recomputed per probe in float64 here
(:func:`probe_outcomes`) and the probes are resampled with replacement (:func:`bootstrap`): a
*cluster* bootstrap, each probe carrying its positive pairs, its probe–distractor scores and its
mask decision. The TAR threshold is re-derived in every replicate from the resampled negatives, so
its uncertainty is part of the interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_METRICS = ("rank1", "tar", "mask_rate")


@dataclass
class ProbeOutcomes:
    """What each probe contributes to a cell (arrays over probes unless noted)."""

    n_pos: np.ndarray  # positive pairs per probe
    rank1_hits: np.ndarray  # positive pairs of the probe that no distractor beats
    pos_scores: list[np.ndarray]  # per probe: its positive-pair scores
    neg_scores: np.ndarray  # (probes, distractors) probe–distractor scores
    masked: np.ndarray | None  # per probe: 1 if the mask detector says masked (None: no detector)
    far: float

    def metrics(self, weights: np.ndarray | None = None) -> dict[str, float | None]:
        """Rank-1, TAR@far and mask rate with each probe counted ``weights[i]`` times (default once)."""
        w = np.ones(len(self.n_pos)) if weights is None else np.asarray(weights, np.float64)
        pos_total = float((w * self.n_pos).sum())
        out: dict[str, float | None] = {"rank1": None, "tar": None, "mask_rate": None}
        if pos_total > 0:
            out["rank1"] = float((w * self.rank1_hits).sum()) / pos_total
            tau = weighted_kth_largest(self.neg_scores, w, self.far)
            above = np.array([(s > tau).sum() for s in self.pos_scores], np.float64)
            out["tar"] = float((w * above).sum()) / pos_total
        if self.masked is not None and w.sum() > 0:
            out["mask_rate"] = float((w * self.masked).sum() / w.sum())
        return out


def weighted_kth_largest(neg: np.ndarray, weights: np.ndarray, far: float) -> float:
    """The protocol's threshold τ: the (⌊far·N⌋+1)-th largest negative score, probe ``i``'s row counted
    ``weights[i]`` times (N = the weighted number of negatives)."""
    counts = np.repeat(weights, neg.shape[1])
    flat = neg.reshape(-1)
    keep = counts > 0
    flat, counts = flat[keep], counts[keep]
    order = np.argsort(-flat, kind="stable")
    cum = np.cumsum(counts[order])
    k = int(np.floor(far * cum[-1])) + 1
    return float(flat[order][min(np.searchsorted(cum, k), len(cum) - 1)])


def probe_outcomes(
    probe_feats: np.ndarray,
    probe_keys: Sequence[str],
    probe_ids: Sequence[str],
    mate_feats: np.ndarray,
    mate_keys: Sequence[str],
    mate_ids: Sequence[str],
    distractor_feats: np.ndarray,
    far: float,
    p_masked: np.ndarray | None = None,
    threshold: float = 0.5,
) -> ProbeOutcomes:
    """Per-probe outcomes under the protocol of :func:`.metrics.search_metrics` (float64 cosines).

    Positive pairs: mates of the probe's identity except its own clean original (same key).
    Rank-1 hit: no distractor scores above the pair. Rows are L2-normalised here.
    """

    def unit(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, np.float64)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    p, m, d = unit(probe_feats), unit(mate_feats), unit(distractor_feats)
    neg = p @ d.T
    pos_all = p @ m.T
    mate_ids, mate_keys = np.asarray(mate_ids, dtype=str), np.asarray(mate_keys, dtype=str)
    n_pos, hits, pos_scores = [], [], []
    for i, (key, ident) in enumerate(zip(probe_keys, probe_ids)):
        sel = (mate_ids == str(ident)) & (mate_keys != str(key))
        s = pos_all[i, sel]
        pos_scores.append(s)
        n_pos.append(len(s))
        hits.append(int((s >= neg[i].max()).sum()) if len(s) else 0)
    masked = None if p_masked is None else (np.asarray(p_masked, np.float64) >= threshold).astype(np.float64)
    return ProbeOutcomes(np.array(n_pos, np.float64), np.array(hits, np.float64), pos_scores, neg, masked, far)


def bootstrap(
    outcomes: ProbeOutcomes, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, dict[str, float | None]]:
    """Percentile intervals over probes: ``{metric: {point, low, high, level, n_boot}}``."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), not {level}")
    point = outcomes.metrics()
    n = len(outcomes.n_pos)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {m: [] for m in BOOTSTRAP_METRICS}
    for _ in range(n_boot):
        w = np.bincount(rng.integers(0, n, size=n), minlength=n).astype(np.float64)
        for metric, value in outcomes.metrics(w).items():
            if value is not None:
                samples[metric].append(value)
    tail = (1 - level) / 2 * 100
    out = {}
    for metric in BOOTSTRAP_METRICS:
        vals = np.array(samples[metric])
        lo, hi = (float(v) for v in np.percentile(vals, [tail, 100 - tail])) if len(vals) else (None, None)
        out[metric] = {"point": point[metric], "low": lo, "high": hi, "level": level, "n_boot": n_boot}
    return out
