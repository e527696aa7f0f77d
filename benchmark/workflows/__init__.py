"""Workflows: the orchestration above the stages.

Owns ``mf2m run`` and ``mf2m demo`` (``run``, ``demo``), the defence leaderboard, transfer study and
submission verification (``defend``, ``transfer``, ``verify``), mask-detector training and evaluation,
and the LFW self-check, with the one config loader (``config``), model factory (``models``) and
content-addressed stage cache (``cache``) they share. Workflows call the stages (``attacks``,
``benchmark.embed``, ``benchmark.search``, ``benchmark.defences``) and the report renderer; nothing
below imports them.
"""
