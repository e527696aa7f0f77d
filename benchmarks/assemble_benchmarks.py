"""Rebuild ``BENCHMARKS.md`` from the per-stage result sections in ``benchmarks/results/``.

Each benchmark writes (or its author edits) one Markdown section in ``benchmarks/results/<name>.md``;
this script joins ``_header.md`` and the sections in pipeline order, so no section is edited twice.

    python benchmarks/assemble_benchmarks.py          # writes BENCHMARKS.md at the repository root
"""

from __future__ import annotations

from pathlib import Path

# the order of the sections in BENCHMARKS.md: the four stages, then what ties them together
SECTIONS = ("search_scale", "search_dense", "embed_speed", "embed_precision", "models", "lfw", "mask_detector",
            "attack_speed", "attack_precision",
            "attack_evidence", "tables_lfw", "tables_lfw_paper", "evidence_run", "report-run", "defences")


def assemble(root: Path) -> str:
    """The text of BENCHMARKS.md: the header, then every existing section separated by rules."""
    results = root / "benchmarks" / "results"
    parts = [(results / "_header.md").read_text().rstrip()]
    parts += [(results / f"{name}.md").read_text().rstrip() for name in SECTIONS if (results / f"{name}.md").exists()]
    unknown = sorted(p.stem for p in results.glob("*.md") if p.stem not in SECTIONS and p.stem != "_header")
    if unknown:
        raise SystemExit(f"benchmarks/results: add {', '.join(unknown)} to SECTIONS in {Path(__file__).name}")
    return "\n\n---\n\n".join(parts) + "\n"


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    target = root / "BENCHMARKS.md"
    tmp = target.with_suffix(".md.tmp")
    tmp.write_text(assemble(root))
    tmp.replace(target)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
