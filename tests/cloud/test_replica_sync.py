"""replica_sync.py: other replicas' committed changes reach this process' refresh callback, once per burst."""

from __future__ import annotations

import asyncio

import pytest

from blindgate.cloud.replica_sync import ReplicaSync
from blindgate.cloud.store import GalleryStore
from blindgate.cloud.store_notify import notify_change


def commit_change(store: GalleryStore, site: str, version: int) -> None:
    with store.database.write() as db:
        notify_change(db, site, version)


async def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_newer_changes_are_refreshed_and_known_ones_skipped(pg_url):
    known = {"home": 3}
    refreshed: list[str] = []

    async def refresh(site: str) -> None:
        refreshed.append(site)
        known[site] = 99

    async def refresh_all() -> None:
        raise AssertionError("no reconnection in this test")

    sync = ReplicaSync(pg_url, known.get, refresh, refresh_all)
    await sync.start()
    try:
        with GalleryStore(pg_url) as other:
            await asyncio.to_thread(commit_change, other, "home", 3)  # what we have: skipped
            await asyncio.to_thread(commit_change, other, "home", 4)  # newer: refreshed
            await asyncio.to_thread(commit_change, other, "office", 1)  # unknown site: refreshed
        await wait_until(lambda: sorted(refreshed) == ["home", "office"])
    finally:
        await sync.stop()
    assert sorted(refreshed) == ["home", "office"]


@pytest.mark.asyncio
async def test_a_burst_coalesces_while_a_refresh_runs():
    calls: list[str] = []
    gate = asyncio.Event()

    async def refresh(site: str) -> None:
        calls.append(site)
        await gate.wait()

    async def refresh_all() -> None:
        return None

    sync = ReplicaSync("", lambda site: None, refresh, refresh_all)  # SQLite: nothing to listen to
    assert not sync.enabled
    sync.changed("home", 1)
    await wait_until(lambda: calls == ["home"])  # refreshing, blocked on the gate
    for version in range(2, 6):
        sync.changed("home", version)
    gate.set()
    await wait_until(lambda: not sync._tasks)
    assert calls == ["home", "home"]  # the one running, then one for everything that came meanwhile


@pytest.mark.asyncio
async def test_a_door_change_announced_by_one_replica_reaches_the_other(pg_url):
    forgotten: list[tuple[str, str]] = []

    async def nothing(*_: object) -> None:
        return None

    with GalleryStore(pg_url) as here:
        announcer = ReplicaSync(pg_url, lambda site: None, nothing, nothing, database=here.database)
        receiver = ReplicaSync(pg_url, lambda site: None, nothing, nothing, lambda s, d: forgotten.append((s, d)))
        await receiver.start()
        try:
            announcer.door_changed("home", "door1")
            await wait_until(lambda: forgotten == [("home", "door1")])
        finally:
            await receiver.stop()
            await announcer.stop()
