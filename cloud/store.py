"""The durable gallery store: each site's encrypted gallery, in one SQLite file.

Pure persistence. The store keeps the bytes the engine produces (evaluation bundles, gallery
blocks, enrollment ciphertexts) and the device's encrypted subject labels, all as opaque blobs;
it parses none of them and knows nothing of HTTP or MQTT. Nothing in it decrypts anything: the
service validates a bundle with `EvaluationKeys.from_bytes` (which rejects a secret key) before
`create_site`, and access tokens are kept only as hashes.

Durability. The database runs in WAL mode with ``synchronous=FULL``, and every change that
matters is one transaction: an enrollment writes the subject row, the block it updated and the
bumped gallery version together, or not at all. So a committed enrollment survives a restart,
a ``kill -9`` or a power cut, and a half-written one is never visible: after a crash the file
opens as it was at the last commit. A failed commit (slot taken, unknown site, ...) rolls back
and leaves everything stored before it untouched.

Threads. One connection, opened with ``check_same_thread=False``, guarded by a
`threading.Lock`: every method takes the lock for its whole transaction, so the store can be
called from any thread (the aiohttp service runs it in a thread executor) and calls are
serialized. That is ample here: a site changes at the pace people are enrolled, and scans read
the gallery from memory, not from the store. One process should own the file; others (a backup,
``sqlite3`` for inspection) may read it, and writers wait up to `BUSY_TIMEOUT` seconds for locks.

Schema versions. ``PRAGMA user_version`` holds `SCHEMA_VERSION` and ``PRAGMA application_id``
marks the file as a blindgate store, so opening a newer store with older code, or some other
SQLite file, fails with a clear `StoreError` instead of misreading it.

    with GalleryStore(state_dir / "gallery.db") as store:
        store.create_site(site_id, token, keys.key_id, keys.to_bytes())
        version = store.commit_enrollment(site_id, new_subject_id(), label, ref, enrollment,
                                          ref.block, gallery.blocks[ref.block].to_bytes())
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from blindgate.shared.engine.gallery import SlotRef
from blindgate.shared.errors import BlindgateError

SCHEMA_VERSION = 1
# "BGGS" (BlindGate Gallery Store) in PRAGMA application_id: tells our files from other SQLite files.
APPLICATION_ID = 0x42474753
# Seconds a write waits for another connection's lock (a backup or an inspecting sqlite3 shell).
BUSY_TIMEOUT = 10.0
# After a checkpoint, shrink the WAL back to this: a block rewrite can be tens of MB.
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
# Domain separation for token hashes, so a stored hash is useless as a hash of anything else.
_TOKEN_CONTEXT = b"blindgate-site-token-v1\x00"

_SCHEMA = """
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
    UNIQUE (site_id, subject_id),
    UNIQUE (site_id, block, slot),
    -- a subject always lives in a stored block
    FOREIGN KEY (site_id, block) REFERENCES block (site_id, idx)
);
"""


class StoreError(BlindgateError):
    """Anything the gallery store refuses or cannot do."""


class UnknownSite(StoreError):
    """No site with that id is registered (404-style)."""


class UnknownSubject(StoreError):
    """The site holds no subject with that id (404-style)."""


class StoreConflict(StoreError):
    """The change clashes with what is stored: id or slot already taken, stale block (409-style)."""


@dataclass(frozen=True)
class SiteRecord:
    """A registered site, without its (large) evaluation bundle."""

    site_id: str
    key_id: str
    version: int  # gallery version: +1 for every committed enrollment or removal
    created: float  # Unix time


@dataclass(frozen=True)
class GallerySnapshot:
    """A site's gallery as of one transaction; bundle and blocks are None when the reader is current."""

    key_id: str
    version: int
    bundle: bytes | None
    blocks: list[bytes] | None


@dataclass(frozen=True)
class SubjectRecord:
    """One enrolled person: an opaque id, the device-encrypted label and where the template lives."""

    subject_id: str
    label: bytes  # encrypted by the device; opaque here
    block: int
    slot: int
    created: float  # Unix time

    @property
    def ref(self) -> SlotRef:
        return SlotRef(self.block, self.slot)


def new_subject_id() -> str:
    """A fresh random subject id (128 bits): says nothing about the person or enrollment order."""
    return secrets.token_hex(16)


def hash_token(token: str) -> bytes:
    """What is stored instead of a site's access token.

    Tokens are random 32-byte secrets, so a plain (domain-separated) SHA-256 is enough: there
    is nothing to brute-force that a slow hash would protect.
    """
    if not isinstance(token, str) or not token:
        raise ValueError("an access token must be a non-empty string")
    return hashlib.sha256(_TOKEN_CONTEXT + token.encode()).digest()


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _blob(value: object, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise ValueError(f"{what} must be bytes, got {type(value).__name__}")
    return bytes(value)


def _index(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    return value


class GalleryStore:
    """Sites, their encrypted gallery blocks and enrolled subjects, durably, in one SQLite file.

    Thread-safe: one connection behind a lock (see the module doc). Use as a context manager or
    call `close`.
    """

    def __init__(self, path: Path | str, readonly: bool = False) -> None:
        """Open (creating if needed) the store; `readonly` opens an existing one for readers such as matcher workers."""
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.Lock()
        if readonly:
            try:
                self._db = sqlite3.connect(
                    self.path.resolve().as_uri() + "?mode=ro", uri=True, timeout=BUSY_TIMEOUT,
                    isolation_level=None, check_same_thread=False,
                )
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open gallery store {self.path} for reading: {exc}") from None
            if version != SCHEMA_VERSION:
                self._db.close()
                raise StoreError(f"{self.path}: store schema {version}, this version reads {SCHEMA_VERSION}")
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            # Token hashes and bundles are no secret keys, but nobody else needs to read them.
            # SQLite takes an empty file as a new database and gives -wal and -shm the same mode.
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass
        try:
            # isolation_level=None: no implicit transactions, each method issues BEGIN/COMMIT itself.
            self._db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open gallery store {self.path}: {exc}") from None
        try:
            self._open()
        except BaseException:
            self._db.close()
            raise

    def _open(self) -> None:
        db = self._db
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
        if app_id == 0 and self._has_tables():
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
            self._migrate(version)

    def _has_tables(self) -> bool:
        return self._db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0] > 0

    def _migrate(self, version: int) -> None:
        """Bring an older (or new, empty) file to SCHEMA_VERSION, in one transaction."""
        with self._lock, self._write():
            # Re-read under the write lock: another process may have created the schema meanwhile.
            current = self._db.execute("PRAGMA user_version").fetchone()[0]
            if current == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif current != SCHEMA_VERSION:  # pragma: no cover - no older schema exists yet
                raise StoreError(f"{self.path}: no migration from store schema {current}")

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (idempotent). Committed data is already on disk."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> "GalleryStore":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- transactions ---------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed whole on success, rolled back whole on any error.

        BEGIN IMMEDIATE takes the write lock up front, so reads inside it see exactly the state
        the transaction will change. Callers hold self._lock.
        """
        db = self._db
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
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction under the lock: several SELECTs see one consistent snapshot."""
        with self._lock:
            db = self._db
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

    def _require_site(self, db: sqlite3.Connection, site_id: str) -> int:
        """The site's current gallery version; UnknownSite if it is not registered."""
        row = db.execute("SELECT version FROM site WHERE site_id = ?", (site_id,)).fetchone()
        if row is None:
            raise UnknownSite(f"no site {site_id!r} is registered")
        return row[0]

    def _bump(self, db: sqlite3.Connection, site_id: str, version: int) -> int:
        db.execute("UPDATE site SET version = ? WHERE site_id = ?", (version + 1, site_id))
        return version + 1

    # -- sites ----------------------------------------------------------------------------------

    def create_site(self, site_id: str, token: str, key_id: str, bundle: bytes) -> None:
        """Register a site with its evaluation bundle (validated by the caller) and access token.

        The token itself is not kept, only its hash. StoreConflict if the site exists: keys are
        never silently replaced, since every stored block was made under them.
        """
        site_id, key_id = _text(site_id, "site id"), _text(key_id, "key id")
        bundle = _blob(bundle, "evaluation bundle")
        if not bundle:
            raise ValueError("evaluation bundle is empty")
        token_hash = hash_token(token)
        with self._lock, self._write() as db:
            try:
                db.execute(
                    "INSERT INTO site (site_id, key_id, token_hash, bundle, version, created) VALUES (?, ?, ?, ?, 0, ?)",
                    (site_id, key_id, token_hash, bundle, time.time()),
                )
            except sqlite3.IntegrityError:
                raise StoreConflict(f"site {site_id!r} is already registered") from None

    def site(self, site_id: str) -> SiteRecord | None:
        with self._read() as db:
            row = db.execute(
                "SELECT site_id, key_id, version, created FROM site WHERE site_id = ?", (site_id,)
            ).fetchone()
        return SiteRecord(*row) if row else None

    def sites(self) -> list[SiteRecord]:
        """Every registered site, oldest first (the service loads them all at startup)."""
        with self._read() as db:
            rows = db.execute("SELECT site_id, key_id, version, created FROM site ORDER BY rowid").fetchall()
        return [SiteRecord(*row) for row in rows]

    def bundle(self, site_id: str) -> bytes:
        """The site's evaluation bundle, as registered. UnknownSite if none."""
        with self._read() as db:
            row = db.execute("SELECT bundle FROM site WHERE site_id = ?", (site_id,)).fetchone()
        if row is None:
            raise UnknownSite(f"no site {site_id!r} is registered")
        return bytes(row[0])

    def check_token(self, site_id: str, token: str) -> bool:
        """Whether `token` is the site's access token; False for unknown sites or bad tokens.

        Compared in constant time, and an unknown site costs the same work as a known one, so
        the answer says nothing about which sites exist.
        """
        try:
            offered = hash_token(token)
        except ValueError:
            return False
        with self._read() as db:
            row = db.execute("SELECT token_hash FROM site WHERE site_id = ?", (site_id,)).fetchone()
        stored = bytes(row[0]) if row else secrets.token_bytes(32)
        return hmac.compare_digest(offered, stored) and row is not None

    # -- gallery --------------------------------------------------------------------------------

    def blocks(self, site_id: str) -> list[bytes]:
        """The site's gallery blocks in index order, to rebuild its `Gallery` at startup."""
        with self._read() as db:
            self._require_site(db, site_id)
            rows = db.execute("SELECT idx, data FROM block WHERE site_id = ? ORDER BY idx", (site_id,)).fetchall()
        # commit_enrollment only ever appends the next index, so a gap means the file was edited.
        if [idx for idx, _ in rows] != list(range(len(rows))):
            raise StoreError(f"site {site_id!r}: gallery block indexes {[idx for idx, _ in rows]} have gaps")
        return [bytes(data) for _, data in rows]

    def block(self, site_id: str, block_index: int) -> bytes | None:
        """One gallery block, or None when the index is past the last block."""
        with self._read() as db:
            self._require_site(db, site_id)
            row = db.execute("SELECT data FROM block WHERE site_id = ? AND idx = ?", (site_id, block_index)).fetchone()
        return None if row is None else bytes(row[0])

    def gallery(self, site_id: str, known_version: int | None = None) -> GallerySnapshot:
        """Key id and version, plus bundle and blocks unless the caller already holds `known_version`.

        One transaction: the blocks are exactly those of the version returned, so a reply can
        name the gallery version its results come from.
        """
        with self._read() as db:
            row = db.execute("SELECT key_id, version FROM site WHERE site_id = ?", (site_id,)).fetchone()
            if row is None:
                raise UnknownSite(f"no site {site_id!r} is registered")
            key_id, version = row
            if version == known_version:
                return GallerySnapshot(key_id, version, None, None)
            (bundle,) = db.execute("SELECT bundle FROM site WHERE site_id = ?", (site_id,)).fetchone()
            rows = db.execute("SELECT data FROM block WHERE site_id = ? ORDER BY idx", (site_id,)).fetchall()
        return GallerySnapshot(key_id, version, bytes(bundle), [bytes(data) for (data,) in rows])

    def _put_block(self, db: sqlite3.Connection, site_id: str, block_index: int, block: bytes) -> None:
        count = db.execute("SELECT count(*) FROM block WHERE site_id = ?", (site_id,)).fetchone()[0]
        if block_index > count:
            raise StoreConflict(
                f"site {site_id!r} has {count} blocks: block {block_index} would leave a gap (next is {count})"
            )
        db.execute(
            "INSERT INTO block (site_id, idx, data) VALUES (?, ?, ?) "
            "ON CONFLICT (site_id, idx) DO UPDATE SET data = excluded.data",
            (site_id, block_index, block),
        )

    def commit_enrollment(
        self,
        site_id: str,
        subject_id: str,
        label: bytes,
        ref: SlotRef,
        enrollment: bytes,
        block_index: int,
        block: bytes,
        *,
        expected_version: int | None = None,
    ) -> int:
        """Store one enrollment atomically: subject row, updated block and version bump together.

        `block` is the serialized block `ref.block` after the template was added (so
        `block_index` must equal `ref.block`; a new block must be the next index). Returns the
        new gallery version. StoreConflict if the subject id or the slot is taken; UnknownSite
        if the site is not registered. On any error nothing changes.

        `expected_version`: the gallery version the block was computed from; StoreConflict if
        the site has moved on since (another process committed meanwhile), so a block computed
        from a stale copy never overwrites a newer one.
        """
        subject_id = _text(subject_id, "subject id")
        label, enrollment = _blob(label, "label"), _blob(enrollment, "enrollment ciphertext")
        block = _blob(block, "gallery block")
        block_index = _index(block_index, "block index")
        _index(ref.block, "block of the slot")
        _index(ref.slot, "slot")
        if ref.block != block_index:
            raise ValueError(f"slot {ref} is not in block {block_index}, the block being written")
        with self._lock, self._write() as db:
            version = self._require_site(db, site_id)
            self._check_version(site_id, version, expected_version)
            taken = db.execute(
                "SELECT subject_id FROM subject WHERE site_id = ? AND block = ? AND slot = ?",
                (site_id, ref.block, ref.slot),
            ).fetchone()
            if taken:
                raise StoreConflict(f"slot {ref.block}:{ref.slot} of site {site_id!r} already holds a subject")
            if db.execute(
                "SELECT 1 FROM subject WHERE site_id = ? AND subject_id = ?", (site_id, subject_id)
            ).fetchone():
                raise StoreConflict(f"subject {subject_id!r} is already enrolled at site {site_id!r}")
            self._put_block(db, site_id, block_index, block)
            try:
                db.execute(
                    "INSERT INTO subject (site_id, subject_id, label, block, slot, enrollment, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (site_id, subject_id, label, ref.block, ref.slot, enrollment, time.time()),
                )
            except sqlite3.IntegrityError as exc:  # the checks above make this a race we lost
                raise StoreConflict(f"cannot enroll {subject_id!r} at site {site_id!r}: {exc}") from None
            return self._bump(db, site_id, version)

    def commit_removal(
        self, site_id: str, subject_id: str, block_index: int, block: bytes, *, expected_version: int | None = None
    ) -> int:
        """Remove a subject atomically with the block it left (serialized after `Gallery.remove`).

        Returns the new gallery version. UnknownSubject if the site holds no such subject;
        StoreConflict if the subject is not in `block_index` (the block was computed for another
        slot) or the gallery is no longer at `expected_version`. On any error nothing changes.
        """
        subject_id = _text(subject_id, "subject id")
        block = _blob(block, "gallery block")
        block_index = _index(block_index, "block index")
        with self._lock, self._write() as db:
            version = self._require_site(db, site_id)
            self._check_version(site_id, version, expected_version)
            row = db.execute(
                "SELECT block FROM subject WHERE site_id = ? AND subject_id = ?", (site_id, subject_id)
            ).fetchone()
            if row is None:
                raise UnknownSubject(f"site {site_id!r} has no subject {subject_id!r}")
            if row[0] != block_index:
                raise StoreConflict(
                    f"subject {subject_id!r} is in block {row[0]}, not block {block_index}: refusing to overwrite it"
                )
            db.execute("DELETE FROM subject WHERE site_id = ? AND subject_id = ?", (site_id, subject_id))
            self._put_block(db, site_id, block_index, block)
            return self._bump(db, site_id, version)

    @staticmethod
    def _check_version(site_id: str, version: int, expected_version: int | None) -> None:
        if expected_version is not None and version != expected_version:
            raise StoreConflict(
                f"site {site_id!r} gallery is at version {version}, not {expected_version}: "
                "it changed while this block was computed"
            )

    def import_block(
        self,
        site_id: str,
        block_index: int,
        block: bytes,
        subjects: list[tuple[str, bytes, int, bytes]],
        *,
        expected_version: int | None = None,
    ) -> int:
        """Bulk import: store one whole block (e.g. from `engine.encrypt_block`) and its subjects.

        `subjects` lists (subject id, label, slot, enrollment ciphertext) for every template in
        the block; the block index must be new (the next one). One transaction, one version bump.
        Returns the new gallery version. StoreConflict if the block exists or an id is taken.
        """
        block = _blob(block, "gallery block")
        block_index = _index(block_index, "block index")
        rows = []
        now = time.time()
        for subject_id, label, slot, enrollment in subjects:
            rows.append(
                (site_id, _text(subject_id, "subject id"), _blob(label, "label"), block_index,
                 _index(slot, "slot"), _blob(enrollment, "enrollment ciphertext"), now)
            )
        with self._lock, self._write() as db:
            version = self._require_site(db, site_id)
            self._check_version(site_id, version, expected_version)
            if db.execute("SELECT 1 FROM block WHERE site_id = ? AND idx = ?", (site_id, block_index)).fetchone():
                raise StoreConflict(f"site {site_id!r} already has block {block_index}; import into a new block")
            self._put_block(db, site_id, block_index, block)
            try:
                db.executemany(
                    "INSERT INTO subject (site_id, subject_id, label, block, slot, enrollment, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            except sqlite3.IntegrityError as exc:
                raise StoreConflict(f"cannot import into site {site_id!r}: {exc}") from None
            return self._bump(db, site_id, version)

    # -- subjects -------------------------------------------------------------------------------

    _SUBJECT_COLUMNS = "subject_id, label, block, slot, created"

    @staticmethod
    def _subject(row: tuple | None) -> SubjectRecord | None:
        if row is None:
            return None
        subject_id, label, block, slot, created = row
        return SubjectRecord(subject_id, bytes(label), block, slot, created)

    def subject(self, site_id: str, subject_id: str) -> SubjectRecord | None:
        with self._read() as db:
            self._require_site(db, site_id)
            row = db.execute(
                f"SELECT {self._SUBJECT_COLUMNS} FROM subject WHERE site_id = ? AND subject_id = ?",
                (site_id, subject_id),
            ).fetchone()
        return self._subject(row)

    def subjects(self, site_id: str) -> list[SubjectRecord]:
        """Every subject of the site, in order of enrollment (insertion order, not the clock)."""
        return self.directory(site_id)[1]

    def directory(self, site_id: str) -> tuple[int, list[SubjectRecord]]:
        """The gallery version and every subject at that version, read in one transaction.

        Devices map a decoded (block, slot) to a subject through this list, keyed by the version a
        reply names: the two must come from the same state.
        """
        with self._read() as db:
            version = self._require_site(db, site_id)
            rows = db.execute(
                f"SELECT {self._SUBJECT_COLUMNS} FROM subject WHERE site_id = ? ORDER BY id", (site_id,)
            ).fetchall()
        return version, [self._subject(row) for row in rows]

    def subject_at(self, site_id: str, block: int, slot: int) -> SubjectRecord | None:
        """Who occupies a slot: turns a decoded scan hit into a subject."""
        with self._read() as db:
            self._require_site(db, site_id)
            row = db.execute(
                f"SELECT {self._SUBJECT_COLUMNS} FROM subject WHERE site_id = ? AND block = ? AND slot = ?",
                (site_id, block, slot),
            ).fetchone()
        return self._subject(row)

    def enrollment(self, site_id: str, subject_id: str) -> bytes:
        """The enrollment ciphertext a subject was added from: needed to remove it exactly."""
        with self._read() as db:
            self._require_site(db, site_id)
            row = db.execute(
                "SELECT enrollment FROM subject WHERE site_id = ? AND subject_id = ?", (site_id, subject_id)
            ).fetchone()
        if row is None:
            raise UnknownSubject(f"site {site_id!r} has no subject {subject_id!r}")
        return bytes(row[0])

    def stats(self, site_id: str) -> dict[str, int]:
        """Sizes for monitoring: subjects, blocks, gallery version and bytes stored for the site."""
        with self._read() as db:
            version = self._require_site(db, site_id)
            # length() of a BLOB reads only its size, not its (possibly tens of MB of) content.
            subjects, subject_bytes = db.execute(
                "SELECT count(*), coalesce(sum(length(label) + length(enrollment)), 0) FROM subject WHERE site_id = ?",
                (site_id,),
            ).fetchone()
            blocks, block_bytes = db.execute(
                "SELECT count(*), coalesce(sum(length(data)), 0) FROM block WHERE site_id = ?", (site_id,)
            ).fetchone()
            (bundle_bytes,) = db.execute("SELECT length(bundle) FROM site WHERE site_id = ?", (site_id,)).fetchone()
        return {
            "subjects": subjects,
            "blocks": blocks,
            "version": version,
            "bytes": subject_bytes + block_bytes + bundle_bytes,
            "block_bytes": block_bytes,
            "subject_bytes": subject_bytes,
            "bundle_bytes": bundle_bytes,
        }

    # -- health ---------------------------------------------------------------------------------

    def integrity_check(self) -> list[str]:
        """Problems found in the file (empty list: healthy): SQLite's integrity and foreign-key checks.

        Reads the whole file, so it takes a while on a large store: run it at startup or from
        an admin command, not per request.
        """
        with self._read() as db:
            problems = [row[0] for row in db.execute("PRAGMA integrity_check").fetchall()]
            if problems == ["ok"]:
                problems = []
            for table, rowid, parent, _ in db.execute("PRAGMA foreign_key_check").fetchall():
                problems.append(f"{table} row {rowid} refers to a missing {parent}")
        return problems
