"""Default false-accept rates and CMC ranks of a search (shared by the library and ``mf2m search``)."""

from __future__ import annotations

DEFAULT_FARS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3)
DEFAULT_RANKS: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100, 1000, 10000, 100000, 1000000)
