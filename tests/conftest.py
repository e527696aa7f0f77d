"""Shared test fixtures. ``../shared`` (paper data) exists beside the repo in CI and on developer
machines, never on a user's machine: tests that need it take the ``shared_dir`` fixture and skip without it."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """Path of ../shared; skips the test when it is absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared (test data) is not present")
    return SHARED


@pytest.fixture(scope="session")
def lfw_dir(shared_dir: Path) -> Path:
    """The LFW copy in ../shared/data/lfw (images/<Name>/<Name>_NNNN.jpg, pairs.txt, people.txt)."""
    path = shared_dir / "data" / "lfw"
    if not (path / "images").is_dir():
        pytest.skip("../shared/data/lfw is not present")
    return path
