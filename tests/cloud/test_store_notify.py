"""Gallery change notifications (cloud/store_notify.py): what one replica commits, the others hear."""

from __future__ import annotations

import queue

import psycopg
import pytest

from blindgate.cloud.store import GalleryStore, StoreConflict
from blindgate.cloud.store_notify import GalleryListener, parse_payload
from blindgate.shared.engine.gallery import SlotRef


def test_payloads() -> None:
    assert parse_payload("home:12") == ("home", 12)
    assert parse_payload("a:b:3") == ("a:b", 3)  # the version is after the last colon
    assert parse_payload("home") is None and parse_payload(":3") is None and parse_payload("home:x") is None


def test_every_committed_change_is_heard_and_a_rolled_back_one_is_not(pg_url: str) -> None:
    heard: queue.Queue[tuple[str, int]] = queue.Queue()
    with GalleryStore(pg_url) as writer:
        listener = GalleryListener(pg_url, lambda site, version: heard.put((site, version)))
        listener.start()
        try:
            assert listener.listening.wait(10), "listener did not connect"
            writer.create_site("home", "token", "k", b"bundle")
            writer.commit_enrollment("home", "a", b"l", SlotRef(0, 0), b"e", 0, b"block")
            assert heard.get(timeout=10) == ("home", 1)
            with pytest.raises(StoreConflict):  # a refused change rolls back: nothing is announced
                writer.commit_enrollment("home", "b", b"l", SlotRef(0, 0), b"e", 0, b"block")
            writer.commit_removal("home", "a", 0, b"empty block")
            assert heard.get(timeout=10) == ("home", 2)  # not a notice for the refused one
            writer.rekey.stage("home", "k2", b"bundle2")
            writer.rekey.commit("home", "k2", {}, [b"new block"])
            assert heard.get(timeout=10) == ("home", 3)
            assert heard.empty()
        finally:
            listener.stop()
        assert not listener.listening.is_set()


def test_the_listener_reconnects_after_losing_its_connection(pg_url: str) -> None:
    heard: queue.Queue[tuple[str, int]] = queue.Queue()
    reconnected: queue.Queue[bool] = queue.Queue()
    with GalleryStore(pg_url) as writer:
        writer.create_site("home", "token", "k", b"bundle")
        listener = GalleryListener(pg_url, lambda s, v: heard.put((s, v)), on_reconnect=lambda: reconnected.put(True))
        listener.start()
        try:
            assert listener.listening.wait(10)
            with psycopg.connect(pg_url, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                )
            assert reconnected.get(timeout=20)  # told, so it can reload what it missed
            assert listener.listening.wait(10)
            writer.commit_enrollment("home", "a", b"l", SlotRef(0, 0), b"e", 0, b"block")
            assert heard.get(timeout=10) == ("home", 1)
        finally:
            listener.stop()


def test_sqlite_listener_is_a_no_op(tmp_path) -> None:
    """One process owns an SQLite file and sees its own changes: there is nothing to listen to."""
    listener = GalleryListener(str(tmp_path / "gallery.db"), lambda s, v: None)
    listener.start()
    assert not listener.enabled and not listener.listening.is_set()
    listener.stop()
