"""Cloud-wide secrets in the store (cloud/store_settings.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from blindgate.cloud.store import GalleryStore
from blindgate.cloud.store_settings import CloudSettings, SettingError


def test_get_or_create_keeps_the_first_value(store_url: str) -> None:
    with GalleryStore(store_url) as store:
        settings = CloudSettings(store.database)
        assert settings.get("token") is None
        assert settings.get_or_create("token", lambda: b"first") == b"first"
        assert settings.get_or_create("token", lambda: b"second") == b"first"
        assert settings.get("token") == b"first"


def test_put_move_delete(store_url: str) -> None:
    with GalleryStore(store_url) as store:
        settings = CloudSettings(store.database)
        settings.put("next", b"n1")
        settings.put("next", b"n2")
        assert settings.move("next", "current") == b"n2"
        assert settings.get("next") is None and settings.get("current") == b"n2"
        with pytest.raises(SettingError):
            settings.move("next", "current")
        assert settings.delete("current") is True
        assert settings.delete("current") is False
        with pytest.raises(SettingError):
            settings.put("empty", b"")


def test_replicas_racing_agree_on_one_value(pg_url: str) -> None:
    """Several stores (replicas) create the same secret at once: all of them get the same value."""
    stores = [GalleryStore(pg_url) for _ in range(4)]
    results: list[bytes] = []
    barrier = threading.Barrier(len(stores))

    def create(index: int) -> None:
        barrier.wait()
        results.append(CloudSettings(stores[index].database).get_or_create("key", lambda: f"replica-{index}".encode()))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.close()
    assert len(results) == 4 and len(set(results)) == 1


def test_secrets_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "gallery.db"
    with GalleryStore(path) as store:
        CloudSettings(store.database).put("x", b"\x00\x01")
    with GalleryStore(path) as store:
        assert CloudSettings(store.database).get("x") == b"\x00\x01"
