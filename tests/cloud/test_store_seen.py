"""The cloud-wide once-only record of probe request ids (cloud/store_seen.py), on both store backends."""

from __future__ import annotations

from blindgate.cloud.store import GalleryStore
from blindgate.cloud.store_seen import SWEEP_SECONDS, SeenStore


def test_a_request_id_is_taken_once_across_stores_until_it_expires(store_url):
    with GalleryStore(store_url) as one, GalleryStore(store_url) as two:  # two replicas' connections
        a, b = SeenStore(one.database), SeenStore(two.database)
        assert a.first_use("home", "door1", "r1", expires_at=110.0, now=100.0)
        assert not b.first_use("home", "door1", "r1", expires_at=110.0, now=101.0)  # the replay, elsewhere
        assert not a.first_use("home", "door1", "r1", expires_at=110.0, now=101.0)
        # the same id from another door or site is another request
        assert b.first_use("home", "door2", "r1", expires_at=110.0, now=101.0)
        assert b.first_use("work", "door1", "r1", expires_at=110.0, now=101.0)
        assert len(a) == 3
        # expired rows are swept (the bridge refuses expired probes before this check anyway)
        assert a.first_use("home", "door1", "r2", expires_at=200.0, now=150.0 + SWEEP_SECONDS)
        assert len(b) == 1
