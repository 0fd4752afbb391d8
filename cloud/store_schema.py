"""The gallery store's SQLite file: schema, versions, pragmas, transactions and the store's errors.

`StoreDatabase` owns the one connection and the lock that serializes it; `GalleryStore`
(store.py) builds its operations on `read()` and `write()`.

Durability. The database runs in WAL mode with ``synchronous=FULL``; a `write()` transaction is
committed whole or rolled back whole, so after a crash the file opens as it was at the last
commit.

Threads. One connection, opened with ``check_same_thread=False``, guarded by a
`threading.Lock`: each transaction holds the lock from BEGIN to COMMIT, so callers on any thread
are serialized. Other processes (a backup, ``sqlite3`` for inspection) may read the file;
writers wait up to `BUSY_TIMEOUT` seconds for their locks.

Schema versions. ``PRAGMA user_version`` holds `SCHEMA_VERSION` and ``PRAGMA application_id``
marks the file as a blindgate store, so opening a newer store with older code, or some other
SQLite file, fails with a clear `StoreError` instead of misreading it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from blindgate.shared.errors import BlindgateError

SCHEMA_VERSION = 3
# "BGGS" (BlindGate Gallery Store) in PRAGMA application_id: tells our files from other SQLite files.
APPLICATION_ID = 0x42474753
# Seconds a write waits for another connection's lock (a backup or an inspecting sqlite3 shell).
BUSY_TIMEOUT = 10.0
# After a checkpoint, shrink the WAL back to this: a block rewrite can be tens of MB.
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024

SCHEMA = """
CREATE TABLE site (
    site_id    TEXT PRIMARY KEY NOT NULL CHECK (length(site_id) > 0),
    key_id     TEXT NOT NULL CHECK (length(key_id) > 0),
    token_hash BLOB NOT NULL CHECK (length(token_hash) = 32),
    bundle     BLOB NOT NULL,
    version    INTEGER NOT NULL DEFAULT 0 CHECK (version >= 0),
    created    REAL NOT NULL
);

CREATE TABLE block (
    id      INTEGER PRIMARY KEY,
    site_id TEXT NOT NULL REFERENCES site (site_id) ON DELETE CASCADE,
    idx     INTEGER NOT NULL CHECK (idx >= 0),
    data    BLOB NOT NULL,
    UNIQUE (site_id, idx)
);

CREATE TABLE subject (
    id         INTEGER PRIMARY KEY,
    site_id    TEXT NOT NULL REFERENCES site (site_id) ON DELETE CASCADE,
    subject_id TEXT NOT NULL CHECK (length(subject_id) > 0),
    label      BLOB NOT NULL,
    block      INTEGER NOT NULL CHECK (block >= 0),
    slot       INTEGER NOT NULL CHECK (slot >= 0),
    enrollment BLOB NOT NULL,
    created    REAL NOT NULL,
    -- the template and name sealed by the device (AEAD under a site key the cloud never holds):
    -- opaque here, handed back so the device can re-check a match in plaintext
    sealed     BLOB NOT NULL DEFAULT x'',
    UNIQUE (site_id, subject_id),
    UNIQUE (site_id, block, slot),
    -- a subject always lives in a stored block
    FOREIGN KEY (site_id, block) REFERENCES block (site_id, idx)
);
"""
# Schema 2: door request keys, and the staging area of a site's key renewal (rekey).
SCHEMA_2 = """
CREATE TABLE door (
    site_id    TEXT NOT NULL REFERENCES site (site_id) ON DELETE CASCADE,
    door_id    TEXT NOT NULL CHECK (length(door_id) > 0),
    public_key BLOB NOT NULL CHECK (length(public_key) = 32),
    created    REAL NOT NULL,
    PRIMARY KEY (site_id, door_id)
);

CREATE TABLE rekey (
    site_id TEXT PRIMARY KEY NOT NULL REFERENCES site (site_id) ON DELETE CASCADE,
    key_id  TEXT NOT NULL CHECK (length(key_id) > 0),
    bundle  BLOB NOT NULL,
    created REAL NOT NULL
);

CREATE TABLE rekey_subject (
    site_id    TEXT NOT NULL REFERENCES rekey (site_id) ON DELETE CASCADE,
    subject_id TEXT NOT NULL CHECK (length(subject_id) > 0),
    label      BLOB NOT NULL,
    enrollment BLOB NOT NULL,
    sealed     BLOB NOT NULL,
    PRIMARY KEY (site_id, subject_id)
);
"""


# Schema 3: each door's own bearer token (hash; NULL for a door added with the site's token before
# schema 3). Schema 2's doors all held the site's token: the migration gives each of them that
# token as its own and retires the site's, so removing a door revokes what it holds.
SCHEMA_3_DOOR_TOKEN = "ALTER TABLE door ADD COLUMN token_hash BLOB CHECK (token_hash IS NULL OR length(token_hash) = 32)"
SCHEMA_3_SHARE = "UPDATE door SET token_hash = (SELECT token_hash FROM site WHERE site.site_id = door.site_id)"
SCHEMA_3_RETIRE = "UPDATE site SET token_hash = randomblob(32) WHERE site_id IN (SELECT site_id FROM door)"


class StoreError(BlindgateError):
    """Anything the gallery store refuses or cannot do."""


class UnknownSite(StoreError):
    """No site with that id is registered (404-style)."""


class UnknownSubject(StoreError):
    """The site holds no subject with that id (404-style)."""


class StoreConflict(StoreError):
    """The change clashes with what is stored: id or slot already taken, stale block (409-style)."""


class StoreDatabase:
    """The store's SQLite connection, configured and at `SCHEMA_VERSION`, behind one lock.

    `readonly` opens an existing file for readers such as matcher workers; otherwise the file is
    created (mode 0600) and migrated as needed.
    """

    def __init__(self, path: Path | str, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.Lock()
        self.connection = self._connect_readonly() if readonly else self._connect()

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open (never true between calls: each one ends committed or rolled back)."""
        return self.connection.in_transaction

    def close(self) -> None:
        """Close the connection (idempotent). Committed data is already on disk."""
        with self._lock:
            self.connection.close()

    # -- transactions ---------------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock: committed whole on success, rolled back whole on any error.

        BEGIN IMMEDIATE takes SQLite's write lock up front, so reads inside it see exactly the
        state the transaction will change.
        """
        with self._lock:
            db = self.connection
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.ProgrammingError as exc:
                raise StoreError(f"gallery store {self.path} is closed") from exc
            except sqlite3.OperationalError as exc:
                raise StoreError(f"gallery store {self.path} is busy or unwritable: {exc}") from None
            try:
                yield db
                db.execute("COMMIT")
            except BaseException as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):  # disk full, I/O error...: nothing was written
                    raise StoreError(f"gallery store {self.path}: {exc} (nothing was changed)") from exc
                raise

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction under the lock: several SELECTs see one consistent snapshot."""
        with self._lock:
            db = self.connection
            try:
                db.execute("BEGIN")
            except sqlite3.ProgrammingError as exc:
                raise StoreError(f"gallery store {self.path} is closed") from exc
            try:
                yield db
            except sqlite3.Error as exc:
                raise StoreError(f"gallery store {self.path}: {exc}") from exc
            finally:
                if db.in_transaction:
                    db.execute("COMMIT")

    # -- opening --------------------------------------------------------------------------------

    def _connect_readonly(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(
                self.path.resolve().as_uri() + "?mode=ro",
                uri=True,
                timeout=BUSY_TIMEOUT,
                isolation_level=None,
                check_same_thread=False,
            )
            version = db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open gallery store {self.path} for reading: {exc}") from None
        if version != SCHEMA_VERSION:
            db.close()
            raise StoreError(f"{self.path}: store schema {version}, this version reads {SCHEMA_VERSION}")
        return db

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            # Token hashes and bundles are no secret keys, but nobody else needs to read them.
            # SQLite takes an empty file as a new database and gives -wal and -shm the same mode.
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass
        try:
            # isolation_level=None: no implicit transactions, read() and write() issue BEGIN/COMMIT.
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open gallery store {self.path}: {exc}") from None
        self.connection = db
        try:
            self._configure()
        except BaseException:
            db.close()
            raise
        return db

    def _configure(self) -> None:
        """Check the file is ours and not newer, set the pragmas, migrate an older or empty file."""
        db = self.connection
        try:
            db.execute("PRAGMA foreign_keys = ON")
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a blindgate gallery store ({exc})") from None
        if app_id not in (0, APPLICATION_ID):
            raise StoreError(f"{self.path} is an SQLite database but not a blindgate gallery store")
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} was written by a newer blindgate (store schema {version}; this version "
                f"reads up to {SCHEMA_VERSION}): upgrade blindgate, or restore a backup made by this version"
            )
        if app_id == 0 and db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0] > 0:
            raise StoreError(f"{self.path} is an SQLite database but not a blindgate gallery store")
        try:
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            db.execute("PRAGMA synchronous = FULL")
            db.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot configure gallery store {self.path}: {exc}") from None
        if str(mode).lower() != "wal":
            raise StoreError(f"{self.path}: cannot use WAL journal mode (got {mode!r}); is it on a network filesystem?")
        if version < SCHEMA_VERSION:
            self._migrate()

    def _migrate(self) -> None:
        """Bring an older (or new, empty) file to SCHEMA_VERSION, in one transaction."""
        with self.write() as db:
            # Re-read under the write lock: another process may have created the schema meanwhile.
            current = db.execute("PRAGMA user_version").fetchone()[0]
            if current == 0:
                _execute_script(db, SCHEMA)
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                current = 1
            if current == 1:
                if "sealed" not in {row[1] for row in db.execute("PRAGMA table_info(subject)")}:
                    db.execute("ALTER TABLE subject ADD COLUMN sealed BLOB NOT NULL DEFAULT x''")
                _execute_script(db, SCHEMA_2)
                current = 2
            if current == 2:
                if "token_hash" not in {row[1] for row in db.execute("PRAGMA table_info(door)")}:
                    db.execute(SCHEMA_3_DOOR_TOKEN)
                db.execute(SCHEMA_3_SHARE)
                db.execute(SCHEMA_3_RETIRE)
                current = 3
            if current != SCHEMA_VERSION:  # pragma: no cover - every older schema is handled above
                raise StoreError(f"{self.path}: no migration from store schema {current}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _execute_script(db: sqlite3.Connection, script: str) -> None:
    """Run `;`-separated DDL statements inside the caller's transaction (executescript would commit)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)
