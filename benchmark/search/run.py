"""The search stage end to end: load feature sets, apply noise lists, stream the gallery, compute metrics.

Probes are paired with mates by identity name (``search/identity.py``), never with their own clean source.

Multi-process / multi-GPU: every rank (env ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``) takes every
WORLD_SIZE-th distractor block; rank 0 merges the additive partials — through torch.distributed under
torchrun, else through fingerprinted files in ``OUT/partials/`` (``search/distributed.py``) — and writes
the outputs.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from benchmark.features import FeatureArrays, FeatureSet, UnitRows, check_compatible, read_lines
from benchmark.search import distributed, engine, identity
from benchmark.search.defaults import DEFAULT_FARS, DEFAULT_RANKS

log = logging.getLogger(__name__)


@dataclass
class SearchConfig:
    """Inputs and settings of one search run (all of them are recorded in the manifest)."""

    probes: str
    mates: str
    distractors: str
    out: str
    fars: list[float] = field(default_factory=lambda: list(DEFAULT_FARS))
    ranks: list[int] = field(default_factory=lambda: list(DEFAULT_RANKS))
    distractor_sizes: list[int] = field(default_factory=list)
    noise_lists: list[str] = field(default_factory=list)
    topk: int = 50
    device: str = "auto"
    block_size: int = 8192
    precision: str = "auto"
    seed: int = 0
    roc_per_decade: int = 5
    progress: bool = True
    join: str = "auto"  # pair by identity "names", integer "labels", or "auto" (names if present)
    allow_missing_mates: bool = False  # a probe identity absent from the mates: counted warning, not an error
    dist_timeout: float = distributed.DEFAULT_TIMEOUT_MIN  # minutes to wait for the other ranks
    bootstrap: int = 1000  # replicates of the identity bootstrap (0: no confidence intervals)


# ------------------------------------------------------------------------------------------- inputs


def load_noise(paths: list[str]) -> set[str]:
    """Entries of noise lists (insightface megaface_noises.txt / facescrub_noises.txt style)."""
    entries: set[str] = set()
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"noise list not found: {path}")
        entries.update(e.lstrip("/") for e in read_lines(path))
    return entries


def noise_mask(keys: np.ndarray, entries: set[str]) -> np.ndarray:
    """True where a key is listed: equal to an entry, or ending in '/'+entry, with or without extension."""
    if not entries:
        return np.zeros(len(keys), bool)
    stems = {os.path.splitext(e)[0] for e in entries}
    out = np.zeros(len(keys), bool)
    for i, key in enumerate(keys):
        parts = str(key).lstrip("/").split("/")
        for j in range(len(parts)):
            tail = "/".join(parts[j:])
            if tail in entries or os.path.splitext(tail)[0] in stems:
                out[i] = True
                break
    return out


def _drop_rows(arrays: FeatureArrays, drop: np.ndarray) -> FeatureArrays:
    """Remove rows in place (chunked compaction: no second copy of a 1M-row matrix)."""
    keep = np.flatnonzero(~drop)
    feats = arrays.features
    for lo in range(0, keep.size, 65536):
        sel = keep[lo : lo + 65536]
        feats[lo : lo + sel.size] = feats[sel]
    arrays.features = feats[: keep.size]
    arrays.keys, arrays.labels = arrays.keys[keep], arrays.labels[keep]
    for name in ("identities", "sources"):
        if getattr(arrays, name) is not None:
            setattr(arrays, name, getattr(arrays, name)[keep])
    if arrays.norms is not None:
        arrays.norms = arrays.norms[keep]
    return arrays


def load_inputs(cfg: SearchConfig) -> tuple[dict[str, FeatureArrays], dict[str, int], str, int, identity.Join]:
    """Open and validate the three roles, check model/dim, apply the noise lists (counts returned) and pair
    probes with mates by identity (``identity.join``).

    Distractors stay in their storage dtype (float16: half the memory) behind ``UnitRows``, which yields
    the same unit float32 rows as ``FeatureSet.load`` block by block.
    """
    sets = {role: FeatureSet(getattr(cfg, role)) for role in ("probes", "mates", "distractors")}
    model, dim = check_compatible(sets)
    noise = load_noise(cfg.noise_lists)
    arrays, excluded = {}, {}
    for role, fs in sets.items():
        arr = fs.load(progress=cfg.progress, keep_storage=role == "distractors")
        drop = noise_mask(arr.keys, noise)
        excluded[role] = int(drop.sum())
        arrays[role] = _drop_rows(arr, drop) if drop.any() else arr
        if role == "distractors":
            arrays[role].features = UnitRows(arrays[role].features, fs.path, arrays[role].norms)
    if arrays["probes"].features.shape[0] == 0:
        raise ValueError(f"{cfg.probes}: no probes left (after noise lists)")
    if arrays["distractors"].features.shape[0] == 0:
        raise ValueError(f"{cfg.distractors}: no distractors left (after noise lists)")
    j = identity.join(
        sets["probes"], arrays["probes"], sets["mates"], arrays["mates"], cfg.join, cfg.allow_missing_mates
    )
    return arrays, excluded, model, dim, j


def far_resolved(far: float, n_neg: int) -> bool:
    """True when ``far`` is measurable with ``n_neg`` negative pairs (far·N_neg ≥ 1); below that, the
    protocol's τ is the single highest negative score and its TAR is not a TAR at ``far``."""
    return far * n_neg >= 1.0


def roc_grid(n_neg: int, fars: list[float], per_decade: int = 5) -> list[float]:
    """Log-spaced FARs from 1/N_neg up to the largest requested FAR, plus the requested ones."""
    top = max(fars)
    lo = math.ceil(math.log10(1.0 / n_neg) * per_decade) / per_decade
    grid = [10 ** (lo + i / per_decade) for i in range(int(round((math.log10(top) - lo) * per_decade)) + 1)]
    return sorted({float(f"{g:.6g}") for g in grid if g <= top} | set(fars))


# ----------------------------------------------------------------------------------------- streaming


def stream(
    problem: engine.Problem,
    device: str,
    block_size: int,
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
    fused: bool = True,
    precision: str = "fp32",
) -> engine.Partial:
    """This rank's partial: distractor blocks ``rank, rank+world, …`` (plus the mates on rank 0).

    ``precision`` bf16/fp16 screens the sparse path's blocks after the first in that precision
    (``screen.py``; same decisions).  ``fused=False`` makes the CPU use the torch block path of the GPUs
    (for comparisons)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    probes_dev = torch.from_numpy(problem.probes).to(device)
    part = (
        engine.mates_partial(problem, probes_dev, torch.from_numpy(problem.mates).to(device))
        if rank == 0
        else engine.Partial.empty(problem)
    )
    n_d = problem.distractors.shape[0]
    starts = list(range(rank * block_size, n_d, block_size * world))
    it = starts
    if progress:
        from tqdm import tqdm

        it = tqdm(starts, desc=f"search [{device}]", unit="block", leave=False)
    state: dict = {"fused": fused}
    if precision in ("bf16", "fp16"):
        state["screen"] = _screen(problem, probes_dev, precision)
    for a in it:
        b = min(a + block_size, n_d)
        block = torch.from_numpy(problem.distractors[a:b]).to(device, non_blocking=True)
        engine.process_block(part, problem, probes_dev, block, a, state)
    for top in part.tops.values():
        top.prune()
    return part


def _screen(problem: engine.Problem, probes_dev, precision: str):
    """The run's low-precision screen; sets the screened histogram's lower edge on ``problem``."""
    from benchmark.search.screen import Screen, ulp

    screen = Screen.build(precision, probes_dev, problem.eps)
    if problem.n_pos:
        below = (
            problem.sorted_pos[0]
            - screen.a_priori_error(problem.probes.shape[1])
            - 2 * float(ulp(engine.HIST_HI, screen.out))
        )
        problem.hist_lo_lp = max(engine.f32_below(below), -engine.HIST_HI)
    else:
        problem.hist_lo_lp = engine.HIST_HI
    return screen


def save_partial(part: engine.Partial, path: Path, fingerprint: str = "") -> None:
    """Write a partial as .npz (atomic), with the fingerprint of the run that made it."""
    distributed.save(part, path, fingerprint)


def load_partial(path: Path, fingerprint: str | None = None) -> engine.Partial:
    """Read a partial written by ``save_partial`` (with ``fingerprint``: refuse one from another run)."""
    return distributed.load(path, fingerprint)


# ------------------------------------------------------------------------------------------- metrics


def exact_auc(problem: engine.Problem, device: str, block_size: int, progress: bool = True) -> tuple[float, int]:
    """Second streaming pass: the AUC exactly (float64 GEMM + float64 refinement); (AUC, refined pairs)."""
    import torch

    probes_dev = torch.from_numpy(problem.probes).to(device)
    n_d = problem.distractors.shape[0]
    # float64 scores + their indices: keep a block's temporaries near the main pass's score block
    b = max(1, min(block_size, (1 << 24) // max(problem.probes.shape[0], 1)))
    starts = range(0, n_d, b)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"exact AUC [{device}]", unit="block", leave=False)
    blocks = (torch.from_numpy(problem.distractors[a : a + b]).to(device) for a in starts)
    return engine.auc_exact_pass(problem, probes_dev, blocks)


def compute_metrics(
    part: engine.Partial,
    problem: engine.Problem,
    cfg: SearchConfig,
    n_probes: int,
    n_mates: int,
    device: str = "cpu",
    precision: tuple[str, str] = ("fp32", ""),
) -> tuple[dict, dict]:
    """metrics.json content plus the curves (CMC steps, ROC grid, sweep) for the other outputs."""
    n_d = problem.distractors.shape[0]
    if part.n_cols != n_d:
        raise RuntimeError(f"internal: partial covers {part.n_cols} of {n_d} distractors")
    n_pos, n_neg = problem.n_pos, n_probes * n_d
    metrics: dict = {
        "counts": {
            "probes": n_probes,
            "mates": n_mates,
            "distractors": n_d,
            "positive_pairs": n_pos,
            "negative_pairs": n_neg,
        }
    }
    curves: dict = {}
    if n_pos == 0:
        raise ValueError(
            f"no positive pairs: no probe in {cfg.probes} shares a label (≥ 0) with an image of "
            f"another key in {cfg.mates}"
        )
    ranks = engine.rank_counts(part, problem) + 1
    ranks_wanted = sorted(set(cfg.ranks) | {1, 10, 100, 1000})
    metrics["rank1"] = float(np.mean(ranks == 1))
    metrics["cmc"] = {"ranks": ranks_wanted, "rates": [float(np.mean(ranks <= k)) for k in ranks_wanted]}
    auc, auc_bound = engine.auc_from_histogram(part, problem, n_neg)
    auc_refined = part.auc_refined
    if auc_bound > engine.AUC_TOLERANCE:
        log.info("AUC histogram bound %.3g > %g: exact float64 pass", auc_bound, engine.AUC_TOLERANCE)
        auc, auc_refined = exact_auc(problem, device, cfg.block_size, cfg.progress)
    metrics["auc"] = auc
    grid = roc_grid(n_neg, cfg.fars, cfg.roc_per_decade)
    top = part.tops[n_d]
    roc = []
    for far in grid:
        tar, tau = engine.tar_at(problem, top, n_neg, far)
        roc.append({"far": far, "tar": tar, "threshold": tau, "resolved": far_resolved(far, n_neg)})
    metrics["tar_at_far"] = [r for r in roc if r["far"] in set(cfg.fars)]
    sorted_ranks = np.sort(ranks)
    steps = np.unique(sorted_ranks)
    curves["cmc"] = (steps, np.searchsorted(sorted_ranks, steps, "right") / n_pos)
    curves["roc"] = roc
    if problem.sweep_sizes:
        first = engine.first_beater(part, problem)
        sweep = []
        for size in problem.sizes_with_full():
            entry = {"distractors": size, "rank1": float(np.mean(first >= size)) if size < n_d else metrics["rank1"]}
            entry["tar_at_far"] = []
            for far in cfg.fars:
                tar, tau = engine.tar_at(problem, part.tops[size], n_probes * size, far)
                entry["tar_at_far"].append(
                    {"far": far, "tar": tar, "threshold": tau, "resolved": far_resolved(far, n_probes * size)}
                )
            sweep.append(entry)
        metrics["distractor_sweep"] = {"seed": cfg.seed, "sizes": sweep}
    idx, scores, uncertain = engine.exact_matches(part, problem)
    curves["matches"] = (idx, scores)
    curves["per_probe"] = per_probe(problem, ranks)
    metrics["exactness"] = {
        "score": "float64 dot of float32 unit vectors",
        "float32_error_bound": problem.eps,
        "refined_pairs": part.n_refined,
        "topk_probes_not_certified": uncertain,
        "search_path": _path_name(part, n_d),
        "precision": {
            "requested": cfg.precision,
            "resolved": precision[0],
            "reason": precision[1],
            "screened_columns": part.lp_cols,
            "screen_error_bound": part.lp_err,
            "screen_output": part.lp_out or None,
            "rescored_pairs": part.lp_rescored,
            "note": part.lp_note or None,
        },
        "auc_method": _auc_method(part.dense_cols, n_d, auc_bound),
        "auc_histogram_error_bound": auc_bound,
        "auc_max_error": auc_bound if auc_bound <= engine.AUC_TOLERANCE else 0.0,
        "auc_refined_pairs": auc_refined,
    }
    return metrics, curves


def per_probe(problem: engine.Problem, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per probe: the exact score of its best mate, that mate's index and its rank (NaN / -1 / 0 without a mate).

    The best mate's rank is the probe's smallest pair rank (a higher score is beaten by fewer distractors).
    """
    n_p = problem.probes.shape[0]
    best = np.full(n_p, -np.inf)
    np.maximum.at(best, problem.pair_probe, problem.pos_scores)
    rank = np.full(n_p, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(rank, problem.pair_probe, ranks.astype(np.int64))
    mate = np.full(n_p, -1, np.int64)
    is_best = problem.pos_scores == best[problem.pair_probe]
    order = np.flatnonzero(is_best)[::-1]  # the first best pair of each probe wins
    mate[problem.pair_probe[order]] = problem.pair_mate[order]
    none = mate < 0
    best[none], rank[none] = np.nan, 0
    return best, mate, rank


def _path_name(part: engine.Partial, n_d: int) -> str:
    """Which block path(s) scored the distractors."""
    if part.dense_cols == 0:
        if part.lp_cols:
            return f"{part.lp_out if part.lp_out != 'fp32' else 'low-precision'} screening + float32 rescoring + refinement"
        return "float32 + refinement"
    return "float64 dense" if part.dense_cols == n_d else "mixed"


def _auc_method(dense_cols: int, n_d: int, bound: float) -> str:
    """How the AUC was obtained (see docs/protocol.md)."""
    if bound > engine.AUC_TOLERANCE:
        return "exact float64 pass"
    if dense_cols == n_d:
        return "exact (float64 search pass)"
    return "histogram" if dense_cols == 0 else "histogram + exact float64 blocks"


def run_search(cfg: SearchConfig) -> dict:
    """Run the whole stage; returns metrics (rank 0) and writes every output under ``cfg.out``."""
    from benchmark.device import resolve_device

    rank, world, local = distributed.env()
    device = resolve_device(cfg.device)
    if device == "cuda" and world > 1:
        device = f"cuda:{local}"
    if distributed.under_torchrun():
        with distributed.ProcessGroup(device, cfg.dist_timeout):
            return _search(cfg, device, rank, world)
    return _search(cfg, device, rank, world)


def _search(cfg: SearchConfig, device: str, rank: int, world: int) -> dict:
    from benchmark.search import outputs

    t0 = time.perf_counter()
    arrays, excluded, model, dim, j = load_inputs(cfg)
    p, m, d = arrays["probes"], arrays["mates"], arrays["distractors"]
    t_load = time.perf_counter()
    sizes = [s for s in cfg.distractor_sizes if s < d.features.shape[0]]
    n_neg = p.features.shape[0] * d.features.shape[0]
    problem = engine.build_problem(
        p.features,
        j.probe_keys,
        j.probe_labels,
        m.features,
        j.mate_keys,
        j.mate_labels,
        d.features,
        roc_grid(n_neg, cfg.fars, cfg.roc_per_decade),
        sizes,
        cfg.seed,
        cfg.topk,
    )
    precision = resolve_search_precision(cfg.precision, device)
    log.info("search precision: %s (%s)", *precision)
    part = stream(problem, device, cfg.block_size, rank, world, cfg.progress, precision=precision[0])
    out = Path(cfg.out)
    if world > 1 and distributed.under_torchrun():
        part = distributed.gather(part, rank, world, cfg.dist_timeout)
        if rank != 0:
            return {}
    elif world > 1:
        fp = partial_fingerprint(cfg, world)
        folder = out / "partials"
        save_partial(part, distributed.partial_path(folder, rank, world), fp)
        if rank != 0:
            return {}
        part = distributed.gather_files(folder, world, part, fp, cfg.dist_timeout)
        for r in range(world):
            distributed.partial_path(folder, r, world).unlink(missing_ok=True)  # merged: never picked up again
    t_search = time.perf_counter()
    metrics, curves = compute_metrics(part, problem, cfg, p.features.shape[0], m.features.shape[0], device, precision)
    metrics["counts"]["noise_excluded"] = excluded
    metrics["identity_join"] = {**j.report, **identity.pair_counts(j)}
    if cfg.bootstrap > 0:
        metrics["bootstrap"] = bootstrap_metrics(part, problem, cfg, j.probe_labels, device)
    t_end = time.perf_counter()
    timings = {
        "load_s": t_load - t0,
        "search_s": t_search - t_load,
        "finalize_s": t_end - t_search,
        "total_s": t_end - t0,
    }
    # topk.csv's same-identity flag: by the shared identity codes (distractors are never the probe's identity)
    p.labels, m.labels = j.probe_labels, j.mate_labels
    d.labels = np.full(len(d.keys), -1, np.int64)
    outputs.write_all(out, cfg, metrics, curves, arrays, model, dim, device, world, timings)
    return metrics


def bootstrap_metrics(
    part: engine.Partial, problem: engine.Problem, cfg: SearchConfig, clusters: np.ndarray, device: str
) -> dict:
    """95 % intervals of rank-1 and TAR from ``cfg.bootstrap`` replicates over probe identities (``bootstrap.py``)."""
    from benchmark.search import bootstrap

    n_p, n_d = problem.probes.shape[0], problem.distractors.shape[0]
    k = min(bootstrap.k_max_for(cfg.fars, n_p * n_d), n_d)
    top = None
    if n_p * k <= bootstrap.MAX_TOP_SCORES:
        top = bootstrap.top_negatives(problem.probes, problem.distractors, k, device, cfg.block_size)
    return bootstrap.identity_intervals(
        problem.pair_probe,
        problem.pos_scores,
        engine.rank_counts(part, problem) + 1,
        clusters,
        n_d,
        list(cfg.fars),
        top,
        cfg.bootstrap,
        cfg.seed,
    )


def resolve_search_precision(precision: str, device: str) -> tuple[str, str]:
    """``device.resolve_precision`` for the search: fp16 is allowed on a CPU only when asked for (slow, for tests)."""
    from benchmark.device import PRECISIONS, resolve_precision

    if precision == "fp16" and not device.startswith("cuda"):
        return "fp16", "asked for (no float16 units on a CPU: emulated, slow)"
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return resolve_precision(precision, device)


def partial_fingerprint(cfg: SearchConfig, world: int) -> str:
    """What a partial file must match to be merged: the inputs' shard checksums, settings, world size, code."""
    from benchmark.manifest import code_fingerprint, sha256_file

    inputs = {}
    for role in ("probes", "mates", "distractors"):
        fs = FeatureSet(getattr(cfg, role), verify_checksums=False)
        inputs[role] = [s.sha256 or sha256_file(s.path) for s in fs.shards]
    noise = [sha256_file(n) for n in cfg.noise_lists]
    return distributed.fingerprint(
        {**config_dict(cfg), "noise_lists": noise}, inputs, world, code_fingerprint("search")
    )


def config_dict(cfg: SearchConfig) -> dict:
    """The config as a JSON-able dict."""
    return asdict(cfg)
