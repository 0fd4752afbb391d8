"""The gallery store's database: SQLite (embedded default) or PostgreSQL (shared by replicas).

One job: give `GalleryStore` (store.py) and its parts transactions on a database at
`SCHEMA_VERSION`, whichever backend holds it, so their SQL is written once.

    database = open_database("postgresql://blindgate@db/blindgate")   # or a path, or sqlite:///path
    with database.write() as db:          # one transaction: committed whole or rolled back whole
        db.execute("UPDATE site SET version = ? WHERE site_id = ?", (2, "home"))
    with database.read() as db:           # one consistent snapshot over several SELECTs
        rows = db.execute("SELECT site_id FROM site").fetchall()

`read()` and `write()` yield a `Session`: `.execute(sql, params)` (a cursor with fetchone and
fetchall), `.executemany(sql, rows)` and `.dialect`. SQL uses `?` placeholders and portable SQL;
the PostgreSQL session turns `?` into `%s`. A constraint violation raises `StoreIntegrityError`
on both backends; DDL per dialect lives only here, in `MIGRATIONS`.

SQLite (`SqliteDatabase`). WAL mode with ``synchronous=FULL``: after a crash the file opens as
it was at the last commit. One connection behind a `threading.Lock`, so callers on any thread
are serialized; other processes (a backup, an ``sqlite3`` shell) wait up to `BUSY_TIMEOUT`
seconds for locks. ``PRAGMA user_version`` holds the schema version and ``PRAGMA application_id``
marks the file as ours.

PostgreSQL (`PostgresDatabase`). Several cloud replicas share one database. One connection per
`StoreDatabase`, behind a lock like SQLite's; writes run READ COMMITTED, and every gallery change
locks its site row first (``SELECT ... FOR UPDATE``, store.py `require_site`) so changes to one
site serialize across processes. Reads run REPEATABLE READ READ ONLY: one snapshot. The schema
version is the one row of table ``blindgate_schema``; migrations run under an advisory lock, so
replicas starting together migrate once. A lost connection raises `StoreError` saying what to
check, and the next call reconnects.

Opening a store written by a newer blindgate fails with a clear `StoreError` on both backends.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import conninfo

from blindgate.shared.errors import BlindgateError

SCHEMA_VERSION = 5
# "BGGS" (BlindGate Gallery Store) in PRAGMA application_id: tells our files from other SQLite
# files. On PostgreSQL the same number keys the advisory lock that serializes migrations.
APPLICATION_ID = 0x42474753
# Seconds a write waits for another connection's lock (a backup or an inspecting sqlite3 shell).
BUSY_TIMEOUT = 10.0
# After a checkpoint, shrink the WAL back to this: a block rewrite can be tens of MB.
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
# Seconds to wait for a PostgreSQL server to accept a connection.
PG_CONNECT_TIMEOUT = 10
PG_SCHEMES = ("postgresql://", "postgres://")


class Dialect(StrEnum):
    """Which database a session talks to: the few statements that differ look at it."""

    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


class StoreError(BlindgateError):
    """Anything the gallery store refuses or cannot do."""


class UnknownSite(StoreError):
    """No site with that id is registered (404-style)."""


class UnknownSubject(StoreError):
    """The site holds no subject with that id (404-style)."""


class StoreConflict(StoreError):
    """The change clashes with what is stored: id or slot already taken, stale block (409-style)."""


class StoreIntegrityError(StoreError):
    """The database refused a row: a UNIQUE, FOREIGN KEY or CHECK constraint (either backend)."""


class Cursor(Protocol):
    """What `Session.execute` returns: sqlite3's or psycopg's cursor."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Session:
    """One open transaction: `execute` / `executemany` with `?` placeholders, on either backend."""

    def __init__(self, connection: sqlite3.Connection | psycopg.Connection[Any], dialect: Dialect) -> None:
        self.connection = connection
        self.dialect = dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """Run one statement; StoreIntegrityError if it breaks a constraint."""
        try:
            if isinstance(self.connection, sqlite3.Connection):
                return self.connection.execute(sql, params)
            return self.connection.execute(_pg_sql(sql), tuple(params))
        except (sqlite3.IntegrityError, psycopg.IntegrityError) as exc:
            raise StoreIntegrityError(_brief(exc)) from None

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement per row of parameters; StoreIntegrityError if any breaks a constraint."""
        try:
            if isinstance(self.connection, sqlite3.Connection):
                self.connection.executemany(sql, rows)
            else:
                self.connection.cursor().executemany(_pg_sql(sql), [tuple(row) for row in rows])
        except (sqlite3.IntegrityError, psycopg.IntegrityError) as exc:
            raise StoreIntegrityError(_brief(exc)) from None

    def defer_foreign_keys(self) -> None:
        """Check foreign keys at COMMIT instead of per statement, for the rest of this transaction."""
        if self.dialect is Dialect.SQLITE:
            self.execute("PRAGMA defer_foreign_keys = ON")
        else:
            self.execute("SET CONSTRAINTS ALL DEFERRED")  # the subject -> block key is DEFERRABLE


def _brief(exc: BaseException) -> str:
    """A driver error's message on one line (libpq's span several)."""
    return " ".join(str(exc).split())


_PG_SQL: dict[str, str] = {}


def _pg_sql(sql: str) -> str:
    """`?` placeholders as psycopg's `%s` (a literal `%` doubled). Our SQL has no `?` inside strings."""
    converted = _PG_SQL.get(sql)
    if converted is None:
        converted = _PG_SQL[sql] = sql.replace("%", "%%").replace("?", "%s")
    return converted


# -- schema -------------------------------------------------------------------------------------

# SQLite: schema 1 as created today (with schema 2's `sealed` column: older files gain it in migration 2).
SQLITE_SCHEMA_1 = """
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
SQLITE_SCHEMA_2 = """
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

# Schema 4: what each stored block reflects and its layout, the log of gallery changes, and the
# settings every cloud replica shares.
SQLITE_SCHEMA_4 = """
ALTER TABLE block ADD COLUMN version INTEGER NOT NULL DEFAULT 0 CHECK (version >= 0);
ALTER TABLE block ADD COLUMN copies INTEGER NOT NULL DEFAULT 1 CHECK (copies >= 1);
UPDATE block SET version = (SELECT version FROM site WHERE site.site_id = block.site_id);
CREATE TABLE gallery_log (
    site_id    TEXT NOT NULL REFERENCES site (site_id) ON DELETE CASCADE,
    version    INTEGER NOT NULL CHECK (version > 0),
    block      INTEGER CHECK (block >= 0),
    slot       INTEGER CHECK (slot >= 0),
    op         TEXT NOT NULL CHECK (op IN ('add', 'remove')),
    subject_id TEXT,
    enrollment BLOB NOT NULL,
    created    REAL,
    PRIMARY KEY (site_id, version)
);
CREATE INDEX gallery_log_block ON gallery_log (site_id, block, version);
CREATE TABLE cloud_secret (
    name    TEXT PRIMARY KEY NOT NULL CHECK (length(name) > 0),
    value   BLOB NOT NULL,
    created REAL NOT NULL
);
"""


def _postgresql(ddl: str) -> str:
    """SQLite DDL that uses only portable types but BLOB and REAL, in PostgreSQL's names for them."""
    return ddl.replace(" BLOB ", " BYTEA ").replace(" REAL", " DOUBLE PRECISION")


# PostgreSQL: the same tables. Blobs are BYTEA, row ids identities, times DOUBLE PRECISION;
# subject.slot is BIGINT (a rekey parks slots at slot + 2**32), and the subject -> block key is
# DEFERRABLE so a rekey can replace the blocks its subjects point at.
PG_SCHEMA_1 = """
CREATE TABLE site (
    site_id    TEXT PRIMARY KEY CHECK (length(site_id) > 0),
    key_id     TEXT NOT NULL CHECK (length(key_id) > 0),
    token_hash BYTEA NOT NULL CHECK (length(token_hash) = 32),
    bundle     BYTEA NOT NULL,
    version    INTEGER NOT NULL DEFAULT 0 CHECK (version >= 0),
    created    DOUBLE PRECISION NOT NULL
);
CREATE TABLE block (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site_id TEXT NOT NULL REFERENCES site (site_id) ON DELETE CASCADE,
    idx     INTEGER NOT NULL CHECK (idx >= 0),
    data    BYTEA NOT NULL,
    UNIQUE (site_id, idx)
);
CREATE TABLE subject (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site_id    TEXT NOT NULL REFERENCES site (site_id) ON DELETE CASCADE,
    subject_id TEXT NOT NULL CHECK (length(subject_id) > 0),
    label      BYTEA NOT NULL,
    block      INTEGER NOT NULL CHECK (block >= 0),
    slot       BIGINT NOT NULL CHECK (slot >= 0),
    enrollment BYTEA NOT NULL,
    created    DOUBLE PRECISION NOT NULL,
    sealed     BYTEA NOT NULL DEFAULT ''::bytea,
    UNIQUE (site_id, subject_id),
    UNIQUE (site_id, block, slot),
    FOREIGN KEY (site_id, block) REFERENCES block (site_id, idx) DEFERRABLE INITIALLY IMMEDIATE
);
"""
PG_SCHEMA_2 = """
CREATE TABLE door (
    site_id    TEXT NOT NULL REFERENCES site (site_id) ON DELETE CASCADE,
    door_id    TEXT NOT NULL CHECK (length(door_id) > 0),
    public_key BYTEA NOT NULL CHECK (length(public_key) = 32),
    created    DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (site_id, door_id)
);
CREATE TABLE rekey (
    site_id TEXT PRIMARY KEY REFERENCES site (site_id) ON DELETE CASCADE,
    key_id  TEXT NOT NULL CHECK (length(key_id) > 0),
    bundle  BYTEA NOT NULL,
    created DOUBLE PRECISION NOT NULL
);
CREATE TABLE rekey_subject (
    site_id    TEXT NOT NULL REFERENCES rekey (site_id) ON DELETE CASCADE,
    subject_id TEXT NOT NULL CHECK (length(subject_id) > 0),
    label      BYTEA NOT NULL,
    enrollment BYTEA NOT NULL,
    sealed     BYTEA NOT NULL,
    PRIMARY KEY (site_id, subject_id)
);
"""
# PostgreSQL support came with schema 4, so no PostgreSQL store ever held schema 2's shared door
# tokens: its schema 3 only adds the column.
PG_SCHEMA_3 = "ALTER TABLE door ADD COLUMN token_hash BYTEA CHECK (token_hash IS NULL OR length(token_hash) = 32)"
PG_SCHEMA_4 = _postgresql(SQLITE_SCHEMA_4)
# Schema 5: probe request ids already scanned by some replica, until they expire (cloud/store_seen.py).
# The same text on both backends: no BLOB, and REAL is PostgreSQL's single precision, so DOUBLE PRECISION.
SCHEMA_5 = """
CREATE TABLE seen_request (
    site_id    TEXT NOT NULL,
    device     TEXT NOT NULL,
    request_id TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (site_id, device, request_id)
);
CREATE INDEX seen_request_expiry ON seen_request (expires_at);
"""
# The PostgreSQL schema version: one row, written in the transaction of each migration.
PG_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS blindgate_schema (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    version   INTEGER NOT NULL CHECK (version >= 0),
    migrated  DOUBLE PRECISION NOT NULL DEFAULT extract(epoch FROM now())
)
"""


def _script(script: str) -> Callable[[Session], None]:
    """A migration step running `;`-separated statements in the caller's transaction (executescript would commit)."""

    def run(db: Session) -> None:
        for statement in script.split(";"):
            if statement.strip():
                db.execute(statement)

    return run


def _sqlite_1(db: Session) -> None:
    _script(SQLITE_SCHEMA_1)(db)
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")


def _sqlite_2(db: Session) -> None:
    if "sealed" not in {row[1] for row in db.execute("PRAGMA table_info(subject)")}:
        db.execute("ALTER TABLE subject ADD COLUMN sealed BLOB NOT NULL DEFAULT x''")
    _script(SQLITE_SCHEMA_2)(db)


def _sqlite_3(db: Session) -> None:
    if "token_hash" not in {row[1] for row in db.execute("PRAGMA table_info(door)")}:
        db.execute(SCHEMA_3_DOOR_TOKEN)
    db.execute(SCHEMA_3_SHARE)
    db.execute(SCHEMA_3_RETIRE)


@dataclass(frozen=True)
class Migration:
    """One schema step: from `version - 1` to `version`, in each dialect, run inside one transaction."""

    version: int
    sqlite: Callable[[Session], None]
    postgresql: Callable[[Session], None]

    def run(self, db: Session) -> None:
        (self.sqlite if db.dialect is Dialect.SQLITE else self.postgresql)(db)


MIGRATIONS = (
    Migration(1, _sqlite_1, _script(PG_SCHEMA_1)),
    Migration(2, _sqlite_2, _script(PG_SCHEMA_2)),
    Migration(3, _sqlite_3, _script(PG_SCHEMA_3)),
    Migration(4, _script(SQLITE_SCHEMA_4), _script(PG_SCHEMA_4)),
    Migration(5, _script(SCHEMA_5), _script(SCHEMA_5)),
)
assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))


def migrate(db: Session, current: int, name: str) -> None:
    """Run every migration after `current` in the caller's transaction."""
    if current > SCHEMA_VERSION:
        raise newer_schema(name, current)
    for migration in MIGRATIONS[current:]:
        migration.run(db)


def newer_schema(name: str, version: int) -> StoreError:
    return StoreError(
        f"{name} was written by a newer blindgate (store schema {version}; this version "
        f"reads up to {SCHEMA_VERSION}): upgrade blindgate, or restore a backup made by this version"
    )


# -- opening --------------------------------------------------------------------------------------


def store_location(store_url: str, state_dir: Path | str, default_name: str = "gallery.db") -> str | Path:
    """What `open_database` opens for a config: `store_url`, or the SQLite file in the state dir when empty."""
    return store_url if store_url else Path(state_dir) / default_name


def open_database(target: str | Path, *, readonly: bool = False) -> StoreDatabase:
    """The store at `target`: ``postgresql://...`` (or ``postgres://``), ``sqlite:///path``, or a file path."""
    text = str(target)
    if text.startswith(PG_SCHEMES):
        return PostgresDatabase(text, readonly=readonly)
    if text.startswith("sqlite://"):
        text = text[len("sqlite://") :]
    elif "://" in text:
        raise StoreError(f"unsupported gallery store URL scheme {text.split('://')[0]!r}: use postgresql:// or a file path")
    return SqliteDatabase(Path(text), readonly=readonly)


def redact_url(url: str) -> str:
    """A PostgreSQL URL without its password (and other options), safe for logs and errors."""
    try:
        parts = conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://<unparseable URL>"
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{parts.get('host', '')}{port}/{parts.get('dbname', '')}"


class StoreDatabase(ABC):
    """A store database at `SCHEMA_VERSION`: `read()` and `write()` transactions, serialized by one lock."""

    dialect: Dialect
    name: str  # for messages: the file path, or the URL without its password

    def __init__(self, readonly: bool) -> None:
        self.readonly = readonly
        self._lock = threading.Lock()

    @property
    @abstractmethod
    def in_transaction(self) -> bool:
        """Whether a transaction is open (never true between calls: each one ends committed or rolled back)."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection (idempotent). Committed data is already durable."""

    @abstractmethod
    def write(self) -> Any:
        """Context manager: one write transaction yielding a `Session`, committed whole or rolled back whole."""

    @abstractmethod
    def read(self) -> Any:
        """Context manager: one read-only snapshot yielding a `Session`."""


class SqliteDatabase(StoreDatabase):
    """The store's SQLite file (mode 0600), configured and at `SCHEMA_VERSION`, behind one lock.

    `readonly` opens an existing file for readers such as matcher workers; otherwise the file is
    created and migrated as needed.
    """

    dialect = Dialect.SQLITE

    def __init__(self, path: Path | str, *, readonly: bool = False) -> None:
        super().__init__(readonly)
        self.path = Path(path)
        self.name = str(self.path)
        self.connection = self._connect_readonly() if readonly else self._connect()

    @property
    def in_transaction(self) -> bool:
        return self.connection.in_transaction

    def close(self) -> None:
        with self._lock:
            self.connection.close()

    # -- transactions ---------------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[Session]:
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
                yield Session(db, Dialect.SQLITE)
                db.execute("COMMIT")
            except BaseException as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.IntegrityError):  # a deferred foreign key, checked at COMMIT
                    raise StoreIntegrityError(f"gallery store {self.path}: {exc} (nothing was changed)") from None
                if isinstance(exc, sqlite3.Error):  # disk full, I/O error...: nothing was written
                    raise StoreError(f"gallery store {self.path}: {exc} (nothing was changed)") from exc
                raise

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read transaction under the lock: several SELECTs see one consistent snapshot."""
        with self._lock:
            db = self.connection
            try:
                db.execute("BEGIN")
            except sqlite3.ProgrammingError as exc:
                raise StoreError(f"gallery store {self.path} is closed") from exc
            try:
                yield Session(db, Dialect.SQLITE)
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
            raise newer_schema(str(self.path), version)
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
            with self.write() as session:
                # Re-read under the write lock: another process may have migrated meanwhile.
                migrate(session, session.execute("PRAGMA user_version").fetchone()[0], str(self.path))
                session.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


class PostgresDatabase(StoreDatabase):
    """The store in a PostgreSQL database shared by replicas: one connection (reopened when lost) behind one lock.

    `readonly` opens a read-only session (matcher workers) on a database already at `SCHEMA_VERSION`.
    """

    dialect = Dialect.POSTGRESQL

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        super().__init__(readonly)
        self.url = url
        self.name = redact_url(url)
        self._connection: psycopg.Connection[Any] | None = None
        self._closed = False
        try:
            self._prepare()
        except BaseException:
            self.close()
            raise

    @property
    def in_transaction(self) -> bool:
        conn = self._connection
        return conn is not None and not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    # -- transactions ---------------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One READ COMMITTED write transaction under the lock: committed whole, or rolled back whole on any error."""
        with self._transaction("BEGIN") as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A REPEATABLE READ READ ONLY transaction under the lock: several SELECTs see one snapshot."""
        with self._transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY") as session:
            yield session

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[Session]:
        with self._lock:
            conn = self._connect()
            try:
                conn.execute(begin)
                yield Session(conn, Dialect.POSTGRESQL)
                conn.execute("COMMIT")
            except BaseException as exc:
                self._end_failed(conn)
                if isinstance(exc, psycopg.IntegrityError):  # a deferred key, checked at COMMIT
                    raise StoreIntegrityError(f"gallery store {self.name}: {exc} (nothing was changed)") from None
                if isinstance(exc, psycopg.OperationalError) and (conn.closed or conn.broken):
                    raise StoreError(
                        f"lost the connection to the gallery store {self.name} ({_brief(exc)}): check that the "
                        "PostgreSQL server is running and reachable; nothing was changed, the next call reconnects"
                    ) from None
                if isinstance(exc, psycopg.Error):
                    raise StoreError(f"gallery store {self.name}: {_brief(exc)} (nothing was changed)") from exc
                raise

    def _end_failed(self, conn: psycopg.Connection[Any]) -> None:
        """Roll back after an error; drop a broken connection so the next call opens a new one."""
        if conn.closed or conn.broken:
            self._drop()
            return
        try:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
        except psycopg.Error:
            self._drop()

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _connect(self) -> psycopg.Connection[Any]:
        """The open connection, or a new one (the first call, or after the last one was lost)."""
        if self._closed:
            raise StoreError(f"gallery store {self.name} is closed")
        if self._connection is not None and not self._connection.closed:
            return self._connection
        options = "-c default_transaction_read_only=on" if self.readonly else ""
        try:
            # autocommit: read() and write() issue BEGIN/COMMIT themselves, as on SQLite.
            self._connection = psycopg.connect(
                self.url, autocommit=True, connect_timeout=PG_CONNECT_TIMEOUT, options=options, application_name="blindgate-cloud"
            )
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot connect to the gallery store {self.name} ({_brief(exc)}): check that the PostgreSQL "
                "server is running, and the host, port, user, password and database of store_url"
            ) from None
        return self._connection

    # -- schema ---------------------------------------------------------------------------------

    def _prepare(self) -> None:
        """Check the database is ours and not newer; migrate it (once, under an advisory lock) if older."""
        version = self._schema_version()
        if version is not None and version > SCHEMA_VERSION:
            raise newer_schema(self.name, version)
        if self.readonly:
            if version != SCHEMA_VERSION:
                raise StoreError(f"{self.name}: store schema {version or 0}, this version reads {SCHEMA_VERSION}")
            return
        if version == SCHEMA_VERSION:
            return
        with self.write() as db:
            # Replicas starting together: the first migrates, the others wait here and find it done.
            db.execute("SELECT pg_advisory_xact_lock(?)", (APPLICATION_ID,))
            db.execute(PG_VERSION_TABLE)
            row = db.execute("SELECT version FROM blindgate_schema").fetchone()
            current = 0 if row is None else int(row[0])
            if current == 0:
                others = db.execute(
                    "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename <> 'blindgate_schema'"
                ).fetchone()[0]
                if others:
                    raise StoreError(f"{self.name} holds other tables but no blindgate gallery store: use an empty database")
            if current == SCHEMA_VERSION:
                return
            migrate(db, current, self.name)
            db.execute(
                "INSERT INTO blindgate_schema (singleton, version, migrated) VALUES (TRUE, ?, extract(epoch FROM now())) "
                "ON CONFLICT (singleton) DO UPDATE SET version = excluded.version, migrated = excluded.migrated",
                (SCHEMA_VERSION,),
            )

    def _schema_version(self) -> int | None:
        """The version in `blindgate_schema`; None when the table does not exist (an empty database)."""
        with self._transaction("BEGIN") as db:
            if db.execute("SELECT to_regclass('blindgate_schema')").fetchone()[0] is None:
                return None
            row = db.execute("SELECT version FROM blindgate_schema").fetchone()
        return None if row is None else int(row[0])
