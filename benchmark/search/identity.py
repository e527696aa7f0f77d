"""Pairing probes with mates by identity *name*, never by a per-dataset label index.

Labels are indices of each dataset's sorted identity names, so two feature sets embedded from different
folders (or an attack that lost every image of one person) number the same people differently. The
search therefore maps the identity names of probes and mates to one shared integer code before the
engine pairs them (same code ⇒ same person), and gives each row a *join key* — the key of the clean
image it was made from (``sources``) or else its own key, without an image-file extension — so that a
probe is never paired with its own clean original, whatever extensions the stages gave the two keys.

Where names come from, per feature set: the per-row ``identities`` dataset (``mf2m.features.v2``); else
the ``identities`` list an ``mf2m embed`` manifest records (label → name, ``mf2m.features.v1``); else
none, and the search falls back to integer labels with a warning that says what the set lacks.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from benchmark.features import FeatureArrays, FeatureFormatError, FeatureSet

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
JOIN_MODES = ("auto", "names", "labels")


class IdentityJoinError(ValueError):
    """Probes and mates cannot be paired by identity (the message names the files and identities)."""


@dataclass
class Join:
    """What the engine pairs on: shared identity codes and extension-free join keys, plus a report."""

    probe_labels: np.ndarray
    mate_labels: np.ndarray
    probe_keys: np.ndarray
    mate_keys: np.ndarray
    report: dict = field(default_factory=dict)


def join_key(key: str) -> str:
    """``key`` without a trailing image-file extension (``A/a1.png`` and ``A/a1`` name the same image)."""
    stem, ext = os.path.splitext(key)
    return stem if ext.lower() in IMAGE_EXTENSIONS else key


def row_names(fs: FeatureSet, arr: FeatureArrays) -> tuple[np.ndarray | None, str]:
    """Each row's identity name ("" unknown) and where it came from; (None, why not) when the set has none."""
    if arr.identities is not None:
        return arr.identities, "per-row identities"
    if fs.manifest_identities is not None:
        names = np.asarray(fs.manifest_identities + [""], dtype=str)  # index -1 → ""
        labels = arr.labels
        if labels.size and int(labels.max()) >= len(fs.manifest_identities):
            raise FeatureFormatError(
                f"{fs.path}: label {int(labels.max())} has no name in the manifest's "
                f"identities list ({len(fs.manifest_identities)} names)"
            )
        return names[np.where(labels >= 0, labels, -1)], "the manifest's identities list"
    return None, fs.lacks("identities") or f"{fs.path}: no identity names"


def _codes(probe_names: np.ndarray, mate_names: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One integer code per identity name shared by probes and mates ("" → -1)."""
    names = sorted((set(probe_names.tolist()) | set(mate_names.tolist())) - {""})
    index = {n: i for i, n in enumerate(names)}
    code = np.vectorize(lambda n: index.get(n, -1), otypes=[np.int64])
    return (
        code(probe_names) if probe_names.size else np.zeros(0, np.int64),
        code(mate_names) if mate_names.size else np.zeros(0, np.int64),
        names,
    )


def _source_keys(arr: FeatureArrays) -> np.ndarray:
    """Join keys: the clean source key where the row has one, else its own key, extension-free."""
    keys = arr.keys if arr.sources is None else np.where(arr.sources != "", arr.sources, arr.keys)
    return np.asarray([join_key(str(k)) for k in keys], dtype=str) if keys.size else np.zeros(0, "<U1")


def _check_conflicts(
    probe_keys: np.ndarray,
    probe_names: np.ndarray,
    mate_keys: np.ndarray,
    mate_names: np.ndarray,
    probes: FeatureSet,
    mates: FeatureSet,
) -> None:
    """A probe made from a mate's image must carry that mate's identity name."""
    mate_name_of = dict(zip(mate_keys.tolist(), mate_names.tolist()))
    for key, name in zip(probe_keys.tolist(), probe_names.tolist()):
        other = mate_name_of.get(key)
        if other is not None and name and other and other != name:
            raise IdentityJoinError(
                f"conflicting identity names for image {key!r}: {name!r} in the probes "
                f"{probes.path} but {other!r} in the mates {mates.path}"
            )


def join(
    probes: FeatureSet,
    p: FeatureArrays,
    mates: FeatureSet,
    m: FeatureArrays,
    mode: str = "auto",
    allow_missing_mates: bool = False,
) -> Join:
    """Shared identity codes and join keys for probes ``p`` and mates ``m`` (see the module docstring).

    ``mode``: ``names`` (names required), ``labels`` (the feature sets' integer labels, as before
    ``mf2m.features.v2``) or ``auto`` (names when both sets have them, else labels with a warning).
    A probe identity with no image among the mates is an error unless ``allow_missing_mates`` (then it is
    counted and logged).
    """
    if mode not in JOIN_MODES:
        raise ValueError(f"identity join must be one of {', '.join(JOIN_MODES)}, not {mode!r}")
    pk, mk = _source_keys(p), _source_keys(m)
    report: dict = {"sources": "per-row sources" if p.sources is not None else "keys only (no per-row sources)"}
    pn, p_from = row_names(probes, p) if mode != "labels" else (None, "--join labels")
    mn, m_from = row_names(mates, m) if mode != "labels" else (None, "--join labels")
    if pn is None or mn is None:
        lacking = "; ".join(w for n, w in ((pn, p_from), (mn, m_from)) if n is None)
        if mode == "names":
            raise IdentityJoinError(
                f"cannot pair probes with mates by identity name: {lacking}. Re-embed it "
                f"with this mf2m (mf2m.features.v2 stores each row's identity), or pass "
                f"--join labels if both sets number identities the same way"
            )
        if mode == "auto":
            log.warning(
                "pairing probes with mates by integer label, not identity name: %s. Labels index each "
                "dataset's own sorted names, so this is right only when probes and mates were labelled "
                "from the same list of identities; re-embed with this mf2m to pair by name",
                lacking,
            )
            report["warning"] = f"paired by integer label: {lacking}"
        report.update(by="label")
        return Join(p.labels, m.labels, pk, mk, report)
    _check_conflicts(pk, pn, mk, mn, probes, mates)
    pl, ml, _ = _codes(pn, mn)
    probe_ids = set(pn[pn != ""].tolist())
    missing = sorted(probe_ids - set(mn[mn != ""].tolist()))
    n_missing_probes = int(np.isin(pn, missing).sum()) if missing else 0
    report.update(
        by="name",
        names_from={"probes": p_from, "mates": m_from},
        probe_identities=len(probe_ids),
        probe_identities_without_mates=len(missing),
        probes_of_identities_without_mates=n_missing_probes,
    )
    if missing:
        shown = ", ".join(missing[:5]) + (f" … ({len(missing)} in all)" if len(missing) > 5 else "")
        msg = (
            f"{len(missing)} of {len(probe_ids)} probe identities ({n_missing_probes} probes) have no image "
            f"among the mates {mates.path}: {shown}"
        )
        if not allow_missing_mates or len(missing) == len(probe_ids):
            raise IdentityJoinError(
                msg
                + (
                    ". Embed the mates from the same pool as the probes, or pass "
                    "--allow-missing-mates to score those probes without a mate"
                    if not allow_missing_mates
                    else ""
                )
            )
        log.warning("%s; they count as probes without a mate", msg)
        report["warning"] = msg
    return Join(pl, ml, pk, mk, report)


def pair_counts(j: Join) -> dict[str, int]:
    """Probes without any positive pair and same-identity pairs dropped because they share a join key."""
    from benchmark.search.engine import positive_pairs

    pp, _ = positive_pairs(j.probe_labels, j.probe_keys, j.mate_labels, j.mate_keys)
    same = sum(
        int(((j.mate_labels == lab) & (j.mate_keys == key)).sum())
        for lab, key in zip(j.probe_labels.tolist(), j.probe_keys.tolist())
        if lab >= 0
    )
    return {"probes_without_pairs": int(j.probe_labels.size - np.unique(pp).size), "own_image_pairs_excluded": same}
