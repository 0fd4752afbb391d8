"""Background block snapshots: keep the gallery log short so a restarted worker replays little.

An enrollment or removal only appends a row to the gallery log (cloud/store_log.py). Once a block
has `snapshot_every` rows past its stored snapshot, `SnapshotScheduler.after_commit` asks the
matcher worker holding that block for its replayed copy (`MatcherPool.build_snapshot`) and stores
it with `GalleryLog.put_snapshot`, which also deletes the rows it covers. This runs in the
background: the enrollment reply does not wait, and a failure (worker busy or restarting, a rekey
meanwhile) only leaves the log longer until the next commit of that block tries again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from .match_errors import MatchError
from .matcher import MatcherPool
from .store import GalleryStore, StoreError

log = logging.getLogger("blindgate.cloud.app")

InThread = Callable[..., Awaitable[object]]


class SnapshotScheduler:
    """At most one background snapshot per (site, block) at a time."""

    def __init__(self, snapshot_every: int) -> None:
        self.snapshot_every = max(1, int(snapshot_every))
        self._running: dict[tuple[str, int], asyncio.Task[None]] = {}

    def after_commit(self, pool: MatcherPool, store: GalleryStore, site: str, block: int, version: int, pending: int) -> None:
        """Start a snapshot of `block` (at `version` or later) if its log has reached `snapshot_every` rows."""
        if pending < self.snapshot_every or (site, block) in self._running:
            return
        task = asyncio.ensure_future(self._snapshot(pool, store, site, block, version))
        self._running[(site, block)] = task
        task.add_done_callback(lambda _: self._running.pop((site, block), None))

    async def wait(self) -> None:
        """Wait for the snapshots running now (tests, shutdown)."""
        await asyncio.gather(*self._running.values(), return_exceptions=True)

    @staticmethod
    async def _snapshot(pool: MatcherPool, store: GalleryStore, site: str, block: int, version: int) -> None:
        started = time.perf_counter()
        try:
            at, data = await pool.build_snapshot(site, block, version)
            written = await asyncio.get_running_loop().run_in_executor(None, store.log.put_snapshot, site, block, at, data)
        except (MatchError, StoreError) as exc:
            log.warning("block snapshot failed", extra={"site": site, "block": block, "error": str(exc)})
            return
        log.info(
            "block snapshot",
            extra={
                "site": site,
                "block": block,
                "gallery_version": at,
                "written": written,
                "bytes": len(data),
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
