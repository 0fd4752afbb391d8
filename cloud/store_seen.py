"""Probe request ids already scanned, cloud-wide: a probe replayed to another replica gets no second scan.

Each replica's MQTT bridge remembers the request ids it answered (cloud/request_auth.py
`SeenRequests`), which stops a replay sent to the same process. With several replicas on one
PostgreSQL store (the broker hands each probe of a shared subscription to any one of them), a
captured probe re-published later could reach another replica and be scanned again: no door acts
on the second reply (the door keeps its own once-only check), but it costs a scan. `SeenStore`
makes the first use cloud-wide: the request id is inserted with its expiry, and a conflict means
some replica has already taken it. Expired rows are swept at most once per `SWEEP_SECONDS`.
"""

from __future__ import annotations

import time

from .store_schema import StoreDatabase

SWEEP_SECONDS = 5.0


class SeenStore:
    """The `seen_request` table: `first_use` is True exactly once per (site, door, request id) until it expires."""

    def __init__(self, database: StoreDatabase) -> None:
        self.database = database
        self._next_sweep = 0.0

    def first_use(self, site: str, device: str, request_id: str, expires_at: float, now: float | None = None) -> bool:
        """Take the request id for this replica; False if any replica took it before (a replay)."""
        now = time.time() if now is None else now
        with self.database.write() as db:
            if now >= self._next_sweep:
                db.execute("DELETE FROM seen_request WHERE expires_at < ?", (now,))
                self._next_sweep = now + SWEEP_SECONDS
            cursor = db.execute(
                "INSERT INTO seen_request (site_id, device, request_id, expires_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (site_id, device, request_id) DO NOTHING",
                (site, device, request_id, float(expires_at)),
            )
            return bool(cursor.rowcount == 1)

    def __len__(self) -> int:
        with self.database.read() as db:
            return int(db.execute("SELECT count(*) FROM seen_request").fetchone()[0])
