"""The search stage: probe, mate and distractor feature sets → exact MegaFace-protocol metrics (rank-1, CMC,
TAR@FAR, AUC) over every score, by blocked GEMMs with additive partial results (``engine``), the
probe–mate identity join (``identity``), multi-process merging (``distributed``) and the outputs
(``outputs``); ``evaluate`` (``api``) runs it on arrays, ``run`` from files."""

__all__ = ["SearchResult", "evaluate"]


def __getattr__(name: str):
    # ``benchmark.search.evaluate`` without importing the engine (and torch) at package import
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
