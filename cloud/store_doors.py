"""The store's doors: each door's Ed25519 request-signing public key (table `door`, schema 2).

The cloud answers a probe only if it is signed by its door's registered key. A door's key is
replaced (rotated) in place: nothing else in the store depends on it, so nobody re-enrolls.
"""

from __future__ import annotations

import time

from .store_records import require_bytes, require_text
from .store_schema import StoreDatabase, UnknownSite

PUBLIC_KEY_BYTES = 32


class DoorStore:
    """Door keys of every site, on the gallery store's database (GalleryStore.doors)."""

    def __init__(self, database: StoreDatabase) -> None:
        self.database = database

    def put(self, site_id: str, door_id: str, public_key: bytes) -> bool:
        """Add a door's key, or replace it; True if the door was new. UnknownSite if the site is not registered."""
        site_id, door_id = require_text(site_id, "site id"), require_text(door_id, "door id")
        public_key = require_bytes(public_key, "door public key")
        if len(public_key) != PUBLIC_KEY_BYTES:
            raise ValueError(f"door public key must be {PUBLIC_KEY_BYTES} bytes, got {len(public_key)}")
        with self.database.write() as db:
            if db.execute("SELECT 1 FROM site WHERE site_id = ?", (site_id,)).fetchone() is None:
                raise UnknownSite(f"no site {site_id!r} is registered")
            new = db.execute("SELECT 1 FROM door WHERE site_id = ? AND door_id = ?", (site_id, door_id)).fetchone() is None
            db.execute(
                "INSERT INTO door (site_id, door_id, public_key, created) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (site_id, door_id) DO UPDATE SET public_key = excluded.public_key, created = excluded.created",
                (site_id, door_id, public_key, time.time()),
            )
        return new

    def key(self, site_id: str, door_id: str) -> bytes | None:
        """The door's raw 32-byte public key; None for an unknown site or door."""
        with self.database.read() as db:
            row = db.execute("SELECT public_key FROM door WHERE site_id = ? AND door_id = ?", (site_id, door_id)).fetchone()
        return bytes(row[0]) if row else None

    def doors(self, site_id: str) -> list[str]:
        """The site's door ids, in registration order."""
        with self.database.read() as db:
            rows = db.execute("SELECT door_id FROM door WHERE site_id = ? ORDER BY rowid", (site_id,)).fetchall()
        return [row[0] for row in rows]
