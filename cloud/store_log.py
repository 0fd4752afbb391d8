"""The gallery log: enrollments and removals stored as their own ciphertexts, replayed onto block snapshots.

A gallery block is ~30 MB; an enrollment ciphertext is ~163 KB. So an enrollment or a removal does
not rewrite its block: ONE transaction locks the site row, picks the slot, and writes the subject
row and a `gallery_log` row ('add' or 'remove', with the enrollment ciphertext) at the next gallery
version. A new block starts as an empty snapshot (header only). The stored `block` rows are
snapshots: `block.version` is the gallery version their bytes reflect, and a block's state at
version V is its snapshot plus its log rows above the snapshot's version up to V, applied in
version order (`Block.add` / `Block.remove`; CKKS add/sub of the same deterministic contribution
is exact modular arithmetic, so the bytes equal those of a block built directly).

Matcher workers read only their shard's part of this (`shard_update`) and replay it; once a block
has `snapshot_every` log rows past its snapshot, the service has the worker that holds it serialize
its replayed copy and `put_snapshot` stores it and deletes that block's rows at or below it, so a
restarted worker replays at most about `snapshot_every` rows per block.

Slots: the first free slot of the first block with room (by the occupied (block, slot) pairs of the
subject table), else slot 0 of a new block. Chosen under the write lock, so two writers (threads,
processes, replicas) never pick the same slot; UNIQUE (site_id, block, slot) is the backstop.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from blindgate.shared.engine.context import Params
from blindgate.shared.engine.gallery import SlotRef, base_slots, copies_for_block, first_free_slot

from .store_notify import notify_change
from .store_records import require_bytes, require_text
from .store_schema import (
    Dialect,
    Session,
    StoreConflict,
    StoreDatabase,
    StoreError,
    StoreIntegrityError,
    UnknownSite,
    UnknownSubject,
)


class LogOp(enum.Enum):
    """What a gallery log row does to its block."""

    ADD = "add"
    REMOVE = "remove"


@dataclass(frozen=True)
class LogEntry:
    """One logged change of a block: apply in `version` order onto a snapshot older than it."""

    version: int
    block: int
    slot: int
    op: LogOp
    enrollment: bytes = field(repr=False)


@dataclass(frozen=True)
class Snapshot:
    """A stored block: its bytes reflect gallery version `version`."""

    index: int
    version: int
    copies: int
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class ShardUpdate:
    """What a worker needs to bring its shard of a site to `version`.

    `bundle` is set when the reader's key id is not the site's (then every snapshot of the shard is
    included). `snapshots` replace the reader's copies of those blocks; `entries` (version order)
    apply to every block whose copy (after the snapshots) is older than the entry. `blocks` lists
    every block index of the shard at `version`.
    """

    key_id: str
    version: int
    bundle: bytes | None = field(repr=False)
    blocks: list[int]
    snapshots: list[Snapshot]
    entries: list[LogEntry]


@dataclass(frozen=True)
class Committed:
    """A logged enrollment or removal: new gallery version, where, and the block's rows past its snapshot."""

    version: int
    ref: SlotRef
    pending: int  # log rows of ref.block above its stored snapshot (snapshot when >= snapshot_every)


def lock_site(db: Session, site_id: str) -> tuple[str, int]:
    """(key id, version) of the site inside a write transaction; UnknownSite if none.

    The write transaction already holds SQLite's write lock (BEGIN IMMEDIATE); on PostgreSQL the
    site row is locked FOR UPDATE so writers of one site queue here.
    """
    lock = " FOR UPDATE" if db.dialect is Dialect.POSTGRESQL else ""
    row = db.execute(f"SELECT key_id, version FROM site WHERE site_id = ?{lock}", (site_id,)).fetchone()
    if row is None:
        raise UnknownSite(f"no site {site_id!r} is registered")
    return str(row[0]), int(row[1])


def _placeholders(values: Iterable[object]) -> str:
    return ", ".join("?" for _ in values)


def bump(db: Session, site_id: str, version: int) -> int:
    """Set the site's gallery version to `version + 1` and announce it to other replicas (store_notify.py)."""
    db.execute("UPDATE site SET version = ? WHERE site_id = ?", (version + 1, site_id))
    notify_change(db, site_id, version + 1)
    return version + 1


def choose_slot(db: Session, site_id: str, params: Params) -> tuple[SlotRef, int]:
    """(slot, layout of its block) for the next template: `first_free_slot` over the stored blocks and subjects.

    Full blocks come first in a large gallery, so only the occupied slots from the first block
    with room on are read (the full ones are skipped exactly as `first_free_slot` would skip them).
    """
    layouts = [int(c) for (c,) in db.execute("SELECT copies FROM block WHERE site_id = ? ORDER BY idx", (site_id,))]
    counts = {
        int(b): int(n) for b, n in db.execute("SELECT block, count(*) FROM subject WHERE site_id = ? GROUP BY block", (site_id,))
    }
    room = next((i for i, copies in enumerate(layouts) if counts.get(i, 0) < params.slots // copies), None)
    if room is None:  # every block full: the next new block
        copies = copies_for_block(params, len(layouts))
        return SlotRef(len(layouts), int(base_slots(params, copies)[0])), copies
    rows = db.execute("SELECT block, slot FROM subject WHERE site_id = ? AND block >= ?", (site_id, room)).fetchall()
    ref, copies = first_free_slot(params, layouts[room:], [SlotRef(int(b) - room, int(s)) for b, s in rows])
    if ref.block >= len(layouts) - room:  # pragma: no cover - block `room` has a free base slot
        raise StoreError(f"site {site_id!r}: block {room} has room but no free slot")
    return SlotRef(ref.block + room, ref.slot), copies


class GalleryLog:
    """Log-structured enrollments and removals on the gallery store's database (GalleryStore.log)."""

    def __init__(self, database: StoreDatabase) -> None:
        self.database = database

    # -- writers (the service) ------------------------------------------------------------------

    def enroll(
        self,
        site_id: str,
        subject_id: str,
        label: bytes,
        enrollment: bytes,
        *,
        key_id: str,
        params: Params,
        empty_blocks: Mapping[int, bytes],
        sealed: bytes = b"",
    ) -> Committed:
        """Enroll one validated enrollment ciphertext: slot chosen here, subject + log row + version bump, one transaction.

        `key_id` is the key id the ciphertext was validated under (StoreConflict if the site was
        rekeyed since); `params` its parameters (slot arithmetic). `empty_blocks` maps a layout
        (copies) to the serialized empty block of the site's keys (header only): stored as the
        snapshot of a new block when the slot opens one. StoreConflict if the subject id is taken.
        """
        subject_id = require_text(subject_id, "subject id")
        label, enrollment = require_bytes(label, "label"), require_bytes(enrollment, "enrollment ciphertext")
        sealed = require_bytes(sealed, "sealed")
        if not enrollment:
            raise ValueError("enrollment ciphertext is empty")
        now = time.time()
        with self.database.write() as db:
            current_key, version = lock_site(db, site_id)
            if current_key != key_id:
                raise StoreConflict(f"site {site_id!r} is now under key id {current_key!r}, not {key_id!r}: enroll again")
            if db.execute("SELECT 1 FROM subject WHERE site_id = ? AND subject_id = ?", (site_id, subject_id)).fetchone():
                raise StoreConflict(f"subject {subject_id!r} is already enrolled at site {site_id!r}")
            ref, copies = choose_slot(db, site_id, params)
            try:
                if db.execute("SELECT 1 FROM block WHERE site_id = ? AND idx = ?", (site_id, ref.block)).fetchone() is None:
                    if copies not in empty_blocks:
                        raise ValueError(f"no empty block of layout {copies} given for new block {ref.block}")
                    db.execute(
                        "INSERT INTO block (site_id, idx, data, version, copies) VALUES (?, ?, ?, ?, ?)",
                        (site_id, ref.block, require_bytes(empty_blocks[copies], "empty block"), version, copies),
                    )
                db.execute(
                    "INSERT INTO subject (site_id, subject_id, label, block, slot, enrollment, created, sealed) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (site_id, subject_id, label, ref.block, ref.slot, enrollment, now, sealed),
                )
                self._log(db, site_id, version + 1, ref, LogOp.ADD, subject_id, enrollment, now)
            except StoreIntegrityError as exc:  # the slot or id was taken by a writer we raced
                raise StoreConflict(f"cannot enroll {subject_id!r} at site {site_id!r}: {exc}") from None
            bump(db, site_id, version)
            return Committed(version + 1, ref, self._pending(db, site_id, ref.block))

    def remove(self, site_id: str, subject_id: str) -> Committed:
        """Remove a subject: delete its row, log 'remove' with its enrollment ciphertext, bump; one transaction."""
        now = time.time()
        with self.database.write() as db:
            _, version = lock_site(db, site_id)
            row = db.execute(
                "SELECT block, slot, enrollment FROM subject WHERE site_id = ? AND subject_id = ?", (site_id, subject_id)
            ).fetchone()
            if row is None:
                raise UnknownSubject(f"site {site_id!r} has no subject {subject_id!r}")
            ref = SlotRef(int(row[0]), int(row[1]))
            db.execute("DELETE FROM subject WHERE site_id = ? AND subject_id = ?", (site_id, subject_id))
            self._log(db, site_id, version + 1, ref, LogOp.REMOVE, subject_id, bytes(row[2]), now)
            bump(db, site_id, version)
            return Committed(version + 1, ref, self._pending(db, site_id, ref.block))

    def put_snapshot(self, site_id: str, index: int, version: int, data: bytes) -> bool:
        """Store block `index` as it is at gallery `version` and drop its log rows at or below it.

        Only if newer than the stored snapshot and not past the site's version; False (nothing
        written) otherwise, e.g. when a rekey replaced the blocks meanwhile.
        """
        data = require_bytes(data, "gallery block")
        with self.database.write() as db:
            _, current = lock_site(db, site_id)
            row = db.execute("SELECT version FROM block WHERE site_id = ? AND idx = ?", (site_id, index)).fetchone()
            if row is None or int(row[0]) >= version or version > current:
                return False
            db.execute("UPDATE block SET data = ?, version = ? WHERE site_id = ? AND idx = ?", (data, version, site_id, index))
            db.execute("DELETE FROM gallery_log WHERE site_id = ? AND block = ? AND version <= ?", (site_id, index, version))
            return True

    # -- readers (matcher workers) --------------------------------------------------------------

    def shard_update(
        self, site_id: str, key_id: str | None, known: dict[int, int], shard: int = 0, shards: int = 1
    ) -> ShardUpdate:
        """The snapshots and log rows that bring a reader's shard (blocks i with i % shards == shard) to the current version.

        `known` maps the block indexes the reader holds (under `key_id`) to the version each reflects.
        One read transaction, so everything returned belongs to the version returned.
        """
        with self.database.read() as db:
            row = db.execute("SELECT key_id, version, bundle FROM site WHERE site_id = ?", (site_id,)).fetchone()
            if row is None:
                raise UnknownSite(f"no site {site_id!r} is registered")
            current_key, version = str(row[0]), int(row[1])
            bundle = None
            if current_key != key_id:
                bundle, known = bytes(row[2]), {}
            metas = [
                (int(idx), int(v), int(c))
                for idx, v, c in db.execute("SELECT idx, version, copies FROM block WHERE site_id = ? ORDER BY idx", (site_id,))
                if int(idx) % shards == shard
            ]
            stale = [idx for idx, v, _ in metas if idx not in known or v > known[idx]]
            snapshots = []
            for idx, v, copies in metas:
                if idx in stale:
                    (data,) = db.execute("SELECT data FROM block WHERE site_id = ? AND idx = ?", (site_id, idx)).fetchone()
                    snapshots.append(Snapshot(idx, v, copies, bytes(data)))
            reflects = {idx: (v if idx in stale else known[idx]) for idx, v, _ in metas}
            entries: list[LogEntry] = []
            behind = [idx for idx, v in reflects.items() if v < version]
            if behind:
                since = min(reflects[idx] for idx in behind)
                rows = db.execute(
                    "SELECT version, block, slot, op, enrollment FROM gallery_log "
                    f"WHERE site_id = ? AND version > ? AND version <= ? AND block IN ({_placeholders(behind)}) ORDER BY version",
                    (site_id, since, version, *behind),
                ).fetchall()
                entries = [
                    LogEntry(int(v), int(b), int(s), LogOp(op), bytes(e)) for v, b, s, op, e in rows if int(v) > reflects[int(b)]
                ]
        return ShardUpdate(current_key, version, bundle, [idx for idx, _, _ in metas], snapshots, entries)

    def pending(self, site_id: str) -> dict[int, int]:
        """Block index -> log rows above its snapshot, for every block that has any."""
        with self.database.read() as db:
            rows = db.execute(
                "SELECT l.block, count(*) FROM gallery_log l JOIN block b ON b.site_id = l.site_id AND b.idx = l.block "
                "WHERE l.site_id = ? AND l.version > b.version GROUP BY l.block",
                (site_id,),
            ).fetchall()
        return {int(b): int(n) for b, n in rows}

    # -- inside a write transaction -------------------------------------------------------------

    @staticmethod
    def _log(
        db: Session,
        site_id: str,
        version: int,
        ref: SlotRef,
        op: LogOp,
        subject_id: str,
        enrollment: bytes,
        now: float,
    ) -> None:
        db.execute(
            "INSERT INTO gallery_log (site_id, version, block, slot, op, subject_id, enrollment, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (site_id, version, ref.block, ref.slot, op.value, subject_id, enrollment, now),
        )

    @staticmethod
    def _pending(db: Session, site_id: str, index: int) -> int:
        row = db.execute(
            "SELECT count(*) FROM gallery_log WHERE site_id = ? AND block = ? "
            "AND version > (SELECT version FROM block WHERE site_id = ? AND idx = ?)",
            (site_id, index, site_id, index),
        ).fetchone()
        return int(row[0])


def replace_block_log(db: Session, site_id: str, index: int) -> None:
    """Before a whole block is written (bulk import, a block computed by the caller): drop its log rows.

    StoreConflict if the block has log rows past its snapshot: bytes computed from the stored
    snapshot alone would silently lose those enrollments or removals.
    """
    row = db.execute("SELECT version FROM block WHERE site_id = ? AND idx = ?", (site_id, index)).fetchone()
    if (
        row is not None
        and db.execute(
            "SELECT 1 FROM gallery_log WHERE site_id = ? AND block = ? AND version > ?", (site_id, index, int(row[0]))
        ).fetchone()
    ):
        raise StoreConflict(f"site {site_id!r} block {index} has logged changes past its snapshot: refusing to overwrite it")
    db.execute("DELETE FROM gallery_log WHERE site_id = ? AND block = ?", (site_id, index))


def drop_site_log(db: Session, site_id: str) -> None:
    """Every block of the site was just rewritten (rekey): its log rows describe blocks that no longer exist."""
    db.execute("DELETE FROM gallery_log WHERE site_id = ?", (site_id,))


__all__ = [
    "Committed",
    "GalleryLog",
    "LogEntry",
    "LogOp",
    "ShardUpdate",
    "Snapshot",
    "StoreError",
    "bump",
    "choose_slot",
    "lock_site",
    "drop_site_log",
    "replace_block_log",
]
