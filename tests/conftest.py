"""Shared fixtures: the real test data kept beside the repository (never inside it)."""

from pathlib import Path

import pytest

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"
FACES_DIR = SHARED_DIR / "faces"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` next to the repository root; tests using it skip when it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"real test data ../shared not found: {SHARED_DIR}")
    return SHARED_DIR


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    """``../shared/faces``: labelled photos, group scenes and a short video (see its README)."""
    if not FACES_DIR.is_dir():
        pytest.skip(f"real face images ../shared/faces not found: {FACES_DIR}")
    return FACES_DIR
