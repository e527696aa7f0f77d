"""Evidence for the attack stage: per-method SFace/dlib similarity to the clean original, mask
detection rate and PSNR/SSIM against DM on a FaceScrub-like LFW pool, plus the example figure.

    python benchmarks/attack_evidence.py --lfw ../shared/data/lfw/images --identities 80 --per-identity 20 \
        --out /tmp/evidence --methods solid,dm,advnoise-dm,mf2m,i-fgsm

Probes: the first ``--identities`` LFW people with ≥ 2 images (up to ``--per-identity`` each);
templates: the next ``--templates`` people (one image each), so no probe ever meets its own identity.
Writes ``OUT/<method>/`` (the ``mf2m attack`` outputs), ``OUT/evidence.md`` and ``OUT/attack_examples.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def build_pool(lfw: Path, out: Path, identities: int, per_identity: int, templates: int) -> tuple[Path, Path]:
    """Symlinked probe and template folders (``root/<identity>/<image>``)."""
    people = sorted(p for p in lfw.iterdir() if p.is_dir())
    multi = [p for p in people if len(list(p.glob("*.jpg"))) >= 2][:identities]
    rest = [p for p in people if p not in set(multi)][:templates]
    for root, group, k in ((out / "probes", multi, per_identity), (out / "templates", rest, 1)):
        for person in group:
            (root / person.name).mkdir(parents=True, exist_ok=True)
            for img in sorted(person.glob("*.jpg"))[:k]:
                link = root / person.name / img.name
                if not link.exists():
                    os.symlink(img.resolve(), link)
    return out / "probes", out / "templates"


def load_models(md_name: str):
    """SFace (white-box), dlib (black-box) and the mask detector (``none`` = FR-only attack)."""
    from benchmark.models.sface import SFaceRecognizer
    fr = SFaceRecognizer(device="cpu")
    md = None
    if md_name != "none":
        from benchmark.models.mask_detector import CNNMaskDetector
        md = CNNMaskDetector(device="cpu")
    try:
        from benchmark.models.dlib_recognizer import DlibRecognizer
        dlib = DlibRecognizer()
    except Exception as exc:   # noqa: BLE001 - reported, the column is left empty
        print(f"dlib black-box recognizer unavailable: {exc}")
        dlib = None
    return fr, md, dlib


def summarise(method_dir: Path, probes: Path, dlib) -> dict:
    """Mean SFace cosine, dlib cosine, detection rate, PSNR/SSIM of one method's outputs."""
    import csv

    from attacks.templates import list_faces, load_aligned
    from benchmark.data.images import read_image
    from benchmark.models.landmarks import DlibLandmarker
    rows = [r for r in csv.DictReader(open(method_dir / "probes.csv")) if r["status"] == "ok"]
    out = {"n": len(rows), "sface_cos": float(np.mean([float(r["fr_cosine"]) for r in rows]))}
    pm = [float(r["p_masked"]) for r in rows if r["p_masked"]]
    out["detected"] = float(np.mean(np.array(pm) > 0.5)) if pm else None
    ps = [float(r["psnr"]) for r in rows if r["psnr"]]
    out["psnr"] = float(np.mean(ps)) if ps else None
    ss = [float(r["ssim"]) for r in rows if r["ssim"]]
    out["ssim"] = float(np.mean(ss)) if ss else None
    out["reference"] = rows[0]["reference"] if rows else ""
    if dlib is not None:
        paths = {it.key: it.path for it in list_faces(probes)}
        lm = DlibLandmarker()
        clean = np.stack([load_aligned(paths[r["key"]], lm)[0] for r in rows])
        attacked = np.stack([read_image(method_dir / "images" / f"{r['key']}.png") for r in rows])
        a, b = dlib.embed(clean), dlib.embed(attacked)
        out["dlib_cos"] = float(np.mean((a * b).sum(1)))
    return out


def figure(out: Path, probes: Path, templates: Path, n: int = 4) -> None:
    """Original, template, DM, AdvNoise-DM, MF²M (PSNR vs DM in the titles) for ``n`` probes."""
    import csv

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from attacks.templates import list_faces, load_aligned
    from benchmark.atomic import atomic_path
    from benchmark.data.images import read_image
    from benchmark.models.landmarks import DlibLandmarker
    rows = {r["key"]: r for r in csv.DictReader(open(out / "mf2m" / "probes.csv")) if r["status"] == "ok"}
    adv = {r["key"]: r for r in csv.DictReader(open(out / "advnoise-dm" / "probes.csv")) if r["status"] == "ok"}
    keys = [k for k in rows if k in adv][:n]
    paths = {it.key: it.path for it in list_faces(probes)}
    tpaths = {it.key: it.path for it in list_faces(templates)}
    lm = DlibLandmarker()
    fig, axes = plt.subplots(len(keys), 5, figsize=(10, 2.2 * len(keys)), squeeze=False)
    for i, k in enumerate(keys):
        panels = [("original", load_aligned(paths[k], lm)[0]), ("template", load_aligned(tpaths[rows[k]["template"]], lm)[0]),
                  ("DM", read_image(out / "dm" / "images" / f"{k}.png")),
                  (f"AdvNoise-DM {float(adv[k]['psnr']):.2f} dB", read_image(out / "advnoise-dm" / "images" / f"{k}.png")),
                  (f"MF²M {float(rows[k]['psnr']):.2f} dB", read_image(out / "mf2m" / "images" / f"{k}.png"))]
        for ax, (title, img) in zip(axes[i], panels):
            ax.imshow(img)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(out / "attack_examples.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def main() -> None:
    """Run every method on the pool, then write the table and the figure."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lfw", required=True, help="LFW images folder (<Name>/<Name>_NNNN.jpg)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--identities", type=int, default=80, help="probe identities")
    p.add_argument("--per-identity", type=int, default=20, help="max probe images per identity")
    p.add_argument("--templates", type=int, default=300, help="template identities (one image each)")
    p.add_argument("--methods", default="solid,dm,advnoise-dm,mf2m,i-fgsm", help="comma-separated methods")
    p.add_argument("--md", default="mf2m-maskdet", help="mask detector, or 'none' for an FR-only attack")
    p.add_argument("--overrides", default="{}", help='JSON {method: {param: value}} (e.g. fewer iterations)')
    p.add_argument("--batch-size", type=int, default=8, help="probes per batch")
    args = p.parse_args()
    from attacks.pipeline import AttackJob, run_attack
    out = Path(args.out)
    probes, templates = build_pool(Path(args.lfw), out / "pool", args.identities, args.per_identity, args.templates)
    fr, md, dlib = load_models(args.md)
    overrides = json.loads(args.overrides)
    table = {}
    for method in args.methods.split(","):
        t = time.time()
        run_attack(AttackJob(method=method, probes=str(probes), templates=str(templates), out=str(out / method),
                             batch_size=args.batch_size, params=overrides.get(method, {}),
                             md=args.md), fr, md, progress=True)
        table[method] = {**summarise(out / method, probes, dlib), "seconds": round(time.time() - t, 1),
                         "params": overrides.get(method, {})}
        print(method, json.dumps(table[method]), flush=True)
    lines = ["| method | n | SFace cos to original | dlib cos to original | mask detected | PSNR vs ref | SSIM vs ref | ref | overrides |",
             "|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, d=3: "" if v is None else f"{v:.{d}f}"   # noqa: E731
    for m, r in table.items():
        lines.append(f"| {m} | {r['n']} | {fmt(r['sface_cos'])} | {fmt(r.get('dlib_cos'))} | {fmt(r['detected'])} | "
                     f"{fmt(r['psnr'], 2)} | {fmt(r['ssim'], 4)} | {r['reference']} | {r['params'] or 'paper'} |")
    (out / "evidence.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if {"dm", "advnoise-dm", "mf2m"} <= set(table):
        figure(out, probes, templates)


if __name__ == "__main__":
    main()
