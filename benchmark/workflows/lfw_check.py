"""``mf2m lfw``: the standard LFW 10-fold verification through detect → align → recognizer.embed.

For each fold the cosine-similarity threshold is chosen on the other folds (best accuracy) and applied
to the held-out fold; the result is the mean ± std of the fold accuracies over the pairs whose two
images exist and were prepared. Every skipped pair is counted with its reason. A wrong normalisation
or alignment shows up here as an accuracy far below the published one.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """Threshold ``t`` maximising the accuracy of "same iff score > t" and that accuracy.

    Candidates are the midpoints between consecutive distinct scores plus one below and one above all
    scores; among equally good thresholds the smallest wins.
    """
    scores = np.asarray(scores, np.float64)
    same = np.asarray(same, bool)
    if scores.size == 0:
        raise ValueError("no pairs to choose a threshold on")
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], same[order]
    distinct = np.unique(s)
    cands = np.concatenate([[distinct[0] - 1.0], (distinct[:-1] + distinct[1:]) / 2, [distinct[-1] + 1.0]])
    # for each candidate: number of scores ≤ t (predicted different)
    below = np.searchsorted(s, cands, side="right")
    diff_cum = np.concatenate([[0], np.cumsum(~y)])  # true "different" among the lowest k
    same_total = int(y.sum())
    same_below = np.concatenate([[0], np.cumsum(y)])
    correct = diff_cum[below] + (same_total - same_below[below])
    best = int(np.argmax(correct))  # first maximum = smallest threshold
    return float(cands[best]), float(correct[best] / len(s))


def accuracy_at(scores: np.ndarray, same: np.ndarray, threshold: float) -> float:
    """Accuracy of "same iff score > threshold"."""
    scores, same = np.asarray(scores), np.asarray(same, bool)
    return float(((scores > threshold) == same).mean())


def cross_validate(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> list[dict[str, Any]]:
    """Per fold: threshold from the other folds, accuracy on this fold (with one fold: on itself)."""
    scores, same, folds = np.asarray(scores, np.float64), np.asarray(same, bool), np.asarray(folds)
    ids = sorted(set(folds.tolist()))
    out = []
    for k in ids:
        test = folds == k
        train = ~test if len(ids) > 1 else test
        if not test.any() or not train.any():
            continue
        t, train_acc = best_threshold(scores[train], same[train])
        out.append(
            {
                "fold": int(k) + 1,
                "pairs": int(test.sum()),
                "threshold": t,
                "train_accuracy": train_acc,
                "accuracy": accuracy_at(scores[test], same[test], t),
            }
        )
    return out


def uses_chips(recognizer, prepared) -> bool:
    """True when the recognizer takes dlib chips (``embed_chips``) and the prepared set has them."""
    return hasattr(recognizer, "embed_chips") and prepared.chip_paths is not None


def embed_prepared(recognizer, prepared, batch_size: int = 64, progress: bool = True, forward=None) -> np.ndarray:
    """Features of every item of a :class:`PreparedSet` (dlib chips when the recognizer takes them).

    ``forward`` (a :class:`benchmark.embed.runtime.Forward` in reduced precision) embeds the crops
    instead of ``recognizer.embed``.
    """
    from tqdm import tqdm

    use_chips = uses_chips(recognizer, prepared)
    feats = []
    for start in tqdm(
        range(0, len(prepared), batch_size), desc=f"embed {recognizer.name}", unit="batch", disable=not progress
    ):
        idx = list(range(start, min(start + batch_size, len(prepared))))
        if use_chips:
            feats.append(recognizer.embed_chips(prepared.load_chips(idx)))
        elif forward is not None:
            import torch

            feats.append(forward.embed_tensor(torch.from_numpy(np.ascontiguousarray(prepared.load_crops(idx)))))
        else:
            feats.append(recognizer.embed(prepared.load_crops(idx)))
    dim = getattr(recognizer, "dim", 0)
    f = np.concatenate(feats) if feats else np.empty((0, dim), np.float32)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def run_lfw_check(
    data_dir: str | os.PathLike,
    model: str,
    out: str | os.PathLike | None = None,
    *,
    pairs_file: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int = 64,
    limit_folds: int | None = None,
    workers: int = 1,
    config=None,
    progress: bool = True,
    recognizer=None,
    precision: str = "auto",
) -> dict[str, Any]:
    """Run LFW verification for ``model`` (a registry name) and write the JSON report to ``out``.

    ``precision`` as for ``mf2m embed``: where it resolves to bf16/fp16 the crops go through the embed
    stage's torch runtime in that precision; in float32 through ``recognizer.embed`` (unchanged).

    ``cache_dir`` holds the prepared crops (default: ``<out>.prepared``) so a second model reuses the
    detections. ``config`` is a :class:`PrepareConfig` (default dlib HOG + 68 points, with dlib chips).
    """
    from ..atomic import write_json
    from ..data.lfw import load_pairs
    from ..data.prepare import PrepareConfig, prepare_faces
    from ..device import resolve_device
    from ..manifest import build_manifest, portable

    t0 = time.time()
    device = resolve_device(device)
    pairs = load_pairs(data_dir, pairs_file, limit_folds)
    if not pairs.pairs:
        raise ValueError(f"none of the {len(pairs.missing)} pairs listed have both images under {pairs.images_root}")
    if cache_dir is None:
        if out is None:
            raise ValueError("give --cache DIR or --out FILE (the cache defaults to FILE.prepared)")
        cache_dir = Path(str(out) + ".prepared")
    config = config or PrepareConfig(chips=True)
    prepared = prepare_faces(
        pairs.items(), cache_dir, config, batch_size=batch_size, workers=workers, progress=progress
    )
    if recognizer is None:
        from ..models.registry import create

        recognizer = create(model, device=device)
    from ..embed.runtime import Forward
    from ..precision import plan

    prec = plan(precision, device)
    forward = None
    if prec.reduced and not uses_chips(recognizer, prepared):
        forward = Forward(recognizer, device=device, precision=prec)
        prec = forward.precision
    elif prec.reduced:
        prec = prec.fallback(f"{recognizer.name} embeds dlib chips natively: float32")
    log.info(
        "lfw %s: %s (--precision %s: %s)",
        recognizer.name,
        f"{forward.runtime}, {prec.form}" if forward is not None else "recognizer.embed, float32",
        precision,
        prec.reason,
    )
    feats = embed_prepared(recognizer, prepared, batch_size=batch_size, progress=progress, forward=forward)
    row = {k: i for i, k in enumerate(prepared.keys)}
    reason_of = {f["key"]: f["reason"] for f in prepared.failures}

    scores, same, folds, skipped = [], [], [], []
    for p in pairs.pairs:
        ia, ib = row.get(p.a.key), row.get(p.b.key)
        if ia is None or ib is None:
            why = [
                f"{im.key}: {reason_of.get(im.key, 'not-prepared')}" for im, i in ((p.a, ia), (p.b, ib)) if i is None
            ]
            skipped.append({"line": p.line, "fold": p.fold + 1, "same": p.same, "reason": "; ".join(why)})
            continue
        scores.append(float(feats[ia] @ feats[ib]))
        same.append(p.same)
        folds.append(p.fold)
    for p, missing in pairs.missing:
        skipped.append(
            {"line": p.line, "fold": p.fold + 1, "same": p.same, "reason": "missing file: " + ", ".join(missing)}
        )
    if not scores:
        raise RuntimeError(f"no LFW pair could be evaluated ({len(skipped)} skipped); see {cache_dir}/failures.csv")
    per_fold = cross_validate(np.array(scores), np.array(same), np.array(folds))
    accs = np.array([f["accuracy"] for f in per_fold])
    skip_reasons: dict[str, int] = {}
    for s in skipped:
        key = "missing-file" if s["reason"].startswith("missing file") else s["reason"].split(": ", 1)[-1].split(";")[0]
        skip_reasons[key] = skip_reasons.get(key, 0) + 1
    result = {
        "model": model,
        "recognizer": recognizer.identity() if hasattr(recognizer, "identity") else {"name": model},
        "embedding_input": (
            "dlib 150x150 chips cut from the original photo"
            if uses_chips(recognizer, prepared)
            else "ArcFace-aligned 112x112 crops"
        ),
        "mean_accuracy": float(accs.mean()),
        "std_accuracy": float(accs.std()),
        "protocol": (
            "10-fold: threshold chosen on the other folds"
            if len(per_fold) > 1
            else "1 fold: threshold chosen on the same fold (optimistic)"
        ),
        "pairs_listed": len(pairs.pairs) + len(pairs.missing),
        "pairs_used": len(scores),
        "pairs_skipped": len(skipped),
        "skipped_by_reason": dict(sorted(skip_reasons.items())),
        "skipped": skipped,
        "missing_files_report": pairs.report(),
        "folds": per_fold,
        "precision": {**prec.describe(), "runtime": forward.runtime if forward is not None else "recognizer.embed"},
        "images_prepared": len(prepared),
        "images_failed": len(prepared.failures),
        "preparation": {"cache": str(cache_dir), **prepared.config},
        "seconds": round(time.time() - t0, 1),
    }
    result["manifest"] = build_manifest(
        "lfw",
        {
            "data": str(data_dir),
            "pairs_file": str(pairs_file or Path(data_dir) / "pairs.txt"),
            "model": model,
            "device": device,
            "batch_size": batch_size,
            "limit_folds": limit_folds,
            "precision": precision,
        },
    )
    if out is not None:
        write_json(
            out, portable(result, hide_temp=True)
        )  # meant to be committed: paths relative to the working directory
    return result
