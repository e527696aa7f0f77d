"""Helpers for checking that a run folder's committed tables re-derive from its raw outputs."""

from __future__ import annotations

from pathlib import Path


def table_files(report: Path) -> dict[str, bytes]:
    """The table files of a report folder (``*.md`` but ``report.md``, ``*.csv``, ``*.tex``) by name → bytes."""
    return {
        p.name: p.read_bytes()
        for p in sorted(report.iterdir())
        if p.is_file() and p.suffix in (".md", ".csv", ".tex") and p.name != "report.md"
    }
