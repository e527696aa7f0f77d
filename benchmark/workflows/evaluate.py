"""One call to benchmark a defence from Python: ``benchmark.evaluate(defence, data=…, attacks=[…])``.

It runs the ``mf2m defend`` leaderboard for one defence (beside the undefended system) and returns its
leaderboard rows; without ``out`` every intermediate file (pool, aligned faces, attacked images) lives in
a temporary folder that is removed afterwards, so nothing is written.

Examples::

    >>> import benchmark
    >>> result = benchmark.evaluate("jpeg:quality=50", data="lfw:/data/lfw",
    ...                             attacks=["solid", "advnoise-dm"], device="cpu")   # doctest: +SKIP
    >>> result.row("advnoise-dm", "adaptive")["rank1"]                                # doctest: +SKIP
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DefenceResult", "evaluate"]


@dataclass
class DefenceResult:
    """The leaderboard rows of one defence (``rows``) and of the undefended system on the same pool."""

    defence: str  # the defence's tag, e.g. jpeg[apply_to=both,quality=50]
    rows: list[dict[str, Any]]
    baseline: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)
    out: str | None = None  # the output folder when one was asked for

    def row(self, attack: str, mode: str | None = None) -> dict[str, Any]:
        """The row of ``attack`` (``clean`` for unmasked probes) in ``mode`` (``non-adaptive``/``adaptive``)."""
        found = [r for r in self.rows if r["attack"] == attack and (mode is None or r["mode"] == mode)]
        if len(found) != 1:
            modes = sorted({r["mode"] for r in self.rows if r["attack"] == attack})
            raise KeyError(f"{attack!r} (mode {mode!r}): {len(found)} rows; modes of this attack: {modes}")
        return found[0]


def evaluate(
    defence: str,
    *,
    data: str,
    attacks: Sequence[str | dict[str, Any]],
    device: str = "auto",
    recognizer: str = "sface",
    mask_detector: str = "mf2m-maskdet",
    models: tuple[Any, Any] | None = None,
    out: str | Path | None = None,
    progress: bool = False,
    **settings: Any,
) -> DefenceResult:
    """Benchmark ``defence`` (an entry-point name or ``module:callable``, with ``:k=v`` parameters).

    ``data`` is a dataset spec (``lfw:DIR``, ``folder:DIR``, …); ``attacks`` are method names or mappings
    ``{name, method, params, adaptive}`` as in ``configs/defences.yaml``; ``settings`` are the other
    leaderboard keys (``identities``, ``max_images``, ``distractors``, ``templates``, ``seed``, ``far``,
    ``eot_samples``, ``batch_size``). ``models``: ``(recognizer, mask_detector)`` objects instead of
    registry names. With ``out`` the full leaderboard (CSV, Markdown, HTML, JSON) is written there.
    """
    from .defend import LeaderboardConfig, run_leaderboard

    def run(folder: Path) -> DefenceResult:
        raw = {
            "data": data,
            "out": str(folder),
            "attacks": list(attacks),
            "defences": [defence],
            "recognizer": recognizer,
            "mask_detector": mask_detector,
            "device": device,
            **settings,
        }
        result = run_leaderboard(
            LeaderboardConfig.from_dict(raw, "benchmark.evaluate"), progress=progress, models=models
        )
        rows = result["rows"]
        tags = [t for t in dict.fromkeys(r["defence"] for r in rows) if t != "none"]
        tag = tags[0] if tags else "none"
        return DefenceResult(
            defence=tag,
            rows=[r for r in rows if r["defence"] == tag],
            baseline=[r for r in rows if r["defence"] == "none"],
            meta=result["meta"],
            out=str(folder) if out is not None else None,
        )

    if out is not None:
        return run(Path(out))
    with tempfile.TemporaryDirectory(prefix="mf2m-evaluate-") as tmp:
        return run(Path(tmp))
