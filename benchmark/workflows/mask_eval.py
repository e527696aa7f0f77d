"""``mf2m mask-eval``: score any mask detector on a labelled folder (``with_mask/``, ``without_mask/``).

Faces are found and aligned exactly as for training (YuNet → ArcFace 112×112, cached), unless
``aligned=True`` says the images already are aligned 112×112 crops. The detector is a registry name of
kind ``mask-detector`` (``mf2m models --kind mask-detector``; modules passed as ``providers`` may
register more) or a ``replacement-mask-detector`` defence plug-in (an ``mf2m.defences`` entry point or
``module:callable[:k=v,…]``). Reports accuracy, per-class accuracy, ROC AUC, the misclassified faces
and the images where no face was found.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .mask_training import CLASSES, AlignedSet, align_dataset, classification_metrics, list_dataset

FORMAT = "mf2m.mask-eval.v1"


def load_detector(
    name: str, device: str = "auto", weights: str | None = None, providers: Sequence[str] = ()
) -> tuple[Any, str]:
    """Build the detector ``name``; returns ``(detector, where it came from)``."""
    from ..models import registry

    for module in providers:
        registry.add_provider(module)
    errors = registry.provider_errors()
    bad = [m for m in providers if m in errors]
    if bad:
        raise ValueError(f"--provider {bad[0]} failed to import: {errors[bad[0]]}")
    try:
        spec, _ = registry.get_spec(name)
    except ValueError:
        spec = None
    if spec is not None:
        if spec.kind != "mask-detector":
            raise ValueError(
                f"{name!r} is a {spec.kind}, not a mask detector. Mask detectors: {', '.join(mask_detector_names())}"
            )
        return registry.create(name, weights=weights, device=device), f"registry ({spec.module})"
    from ..defences.api import ReplacementMaskDetector, load_defence

    try:
        defence = load_defence(name)
    except (ValueError, KeyError) as exc:
        raise ValueError(
            f"unknown mask detector {name!r}: not in the model registry "
            f"({', '.join(mask_detector_names())}) and not a defence plug-in ({exc})"
        ) from None
    if not isinstance(defence.impl, ReplacementMaskDetector):
        raise ValueError(f"defence {name!r} is a {defence.kind}, not a replacement-mask-detector")
    return defence.impl.create(device=device), f"defence plug-in {defence.tag} ({defence.source})"


def mask_detector_names() -> list[str]:
    """Registered mask detectors (names to pass as ``--detector``)."""
    from ..models import registry

    return [s.name for s in registry.list_models("mask-detector")]


def read_aligned(items: list[tuple[Path, int]], root: Path) -> AlignedSet:
    """Already aligned 112×112 crops, read as they are; other sizes are listed as skipped."""
    from ..data.images import ImageError, read_image

    faces, labels, paths, skipped = [], [], [], []
    for path, label in items:
        rel = str(path.relative_to(root))
        try:
            image = read_image(path)
        except ImageError as exc:
            skipped.append({"path": rel, "label": label, "reason": str(exc)})
            continue
        if image.shape[:2] != (112, 112):
            skipped.append(
                {
                    "path": rel,
                    "label": label,
                    "reason": f"{image.shape[1]}x{image.shape[0]}, not an aligned 112x112 crop",
                }
            )
            continue
        faces.append(image)
        labels.append(label)
        paths.append(rel)
    return AlignedSet(
        np.stack(faces) if faces else np.zeros((0, 112, 112, 3), np.uint8),
        np.asarray(labels, dtype=np.int64),
        paths,
        ["given"] * len(paths),
        skipped,
    )


def evaluate(
    data: str | os.PathLike,
    detector: str = "mf2m-maskdet",
    *,
    device: str = "auto",
    weights: str | None = None,
    providers: Sequence[str] = (),
    threshold: float = 0.5,
    aligned: bool = False,
    limit_per_class: int | None = None,
    cache_dir: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``detector`` on the labelled folder ``data``; returns the JSON-ready report."""
    from ..manifest import build_manifest

    if not 0 < threshold < 1:
        raise ValueError("--threshold must be in (0, 1)")
    root = Path(data)
    items = list_dataset(root, limit_per_class)
    det, origin = load_detector(detector, device=device, weights=weights, providers=providers)
    faces = read_aligned(items, root) if aligned else align_dataset(items, root, cache_dir, progress=progress)
    if len(faces.labels) == 0:
        raise ValueError(f"{root}: no face found in any of {len(items)} images")
    p = _scores(det, faces.faces, progress)
    metrics = classification_metrics(p, faces.labels, threshold)
    pred = (p >= threshold).astype(int)
    failed = [
        {"path": faces.paths[i], "label": CLASSES[faces.labels[i]], "p_masked": round(float(p[i]), 6)}
        for i in np.flatnonzero(pred != faces.labels)
    ]
    undetected = [{**s, "label": CLASSES[s["label"]]} for s in faces.skipped]
    identity = det.identity() if hasattr(det, "identity") else {"name": detector}
    config = {
        "data": str(root),
        "detector": detector,
        "weights": weights,
        "threshold": threshold,
        "aligned": aligned,
        "limit_per_class": limit_per_class,
        "providers": list(providers),
    }
    return {
        "format": FORMAT,
        "detector": {**identity, "requested": detector, "origin": origin},
        "data": str(root),
        "images": len(items),
        "faces": int(len(faces.labels)),
        "threshold": threshold,
        "alignment": "given (112x112 crops)" if aligned else "YuNet → ArcFace 112",
        "metrics": metrics,
        "failed": failed,
        "undetected": undetected,
        "manifest": build_manifest("mask-eval", config),
    }


def _scores(det: Any, faces: np.ndarray, progress: bool, batch: int = 64) -> np.ndarray:
    from tqdm import tqdm

    out = np.empty(len(faces), np.float64)
    for i in tqdm(range(0, len(faces), batch), desc="score", unit="batch", disable=not progress):
        out[i : i + batch] = np.asarray(det.p_masked(faces[i : i + batch]), dtype=np.float64)
    if not np.all(np.isfinite(out)) or out.min() < 0 or out.max() > 1:
        raise ValueError("the detector returned probabilities outside [0, 1]")
    return out


def summary_table(report: dict[str, Any], max_list: int = 10) -> str:
    """A short plain-text table of a report."""
    m = report["metrics"]

    def pct(x: float | None) -> str:
        return "—" if x is None else f"{100 * x:.2f} %"

    rows = [
        ("detector", f"{report['detector']['requested']} ({report['detector']['origin']})"),
        (
            "data",
            f"{report['data']}: {report['images']} images, {report['faces']} faces aligned, "
            f"{len(report['undetected'])} without a face",
        ),
        ("accuracy", f"{pct(m['accuracy'])} of {m['n']} (threshold {report['threshold']})"),
    ]
    rows += [(f"accuracy {cls}", f"{pct(m[f'accuracy_{cls}'])} of {m[f'n_{cls}']}") for cls in CLASSES]
    rows += [
        ("ROC AUC", "—" if m["roc_auc"] is None else f"{m['roc_auc']:.4f}"),
        ("misclassified", str(len(report["failed"]))),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    for title, entries, field in (
        ("misclassified", report["failed"], "p_masked"),
        ("no face found", report["undetected"], "reason"),
    ):
        if entries:
            lines.append(f"\n{title} (first {min(max_list, len(entries))} of {len(entries)}):")
            lines += [f"  {e['path']}  [{e['label']}]  {e[field]}" for e in entries[:max_list]]
    return "\n".join(lines)
