"""``mf2m attack`` as a function: batched, resumable masking/attacking of a probe set.

Output folder::

    images/<key>.png     the masked/attacked face (lossless 8-bit; keys are identity/stem, so the
                         folder is itself a face folder that ``mf2m embed`` can read)
    regions/<key>.png    the 0/255 region the method changed
    probes.csv           key, identity, source (the clean input's key), template key, FR distance/cosine
                         to the original, mask
                         probability, PSNR/SSIM against the reference image, status
    manifest.json        config, models, attack repr, counts, versions
    rows.jsonl           the work log (one line per finished probe; the resume point)
    template_bank.npz    cached template crops, landmarks and features (DM-based methods)

Resuming: a probe is done when its row is in ``rows.jsonl`` (rows are appended with fsync after the
batch's images are written atomically). A rerun with the same output folder skips done probes; a
rerun with different settings is refused.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import ATTACKS, attack_class, base_of, check_params, list_attacks
from .masking import MASK_COLOURS, RegionSpec, delaunay_mask, solid_mask
from .templates import MAX_ALIGNMENT_RESIDUAL, FaceItem, TemplateBank, aligned_batch, list_faces, to_tensor

log = logging.getLogger(__name__)

CSV_FIELDS = (
    "key",
    "identity",
    "source",
    "template",
    "template_similarity",
    "fr_distance",
    "fr_cosine",
    "p_masked",
    "reference",
    "psnr",
    "ssim",
    "status",
)


@dataclass
class AttackJob:
    """Everything that decides the output of one ``mf2m attack`` run."""

    method: str
    probes: str
    out: str
    templates: str | None = None
    fr: str = "sface"
    md: str = "mf2m-maskdet"
    device: str = "cpu"
    batch_size: int = 16
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)  # attack hyper-parameter overrides
    mask_colour: str = "blue"  # solid mask: a colour or "random"
    seamless: bool = False
    region: RegionSpec = RegionSpec()
    limit: int | None = None  # only the first N probes (by key)
    template_max_residual: float | None = MAX_ALIGNMENT_RESIDUAL  # reject misaligned templates (px; None: off)
    precision: str = "auto"  # FR+MD forward+backward: auto|fp32|bf16|fp16

    def precision_plan(self):
        """The attack's :class:`~benchmark.precision.PrecisionPlan` on ``device`` (auto → float32 unless
        parity with float32 was shown: ``benchmark.precision.ATTACK_AUTO_REDUCED``)."""
        from benchmark.precision import attack_plan

        return attack_plan(self.precision, self.device)

    def check(self) -> None:
        """Reject impossible settings with a clear message."""
        if self.method not in ATTACKS:
            raise ValueError(f"unknown method {self.method!r}; choose from {', '.join(list_attacks())}")
        if base_of(self.method) == "dm" and not self.templates:
            raise ValueError(f"--method {self.method} needs --templates DIR (the faces DM cuts masks from)")
        for what, path in (("--probes", self.probes), ("--templates", self.templates)):
            if path and not Path(path).exists():
                raise FileNotFoundError(f"{what} not found: {path}")
        if self.mask_colour not in MASK_COLOURS + ("random",):
            raise ValueError(f"--mask-colour must be one of {', '.join(MASK_COLOURS)} or random")
        if self.template_max_residual is not None and not self.template_max_residual > 0:
            raise ValueError("--template-max-residual must be > 0 pixels (0 on the command line: no filter)")
        if self.batch_size < 1:
            raise ValueError("--batch-size must be ≥ 1")
        check_params(self.method, self.params, f"--method {self.method}")
        self.precision_plan()  # unknown names and fp16 on a CPU fail here, with the reason

    def config(self) -> dict[str, Any]:
        """The settings that must match for a resume (paths resolved)."""
        d = asdict(self)
        d["probes"] = str(Path(self.probes).resolve())
        d["templates"] = str(Path(self.templates).resolve()) if self.templates else None
        d.pop("out")
        d.pop("batch_size")  # batching does not change which probes are done
        d.pop("limit")
        d["precision_resolved"] = self.precision_plan().precision  # what ran, not only what was asked
        return d


def build_attack(job: AttackJob, fr_module, md_module):
    """The attack object of ``job`` (``None`` for the plain masks)."""
    from .base import set_eot

    cls = attack_class(job.method)
    if cls is None:
        return None
    params = dict(job.params)
    eot = params.pop("eot_samples", 1)  # Expectation over Transformation (any method)
    return set_eot(cls(fr_module, md_module, seed=job.seed, precision=job.precision, **params), eot)


def run_attack(job: AttackJob, fr, md, landmarker=None, progress: bool = True) -> dict[str, Any]:
    """Run ``job`` with recognizer ``fr`` and mask detector ``md`` (``benchmark.models.base`` objects;
    ``md=None`` attacks the recognizer only and leaves ``p_masked`` empty).

    Returns the summary written into the manifest (counts, output paths).
    """
    import torch
    from tqdm import tqdm

    from benchmark.atomic import write_json
    from benchmark.manifest import build_manifest

    job.check()
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(out, job.config())
    items = list_faces(job.probes)
    if job.limit is not None:
        items = items[: job.limit]
    rows = read_rows(out / "rows.jsonl")
    pending = [it for it in items if not _done(rows.get(it.key), out)]
    if landmarker is None:
        from benchmark.models.landmarks import DlibLandmarker

        landmarker = DlibLandmarker()
    torch.manual_seed(job.seed)
    fr_module = fr.torch_module(job.device)
    md_module = md.torch_module(job.device) if md is not None else None
    attack = build_attack(job, fr_module, md_module)
    if attack is not None:
        log.info(
            "attack %s: FR+MD forward+backward in %s (--precision %s: %s); images, updates and projections in float32",
            job.method,
            attack.precision.form,
            job.precision,
            attack.precision.reason,
        )
    bank = None
    if base_of(job.method) == "dm":
        bank = TemplateBank.build(
            job.templates,
            fr_module,
            f"{fr.name}:{fr.weights_hash()}",
            out / "template_bank.npz",
            landmarker,
            job.device,
            job.batch_size,
            progress=(lambda it, **kw: tqdm(it, **kw)) if progress else None,
            max_residual=job.template_max_residual,
        )
        if bank.skipped:
            log.warning(
                "template bank: %d of %d templates skipped (%s)",
                len(bank.skipped),
                len(bank.skipped) + len(bank.keys),
                _reason_counts([{"status": v} for v in bank.skipped.values()]),
            )
    started = time.time()
    with (
        open(out / "rows.jsonl", "a", encoding="utf-8") as log_fh,
        tqdm(total=len(pending), desc=f"attack {job.method}", unit="img", disable=not progress) as bar,
    ):
        for start in range(0, len(pending), job.batch_size):
            batch = pending[start : start + job.batch_size]
            new_rows = process_batch(job, batch, attack, fr_module, md_module, bank, landmarker, out)
            for row in new_rows:
                log_fh.write(json.dumps(row) + "\n")
                rows[row["key"]] = row
            log_fh.flush()
            os.fsync(log_fh.fileno())
            bar.update(len(batch))
    elapsed = time.time() - started
    ordered = [rows[it.key] for it in items if it.key in rows]
    write_csv(out / "probes.csv", ordered)
    counts = {
        "probes": len(items),
        "processed_now": len(pending),
        "ok": sum(r["status"] == "ok" for r in ordered),
        "skipped": sum(r["status"] != "ok" for r in ordered),
    }
    summary = {
        "counts": counts,
        "seconds": round(elapsed, 2),
        "images_per_second": round(len(pending) / elapsed, 3) if elapsed > 0 and pending else None,
        "attack": repr(attack) if attack else job.method,
        "attack_config": attack.config() if attack else {"method": job.method},
        "precision": attack.precision.describe() if attack else None,
        "skipped_reasons": _reason_counts(ordered),
        "templates": (
            {
                "count": len(bank.keys),
                "skipped": len(bank.skipped),
                "skipped_reasons": _reason_counts([{"status": v} for v in bank.skipped.values()]),
            }
            if bank
            else None
        ),
    }
    manifest = build_manifest(
        "attack",
        job.config(),
        models={"fr": fr.identity(), "md": md.identity() if md is not None else None},
        outputs={"images": "images/", "regions": "regions/", "probes": "probes.csv"},
        precision=summary["precision"],
        summary=summary,
    )
    write_json(out / "manifest.json", manifest)
    return summary


def process_batch(
    job: AttackJob,
    batch: list[FaceItem],
    attack,
    fr_module,
    md_module,
    bank: TemplateBank | None,
    landmarker,
    out: Path,
) -> list[dict[str, Any]]:
    """Mask, attack, round, re-evaluate and write one batch; returns its CSV rows."""
    import torch

    from benchmark.data.images import write_png

    from .templates import features

    ok, clean, points, failed = aligned_batch(batch, landmarker)
    rows = [_row(batch[i], status=f"skipped:{reason}") for i, reason in failed.items()]
    if not ok:
        return rows
    keys = [batch[i].key for i in ok]
    ref_feats = features(fr_module, clean, job.device, job.batch_size)
    templates, tsims = [None] * len(ok), [None] * len(ok)
    if bank is not None:
        best, sims = bank.choose(ref_feats, [batch[i].identity for i in ok])
        templates, tsims = [bank.keys[b] for b in best], [float(s) for s in sims]
    bases, regions = [], []
    for j in range(len(ok)):
        if base_of(job.method) == "dm":
            b = best[j]
            img, reg = delaunay_mask(
                clean[j], points[j], bank.faces[b], bank.points[b], spec=job.region, seamless=job.seamless
            )
        else:
            img, reg = solid_mask(clean[j], points[j], _colour(job, keys[j]), spec=job.region)
        bases.append(img)
        regions.append(reg)
    bases_arr, regions_arr = np.stack(bases), np.stack(regions)
    if attack is not None:
        x = to_tensor(bases_arr, job.device)
        r = torch.from_numpy(regions_arr).to(job.device)[:, None].float()
        adv = attack(x, r, torch.from_numpy(ref_feats).to(job.device), keys=keys)
        final = to_uint8(adv)
    else:
        final = bases_arr
    # Re-evaluate the objective's parts on the 8-bit images actually written.
    feats = features(fr_module, final, job.device, job.batch_size)
    dist = np.linalg.norm(feats - ref_feats, axis=1)
    cos = (feats * ref_feats).sum(axis=1)
    p_masked = (
        mask_probability(md_module, final, job.device, job.batch_size)
        if md_module is not None
        else np.full(len(final), np.nan)
    )
    reference = base_of(job.method) if attack is not None else ""
    for j, i in enumerate(ok):
        write_png(out / "images" / f"{keys[j]}.png", final[j])
        write_png(out / "regions" / f"{keys[j]}.png", regions_arr[j] * 255)
        psnr, ssim = image_similarity(bases_arr[j], final[j]) if attack is not None else (None, None)
        rows.append(
            _row(
                batch[i],
                template=templates[j],
                template_similarity=tsims[j],
                fr_distance=float(dist[j]),
                fr_cosine=float(cos[j]),
                p_masked=None if np.isnan(p_masked[j]) else float(p_masked[j]),
                reference=reference,
                psnr=psnr,
                ssim=ssim,
                status="ok",
            )
        )
    return rows


def to_uint8(images) -> np.ndarray:
    """``(n,3,H,W)`` float [0,1] tensor → ``(n,H,W,3)`` uint8, rounded to nearest."""
    import torch

    return torch.round(images.detach().clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def mask_probability(md_module, faces: np.ndarray, device: str = "cpu", batch_size: int = 64) -> np.ndarray:
    """P(masked) ``(n,)`` of uint8 faces under the differentiable mask-detector module (softmax of class 1)."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(faces), batch_size):
            out.append(torch.softmax(md_module(to_tensor(faces[i : i + batch_size], device)), 1)[:, 1].cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def image_similarity(reference: np.ndarray, image: np.ndarray) -> tuple[float, float]:
    """PSNR (dB; ``inf`` when identical) and SSIM of ``image`` against ``reference`` over the whole image."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if np.array_equal(reference, image):
        return float("inf"), 1.0
    psnr = peak_signal_noise_ratio(reference, image, data_range=255)
    ssim = structural_similarity(reference, image, channel_axis=2, data_range=255)
    return float(psnr), float(ssim)


def _done(row: dict[str, Any] | None, out: Path) -> bool:
    """A probe is done when it has a row and (if it succeeded) its image exists."""
    return row is not None and (row["status"] != "ok" or (out / "images" / f"{row['key']}.png").is_file())


def _colour(job: AttackJob, key: str) -> str:
    if job.mask_colour != "random":
        return job.mask_colour
    return MASK_COLOURS[(zlib.crc32(key.encode()) + job.seed) % len(MASK_COLOURS)]


def _row(item: FaceItem, **values: Any) -> dict[str, Any]:
    row = {f: None for f in CSV_FIELDS}
    row.update(key=item.key, identity=item.identity, source=item.source, **values)
    return row


def read_rows(path: Path) -> dict[str, dict[str, Any]]:
    """Rows of the work log by key (a torn last line from a kill is ignored)."""
    rows: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return rows
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[row["key"]] = row
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``probes.csv`` atomically (floats with 6 significant digits, empty for missing)."""
    import csv
    import io

    from benchmark.atomic import write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for row in rows:
        w.writerow(
            [
                "" if row.get(f) is None else (f"{row[f]:.6g}" if isinstance(row[f], float) else row[f])
                for f in CSV_FIELDS
            ]
        )
    write_text(path, buf.getvalue())


def _check_resume(out: Path, config: dict[str, Any]) -> None:
    from benchmark.atomic import write_json

    path = out / "attack_config.json"
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous != json.loads(json.dumps(config)):
            diff = sorted(
                k for k in set(previous) | set(config) if previous.get(k) != json.loads(json.dumps(config)).get(k)
            )
            raise ValueError(
                f"{out} holds a run with other settings (differs in: {', '.join(diff)}); use a new --out folder"
            )
    else:
        write_json(path, config)


def _reason_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    from collections import Counter

    return dict(
        Counter(
            r["status"].split(":")[0] + ":" + r["status"].split(":")[1]
            for r in rows
            if r.get("status") and r["status"] != "ok" and ":" in r["status"]
        )
    )
