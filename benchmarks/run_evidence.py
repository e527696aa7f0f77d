"""Attack evidence (issue 5) from finished ``mf2m run`` outputs — nothing is attacked again.

    python benchmarks/run_evidence.py --runs results/table1_lfw results/table2_lfw \
        --out results/attack_evidence --figure results/attack_examples.png

Per method it reports, over the probes the attack wrote:

* mean cosine similarity of the attacked probe to its clean original under every evaluation model of
  the runs (the white-box one, e.g. SFace, and black-box ones, e.g. dlib), from the embed stages'
  feature files (attacked probes keep their clean image's key, so rows pair up by key);
* the mask detection rate (P(masked) > 0.5) and mean PSNR/SSIM against the reference image (DM for
  AdvNoise-DM/MF²M, the solid mask for the FGSM family), from the attack stage's ``probes.csv``;
* the paper's orderings (DM detected less than solid; AdvNoise-DM and MF²M detected less than DM and
  less similar to the original; MF²M with a higher PSNR than AdvNoise-DM) as pass/fail lines.

Writes ``OUT/evidence.md``, ``OUT/evidence.json`` (with a manifest) and the example figure (original,
template, DM, AdvNoise-DM, MF²M with PSNR; ``benchmarks/attack_evidence.py``'s ``figure``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ORDER = ("solid", "dm", "advnoise-dm", "mf2m", "fgsm", "ti-fgsm", "i-fgsm", "mi-fgsm", "ti-mi-fgsm", "di2-fgsm",
         "m-di2-fgsm")


def features_by_key(folder: Path) -> dict[str, np.ndarray]:
    """Unit-norm feature rows of an embed stage's ``features/`` folder, by key."""
    from benchmark.features import FeatureSet
    fs = FeatureSet(folder / "features")
    feats, keys = [], []
    for block in fs.iter_blocks():
        feats.append(block.features)
        keys.extend(str(k) for k in block.keys)
    arr = np.concatenate(feats) if feats else np.zeros((0, fs.dim), np.float32)
    return dict(zip(keys, arr))


def embed_dirs(run: dict) -> dict[str, Path]:
    """Embed-stage folders of a run by their label (``"<method> on <model>"``, ``"clean probes on <model>"``)."""
    return {s["label"]: Path(s["dir"]) for s in run["stages"] if s["stage"] == "embed"}


def mean_cosines(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Mean cosine (attacked vs clean original) per method and evaluation model."""
    out: dict[str, dict[str, float]] = {}
    for run in runs:
        dirs = embed_dirs(run)
        for model in run["config"]["evaluate"]["models"]:
            clean = features_by_key(dirs[f"clean probes on {model}"])
            for method in run["config"]["attack"]["methods"]:
                label = f"{method} on {model}"
                if method == "none" or label not in dirs:
                    continue
                att = features_by_key(dirs[label])
                keys = [k for k in att if k in clean]
                out.setdefault(method, {})[model] = float(np.mean([att[k] @ clean[k] for k in keys]))
    return out


def attack_rows(runs: list[dict]) -> dict[str, tuple[Path, list[dict[str, str]]]]:
    """The attack folder and its ``probes.csv`` rows (status ok) per method."""
    out = {}
    for run in runs:
        for s in run["stages"]:
            if s["stage"] == "attack" and (Path(s["dir"]) / "probes.csv").is_file():
                with open(Path(s["dir"]) / "probes.csv", newline="", encoding="utf-8") as fh:
                    out[s["label"]] = (Path(s["dir"]), [r for r in csv.DictReader(fh) if r["status"] == "ok"])
    return out


def summarise(runs: list[dict]) -> dict[str, dict]:
    """Per method: n, cosines per model, detection rate, PSNR/SSIM (finite values), reference, settings."""
    cos = mean_cosines(runs)
    table = {}
    for method, (folder, rows) in attack_rows(runs).items():
        pm = [float(r["p_masked"]) for r in rows if r["p_masked"]]
        ps = [float(r["psnr"]) for r in rows if r["psnr"] and np.isfinite(float(r["psnr"]))]
        ss = [float(r["ssim"]) for r in rows if r["ssim"]]
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        table[method] = {"n": len(rows), "cos": cos.get(method, {}),
                         "detected": float(np.mean(np.array(pm) > 0.5)) if pm else None,
                         "p_masked": float(np.mean(pm)) if pm else None,
                         "psnr": float(np.mean(ps)) if ps else None, "ssim": float(np.mean(ss)) if ss else None,
                         "reference": rows[0]["reference"] if rows else "",
                         "attack": manifest["summary"].get("attack_config"),
                         "seconds": manifest["summary"].get("seconds"), "dir": str(folder.resolve())}
    return {m: table[m] for m in ORDER if m in table}


def orderings(t: dict[str, dict], white: str, black: str | None) -> list[tuple[str, bool | None, str]]:
    """The paper's orderings as (claim, holds, numbers)."""
    def g(m, k, model=None):
        if m not in t:
            return None
        return t[m]["cos"].get(model) if model else t[m][k]
    checks = []

    def add(claim, a, b, less=True, fmt="{:.3f}"):
        if a is None or b is None:
            checks.append((claim, None, "not measured"))
        else:
            checks.append((claim, (a < b) if less else (a > b), f"{fmt.format(a)} vs {fmt.format(b)}"))
    add("DM detected less often than the solid mask", g("dm", "detected"), g("solid", "detected"))
    for m in ("advnoise-dm", "mf2m"):
        add(f"{m} detected less often than DM", g(m, "detected"), g("dm", "detected"))
        add(f"{m} less similar to the original than DM ({white}, white-box)", g(m, "", white), g("dm", "", white))
        if black:
            add(f"{m} less similar to the original than DM ({black}, black-box)", g(m, "", black), g("dm", "", black))
    add("MF²M higher PSNR than AdvNoise-DM", g("mf2m", "psnr"), g("advnoise-dm", "psnr"), less=False, fmt="{:.2f} dB")
    add(f"MF²M at least as strong as AdvNoise-DM ({white} cosine lower or equal)", g("mf2m", "", white),
        (g("advnoise-dm", "", white) or 0) + 1e-9 if g("advnoise-dm", "", white) is not None else None)
    return checks


def markdown(t: dict[str, dict], models: list[str], checks) -> str:
    """The evidence table and the ordering checks as Markdown."""
    f = lambda v, d=3: "–" if v is None else f"{v:.{d}f}"   # noqa: E731
    head = ["method", "n"] + [f"{m} cos to original" for m in models] + ["mask detected", "mean P(masked)",
                                                                          "PSNR vs ref (dB)", "SSIM vs ref", "ref"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, r in t.items():
        lines.append("| " + " | ".join([m, str(r["n"])] + [f(r["cos"].get(x)) for x in models] +
                                       [f(r["detected"], 2), f(r["p_masked"]), f(r["psnr"], 2), f(r["ssim"], 4),
                                        r["reference"] or "–"]) + " |")
    lines += ["", "| paper's ordering | holds | numbers |", "|---|---|---|"]
    lines += [f"| {c} | {'–' if ok is None else ('yes' if ok else '**no**')} | {n} |" for c, ok, n in checks]
    return "\n".join(lines) + "\n"


def make_figure(t: dict[str, dict], split_dir: Path, out_png: Path, n: int) -> None:
    """Original, template, DM, AdvNoise-DM, MF²M for ``n`` probes (reuses ``attack_evidence.figure``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from attack_evidence import figure

    from benchmark.atomic import atomic_path
    with tempfile.TemporaryDirectory() as tmp:
        for m in ("dm", "advnoise-dm", "mf2m"):
            os.symlink(t[m]["dir"], Path(tmp) / m)
        figure(Path(tmp), split_dir / "probes.csv", split_dir / "templates.csv", n=n)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_png) as dst:
            Path(dst).write_bytes((Path(tmp) / "attack_examples.png").read_bytes())


def main() -> None:
    """Read the runs, write the evidence table, JSON and figure."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="`mf2m run` output folders (with run.json)")
    p.add_argument("--out", required=True, help="folder for evidence.md and evidence.json")
    p.add_argument("--figure", default=None, help="PNG path for the example figure (needs dm, advnoise-dm, mf2m)")
    p.add_argument("--examples", type=int, default=4, help="probes in the figure")
    args = p.parse_args()
    from benchmark.atomic import write_json, write_text
    from benchmark.manifest import build_manifest
    runs = []
    for r in args.runs:
        path = Path(r) / "run.json"
        if not path.is_file():
            raise SystemExit(f"not a finished run folder (no run.json): {r}")
        runs.append(json.loads(path.read_text(encoding="utf-8")))
    models = list(dict.fromkeys(m for run in runs for m in run["config"]["evaluate"]["models"]))
    white = runs[0]["config"]["attack"]["fr"]
    black = next((m for m in models if m != white), None)
    table = summarise(runs)
    checks = orderings(table, white, black)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(table, models, checks)
    write_text(out / "evidence.md", md)
    write_json(out / "evidence.json", build_manifest("attack-evidence", vars(args), table=table,
                                                     checks=[{"claim": c, "holds": ok, "numbers": n}
                                                             for c, ok, n in checks]))
    print(md)
    if args.figure and {"dm", "advnoise-dm", "mf2m"} <= set(table):
        split_dir = next(Path(s["dir"]) for s in runs[0]["stages"] if s["stage"] == "split")
        make_figure(table, split_dir, Path(args.figure), args.examples)
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
