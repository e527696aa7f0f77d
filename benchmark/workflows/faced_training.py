"""Faced-mask-aware retraining of the mask detector (``mf2m train-mask-detector --with-faced-masks``):
the base data plus faced-mask and solid-mask LFW faces, split by identity, and its model card."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .mask_data import (
    ALIGN_VERSION,
    CLASSES,
    _balanced_subset,
    align_dataset,
    faced_mask_faces,
    identity_split,
    list_dataset,
    split_indices,
)
from .mask_training import TrainConfig, _pct, card_path_for, predict, train_masknet

log = logging.getLogger(__name__)


def _rates(model, sets: dict[str, tuple[np.ndarray, int]], device: str) -> dict[str, dict[str, Any]]:
    """Per evaluation set: n, the accuracy (fraction called with its true label) and mean ``p_masked``."""
    out = {}
    for name, (faces, label) in sets.items():
        p = predict(model, faces, device) if len(faces) else np.zeros(0, np.float32)
        called = p >= 0.5
        out[name] = {
            "n": int(len(p)),
            "label": CLASSES[label],
            "accuracy": float((called == bool(label)).mean()) if len(p) else None,
            "mean_p_masked": float(p.mean()) if len(p) else None,
        }
    return out


def run_faced_training(
    data_dir: str | Path,
    lfw_dir: str | Path,
    out: str | Path,
    cfg: TrainConfig,
    init_weights: str | Path | None = None,
    device: str = "cpu",
    cache_dir: str | Path | None = None,
    faced_limit: int = 400,
    base_per_class: int | None = 400,
    card: str | Path | None = None,
    command: str = "",
    progress: bool = True,
    on_step: Callable[[str], None] | None = None,
    limit_per_class: int | None = None,
) -> dict[str, Any]:
    """Retrain the mask detector with DM-masked faces as positives; evaluate it against ``init_weights``.

    Training data: the facemask training split (the default detector's split, same seed; at most
    ``base_per_class`` faces per class) + LFW faces of the training identities, bare (label 0) and
    wearing a DM faced mask (label 1). The model is fine-tuned from ``init_weights`` (the default
    detector; ``None`` trains from scratch). Held out: the facemask held-out split (real masks, bare
    faces) and LFW faces of the held-out identities (bare, DM, solid medical mask). Both the new and
    the initial model are evaluated on them. Writes the weights, ``<out>.json`` and the model card.
    """
    from attacks.masking import solid_mask

    from ..atomic import write_json, write_text
    from ..manifest import build_manifest, sha256_file
    from ..models.mask_detector import DEFAULT_ARCH, build_masknet, load_weights, save_weights

    say = on_step or log.info
    t0 = time.time()
    items = list_dataset(data_dir, limit_per_class)
    aligned = align_dataset(items, data_dir, cache_dir, progress)
    train_idx, test_idx = split_indices(aligned.labels, cfg.seed, cfg.held_out)
    base_idx = train_idx[_balanced_subset(aligned.labels[train_idx], base_per_class, cfg.seed)]
    say(
        f"facemask: {len(aligned.labels)} aligned faces, {len(base_idx)} used for training, "
        f"{len(test_idx)} held out ({'cached' if aligned.from_cache else 'aligned now'})"
    )
    fs = faced_mask_faces(lfw_dir, faced_limit, cfg.seed, progress)
    if len(fs.identities) < 4:
        raise ValueError(f"{lfw_dir}: only {len(fs.identities)} LFW faces got a DM mask ({len(fs.skipped)} skipped)")
    lfw_train, lfw_test = identity_split(fs.identities, cfg.seed, cfg.held_out)
    t_data = time.time() - t0
    say(
        f"LFW: {len(fs.identities)} faces with DM masks ({len(fs.skipped)} skipped): {len(lfw_train)} train / "
        f"{len(lfw_test)} held out (by identity), {t_data:.0f} s"
    )
    faces = np.concatenate([aligned.faces[base_idx], fs.bare[lfw_train], fs.faced[lfw_train]])
    labels = np.concatenate(
        [aligned.labels[base_idx], np.zeros(len(lfw_train), np.int64), np.ones(len(lfw_train), np.int64)]
    )
    if init_weights is not None:
        init, init_meta = load_weights(init_weights, device)
    else:
        init, init_meta = build_masknet(), {}
    solid = np.stack(
        [solid_mask(fs.bare[i], fs.points[i], ("blue", "white", "black")[k % 3])[0] for k, i in enumerate(lfw_test)]
    )
    eval_sets = {
        "facemask held-out, real masks": (aligned.faces[test_idx][aligned.labels[test_idx] == 1], 1),
        "facemask held-out, bare faces": (aligned.faces[test_idx][aligned.labels[test_idx] == 0], 0),
        "LFW held-out identities, bare": (fs.bare[lfw_test], 0),
        "LFW held-out identities, DM faced mask": (fs.faced[lfw_test], 1),
        "LFW held-out identities, solid medical mask": (solid, 1),
    }
    baseline = _rates(init, eval_sets, device) if init_weights is not None else None
    t1 = time.time()
    model, history = train_masknet(faces, labels, cfg, device, progress, init=init)
    t_train = time.time() - t1
    retrained = _rates(model, eval_sets, device)
    say(f"retrained in {t_train:.0f} s: " + "; ".join(f"{k}: {v['accuracy']:.3f}" for k, v in retrained.items()))
    config = {
        **cfg.__dict__,
        "data": str(data_dir),
        "lfw": str(lfw_dir),
        "device": device,
        "init_weights": str(init_weights) if init_weights else None,
        "init_sha256": sha256_file(init_weights) if init_weights else None,
        "faced_limit": faced_limit,
        "base_per_class": base_per_class,
        "limit_per_class": limit_per_class,
        "arch": DEFAULT_ARCH,
        "align": ALIGN_VERSION,
        "faced_masks": "attacks.masking.delaunay_mask, template = seeded random LFW face of another identity",
    }
    meta = {
        "config": config,
        "kind": "faced-mask-aware",
        "command": command,
        "created": time.strftime("%Y-%m-%d"),
        "split": {
            "facemask_train_used": len(base_idx),
            "facemask_held_out": len(test_idx),
            "lfw_train_faces": len(lfw_train),
            "lfw_held_out_faces": len(lfw_test),
            "lfw_train_identities": len({fs.identities[i] for i in lfw_train}),
            "lfw_held_out_identities": len({fs.identities[i] for i in lfw_test}),
        },
        "metrics": {
            "retrained": retrained,
            "initial": baseline,
            "history": history,
            "seconds": {"data": round(t_data, 1), "train": round(t_train, 1)},
        },
        "n_params": sum(p.numel() for p in model.parameters()),
        "init_meta_command": init_meta.get("command"),
    }
    save_weights(out, model, meta)
    manifest = build_manifest(
        "train-mask-detector", config, outputs={"weights": str(out), "weights_sha256": sha256_file(out)}
    )
    report = {
        "manifest": manifest,
        **meta,
        "lfw_paths": {"train": [fs.paths[i] for i in lfw_train], "held_out": [fs.paths[i] for i in lfw_test]},
        "lfw_templates": dict(zip(fs.paths, fs.templates)),
        "skipped": fs.skipped,
    }
    write_json(Path(out).with_suffix(".json"), report)
    write_text(card or card_path_for(out), render_faced_card(report, Path(out).name))
    return report


def render_faced_card(report: dict[str, Any], weights_name: str) -> str:
    """The model card (markdown) of a faced-mask-aware retraining report."""
    cfg, m, split = report["config"], report["metrics"], report["split"]
    lines = [
        "# mf2m-maskdet-faced — model card (faced-mask-aware mask detector)",
        "",
        f"Weights: `{weights_name}` (sha256 `{report['manifest']['outputs']['weights_sha256']}`), trained "
        f"{report['created']} by `{report['command'] or 'run_faced_training()'}`. Loaded by the "
        "`faced-mask-aware-detector` defence (docs/defences.md).",
        "",
        "## What it is",
        "The default `MaskNet` detector (`mask_detector.pt`, see MASK_DETECTOR_CARD.md) "
        + (
            f"fine-tuned for {cfg['epochs']} epochs"
            if cfg["init_weights"]
            else f"trained from scratch for {cfg['epochs']} epochs"
        )
        + f" (AdamW, one-cycle lr {cfg['lr']}, batch {cfg['batch_size']}, the default augmentation) with "
        "**DM faced masks as positives**: LFW faces (dlib HOG + 68 points → ArcFace 112) wearing a Delaunay "
        "faced mask (`attacks.masking.delaunay_mask`, the attack's DM) cut from a seeded random LFW face of "
        "another identity. The same faces bare are negatives, so the model cannot simply learn that LFW-style photos are masked.",
        "",
        "## Data",
        f"- facemask training split (the default detector's split, seed {cfg['seed']}): "
        f"{split['facemask_train_used']} faces used (≤ {cfg['base_per_class']} per class), held-out split "
        f"{split['facemask_held_out']} faces (never trained on by either model).",
        f"- LFW: a seeded sample of {cfg['faced_limit']} images; {split['lfw_train_faces']} faces of "
        f"{split['lfw_train_identities']} identities for training (bare + DM), {split['lfw_held_out_faces']} "
        f"faces of {split['lfw_held_out_identities']} other identities held out.",
        "",
        "## Held-out accuracy (threshold 0.5)",
        "",
        "| set | n | true label | default detector | faced-mask-aware | mean p(masked) default → faced |",
        "|---|---:|---|---:|---:|---|",
    ]
    init = m.get("initial") or {}
    for name, r in m["retrained"].items():
        b = init.get(name, {})
        lines.append(
            f"| {name} | {r['n']} | {r['label']} | {_pct(b.get('accuracy'))} | **{_pct(r['accuracy'])}** | "
            f"{b.get('mean_p_masked', float('nan')):.3f} → {r['mean_p_masked']:.3f} |"
        )
    lines += [
        "",
        f"Training took {m['seconds']['train']:.0f} s on `{cfg['device']}` (data preparation "
        f"{m['seconds']['data']:.0f} s).",
        "",
        "## Limitations",
        "- The DM faces come from LFW only, with random (not FR-most-similar) templates; adversarial versions "
        "(AdvNoise-DM, MF²M) are not in the training set — the leaderboard measures how it fares on them.",
        "- An adaptive attacker who differentiates through this detector is not modelled by the training.",
        "- LFW identities in the leaderboard pool may also appear in this training sample (different split "
        "seeds); the file list is in the JSON report.",
        "",
        "## Reproduce",
        "",
        "```",
        report["command"] or "mf2m train-mask-detector --with-faced-masks ...",
        "```",
        "",
        f"Per-epoch history, LFW file lists with their templates and the manifest: "
        f"`{Path(weights_name).with_suffix('.json').name}`.",
        "",
    ]
    return "\n".join(lines)
