"""The durable gallery store: each site's encrypted gallery, in SQLite (embedded) or PostgreSQL (shared).

Pure persistence. The store keeps the bytes the engine produces (evaluation bundles, gallery
blocks, enrollment ciphertexts) and the device's encrypted subject labels, all as opaque blobs;
it parses none of them and knows nothing of HTTP or MQTT. Nothing in it decrypts anything: the
service validates a bundle with `EvaluationKeys.from_bytes` (which rejects a secret key) before
`create_site`, and access tokens are kept only as hashes.

This module holds the operations (sites and tokens, gallery blocks, subjects, health); the file
itself (backends, schema, migrations, transactions, errors) is store_schema.py and the records it
returns are store_records.py; the SQL here is written once for both backends. Every change that
matters is one transaction: an enrollment writes the subject row, the block it updated and the
bumped gallery version together, or not at all. A failed commit (slot taken, unknown site, ...)
rolls back and leaves everything stored before it untouched.
Calls are thread-safe and serialized (the aiohttp service runs them in a thread executor). On
PostgreSQL several replicas write at once: each gallery change locks its site row first
(`require_site(..., for_update=True)`), so changes to one site serialize across processes, and
announces its new version to the other replicas (store_notify.py).

    with GalleryStore(state_dir / "gallery.db") as store:   # or GalleryStore("postgresql://...")
        store.create_site(site_id, token, keys.key_id, keys.to_bytes())
        version = store.commit_enrollment(site_id, new_subject_id(), label, ref, enrollment,
                                          ref.block, gallery.blocks[ref.block].to_bytes())
"""

from __future__ import annotations

import hmac
import secrets
import time
from pathlib import Path
from types import TracebackType

from blindgate.shared.engine.gallery import SlotRef

from .store_doors import DoorStore, check_door, insert_door
from .store_log import GalleryLog, replace_block_log
from .store_notify import notify_change
from .store_records import (
    GallerySnapshot,
    SiteRecord,
    SubjectRecord,
    hash_token,
    new_subject_id,
    require_bytes,
    require_index,
    require_text,
)
from .store_rekey import RekeyStore
from .store_schema import (
    SCHEMA_VERSION,
    Dialect,
    Session,
    StoreConflict,
    StoreError,
    StoreIntegrityError,
    UnknownSite,
    UnknownSubject,
    open_database,
)
from .store_sealed import sealed_template

__all__ = [
    "SCHEMA_VERSION",
    "GallerySnapshot",
    "GalleryStore",
    "SiteRecord",
    "StoreConflict",
    "StoreError",
    "StoreIntegrityError",
    "SubjectRecord",
    "UnknownSite",
    "UnknownSubject",
    "bump_version",
    "hash_token",
    "new_subject_id",
]

_SUBJECT_COLUMNS = "subject_id, label, block, slot, created"
SubjectRow = tuple[str, bytes, int, int, float]


def require_site(db: Session, site_id: str, *, for_update: bool = False) -> int:
    """The site's current gallery version; UnknownSite if it is not registered.

    `for_update` (in a write transaction, before changing the gallery): on PostgreSQL, lock the
    site row until commit, so concurrent changes to the site from other replicas wait and then
    read the version this one commits. SQLite's BEGIN IMMEDIATE already serializes writers.
    """
    lock = " FOR UPDATE" if for_update and db.dialect is Dialect.POSTGRESQL else ""
    row = db.execute(f"SELECT version FROM site WHERE site_id = ?{lock}", (site_id,)).fetchone()
    if row is None:
        raise UnknownSite(f"no site {site_id!r} is registered")
    return int(row[0])


def bump_version(db: Session, site_id: str, version: int) -> int:
    """Set the site's gallery version to `version + 1` and announce it: the last step of every gallery change."""
    db.execute("UPDATE site SET version = ? WHERE site_id = ?", (version + 1, site_id))
    notify_change(db, site_id, version + 1)
    return version + 1


def check_version(site_id: str, version: int, expected_version: int | None) -> None:
    """StoreConflict if the gallery moved on from the version a block was computed from."""
    if expected_version is not None and version != expected_version:
        raise StoreConflict(
            f"site {site_id!r} gallery is at version {version}, not {expected_version}: it changed while this block was computed"
        )


def put_block(db: Session, site_id: str, block_index: int, block: bytes, *, version: int = 0, copies: int | None = None) -> None:
    """Insert or replace one block; StoreConflict if it would leave a gap in the indexes.

    `version`: the gallery version the block reflects (the one being committed). `copies`: the
    block's layout (each template occupies `copies` slots; the store never parses blocks);
    None keeps a stored block's layout, or 1 for a new block.
    """
    count = db.execute("SELECT count(*) FROM block WHERE site_id = ?", (site_id,)).fetchone()[0]
    if block_index > count:
        raise StoreConflict(f"site {site_id!r} has {count} blocks: block {block_index} would leave a gap (next is {count})")
    if copies is not None and (isinstance(copies, bool) or not isinstance(copies, int) or copies < 1):
        raise ValueError(f"copies must be a positive integer, got {copies!r}")
    keep = "block.copies" if copies is None else "excluded.copies"
    replace_block_log(db, site_id, block_index)  # the whole block replaces its snapshot and log (store_log.py)
    db.execute(
        "INSERT INTO block (site_id, idx, data, version, copies) VALUES (?, ?, ?, ?, ?) "
        f"ON CONFLICT (site_id, idx) DO UPDATE SET data = excluded.data, version = excluded.version, copies = {keep}",
        (site_id, block_index, block, version, 1 if copies is None else copies),
    )


def _subject(row: SubjectRow) -> SubjectRecord:
    subject_id, label, block, slot, created = row
    return SubjectRecord(subject_id, bytes(label), block, slot, created)


class GalleryStore:
    """Sites, their encrypted gallery blocks and enrolled subjects, durably, in SQLite or PostgreSQL.

    Thread-safe: one connection behind a lock (store_schema.StoreDatabase). Use as a context
    manager or call `close`.
    """

    def __init__(self, location: Path | str, readonly: bool = False) -> None:
        """Open (creating or migrating if needed) the store at a file path, ``sqlite:///path`` or ``postgresql://...``.

        `readonly` opens an existing store for readers such as matcher workers.
        """
        self.database = open_database(location, readonly=readonly)
        self.path: Path | None = getattr(self.database, "path", None)  # the SQLite file; None on PostgreSQL
        self.location = self.database.name  # for messages: no password
        self.rekey = RekeyStore(self.database)  # key renewal: stage, then switch over atomically
        self.doors = DoorStore(self.database)  # each door's request-signing key (cloud/store_doors.py)
        self.log = GalleryLog(self.database)  # enrollments and removals as log rows on block snapshots (store_log.py)
        self.readonly = readonly

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (idempotent). Committed data is already on disk."""
        self.database.close()

    def __enter__(self) -> GalleryStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- sites ----------------------------------------------------------------------------------

    def create_site(self, site_id: str, token: str, key_id: str, bundle: bytes, door: tuple[str, bytes] | None = None) -> None:
        """Register a site with its evaluation bundle (validated by the caller) and access token.

        The token itself is not kept, only its hash. With `door` (id, request public key) the
        token is that first door's own, in the same transaction, and the site keeps no token of
        its own (cloud/store_doors.py): removing the door later revokes it. StoreConflict if the
        site exists: keys are never silently replaced, since every stored block was made under them.
        """
        site_id, key_id = require_text(site_id, "site id"), require_text(key_id, "key id")
        bundle = require_bytes(bundle, "evaluation bundle")
        if not bundle:
            raise ValueError("evaluation bundle is empty")
        token_hash = hash_token(token)
        if door is not None:
            door = check_door(site_id, *door)[1:]
        with self.database.write() as db:
            try:
                db.execute(
                    "INSERT INTO site (site_id, key_id, token_hash, bundle, version, created) VALUES (?, ?, ?, ?, 0, ?)",
                    (site_id, key_id, secrets.token_bytes(32) if door else token_hash, bundle, time.time()),
                )
            except StoreIntegrityError:
                raise StoreConflict(f"site {site_id!r} is already registered") from None
            if door is not None:
                insert_door(db, site_id, door[0], door[1], token_hash)

    def site(self, site_id: str) -> SiteRecord | None:
        with self.database.read() as db:
            row = db.execute("SELECT site_id, key_id, version, created FROM site WHERE site_id = ?", (site_id,)).fetchone()
        return SiteRecord(*row) if row else None

    def sites(self) -> list[SiteRecord]:
        """Every registered site, oldest first (the service loads them all at startup)."""
        with self.database.read() as db:
            rows = db.execute("SELECT site_id, key_id, version, created FROM site ORDER BY created, site_id").fetchall()
        return [SiteRecord(*row) for row in rows]

    def bundle(self, site_id: str) -> bytes:
        """The site's evaluation bundle, as registered. UnknownSite if none."""
        with self.database.read() as db:
            row = db.execute("SELECT bundle FROM site WHERE site_id = ?", (site_id,)).fetchone()
        if row is None:
            raise UnknownSite(f"no site {site_id!r} is registered")
        return bytes(row[0])

    def check_token(self, site_id: str, token: str) -> bool:
        """Whether `token` is the site's access token or one of its doors' own; False for unknown sites or bad tokens.

        Compared in constant time, and an unknown site costs the same work as a known one, so
        the answer says nothing about which sites exist.
        """
        try:
            offered = hash_token(token)
        except ValueError:
            return False
        with self.database.read() as db:
            row = db.execute("SELECT token_hash FROM site WHERE site_id = ?", (site_id,)).fetchone()
        stored = bytes(row[0]) if row else secrets.token_bytes(32)
        site_token = hmac.compare_digest(offered, stored) and row is not None
        return bool(self.doors.token_doors(site_id, token)) or site_token

    # -- gallery --------------------------------------------------------------------------------

    def blocks(self, site_id: str) -> list[bytes]:
        """The site's gallery blocks in index order, to rebuild its `Gallery` at startup."""
        with self.database.read() as db:
            require_site(db, site_id)
            rows = db.execute("SELECT idx, data FROM block WHERE site_id = ? ORDER BY idx", (site_id,)).fetchall()
        # commit_enrollment only ever appends the next index, so a gap means the file was edited.
        if [idx for idx, _ in rows] != list(range(len(rows))):
            raise StoreError(f"site {site_id!r}: gallery block indexes {[idx for idx, _ in rows]} have gaps")
        return [bytes(data) for _, data in rows]

    def block_layouts(self, site_id: str) -> list[int]:
        """Each block's layout in index order: how many slots one template occupies (block.copies)."""
        with self.database.read() as db:
            require_site(db, site_id)
            rows = db.execute("SELECT copies FROM block WHERE site_id = ? ORDER BY idx", (site_id,)).fetchall()
        return [int(copies) for (copies,) in rows]

    def block(self, site_id: str, block_index: int) -> bytes | None:
        """One gallery block, or None when the index is past the last block."""
        with self.database.read() as db:
            require_site(db, site_id)
            row = db.execute("SELECT data FROM block WHERE site_id = ? AND idx = ?", (site_id, block_index)).fetchone()
        return None if row is None else bytes(row[0])

    def gallery(self, site_id: str, known_version: int | None = None) -> GallerySnapshot:
        """Key id and version, plus bundle and blocks unless the caller already holds `known_version`.

        One transaction: the blocks are exactly those of the version returned, so a reply can
        name the gallery version its results come from.
        """
        with self.database.read() as db:
            row = db.execute("SELECT key_id, version FROM site WHERE site_id = ?", (site_id,)).fetchone()
            if row is None:
                raise UnknownSite(f"no site {site_id!r} is registered")
            key_id, version = row
            if version == known_version:
                return GallerySnapshot(key_id, version, None, None)
            (bundle,) = db.execute("SELECT bundle FROM site WHERE site_id = ?", (site_id,)).fetchone()
            rows = db.execute("SELECT data FROM block WHERE site_id = ? ORDER BY idx", (site_id,)).fetchall()
        return GallerySnapshot(key_id, version, bytes(bundle), [bytes(data) for (data,) in rows])

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
        sealed: bytes = b"",
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
        subject_id = require_text(subject_id, "subject id")
        label, enrollment = require_bytes(label, "label"), require_bytes(enrollment, "enrollment ciphertext")
        block = require_bytes(block, "gallery block")
        block_index = require_index(block_index, "block index")
        require_index(ref.block, "block of the slot")
        require_index(ref.slot, "slot")
        if ref.block != block_index:
            raise ValueError(f"slot {ref} is not in block {block_index}, the block being written")
        with self.database.write() as db:
            version = require_site(db, site_id, for_update=True)
            check_version(site_id, version, expected_version)
            taken = db.execute(
                "SELECT subject_id FROM subject WHERE site_id = ? AND block = ? AND slot = ?",
                (site_id, ref.block, ref.slot),
            ).fetchone()
            if taken:
                raise StoreConflict(f"slot {ref.block}:{ref.slot} of site {site_id!r} already holds a subject")
            if db.execute("SELECT 1 FROM subject WHERE site_id = ? AND subject_id = ?", (site_id, subject_id)).fetchone():
                raise StoreConflict(f"subject {subject_id!r} is already enrolled at site {site_id!r}")
            put_block(db, site_id, block_index, block, version=version + 1)
            try:
                db.execute(
                    "INSERT INTO subject (site_id, subject_id, label, block, slot, enrollment, created, sealed) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (site_id, subject_id, label, ref.block, ref.slot, enrollment, time.time(), require_bytes(sealed, "sealed")),
                )
            except StoreIntegrityError as exc:  # the checks above make this a race we lost
                raise StoreConflict(f"cannot enroll {subject_id!r} at site {site_id!r}: {exc}") from None
            return bump_version(db, site_id, version)

    def commit_removal(
        self, site_id: str, subject_id: str, block_index: int, block: bytes, *, expected_version: int | None = None
    ) -> int:
        """Remove a subject atomically with the block it left (serialized after `Gallery.remove`).

        Returns the new gallery version. UnknownSubject if the site holds no such subject;
        StoreConflict if the subject is not in `block_index` (the block was computed for another
        slot) or the gallery is no longer at `expected_version`. On any error nothing changes.
        """
        subject_id = require_text(subject_id, "subject id")
        block = require_bytes(block, "gallery block")
        block_index = require_index(block_index, "block index")
        with self.database.write() as db:
            version = require_site(db, site_id, for_update=True)
            check_version(site_id, version, expected_version)
            row = db.execute("SELECT block FROM subject WHERE site_id = ? AND subject_id = ?", (site_id, subject_id)).fetchone()
            if row is None:
                raise UnknownSubject(f"site {site_id!r} has no subject {subject_id!r}")
            if row[0] != block_index:
                raise StoreConflict(
                    f"subject {subject_id!r} is in block {row[0]}, not block {block_index}: refusing to overwrite it"
                )
            db.execute("DELETE FROM subject WHERE site_id = ? AND subject_id = ?", (site_id, subject_id))
            put_block(db, site_id, block_index, block, version=version + 1)
            return bump_version(db, site_id, version)

    def import_block(
        self,
        site_id: str,
        block_index: int,
        block: bytes,
        subjects: list[tuple[str, bytes, int, bytes]],
        *,
        expected_version: int | None = None,
        copies: int = 1,
    ) -> int:
        """Bulk import: store one whole block (e.g. from `engine.encrypt_block`) and its subjects.

        `subjects` lists (subject id, label, slot, enrollment ciphertext) for every template in
        the block; the block index must be new (the next one); `copies` is the block's layout
        (slots per template, stored in block.copies). One transaction, one version bump.
        Returns the new gallery version. StoreConflict if the block exists or an id is taken.
        """
        block = require_bytes(block, "gallery block")
        block_index = require_index(block_index, "block index")
        rows = []
        now = time.time()
        for subject_id, label, slot, enrollment in subjects:
            rows.append(
                (
                    site_id,
                    require_text(subject_id, "subject id"),
                    require_bytes(label, "label"),
                    block_index,
                    require_index(slot, "slot"),
                    require_bytes(enrollment, "enrollment ciphertext"),
                    now,
                )
            )
        with self.database.write() as db:
            version = require_site(db, site_id, for_update=True)
            check_version(site_id, version, expected_version)
            if db.execute("SELECT 1 FROM block WHERE site_id = ? AND idx = ?", (site_id, block_index)).fetchone():
                raise StoreConflict(f"site {site_id!r} already has block {block_index}; import into a new block")
            put_block(db, site_id, block_index, block, version=version + 1, copies=copies)
            try:
                db.executemany(
                    "INSERT INTO subject (site_id, subject_id, label, block, slot, enrollment, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            except StoreIntegrityError as exc:
                raise StoreConflict(f"cannot import into site {site_id!r}: {exc}") from None
            return bump_version(db, site_id, version)

    # -- subjects -------------------------------------------------------------------------------

    def subject(self, site_id: str, subject_id: str) -> SubjectRecord | None:
        with self.database.read() as db:
            require_site(db, site_id)
            row = db.execute(
                f"SELECT {_SUBJECT_COLUMNS} FROM subject WHERE site_id = ? AND subject_id = ?",
                (site_id, subject_id),
            ).fetchone()
        return None if row is None else _subject(row)

    def subjects(self, site_id: str) -> list[SubjectRecord]:
        """Every subject of the site, in order of enrollment (insertion order, not the clock)."""
        return self.directory(site_id)[1]

    def directory(self, site_id: str) -> tuple[int, list[SubjectRecord]]:
        """The gallery version and every subject at that version, read in one transaction.

        Devices map a decoded (block, slot) to a subject through this list, keyed by the version a
        reply names: the two must come from the same state.
        """
        with self.database.read() as db:
            version = require_site(db, site_id)
            rows = db.execute(f"SELECT {_SUBJECT_COLUMNS} FROM subject WHERE site_id = ? ORDER BY id", (site_id,)).fetchall()
        return version, [_subject(row) for row in rows]

    def subject_at(self, site_id: str, block: int, slot: int) -> SubjectRecord | None:
        """Who occupies a slot: turns a decoded scan hit into a subject."""
        with self.database.read() as db:
            require_site(db, site_id)
            row = db.execute(
                f"SELECT {_SUBJECT_COLUMNS} FROM subject WHERE site_id = ? AND block = ? AND slot = ?",
                (site_id, block, slot),
            ).fetchone()
        return None if row is None else _subject(row)

    def sealed(self, site_id: str, subject_id: str) -> bytes:
        """The device-sealed template stored with the enrollment (cloud/store_sealed.py)."""
        return sealed_template(self.database, site_id, subject_id)

    def enrollment(self, site_id: str, subject_id: str) -> bytes:
        """The enrollment ciphertext a subject was added from: needed to remove it exactly."""
        with self.database.read() as db:
            require_site(db, site_id)
            row = db.execute(
                "SELECT enrollment FROM subject WHERE site_id = ? AND subject_id = ?", (site_id, subject_id)
            ).fetchone()
        if row is None:
            raise UnknownSubject(f"site {site_id!r} has no subject {subject_id!r}")
        return bytes(row[0])

    def stats(self, site_id: str) -> dict[str, int]:
        """Sizes for monitoring: subjects, blocks, gallery version and bytes stored for the site."""
        with self.database.read() as db:
            version = require_site(db, site_id)
            # length() of a BLOB reads only its size, not its (possibly tens of MB of) content.
            subjects, subject_bytes = db.execute(
                "SELECT count(*), coalesce(sum(length(label) + length(enrollment)), 0) FROM subject WHERE site_id = ?",
                (site_id,),
            ).fetchone()
            blocks, block_bytes = db.execute(
                "SELECT count(*), coalesce(sum(length(data)), 0) FROM block WHERE site_id = ?", (site_id,)
            ).fetchone()
            (bundle_bytes,) = db.execute("SELECT length(bundle) FROM site WHERE site_id = ?", (site_id,)).fetchone()
        # int(): PostgreSQL sums bigints as numeric (Decimal).
        subject_bytes, block_bytes, bundle_bytes = int(subject_bytes), int(block_bytes), int(bundle_bytes)
        return {
            "subjects": int(subjects),
            "blocks": int(blocks),
            "version": version,
            "bytes": subject_bytes + block_bytes + bundle_bytes,
            "block_bytes": block_bytes,
            "subject_bytes": subject_bytes,
            "bundle_bytes": bundle_bytes,
        }

    # -- health ---------------------------------------------------------------------------------

    def integrity_check(self) -> list[str]:
        """Problems found in the store (empty list: healthy).

        SQLite: its integrity and foreign-key checks over the whole file. PostgreSQL (which keeps
        its own pages consistent): subjects pointing at missing blocks, and gaps in a site's block
        indexes. Either reads everything, so it takes a while on a large store: run it at startup
        or from an admin command, not per request.
        """
        with self.database.read() as db:
            if db.dialect is Dialect.POSTGRESQL:
                return _pg_problems(db)
            problems = [row[0] for row in db.execute("PRAGMA integrity_check").fetchall()]
            if problems == ["ok"]:
                problems = []
            for table, rowid, parent, _ in db.execute("PRAGMA foreign_key_check").fetchall():
                problems.append(f"{table} row {rowid} refers to a missing {parent}")
        return problems


def _pg_problems(db: Session) -> list[str]:
    """Consistency queries for a PostgreSQL store: what its constraints cannot express or a manual edit broke."""
    problems = [
        f"subject {subject_id!r} of site {site_id!r} refers to missing block {block}"
        for site_id, subject_id, block in db.execute(
            "SELECT s.site_id, s.subject_id, s.block FROM subject s "
            "LEFT JOIN block b ON b.site_id = s.site_id AND b.idx = s.block WHERE b.id IS NULL ORDER BY s.id"
        )
    ]
    problems += [
        f"site {site_id!r} has {count} blocks but its last block index is {last}: the indexes have gaps"
        for site_id, count, last in db.execute(
            "SELECT site_id, count(*), max(idx) FROM block GROUP BY site_id HAVING max(idx) + 1 <> count(*) ORDER BY site_id"
        )
    ]
    return problems
