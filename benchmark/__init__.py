"""mf2m: benchmark of face recognition and face-mask detection under faced masks.

Layers, lowest first (``tests/test_layering.py`` keeps them; a package imports only its own layer and
the ones below):

* building blocks – ``benchmark.features`` (the feature-set format), ``benchmark.data`` (datasets, face
  preparation, splits), ``benchmark.models`` (recognizers, detectors, landmarks, mask detectors) and the
  small modules ``atomic``, ``safepath``, ``manifest``, ``device``, ``yamlfile``, ``precision``
* stages – ``attacks`` (masked / attacked probe sets), ``benchmark.embed`` (images → feature sets),
  ``benchmark.search`` (feature sets → exact MegaFace-protocol metrics), ``benchmark.defences``
  (defence plug-ins and their per-cell metrics)
* ``benchmark.report`` – stage outputs → tables, plots, HTML (renders, never computes)
* ``benchmark.workflows`` – ``mf2m run``/``demo``/``defend``/``transfer``, mask-detector training, the LFW
  self-check: config loading, model factory and the stage cache
* the command line – ``benchmark.cli`` and each package's ``cli.py``

``benchmark.evaluate(defence, data=…, attacks=[…])`` benchmarks a defence in one call
(``benchmark.workflows.evaluate``); importing ``benchmark`` itself stays cheap.
"""

__version__ = "0.1.0"
__all__ = ["evaluate"]


def __getattr__(name: str):
    # the one-call defence benchmark, imported on first use (the package facade sits above every layer)
    if name == "evaluate":
        from .workflows.evaluate import evaluate

        return evaluate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
