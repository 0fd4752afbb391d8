"""Keeping one replica's cached site records current with the changes other replicas commit.

Each `blindgate-cloud serve` process caches every site's record (key id, gallery version) and
subject count (cloud/resources.py `SITES`, `SUBJECT_COUNTS`). With several replicas on one
PostgreSQL store, a change made through another replica must reach that cache: `ReplicaSync`
runs a `GalleryListener` (cloud/store_notify.py, LISTEN on the store's change channel) and, for
each change newer than what this process caches, calls `refresh(site)` on the event loop
(re-read the record and count, prewarm the matcher). Notifications for one site coalesce: a burst
of enrollments costs one re-read at a time, never a queue of them. After the listener reconnects
(changes may have been missed meanwhile) `refresh_all()` reloads everything.

Probes never depend on the notification arriving first: the matcher workers read the site's
current version from the store before each scan, so an enrollment committed through replica 1 is
scanned by replica 2's very next probe. The notification keeps the key id (after a rekey), the
counts and the workers' prewarmed blocks current. On SQLite (one process) the listener is a no-op.

Door keys travel the same way on their own channel: the bridge caches each door's public key, so
when a door is removed (revoked) or re-keyed through one replica, `door_changed` announces it
(``pg_notify('blindgate_doors', '<site>:<door>')`` after the commit) and every replica's
`forget_door(site, door)` drops its cached key; the next probe from that door is checked against
the store. After the door listener reconnects, `forget_all_doors()` drops every cached key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from .store_notify import ChannelListener, GalleryListener, notify
from .store_schema import Dialect, StoreDatabase

log = logging.getLogger("blindgate.cloud.app")

DOOR_CHANNEL = "blindgate_doors"


def announce_door(database: StoreDatabase, site: str, door: str) -> None:
    """Tell every replica that `door` of `site` changed (PostgreSQL; nothing to tell on SQLite)."""
    if database.dialect is Dialect.POSTGRESQL:
        with database.write() as db:
            notify(db, DOOR_CHANNEL, f"{site}:{door}")


def door_listener(url: str, on_door: Callable[[str, str], None], on_reset: Callable[[], None]) -> ChannelListener:
    """A `ChannelListener` on `DOOR_CHANNEL`: `on_door(site, door)` per change, `on_reset()` after a reconnection
    (revocations may have been missed while disconnected)."""

    def deliver(payload: str) -> None:
        site, sep, door = payload.partition(":")
        if sep:
            on_door(site, door)

    return ChannelListener(url, DOOR_CHANNEL, deliver, on_reset)


class ReplicaSync:
    """Calls `refresh(site)` when another replica committed a version newer than `known_version(site)`."""

    def __init__(
        self,
        url: str,
        known_version: Callable[[str], int | None],
        refresh: Callable[[str], Coroutine[Any, Any, None]],
        refresh_all: Callable[[], Coroutine[Any, Any, None]],
        forget_door: Callable[[str, str], None] = lambda site, door: None,
        forget_all_doors: Callable[[], None] = lambda: None,
        database: StoreDatabase | None = None,
    ) -> None:
        self.known_version = known_version
        self.refresh = refresh
        self.refresh_all = refresh_all
        self.forget_door = forget_door
        self.forget_all_doors = forget_all_doors
        self.database = database  # where `door_changed` announces (None: announce nothing)
        self.listener = GalleryListener(url, self._notified, self._reconnected)
        self.door_listener = door_listener(url, self._door_notified, self._doors_reset)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dirty: set[str] = set()  # sites changed since their refresh task last read them
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        """Whether there is anything to listen to (a PostgreSQL store)."""
        return self.listener.enabled

    async def start(self, timeout: float = 10.0) -> None:
        """Start listening; returns once LISTEN is in place (so no later commit is missed) or after `timeout`."""
        if not self.enabled:
            return
        self._loop = asyncio.get_running_loop()
        self.listener.start()
        self.door_listener.start()
        for listener in (self.listener, self.door_listener):
            if not await asyncio.to_thread(listener.listening.wait, timeout):
                log.warning("change listener not connected yet; replicas' changes arrive once it is")

    async def stop(self) -> None:
        """Stop listening and cancel pending refreshes."""
        if not self.enabled:
            return
        await asyncio.to_thread(self.listener.stop)
        await asyncio.to_thread(self.door_listener.stop)
        for task in [*self._tasks.values(), *self._background]:
            task.cancel()
        await asyncio.gather(*self._tasks.values(), *self._background, return_exceptions=True)

    # -- listener thread -> event loop ---------------------------------------------------------

    def _notified(self, site: str, version: int) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.changed, site, version)

    def _reconnected(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._spawn_refresh_all)

    def _door_notified(self, site: str, door: str) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.forget_door, site, door)

    def _doors_reset(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.forget_all_doors)

    # -- on the event loop ---------------------------------------------------------------------

    def door_changed(self, site: str, door: str) -> None:
        """This replica changed or removed a door's key (committed): have every other replica forget its cached one."""
        if not self.enabled or self.database is None:
            return
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(announce_door, self.database, site, door))
        self._background.add(task)
        task.add_done_callback(self._announced)

    def _announced(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("could not announce a door change to the other replicas", exc_info=task.exception())

    def changed(self, site: str, version: int) -> None:
        """A replica committed `version` of `site`: refresh it unless this process already has it."""
        known = self.known_version(site)
        if known is not None and known >= version:
            return  # our own change, or one we already read
        self._dirty.add(site)
        if site not in self._tasks:
            self._tasks[site] = asyncio.get_running_loop().create_task(self._refresh_loop(site))

    async def _refresh_loop(self, site: str) -> None:
        try:
            while site in self._dirty:
                self._dirty.discard(site)
                try:
                    await self.refresh(site)
                except Exception:  # the store may be away for a moment: the next change or probe re-reads
                    log.exception("refreshing a site changed by another replica failed", extra={"site": site})
        finally:
            self._tasks.pop(site, None)

    def _spawn_refresh_all(self) -> None:
        task = asyncio.get_running_loop().create_task(self.refresh_all())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


__all__ = ["DOOR_CHANNEL", "ReplicaSync", "announce_door", "door_listener"]
