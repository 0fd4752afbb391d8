"""Cloud-wide secrets in the gallery store, so every replica signs and admits the same way.

One job: the `cloud_secret` table (name -> bytes) of the store's database, with reads and writes
that stay consistent when several `blindgate-cloud serve` replicas share one PostgreSQL:

    settings = CloudSettings(store.database)
    pem = settings.get_or_create("reply-signing-key", lambda: signing_key_to_pem(new_signing_key()))

`FileSecrets` offers the same calls on files in `state_dir`, for a single SQLite-backed cloud
whose existing installs keep their files (`SecretPlace` is what both offer).

`get_or_create` inserts with ``ON CONFLICT DO NOTHING`` and then reads the row back in the same
transaction: replicas starting together each propose a value and all of them get the one that
was committed first. `replace`, `put` and `delete` serve the signing key rotation
(cloud/key_rotation.py).

Trust: the database is the cloud's, and the cloud is trusted for availability only. Whoever can
read this table can sign replies as the cloud and register sites, exactly like whoever can read
`state_dir` of a single SQLite-backed cloud (where these secrets stay files, cloud/resources.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .store_schema import StoreDatabase, StoreError

# The secrets a cloud keeps (names in `cloud_secret`).
SIGNING_KEY = "reply-signing-key"  # Ed25519 private key, PEM
NEXT_SIGNING_KEY = "reply-signing-key.next"  # the rotation's pending key, PEM
ENDORSEMENT = "reply-signing-key.endorsement"  # JSON: the current key's endorsement of the next one
PROVISION_TOKEN = "provision-token"  # hex text, UTF-8


class SettingError(StoreError):
    """A cloud-wide secret is missing or empty when it must be there."""


class SecretPlace(Protocol):
    """Where a cloud keeps its secrets: `CloudSettings` (the shared database) or `FileSecrets` (state_dir)."""

    def get(self, name: str) -> bytes | None: ...

    def get_or_create(self, name: str, make: Callable[[], bytes]) -> bytes: ...

    def put(self, name: str, value: bytes) -> None: ...

    def delete(self, name: str) -> bool: ...

    def move(self, source: str, target: str) -> bytes: ...


class CloudSettings:
    """Named cloud-wide byte strings in the store's `cloud_secret` table; each call is one transaction."""

    def __init__(self, database: StoreDatabase, clock: Callable[[], float] = time.time) -> None:
        self.database = database
        self._now = clock

    def get(self, name: str) -> bytes | None:
        """The value of `name`, or None when no replica has set it."""
        with self.database.read() as db:
            row = db.execute("SELECT value FROM cloud_secret WHERE name = ?", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    def get_or_create(self, name: str, make: Callable[[], bytes]) -> bytes:
        """The value of `name`; if none exists, `make()`'s, unless another replica's won the race (returned then)."""
        existing = self.get(name)
        if existing is not None:
            return existing
        proposed = make()
        if not proposed:
            raise SettingError(f"refusing to store an empty {name!r}")
        with self.database.write() as db:
            db.execute(
                "INSERT INTO cloud_secret (name, value, created) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
                (name, proposed, self._now()),
            )
            row = db.execute("SELECT value FROM cloud_secret WHERE name = ?", (name,)).fetchone()
        return bytes(row[0])

    def put(self, name: str, value: bytes) -> None:
        """Set `name` to `value`, replacing any previous value."""
        if not value:
            raise SettingError(f"refusing to store an empty {name!r}")
        with self.database.write() as db:
            db.execute(
                "INSERT INTO cloud_secret (name, value, created) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value, created = excluded.created",
                (name, value, self._now()),
            )

    def delete(self, name: str) -> bool:
        """Remove `name`; whether it existed."""
        with self.database.write() as db:
            return db.execute("DELETE FROM cloud_secret WHERE name = ? RETURNING name", (name,)).fetchone() is not None

    def move(self, source: str, target: str) -> bytes:
        """Atomically make `source`'s value `target`'s and remove `source` (key activation); the value moved."""
        with self.database.write() as db:
            row = db.execute("DELETE FROM cloud_secret WHERE name = ? RETURNING value", (source,)).fetchone()
            if row is None:
                raise SettingError(f"no {source!r} to move")
            value = bytes(row[0])
            db.execute(
                "INSERT INTO cloud_secret (name, value, created) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value, created = excluded.created",
                (target, value, self._now()),
            )
        return value


# The file of each secret in a single cloud's state_dir (the names predate the database table).
FILE_NAMES = {
    SIGNING_KEY: "reply-signing-key.pem",
    NEXT_SIGNING_KEY: "reply-signing-key.next.pem",
    ENDORSEMENT: "reply-signing-key.endorsement.json",
    PROVISION_TOKEN: "provision-token",
}


class FileSecrets:
    """The same operations on files (mode 0600) in a state directory: a single SQLite-backed cloud."""

    def __init__(self, state_dir: Path | str) -> None:
        self.state_dir = Path(state_dir)

    def path(self, name: str) -> Path:
        """The file that holds `name`."""
        return self.state_dir / FILE_NAMES.get(name, name)

    def get(self, name: str) -> bytes | None:
        try:
            return self.path(name).read_bytes()
        except FileNotFoundError:
            return None

    def get_or_create(self, name: str, make: Callable[[], bytes]) -> bytes:
        """The file's bytes; created exclusively (0600, fsynced) with `make()` when missing."""
        path = self.path(name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_bytes()
        value = make()
        with os.fdopen(fd, "wb") as fh:
            fh.write(value)
            fh.flush()
            os.fsync(fh.fileno())
        return value

    def put(self, name: str, value: bytes) -> None:
        """Write 0600 via a temporary file and an atomic rename."""
        path = self.path(name)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(value)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def delete(self, name: str) -> bool:
        try:
            self.path(name).unlink()
        except FileNotFoundError:
            return False
        return True

    def move(self, source: str, target: str) -> bytes:
        """Rename `source`'s file over `target`'s (atomic on one filesystem)."""
        value = self.get(source)
        if value is None:
            raise SettingError(f"no {self.path(source)} to move")
        os.replace(self.path(source), self.path(target))
        return value


__all__ = [
    "ENDORSEMENT",
    "NEXT_SIGNING_KEY",
    "PROVISION_TOKEN",
    "SIGNING_KEY",
    "CloudSettings",
    "FileSecrets",
    "SecretPlace",
    "SettingError",
]
