"""Defences against faced masks: the plug-in API (``api``: the ``Defence`` protocol, loading by registry name
or ``module:callable``, wrapping a recognizer and mask detector), the registry of named defences
(``DEFENCES``), the built-in defences (``reference``), the per-cell metrics (``metrics``) and bootstrap
intervals (``bootstrap``). The leaderboard, transfer and verification workflows that use them live in
``benchmark.workflows``. Importing this package is cheap (no torch, no OpenCV)."""

from __future__ import annotations

from ..plugins import Registry

__all__ = ["DEFENCES"]

#: every named defence: the built-ins below, then those of installed packages (entry-point group
#: ``mf2m.defences``, each naming a factory that returns a defence object)
DEFENCES = Registry("defence", group="mf2m.defences")

for _name, _attr in (
    ("jpeg", "JPEG"),
    ("median-blur", "MedianBlur"),
    ("gaussian-blur", "GaussianBlur"),
    ("bit-depth", "BitDepth"),
    ("random-resize-pad", "RandomResizePad"),
    ("upper-face", "UpperFace"),
    ("faced-mask-aware-detector", "FacedMaskAwareDetector"),
):
    DEFENCES.register(_name, f"benchmark.defences.reference:{_attr}")
del _name, _attr
