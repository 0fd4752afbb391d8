"""The store's doors: each door's Ed25519 request-signing public key and its own bearer token (table `door`).

The cloud answers a probe only if it is signed by its door's registered key, and an HTTP request
only with a token of the site (cloud/routes.py `authorize_site`). Since schema 3 every door holds
its own token (its hash here): removing a door deletes its row, and with it the key and the token,
so what that door holds stops working at once while the site's other doors keep theirs. A door's
key is replaced (rotated) in place: nothing else in the store depends on it, so nobody re-enrolls.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

from .store_records import hash_token, require_bytes, require_text
from .store_schema import Dialect, Session, StoreConflict, StoreDatabase, StoreIntegrityError, UnknownSite

PUBLIC_KEY_BYTES = 32
MAX_DOORS_PER_SITE = 64  # a house or an office, not a campus: bounds what one site token can add


class UnknownDoor(UnknownSite):
    """The site has no door with that id (404-style)."""


@dataclass(frozen=True)
class DoorRecord:
    """One registered door, as listed to the site's doors (no key, no token)."""

    door_id: str
    created: float
    own_token: bool  # False: added before schema 3 with the site's token, which it shares


class DoorStore:
    """Door keys and tokens of every site, on the gallery store's database (GalleryStore.doors)."""

    def __init__(self, database: StoreDatabase) -> None:
        self.database = database

    def put(self, site_id: str, door_id: str, public_key: bytes) -> bool:
        """Add a door's key, or replace it (its token stays); True if the door was new. UnknownSite if no such site."""
        site_id, door_id, public_key = check_door(site_id, door_id, public_key)
        with self.database.write() as db:
            _lock_site(db, site_id)
            new = db.execute("SELECT 1 FROM door WHERE site_id = ? AND door_id = ?", (site_id, door_id)).fetchone() is None
            if new:
                _check_room(db, site_id)
            db.execute(
                "INSERT INTO door (site_id, door_id, public_key, created) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (site_id, door_id) DO UPDATE SET public_key = excluded.public_key, created = excluded.created",
                (site_id, door_id, public_key, time.time()),
            )
        return new

    def add(self, site_id: str, door_id: str, public_key: bytes, token: str) -> None:
        """A NEW door with its key and its own token (kept as a hash). StoreConflict if the id is taken or the site full."""
        site_id, door_id, public_key = check_door(site_id, door_id, public_key)
        token_hash = hash_token(token)
        with self.database.write() as db:
            _lock_site(db, site_id)
            _check_room(db, site_id)
            try:
                insert_door(db, site_id, door_id, public_key, token_hash)
            except StoreIntegrityError:
                raise StoreConflict(f"door {door_id!r} is already registered at site {site_id!r}") from None

    def remove(self, site_id: str, door_id: str) -> None:
        """Forget a door: its key and token stop working. UnknownDoor if absent; StoreConflict for the site's last door."""
        with self.database.write() as db:
            _lock_site(db, site_id, missing_ok=True)
            doors = [row[0] for row in db.execute("SELECT door_id FROM door WHERE site_id = ?", (site_id,))]
            if door_id not in doors:
                raise UnknownDoor(f"site {site_id!r} has no door {door_id!r}")
            if len(doors) == 1:
                raise StoreConflict(f"{door_id!r} is site {site_id!r}'s only door: a site keeps at least one")
            db.execute("DELETE FROM door WHERE site_id = ? AND door_id = ?", (site_id, door_id))

    def key(self, site_id: str, door_id: str) -> bytes | None:
        """The door's raw 32-byte public key; None for an unknown site or door."""
        with self.database.read() as db:
            row = db.execute("SELECT public_key FROM door WHERE site_id = ? AND door_id = ?", (site_id, door_id)).fetchone()
        return bytes(row[0]) if row else None

    def token_doors(self, site_id: str, token: str) -> list[str]:
        """The doors whose own token `token` is: one, or several that a schema 2 site shared; every hash is compared."""
        try:
            offered = hash_token(token)
        except ValueError:
            return []
        with self.database.read() as db:
            rows = db.execute(
                "SELECT door_id, token_hash FROM door WHERE site_id = ? AND token_hash IS NOT NULL ORDER BY created, door_id",
                (site_id,),
            ).fetchall()
        return [door_id for door_id, stored in rows if hmac.compare_digest(offered, bytes(stored))]

    def doors(self, site_id: str) -> list[str]:
        """The site's door ids, oldest key first (a rotated key counts from its rotation)."""
        return [record.door_id for record in self.records(site_id)]

    def records(self, site_id: str) -> list[DoorRecord]:
        """The site's doors, oldest key first (`created` is when the door's current key was set)."""
        with self.database.read() as db:
            rows = db.execute(
                "SELECT door_id, created, token_hash IS NOT NULL FROM door WHERE site_id = ? ORDER BY created, door_id",
                (site_id,),
            ).fetchall()
        return [DoorRecord(door_id, created, bool(own)) for door_id, created, own in rows]


def check_door(site_id: str, door_id: str, public_key: bytes) -> tuple[str, str, bytes]:
    """(site id, door id, key) if well formed; ValueError naming what is not."""
    site_id, door_id = require_text(site_id, "site id"), require_text(door_id, "door id")
    public_key = require_bytes(public_key, "door public key")
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise ValueError(f"door public key must be {PUBLIC_KEY_BYTES} bytes, got {len(public_key)}")
    return site_id, door_id, public_key


def insert_door(db: Session, site_id: str, door_id: str, public_key: bytes, token_hash: bytes | None) -> None:
    """Insert a door row inside the caller's transaction (registration adds the site's first door this way)."""
    db.execute(
        "INSERT INTO door (site_id, door_id, public_key, token_hash, created) VALUES (?, ?, ?, ?, ?)",
        (site_id, door_id, public_key, token_hash, time.time()),
    )


def _lock_site(db: Session, site_id: str, *, missing_ok: bool = False) -> None:
    """UnknownSite unless the site exists; on PostgreSQL, also lock its row so replicas change its doors one at a time."""
    lock = " FOR UPDATE" if db.dialect is Dialect.POSTGRESQL else ""
    if db.execute(f"SELECT 1 FROM site WHERE site_id = ?{lock}", (site_id,)).fetchone() is None and not missing_ok:
        raise UnknownSite(f"no site {site_id!r} is registered")


def _check_room(db: Session, site_id: str) -> None:
    count = db.execute("SELECT count(*) FROM door WHERE site_id = ?", (site_id,)).fetchone()[0]
    if count >= MAX_DOORS_PER_SITE:
        raise StoreConflict(f"site {site_id!r} already has {count} doors, the most one site may have")
