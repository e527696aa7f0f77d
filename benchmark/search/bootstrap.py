"""Bootstrap confidence intervals over probe identities (a cluster bootstrap).

Each replicate draws the probe identities with replacement; every probe of an identity drawn ``w`` times
counts ``w`` times, with its positive pairs and its negatives.  Rank-1 is re-averaged over the weighted
pairs; TAR re-derives its threshold in every replicate (the ⌊far·N⌋+1-th largest of the weighted
negatives), so the threshold's own uncertainty is part of the interval.

The negatives enter through each probe's ``k_max`` highest distractor scores (float32 dot products of the
unit rows: the intervals are statistical, not exact): a negative of probe p outside p's list has ``k_max``
of p's negatives above it, each weighing as much as it does, so it is never among the top ``k`` of a
replicate with ``k ≤ k_max``.  ``k_max`` covers every replicate's k with room (``K_MARGIN``); a replicate
needing more is not used and counted.  Large problems (probes × ``k_max`` over ``MAX_TOP_SCORES``) get no
TAR interval, only rank-1's.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

REPLICATES = 1000
LEVEL = 0.95
K_MARGIN = 1.5  # k_max = ⌊far·N_neg·K_MARGIN⌋ + 1: room for replicates with more negatives
MAX_TOP_SCORES = 20_000_000  # probes × k_max scores kept at most (160 MB of float64)


def top_negatives(probes: np.ndarray, distractors, k: int, device: str = "cpu", block_size: int = 8192) -> np.ndarray:
    """(n_p, k) float64: each probe's ``k`` highest scores against ``distractors`` (unit rows, any row-sliceable
    array of float32 unit vectors), descending."""
    import torch

    p = torch.from_numpy(np.ascontiguousarray(probes, np.float32)).to(device)
    n_d = distractors.shape[0]
    best = torch.full((p.shape[0], 0), -math.inf, dtype=torch.float32, device=device)
    for a in range(0, n_d, block_size):
        block = torch.from_numpy(np.ascontiguousarray(distractors[a : a + block_size], np.float32)).to(device)
        scores = torch.cat([best, p @ block.T], dim=1)
        best = torch.topk(scores, min(k, scores.shape[1]), dim=1).values
    return best.double().cpu().numpy()


def identity_intervals(
    pair_probe: np.ndarray,
    pos_scores: np.ndarray,
    ranks: np.ndarray,
    probe_clusters: np.ndarray,
    n_distractors: int,
    fars: list[float],
    top: np.ndarray | None,
    replicates: int = REPLICATES,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, Any]:
    """Percentile intervals of rank-1 and of TAR at each FAR, resampling the clusters (identities).

    ``pair_probe``/``pos_scores``/``ranks``: each positive pair's probe, exact score and rank among the
    distractors (1 = no distractor above); ``probe_clusters``: each probe's identity code; ``top``: the
    probes' highest negatives (``top_negatives``), or None for rank-1 only.
    """
    n_p = probe_clusters.shape[0]
    codes, cluster_of = np.unique(probe_clusters, return_inverse=True)
    n_c = codes.size
    n_pos = np.bincount(pair_probe, minlength=n_p).astype(np.float64)
    hits = np.bincount(pair_probe, weights=(ranks == 1).astype(np.float64), minlength=n_p)
    rng = np.random.default_rng(seed)
    draws = np.stack([np.bincount(rng.integers(0, n_c, n_c), minlength=n_c) for _ in range(replicates)])
    w = draws[:, cluster_of].astype(np.float64)  # (replicates, n_p) probe weights
    denom = w @ n_pos
    ok = denom > 0
    rank1 = (w @ hits)[ok] / denom[ok]
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    out: dict[str, Any] = {
        "unit": "identity",
        "clusters": int(n_c),
        "replicates": int(replicates),
        "seed": int(seed),
        "level": level,
        "method": "percentile",
        "rank1": [float(np.quantile(rank1, lo_q)), float(np.quantile(rank1, hi_q))],
        "tar_at_far": [],
    }
    if top is None:
        out["tar_note"] = "no TAR intervals: the per-probe negative lists would exceed the memory budget"
        return out
    vals = top.ravel()
    owner = np.repeat(np.arange(n_p), top.shape[1])
    order = np.argsort(-vals, kind="stable")
    vals, owner = vals[order], owner[order]
    rows = np.flatnonzero(ok)
    for far in fars:
        n_neg = w[rows].sum(axis=1) * n_distractors
        k = np.floor(far * n_neg).astype(np.int64) + 1
        complete = top.shape[1] >= n_distractors  # every negative of every probe is listed
        usable = (far * n_neg >= 1) & ((k <= top.shape[1]) | complete)  # resolved, and covered by the lists
        taus = _weighted_kth(vals, owner, w[rows[usable]], k[usable])
        above = pos_scores[None, :] > taus[:, None]  # (replicates, pairs)
        tars = (above * w[rows[usable]][:, pair_probe]).sum(axis=1) / denom[rows[usable]]  # pairs weigh as their probe
        entry: dict[str, Any] = {"far": far, "replicates_used": int(tars.size)}
        if tars.size and tars.size >= 0.9 * rows.size:
            entry["tar"] = [float(np.quantile(tars, lo_q)), float(np.quantile(tars, hi_q))]
        else:
            entry["tar"] = None
            entry["note"] = (
                f"{rows.size - tars.size} of {rows.size} replicates cannot resolve FAR {far:g} "
                "(FAR·N_neg < 1, or beyond the kept negatives)"
            )
        out["tar_at_far"].append(entry)
    return out


def _weighted_kth(
    vals: np.ndarray, owner: np.ndarray, weights: np.ndarray, k: np.ndarray, chunk: int = 64
) -> np.ndarray:
    """Per replicate r: the value where the cumulative weight ``weights[r, owner]`` along ``vals``
    (descending) first reaches ``k[r]``; searched in a prefix, widened only for replicates that need it."""
    out = np.empty(k.size)
    if k.size == 0:
        return out
    prefix = min(vals.size, int(2 * k.max()) + 1)
    for a in range(0, k.size, chunk):
        cum = np.cumsum(weights[a : a + chunk][:, owner[:prefix]], axis=1)
        for j, r in enumerate(range(a, min(a + chunk, k.size))):
            if cum[j, -1] >= k[r]:
                idx = int(np.searchsorted(cum[j], k[r], "left"))
            else:
                full = np.cumsum(weights[r][owner])
                idx = min(int(np.searchsorted(full, k[r], "left")), vals.size - 1)
            out[r] = vals[idx]
    return out


def k_max_for(fars: list[float], n_neg: int) -> int:
    """Length of the per-probe negative lists that covers every replicate at the largest resolved FAR."""
    resolved = [f for f in fars if f * n_neg >= 1]
    return int(math.floor(max(resolved) * n_neg * K_MARGIN)) + 1 if resolved else 1


def mean_interval(
    values: np.ndarray, clusters: np.ndarray, replicates: int = REPLICATES, seed: int = 0, level: float = LEVEL
) -> tuple[float, float] | None:
    """Percentile interval of the mean of per-probe ``values`` (e.g. 1 = detected as masked), resampling the
    ``clusters`` (identities) with replacement; None without values."""
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return None
    codes, of = np.unique(np.asarray(clusters), return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = np.stack(
        [np.bincount(rng.integers(0, codes.size, codes.size), minlength=codes.size) for _ in range(replicates)]
    ).astype(np.float64)
    sums = draws @ np.bincount(of, weights=values, minlength=codes.size)
    sizes = draws @ np.bincount(of, minlength=codes.size).astype(np.float64)
    means = sums[sizes > 0] / sizes[sizes > 0]
    return float(np.quantile(means, (1 - level) / 2)), float(np.quantile(means, 1 - (1 - level) / 2))
