"""cloud/store_doors.py: door request keys in the store, on each backend (conftest `store_url`)."""

from __future__ import annotations

import pytest

from blindgate.cloud.store import GalleryStore, StoreConflict, UnknownSite
from blindgate.cloud.store_doors import UnknownDoor


@pytest.fixture
def store(store_url):
    with GalleryStore(store_url) as s:
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


def test_keys_survive_a_reopen(store_url, store):
    store.doors.put("home", "door1", b"\x05" * 32)
    store.close()
    with GalleryStore(store_url, readonly=True) as again:
        assert again.doors.key("home", "door1") == b"\x05" * 32


def test_added_doors_hold_their_own_tokens(store):
    store.doors.put("home", "door1", b"\x01" * 32)  # the site's token, before per-door tokens
    store.doors.add("home", "door2", b"\x02" * 32, "token-2")
    assert store.check_token("home", "token-2") and store.doors.token_doors("home", "token-2") == ["door2"]
    assert store.check_token("home", "token") and store.doors.token_doors("home", "token") == []  # the site's own
    assert not store.check_token("office", "token-2")
    assert [(r.door_id, r.own_token) for r in store.doors.records("home")] == [("door1", False), ("door2", True)]
    with pytest.raises(StoreConflict, match="already registered"):
        store.doors.add("home", "door2", b"\x03" * 32, "token-3")
    assert not store.check_token("home", "token-3")  # the refused door left nothing behind


def test_removing_a_door_drops_its_key_and_token(store):
    store.doors.add("home", "door1", b"\x01" * 32, "token-1")
    store.doors.add("home", "door2", b"\x02" * 32, "token-2")
    store.doors.remove("home", "door2")
    assert store.doors.key("home", "door2") is None and not store.check_token("home", "token-2")
    assert store.check_token("home", "token-1")
    with pytest.raises(UnknownDoor):
        store.doors.remove("home", "door2")
    with pytest.raises(StoreConflict, match="only door"):
        store.doors.remove("home", "door1")


def test_a_site_registered_by_a_door_has_no_token_but_the_door_s(store_url):
    with GalleryStore(store_url) as s:
        s.create_site("home", "first", "k" * 32, b"bundle", door=("door1", b"\x01" * 32))
        assert s.doors.token_doors("home", "first") == ["door1"]
        s.doors.add("home", "door2", b"\x02" * 32, "second")
        s.doors.remove("home", "door1")
        assert not s.check_token("home", "first") and s.check_token("home", "second")


def test_a_site_holds_a_bounded_number_of_doors(store, monkeypatch):
    monkeypatch.setattr("blindgate.cloud.store_doors.MAX_DOORS_PER_SITE", 2)
    store.doors.add("home", "door1", b"\x01" * 32, "t1")
    store.doors.put("home", "door2", b"\x02" * 32)
    with pytest.raises(StoreConflict, match="2 doors"):
        store.doors.add("home", "door3", b"\x03" * 32, "t3")
    with pytest.raises(StoreConflict, match="2 doors"):
        store.doors.put("home", "door3", b"\x03" * 32)
