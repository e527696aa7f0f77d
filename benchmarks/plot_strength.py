"""Fig. 7-style comparison of AdvNoise-DM and MF²M at matched strength, from ``attack_evidence.py --sweep``.

Reads ``sweep.json`` (mean SFace cosine to the clean original, detection rate and PSNR/SSIM against DM along
AdvNoise-DM's PGD and along MF²M's kernel stage) and writes, next to ``--out``:

* ``strength.csv`` — one row per traced point: attack, step, SFace cosine, detection rate, PSNR, SSIM;
* ``strength.md`` — the same as a table, plus PSNR interpolated at the cosines both curves reach;
* ``strength.png`` — PSNR and SSIM against the white-box cosine (lower cosine = stronger attack).

    python benchmarks/attack_evidence.py --lfw ../shared/data/lfw/images --identities 80 --per-identity 1 \\
        --templates 50 --out OUT --sweep raw:none:0.003125:0:160
    python benchmarks/plot_strength.py OUT/sweep.json --out results/attack_strength
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np


def curves(result: dict) -> dict[str, list[dict]]:
    """``{attack: [point, …]}`` ordered by step; MF²M's curve starts from the PGD-noised DM (step 0)."""
    out = {"AdvNoise-DM": [{"step": 0, **result["dm"]}]}
    out["AdvNoise-DM"] += [{"step": int(k), **v} for k, v in sorted(result["advnoise-dm"].items(), key=lambda kv: int(kv[0]))]
    for spec, curve in result["mf2m"].items():
        name = "MF²M" if len(result["mf2m"]) == 1 else f"MF²M {spec}"
        out[name] = [{"step": 0, **result["noised"]}] + [
            {"step": int(k), **v} for k, v in sorted(curve.items(), key=lambda kv: int(kv[0]))
        ]
    return out


def matched(lines: dict[str, list[dict]], a: str, b: str, n: int = 5) -> list[tuple[float, float, float]]:
    """(cosine, PSNR of ``a``, PSNR of ``b``) at ``n`` cosines inside both curves' ranges (linear interpolation)."""
    def series(name: str) -> tuple[np.ndarray, np.ndarray]:
        pts = sorted((p["sface_cos"], p["psnr"]) for p in lines[name] if p.get("psnr") is not None)
        return np.array([c for c, _ in pts]), np.array([q for _, q in pts])

    ca, pa = series(a)
    cb, pb = series(b)
    lo, hi = max(ca.min(), cb.min()), min(ca.max(), cb.max())
    if lo >= hi:
        return []
    return [(float(c), float(np.interp(c, ca, pa)), float(np.interp(c, cb, pb))) for c in np.linspace(lo, hi, n)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", help="sweep.json written by attack_evidence.py --sweep")
    ap.add_argument("--out", required=True, help="folder for strength.csv, strength.md, strength.png")
    ap.add_argument("--pool", default="LFW probes", help="what the probes are, for the caption and the title")
    args = ap.parse_args(argv)
    record = json.loads(Path(args.sweep).read_text(encoding="utf-8"))
    result = record["result"]
    lines = curves(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [(name, p["step"], p["sface_cos"], p.get("detected"), p.get("psnr"), p.get("ssim"))
            for name, pts in lines.items() for p in pts]
    with open(out / "strength.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["attack", "step", "sface_cos", "detected", "psnr", "ssim"])
        w.writerows(rows)
    md = [f"Strength against image quality, {result['probes']} {args.pool}, SFace white-box + mf2m-maskdet "
          "(means over probes; PSNR/SSIM against the DM image; step 0 of MF²M = DM + 40 PGD steps at ε 0.01).", "",
          "| attack | step | SFace cosine | detected | PSNR (dB) | SSIM |", "|---|---|---|---|---|---|"]
    md += [f"| {a} | {s} | {c:.4f} | {'' if d is None else f'{d:.3f}'} | {'' if p is None else f'{p:.2f}'} | "
           f"{'' if q is None else f'{q:.4f}'} |" for a, s, c, d, p, q in rows]
    names = list(lines)
    pairs = matched(lines, names[0], names[1]) if len(names) >= 2 else []
    if pairs:
        md += ["", "PSNR at matched white-box cosine (linear interpolation between traced points):",
               "", f"| cosine | {names[0]} PSNR | {names[1]} PSNR | difference |", "|---|---|---|---|"]
        md += [f"| {c:.3f} | {x:.2f} | {y:.2f} | {y - x:+.2f} |" for c, x, y in pairs]
    (out / "strength.md").write_text("\n".join(md) + "\n", encoding="utf-8")

    from matplotlib.figure import Figure
    fig = Figure(figsize=(9, 3.8), layout="tight")
    ax1, ax2 = fig.subplots(1, 2)
    for name, pts in lines.items():
        pts = [p for p in pts if p.get("psnr") is not None]
        cos = [p["sface_cos"] for p in pts]
        ax1.plot(cos, [p["psnr"] for p in pts], marker="o", ms=3, label=name)
        ax2.plot(cos, [p["ssim"] for p in pts], marker="o", ms=3, label=name)
    for ax, what in ((ax1, "PSNR vs DM (dB)"), (ax2, "SSIM vs DM")):
        ax.set_xlabel("SFace cosine to the original (white-box; lower = stronger)")
        ax.set_ylabel(what)
        ax.invert_xaxis()
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"AdvNoise-DM vs MF²M along their iterations ({result['probes']} {args.pool})")
    fig.savefig(out / "strength.png", dpi=120)
    print(f"wrote {out}/strength.csv, strength.md, strength.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
