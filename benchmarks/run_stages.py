"""Wall time of every stage of an ``mf2m run``, per stage and per method, from the stage markers it left.

Reads the ``.stage.json`` markers of a stage store (``results/<run>/stages``, committed) and, when given, of
the cache (``.cache/mf2m``: the split, the distractors and the searches, which the store does not keep), plus
each attack's manifest (probes processed and seconds of its last sitting) — so the table can be rebuilt after
the run, across sittings. Attack speed is given in images/s and in image-iterations/s (gradient iterations
per image at the attack's settings: 1 for FGSM and TI-FGSM, 40 for the iterative ones and AdvNoise-DM,
40 + 160 for MF²M, none for the solid mask and DM).

    python benchmarks/run_stages.py --store results/evidence/stages --cache .cache/mf2m \\
        --out benchmarks/results/evidence_run.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def gradient_iterations(method: str, params: dict[str, Any]) -> int:
    """Gradient iterations per image of an attack at ``params`` (the attack classes' own defaults otherwise)."""
    from attacks import attack_class

    if method in ("solid", "dm"):  # plain masks: no gradient
        return 0
    if method == "mf2m":
        return int(params.get("noise_steps", 40)) + int(params.get("kernel_steps", 160))
    cls = attack_class(method)
    defaults = {"steps": 40, **getattr(cls, "defaults", {})}
    return int(params.get("steps", defaults["steps"]))


def markers(store: Path, cache: Path | None) -> list[tuple[Path, dict[str, Any]]]:
    """Every finished stage of the store, and the split, distractor and search stages of the cache (a cache
    also holds stages of other runs and settings: what the store keeps is taken from the store only)."""
    seen: dict[str, tuple[Path, dict[str, Any]]] = {}
    for root, wanted in ((store, None), (cache, ("split", "embed", "search"))):
        for path in sorted(root.glob("*/.stage.json")) if root else ():
            record = json.loads(path.read_text(encoding="utf-8"))
            if wanted and (record["stage"] not in wanted):
                continue
            if wanted and record["stage"] == "embed" and not record["label"].startswith("distractors"):
                continue
            seen.setdefault(record["key"], (path.parent, record))
    return list(seen.values())


def rows(found: list[tuple[Path, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per stage: kind, label, seconds of the work, items and rates where known."""
    out = []
    for folder, rec in found:
        row = {"stage": rec["stage"], "label": rec["label"], "seconds": rec.get("seconds"), "finished": rec["finished"]}
        if rec["stage"] == "attack":
            summary = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["summary"]
            n, sec = summary["counts"]["processed_now"], summary["seconds"]
            its = gradient_iterations(rec["config"]["method"], rec["config"].get("params", {}))
            row.update(items=summary["counts"]["probes"], processed=n, attack_seconds=sec)
            row["img_s"] = n / sec if sec else None
            row["img_it_s"] = n * its / sec if sec and its else None
            row["iterations"] = its
        elif rec["stage"] == "embed":
            manifest = folder / "features" / "manifest.json"
            if manifest.is_file():
                row["items"] = json.loads(manifest.read_text(encoding="utf-8"))["count"]
                if row["seconds"]:
                    row["img_s"] = row["items"] / row["seconds"]
        out.append(row)
    order = {"split": 0, "attack": 1, "embed": 2, "search": 3}
    return sorted(out, key=lambda r: (order.get(r["stage"], 9), r["finished"]))


def _num(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def markdown(table: list[dict[str, Any]]) -> str:
    lines = [
        "| stage | what | wall s | items | images/s | gradient its/image | image-iterations/s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in table:
        note = ""
        if r["stage"] == "attack" and r.get("processed") != r.get("items"):
            note = f" (rate from the last sitting: {r['processed']} images in {r['attack_seconds']:.0f} s)"
        lines.append(
            f"| {r['stage']} | {r['label']}{note} | {_num(r.get('seconds'), '.0f')} | {r.get('items', '—')} | "
            f"{_num(r.get('img_s'), '.1f')} | {r.get('iterations', '—')} | {_num(r.get('img_it_s'), '.1f')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True, type=Path, help="the run's stage store (config store:)")
    p.add_argument("--cache", type=Path, default=None, help="the cache folder, for the stages the store does not keep")
    p.add_argument("--out", type=Path, default=None, help="write the Markdown table here (default: print it)")
    a = p.parse_args()
    text = markdown(rows(markers(a.store, a.cache)))
    if a.out:
        a.out.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
