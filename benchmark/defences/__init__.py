"""Defences against faced masks: the plug-in API (``api``: the ``Defence`` protocol, loading by entry point
or ``module:callable``, wrapping a recognizer and mask detector), the built-in defences (``reference``), the
per-cell metrics (``metrics``) and bootstrap intervals (``bootstrap``). The leaderboard, transfer and
verification workflows that use them live in ``benchmark.workflows``. Importing this package is cheap
(no torch, no OpenCV)."""
