"""Screening the distractors of other datasets for people of the probe pool (identity overlap).

A dataset named in ``data.distractors_from`` has identity labels of its own (CelebA: anonymous integer ids),
so a pool person can sit among its photos under another name: a "distractor" that is really a mate, which
lowers rank-1 and, as the highest impostor score, sets the threshold of every TAR at a low FAR. Names cannot
find them; faces can. For every identity of such a dataset and every evaluation model, the cosine between
the identity's mean clean feature and each pool identity's mean mate feature is compared with the largest
value that any distractor identity of the main dataset — a person known by name to be outside the pool —
reaches on that model. An identity above it on any model is a likely pool person: all its photos go to
``noise.txt``, which every search of the run leaves out (as MegaFace's noise lists do), and
``screen.json`` records the rule, the thresholds, the flagged identities and the highest scores. The rule
uses clean features only, so it is the same for every method.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_json, write_text
from .splits import read_csv

#: how many of the highest-scoring identities of the other datasets ``screen.json`` lists
LISTED = 20


def prepared_root(row: dict[str, str]) -> str:
    """The prepared-faces folder a split row's crop lives in (one per dataset root): ``…/crops/<key>.png``."""
    path = Path(row["path"]).as_posix()
    tail = f"/crops/{row['key']}.png"
    return path[: -len(tail)] if path.endswith(tail) else str(Path(path).parent)


def other_dataset_rows(split_dir: Path) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The split's distractors from the main dataset and from the others (told apart by their prepared folder)."""
    main = {prepared_root(r) for r in read_csv(split_dir / "probes.csv")}
    rows = read_csv(split_dir / "distractors.csv")
    return [r for r in rows if prepared_root(r) in main], [r for r in rows if prepared_root(r) not in main]


def _centroids(features: np.ndarray, groups: list[str]) -> tuple[list[str], np.ndarray]:
    """Unit-norm mean feature of every group (sorted names)."""
    names = sorted(set(groups))
    index = {n: i for i, n in enumerate(names)}
    idx = np.array([index[g] for g in groups])
    sums = np.zeros((len(names), features.shape[1]))
    np.add.at(sums, idx, features.astype(np.float64))
    return names, sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)


def _best_pool_match(
    features: np.ndarray, groups: list[str], pool: tuple[list[str], np.ndarray]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """For every group: its highest cosine to a pool centroid and that pool identity."""
    names, cents = _centroids(features, groups)
    scores = cents @ pool[1].T
    return names, scores.max(axis=1), scores.argmax(axis=1)


def screen_stage(split_dir: Path, mates: dict[str, Path], distractors: dict[str, Path], folder: Path) -> None:
    """Write ``noise.txt`` (keys of likely pool people among the other datasets' distractors) and ``screen.json``.

    ``mates`` / ``distractors``: per evaluation model, the feature sets of the pool's clean mates and of
    the distractors.
    """
    from ..features.sets import FeatureSet

    main_rows, other_rows = other_dataset_rows(split_dir)
    main_keys = {r["key"] for r in main_rows}
    other_ids = {r["key"]: r["identity"] for r in other_rows}
    flagged: dict[str, dict[str, Any]] = {}
    per_model: dict[str, Any] = {}
    for model in sorted(mates):
        m = FeatureSet(mates[model]).load()
        d = FeatureSet(distractors[model]).load()
        pool = _centroids(m.features, [str(x) for x in m.identities])
        keys = [str(k) for k in d.keys]
        in_main = np.array([k in main_keys for k in keys])
        in_other = np.array([k in other_ids for k in keys])
        ids = [str(x) for x in d.identities]
        ref_names, ref_best, _ = _best_pool_match(d.features[in_main], [i for i, f in zip(ids, in_main) if f], pool)
        threshold = float(ref_best.max()) if len(ref_names) else float("inf")
        names, best, which = _best_pool_match(d.features[in_other], [i for i, f in zip(ids, in_other) if f], pool)
        top = np.argsort(-best)[:LISTED]
        per_model[model] = {
            "threshold": round(threshold, 6),
            "threshold_from": f"max over {len(ref_names)} main-dataset distractor identities",
            "highest": [
                {"identity": names[i], "pool_identity": pool[0][which[i]], "cosine": round(float(best[i]), 6)}
                for i in top
            ],
        }
        for i in np.flatnonzero(best > threshold):
            entry = flagged.setdefault(names[i], {"identity": names[i], "pool_identity": {}, "cosine": {}})
            entry["pool_identity"][model] = pool[0][which[i]]
            entry["cosine"][model] = round(float(best[i]), 6)
    noise = sorted(k for k, i in other_ids.items() if i in flagged)
    write_text(folder / "noise.txt", "".join(f"{k}\n" for k in noise))
    write_json(
        folder / "screen.json",
        {
            "rule": "an identity of another dataset whose mean clean feature is closer to a pool identity's mean "
            "mate feature than any main-dataset distractor identity gets, on any evaluation model, is left out",
            "other_identities": len(set(other_ids.values())),
            "other_images": len(other_ids),
            "flagged": [flagged[n] for n in sorted(flagged)],
            "excluded_images": len(noise),
            "models": per_model,
        },
    )


def screen_summary(folder: Path) -> str:
    """One sentence for the report: what the screen left out."""
    import json

    rec = json.loads((folder / "screen.json").read_text(encoding="utf-8"))
    flagged = rec["flagged"]
    if not flagged:
        return (
            f"Identity screen: none of the {rec['other_identities']:,} identities of the other datasets is closer "
            "to a pool identity than the main dataset's distractors are"
        )
    who = ", ".join(f"{f['identity']} ≈ {sorted(set(f['pool_identity'].values()))[0]}" for f in flagged[:5])
    more = f" and {len(flagged) - 5} more" if len(flagged) > 5 else ""
    return (
        f"Identity screen: {len(flagged)} of the {rec['other_identities']:,} identities of the other datasets "
        f"({rec['excluded_images']} images) match a pool identity ({who}{more}) and are left out of the distractors"
    )
