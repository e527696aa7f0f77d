"""Evidence for the attack stage: per-method SFace/dlib similarity to the clean original, mask
detection rate and PSNR/SSIM against DM on a FaceScrub-like LFW pool, plus the example figure.

    python benchmarks/attack_evidence.py --lfw ../shared/data/lfw/images --identities 80 --per-identity 20 \
        --out /tmp/evidence --methods solid,dm,advnoise-dm,mf2m,i-fgsm

Probes: the first ``--identities`` LFW people with ≥ 2 images (up to ``--per-identity`` each);
templates: the next ``--templates`` people (one image each), so no probe ever meets its own identity.
Writes ``OUT/<method>/`` (the ``mf2m attack`` outputs), ``OUT/evidence.md``, ``OUT/evidence.json`` and
``OUT/attack_examples.png``.

``--sweep SPEC[,SPEC…]`` instead traces strength/PSNR curves (the paper's Fig. 7(a)) on the pool: DM, then
AdvNoise-DM's PGD every 10 steps, then MF²M's kernel stage on the PGD-noised DM (ε 0.01, 40 steps) for each
``update:norm:lr:bound:steps`` spec (lr per image, i.e. ``kernel_batch=1``; e.g. ``raw:none:0.1:0:60,raw:simplex:0.1:0:160``), writing
``OUT/sweep.json``; numbers are SFace cosine to the original, detection rate and PSNR/SSIM vs DM on the
8-bit images.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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


def pool_from_split(lfw: Path, split: Path, out: Path) -> tuple[Path, Path]:
    """Symlinked probe and template folders from an ``mf2m run`` split folder (``probes.csv``, ``templates.csv``):
    the first probe (by key) of every probe identity and every template, as the original LFW photos."""
    import csv

    def rows(name: str) -> list[dict[str, str]]:
        with open(split / name, newline="", encoding="utf-8") as fh:
            return sorted(csv.DictReader(fh), key=lambda r: r["key"])

    first: dict[str, str] = {}
    for r in rows("probes.csv"):
        first.setdefault(r["identity"], r["key"])
    for root, keys in ((out / "probes", first.values()), (out / "templates", [r["key"] for r in rows("templates.csv")])):
        for key in keys:
            src = next(lfw.glob(f"{key}.*"))
            link = root / key.split("/")[0] / src.name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                os.symlink(src.resolve(), link)
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
    """One method's row in ``run_evidence``'s table format: n, cosines to the clean original per model
    (SFace from the attack's 8-bit re-evaluation, dlib re-embedded here), detection rate, mean P(masked),
    PSNR/SSIM (finite values) against the reference image, settings and time."""
    import csv

    from attacks.templates import list_faces, load_aligned
    from benchmark.data.images import read_image
    from benchmark.models.landmarks import DlibLandmarker
    with open(method_dir / "probes.csv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["status"] == "ok"]
    manifest = json.loads((method_dir / "manifest.json").read_text(encoding="utf-8"))
    pm = [float(r["p_masked"]) for r in rows if r["p_masked"]]
    ps = [float(r["psnr"]) for r in rows if r["psnr"] and np.isfinite(float(r["psnr"]))]
    ss = [float(r["ssim"]) for r in rows if r["ssim"]]
    out = {"n": len(rows), "cos": {"sface": float(np.mean([float(r["fr_cosine"]) for r in rows]))},
           "detected": float(np.mean(np.array(pm) > 0.5)) if pm else None,
           "p_masked": float(np.mean(pm)) if pm else None,
           "psnr": float(np.mean(ps)) if ps else None, "ssim": float(np.mean(ss)) if ss else None,
           "reference": rows[0]["reference"] if rows else "",
           "attack": manifest["summary"].get("attack_config"), "seconds": manifest["summary"].get("seconds"),
           "templates": manifest["summary"].get("templates"), "dir": method_dir.name}
    if dlib is not None and rows:
        paths = {it.key: it.path for it in list_faces(probes)}
        lm = DlibLandmarker()
        clean = np.stack([load_aligned(paths[r["key"]], lm)[0] for r in rows])
        attacked = np.stack([read_image(method_dir / "images" / f"{r['key']}.png") for r in rows])
        a, b = dlib.embed(clean), dlib.embed(attacked)
        out["cos"]["dlib"] = float(np.mean((a * b).sum(1)))
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
    keys, seen = [], set()
    for k in rows:   # one probe per identity
        if k in adv and k.split("/")[0] not in seen:
            keys.append(k)
            seen.add(k.split("/")[0])
    keys = keys[:n]
    paths = {it.key: it.path for it in list_faces(probes)}
    tpaths = {it.key: it.path for it in list_faces(templates)}
    lm = DlibLandmarker()
    fig, axes = plt.subplots(len(keys), 5, figsize=(10, 2.4 * len(keys)), squeeze=False)
    for i, k in enumerate(keys):
        panels = [("original", load_aligned(paths[k], lm)[0]), ("template", load_aligned(tpaths[rows[k]["template"]], lm)[0]),
                  ("DM", read_image(out / "dm" / "images" / f"{k}.png")),
                  (f"AdvNoise-DM {float(adv[k]['psnr']):.2f} dB\nSFace cos {float(adv[k]['fr_cosine']):.2f}",
                   read_image(out / "advnoise-dm" / "images" / f"{k}.png")),
                  (f"MF²M {float(rows[k]['psnr']):.2f} dB\nSFace cos {float(rows[k]['fr_cosine']):.2f}",
                   read_image(out / "mf2m" / "images" / f"{k}.png"))]
        for ax, (title, img) in zip(axes[i], panels):
            ax.imshow(img)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(out / "attack_examples.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def _finite(value: float, digits: int) -> float | None:
    """Rounded, or None for inf/NaN (PSNR of an unchanged image)."""
    return round(float(value), digits) if np.isfinite(value) else None


def kernel_sweep(out: Path, probes: Path, templates: Path, specs: list[str], md_name: str) -> dict:
    """Strength/PSNR curves of AdvNoise-DM's PGD and of MF²M kernel variants (see the module docstring)."""
    import torch

    from attacks.base import pgd
    from attacks.masking import delaunay_mask
    from attacks.mf2m import MF2M
    from attacks.pipeline import image_similarity, mask_probability, to_uint8
    from attacks.templates import TemplateBank, aligned_batch, features, list_faces, to_tensor
    from benchmark.atomic import write_json
    from benchmark.manifest import build_manifest
    from benchmark.models.landmarks import DlibLandmarker
    fr, md, _ = load_models(md_name)
    frm, mdm = fr.torch_module("cpu"), (md.torch_module("cpu") if md is not None else None)
    lm = DlibLandmarker()
    bank = TemplateBank.build(templates, frm, f"{fr.name}:{fr.weights_hash()}", out / "sweep_bank.npz", lm)
    items = list_faces(probes)
    ok, clean, pts, _ = aligned_batch(items, lm)
    ref = features(frm, clean)
    best, _ = bank.choose(ref, [items[i].identity for i in ok])
    dms, regs = zip(*[delaunay_mask(clean[j], pts[j], bank.faces[b], bank.points[b]) for j, b in enumerate(best)])
    dms, regs = np.stack(dms), np.stack(regs)
    x, r, reft = to_tensor(dms), torch.from_numpy(regs)[:, None].float(), torch.from_numpy(ref)
    keys = [items[i].key for i in ok]

    def evaluate(img) -> dict:
        u8 = to_uint8(img)
        cos = float((features(frm, u8) * ref).sum(1).mean())
        det = float((mask_probability(mdm, u8) > 0.5).mean()) if mdm is not None else None
        sims = [image_similarity(dms[j], u8[j]) for j in range(len(u8))]
        return {"sface_cos": round(cos, 4), "detected": det,
                "psnr": _finite(np.mean([p for p, _ in sims]), 2), "ssim": _finite(np.mean([q for _, q in sims]), 4)}

    def tracer(curve: dict, every: set[int] | None = None):
        return lambda i, img: curve.__setitem__(i, evaluate(img)) if (every is None and i % 10 == 0) or (every and i in every) else None

    result = {"probes": len(ok), "dm": evaluate(x), "advnoise-dm": {}, "mf2m": {}}
    attack = MF2M(frm, mdm)
    pgd(attack, x, r, reft, keys, eps=0.04, step=0.001, steps=40, random_start=False, trace=tracer(result["advnoise-dm"]))
    print("advnoise-dm", json.dumps(result["advnoise-dm"]), flush=True)
    noised = pgd(attack, x, r, reft, keys, eps=0.01, step=0.001, steps=40, random_start=False)
    result["noised"] = evaluate(noised)
    for spec in specs:
        update, norm, lr, bound, steps = spec.split(":")
        variant = MF2M(frm, mdm, kernel_update=update, kernel_norm=norm, kernel_lr=float(lr),
                       kernel_bound=float(bound), kernel_steps=int(steps), kernel_batch=1)
        curve: dict = {}
        variant.filter_attack(noised, r, reft, trace=tracer(curve, {5, 10, *range(20, int(steps) + 1, 20)}))
        result["mf2m"][spec] = curve
        print(spec, json.dumps(curve), flush=True)
    write_json(out / "sweep.json", build_manifest("mf2m-kernel-sweep", {"specs": specs, "md": md_name}, result=result))
    return result


def write_tables(out: Path, table: dict, args: argparse.Namespace) -> str:
    """``OUT/evidence.md`` (table + the paper's orderings) and ``OUT/evidence.json`` (with a manifest)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run_evidence import ORDER, markdown, orderings

    from benchmark.atomic import write_json, write_text
    from benchmark.manifest import build_manifest, portable
    ordered = {m: table[m] for m in ORDER if m in table}
    models = ["sface"] + (["dlib"] if any("dlib" in r["cos"] for r in ordered.values()) else [])
    checks = orderings(ordered, "sface", "dlib" if "dlib" in models else None)
    md = markdown(ordered, models, checks)
    write_text(out / "evidence.md", md)
    record = build_manifest("attack-evidence", vars(args), table=ordered,
                            checks=[{"claim": c, "holds": ok, "numbers": n} for c, ok, n in checks])
    write_json(out / "evidence.json", portable(record))     # cache folders relative to the working directory
    return md


def main() -> None:
    """Run every method on the pool (resumable), then write the table, the orderings and the figure."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lfw", required=True, help="LFW images folder (<Name>/<Name>_NNNN.jpg)")
    p.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    p.add_argument("--identities", type=int, default=80, help="probe identities")
    p.add_argument("--per-identity", type=int, default=20, help="max probe images per identity")
    p.add_argument("--templates", type=int, default=300, help="template identities (one image each)")
    p.add_argument("--methods", default="solid,dm,advnoise-dm,mf2m,i-fgsm", help="comma-separated methods")
    p.add_argument("--md", default="mf2m-maskdet", help="mask detector, or 'none' for an FR-only attack")
    p.add_argument("--overrides", default="{}", help='JSON {method: {param: value}} (e.g. fewer iterations)')
    p.add_argument("--batch-size", type=int, default=8, help="probes per batch")
    p.add_argument("--figure", default=None, help="also copy the example figure to this PNG path")
    p.add_argument("--examples", type=int, default=4, help="probes in the figure")
    p.add_argument("--pool-split", default=None,
                   help="take the pool from an mf2m run's split folder instead (one probe per identity of its "
                        "probes.csv, its templates.csv), e.g. the evidence run's")
    p.add_argument("--sweep", default=None,
                   help="instead of the table: strength/PSNR curves for MF²M kernel variants "
                        "'update:norm:lr:bound:steps,…' (see above), written to OUT/sweep.json")
    args = p.parse_args()
    import shutil

    from attacks.pipeline import AttackJob, run_attack
    from benchmark.atomic import atomic_path
    out = Path(args.out)
    if args.pool_split:
        probes, templates = pool_from_split(Path(args.lfw), Path(args.pool_split), out / "pool")
    else:
        probes, templates = build_pool(Path(args.lfw), out / "pool", args.identities, args.per_identity, args.templates)
    if args.sweep:
        kernel_sweep(out, probes, templates, args.sweep.split(","), args.md)
        return
    fr, md, dlib = load_models(args.md)
    overrides = json.loads(args.overrides)
    table = {}
    bank_cache = None
    for method in args.methods.split(","):
        method_dir = out / method
        if bank_cache is not None and not (method_dir / "template_bank.npz").exists():
            method_dir.mkdir(parents=True, exist_ok=True)   # the bank is the same for every DM method
            shutil.copyfile(bank_cache, method_dir / "template_bank.npz")
        t = time.time()
        run_attack(AttackJob(method=method, probes=str(probes), templates=str(templates), out=str(method_dir),
                             batch_size=args.batch_size, params=overrides.get(method, {}),
                             md=args.md), fr, md, progress=True)
        if (method_dir / "template_bank.npz").exists():
            bank_cache = method_dir / "template_bank.npz"
        table[method] = {**summarise(method_dir, probes, dlib), "params": overrides.get(method, {}),
                         "wall_seconds_this_call": round(time.time() - t, 1)}
        print(method, json.dumps({k: v for k, v in table[method].items() if k not in ("attack", "dir")}), flush=True)
        md_text = write_tables(out, table, args)
    print(md_text)
    if {"dm", "advnoise-dm", "mf2m"} <= set(table):
        figure(out, probes, templates, n=args.examples)
        if args.figure:
            with atomic_path(args.figure) as dst:
                Path(dst).write_bytes((out / "attack_examples.png").read_bytes())


if __name__ == "__main__":
    main()
