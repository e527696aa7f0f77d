"""Defences against faced masks: the plug-in API (``api``), the built-in defences (``reference``) and the
``mf2m defend`` leaderboard (``leaderboard``). Importing this package is cheap (no torch, no OpenCV)."""
