"""cloud/store_doors.py: door request keys in the store."""

from __future__ import annotations

import pytest

from blindgate.cloud.store import GalleryStore, UnknownSite


@pytest.fixture
def store(tmp_path):
    with GalleryStore(tmp_path / "gallery.db") as s:
        s.create_site("home", "token", "k" * 32, b"bundle")
        yield s


def test_put_key_and_rotate(store):
    assert store.doors.key("home", "door1") is None
    assert store.doors.put("home", "door1", b"\x01" * 32) is True
    assert store.doors.put("home", "door1", b"\x02" * 32) is False
    assert store.doors.key("home", "door1") == b"\x02" * 32
    assert store.doors.put("home", "door2", b"\x03" * 32) is True
    assert store.doors.doors("home") == ["door1", "door2"]
    assert store.doors.key("office", "door1") is None


def test_refusals(store):
    with pytest.raises(UnknownSite):
        store.doors.put("office", "door1", b"\x01" * 32)
    with pytest.raises(ValueError, match="32 bytes"):
        store.doors.put("home", "door1", b"\x01" * 31)
    with pytest.raises(ValueError):
        store.doors.put("home", "", b"\x01" * 32)
    assert store.doors.doors("home") == []


def test_keys_survive_a_reopen(tmp_path, store):
    store.doors.put("home", "door1", b"\x05" * 32)
    store.close()
    with GalleryStore(tmp_path / "gallery.db", readonly=True) as again:
        assert again.doors.key("home", "door1") == b"\x05" * 32
