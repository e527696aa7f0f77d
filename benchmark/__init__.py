"""mf2m: benchmark of face recognition and face-mask detection under faced masks.

Stages (each a sub-package and an ``mf2m`` sub-command):

* ``attacks``            – make masked / attacked probe sets (solid, DM, AdvNoise-DM, MF²M, FGSM family)
* ``benchmark.embed``    – images → HDF5 feature sets
* ``benchmark.search``   – feature sets → exact MegaFace-protocol metrics (CMC, TAR@FAR, AUC)
* ``benchmark.report``   – metrics → tables, plots, HTML

Shared layers: ``benchmark.models`` (recognizers, detectors, landmarks, mask detector),
``benchmark.data`` (datasets, face preparation), ``benchmark.features`` (the feature-set format).
"""

__version__ = "0.1.0"
