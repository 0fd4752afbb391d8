"""Shared fixtures: the real test data kept beside the repository (never inside it)."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker import Broker, start_broker

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


@pytest.fixture
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A fresh real Mosquitto broker on a free loopback port, stopped after the test."""
    running = start_broker(tmp_path_factory.mktemp("mosquitto"))
    yield running
    running.stop()
