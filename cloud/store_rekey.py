"""A site's key renewal (rekey) in the gallery store: staged piece by piece, switched over in one transaction.

The device re-encrypts every template under new CKKS keys and uploads the new evaluation bundle
and each subject's new enrollment ciphertext, sealed template and label. These wait in the
tables `rekey` and `rekey_subject` (schema 2) while the site keeps scanning under its current
keys; nothing a probe sees changes until `commit`, which in ONE transaction replaces the key id
and bundle, the blocks and every subject's placement, enrollment, sealed blob and label, bumps
the gallery version and clears the staging. A refused or failed commit changes nothing, so the
site is always entirely under its old keys or entirely under its new ones.

Staging is refused unless it covers exactly the site's current subjects and the gallery is still
at the version the device read its directory from (an enrollment or removal meanwhile would be
lost or resurrected by the switch).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from blindgate.shared.engine.gallery import SlotRef

from .store_notify import notify_change
from .store_records import require_bytes, require_index, require_text
from .store_schema import Dialect, Session, StoreConflict, StoreDatabase, UnknownSite, UnknownSubject

# Added to every old slot number before subjects move to their new places, so no two rows ever
# share a (block, slot) mid-transaction (the UNIQUE constraint is checked per statement).
_SLOT_SHIFT = 1 << 32


@dataclass(frozen=True)
class StagedSubject:
    """One subject as staged for the new keys."""

    subject_id: str
    label: bytes
    enrollment: bytes = field(repr=False)
    sealed: bytes = field(repr=False)


@dataclass(frozen=True)
class StagedRekey:
    """A site's staged rekey: the new key id and bundle and the subjects staged so far (enrollment order)."""

    key_id: str
    bundle: bytes = field(repr=False)
    subjects: list[StagedSubject]


def _site_row(db: Session, site_id: str, *, for_update: bool = False) -> tuple[str, int]:
    """Key id and gallery version; `for_update` locks the site row on PostgreSQL (as store.py `require_site`)."""
    lock = " FOR UPDATE" if for_update and db.dialect is Dialect.POSTGRESQL else ""
    row = db.execute(f"SELECT key_id, version FROM site WHERE site_id = ?{lock}", (site_id,)).fetchone()
    if row is None:
        raise UnknownSite(f"no site {site_id!r} is registered")
    return str(row[0]), int(row[1])


def _check_version(site_id: str, version: int, expected_version: int | None) -> None:
    if expected_version is not None and version != expected_version:
        raise StoreConflict(
            f"site {site_id!r} gallery is at version {version}, not {expected_version}: "
            "it changed since the rekey began; run the rekey again"
        )


def _staged_key(db: Session, site_id: str) -> str:
    row = db.execute("SELECT key_id FROM rekey WHERE site_id = ?", (site_id,)).fetchone()
    if row is None:
        raise StoreConflict(f"site {site_id!r} has no rekey staged: stage the new evaluation bundle first")
    return str(row[0])


class RekeyStore:
    """Stage and commit a site's key renewal; built on the gallery store's `StoreDatabase`."""

    def __init__(self, database: StoreDatabase) -> None:
        self.database = database

    def stage(self, site_id: str, key_id: str, bundle: bytes, *, expected_version: int | None = None) -> int:
        """Begin a rekey to `key_id` (bundle validated by the caller), replacing any unfinished one.

        Returns the gallery version the rekey starts from. StoreConflict if `key_id` is the
        site's current key id or the gallery is not at `expected_version`.
        """
        key_id = require_text(key_id, "key id")
        bundle = require_bytes(bundle, "evaluation bundle")
        if not bundle:
            raise ValueError("evaluation bundle is empty")
        with self.database.write() as db:
            current, version = _site_row(db, site_id, for_update=True)
            _check_version(site_id, version, expected_version)
            if key_id == current:
                raise StoreConflict(f"key id {key_id!r} is already site {site_id!r}'s key id: generate new keys")
            db.execute("DELETE FROM rekey WHERE site_id = ?", (site_id,))  # cascades to rekey_subject
            db.execute(
                "INSERT INTO rekey (site_id, key_id, bundle, created) VALUES (?, ?, ?, ?)",
                (site_id, key_id, bundle, time.time()),
            )
            return version

    def stage_subject(self, site_id: str, key_id: str, subject_id: str, label: bytes, enrollment: bytes, sealed: bytes) -> None:
        """Stage one enrolled subject's new enrollment ciphertext, sealed template and label (replacing a previous one).

        StoreConflict if no rekey to `key_id` is staged; UnknownSubject if the site holds no
        such subject (a rekey re-encrypts the people enrolled, it never adds anyone).
        """
        subject_id = require_text(subject_id, "subject id")
        label, enrollment = require_bytes(label, "label"), require_bytes(enrollment, "enrollment ciphertext")
        sealed = require_bytes(sealed, "sealed template")
        if not enrollment:
            raise ValueError("enrollment ciphertext is empty")
        with self.database.write() as db:
            _site_row(db, site_id, for_update=True)
            staged = _staged_key(db, site_id)
            if staged != key_id:
                raise StoreConflict(f"the rekey staged for site {site_id!r} is to key id {staged!r}, not {key_id!r}")
            if not db.execute("SELECT 1 FROM subject WHERE site_id = ? AND subject_id = ?", (site_id, subject_id)).fetchone():
                raise UnknownSubject(f"site {site_id!r} has no subject {subject_id!r}")
            db.execute(
                "INSERT INTO rekey_subject (site_id, subject_id, label, enrollment, sealed) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (site_id, subject_id) DO UPDATE SET "
                "label = excluded.label, enrollment = excluded.enrollment, sealed = excluded.sealed",
                (site_id, subject_id, label, enrollment, sealed),
            )

    def staged(self, site_id: str) -> StagedRekey | None:
        """The staged rekey with its subjects in the site's enrollment order, or None (read by the matcher worker)."""
        with self.database.read() as db:
            _site_row(db, site_id)
            row = db.execute("SELECT key_id, bundle FROM rekey WHERE site_id = ?", (site_id,)).fetchone()
            if row is None:
                return None
            rows = db.execute(
                "SELECT r.subject_id, r.label, r.enrollment, r.sealed FROM rekey_subject r "
                "LEFT JOIN subject s ON s.site_id = r.site_id AND s.subject_id = r.subject_id "
                # subjects no longer enrolled first, as SQLite sorts NULL (PostgreSQL sorts it last)
                "WHERE r.site_id = ? ORDER BY s.id IS NOT NULL, s.id, r.subject_id",
                (site_id,),
            ).fetchall()
        subjects = [StagedSubject(str(s), bytes(label), bytes(e), bytes(sealed)) for s, label, e, sealed in rows]
        return StagedRekey(str(row[0]), bytes(row[1]), subjects)

    def abort(self, site_id: str) -> None:
        """Drop the site's staged rekey, if any; the site stays on its current keys."""
        with self.database.write() as db:
            _site_row(db, site_id, for_update=True)
            db.execute("DELETE FROM rekey WHERE site_id = ?", (site_id,))

    def commit(
        self,
        site_id: str,
        key_id: str,
        placements: dict[str, SlotRef],
        blocks: list[bytes],
        *,
        expected_version: int | None = None,
        layouts: list[int] | None = None,
    ) -> int:
        """Switch the site to the staged keys, atomically; returns the new gallery version.

        `layouts`: each new block's copies per template (default 1 each), kept in `block.copies`
        so later enrollments pick base slots of the right layout (store_log.py).

        `blocks` are the new gallery blocks (index order) built from the staged enrollments and
        `placements` says where each subject now lives. StoreConflict, with nothing changed, if
        no rekey to `key_id` is staged, the staged subjects (or the placements) are not exactly
        the site's current subjects, or the gallery is not at `expected_version`.
        """
        key_id = require_text(key_id, "key id")
        blocks = [require_bytes(block, "gallery block") for block in blocks]
        layouts = [1] * len(blocks) if layouts is None else [int(copies) for copies in layouts]
        if len(layouts) != len(blocks):
            raise ValueError(f"{len(layouts)} block layouts for {len(blocks)} blocks")
        for subject_id, ref in placements.items():
            require_text(subject_id, "subject id")
            if require_index(ref.block, "block of the slot") >= len(blocks):
                raise ValueError(
                    f"subject {subject_id!r} is placed in block {ref.block}, but only {len(blocks)} blocks are given"
                )
            require_index(ref.slot, "slot")
        if len(set(placements.values())) != len(placements):
            raise ValueError("two subjects are placed in the same slot")
        with self.database.write() as db:
            _, version = _site_row(db, site_id, for_update=True)
            _check_version(site_id, version, expected_version)
            staged = _staged_key(db, site_id)
            if staged != key_id:
                raise StoreConflict(f"the rekey staged for site {site_id!r} is to key id {staged!r}, not {key_id!r}")
            current = {s for (s,) in db.execute("SELECT subject_id FROM subject WHERE site_id = ?", (site_id,))}
            ready = {s for (s,) in db.execute("SELECT subject_id FROM rekey_subject WHERE site_id = ?", (site_id,))}
            if ready != current:
                raise StoreConflict(
                    f"site {site_id!r} has {len(current)} subjects and {len(ready)} are staged "
                    f"({len(current - ready)} missing, {len(ready - current)} no longer enrolled): "
                    "stage every subject, then commit"
                )
            if set(placements) != current:
                raise StoreConflict(f"the new blocks place {len(placements)} subjects, the site has {len(current)}")
            (bundle,) = db.execute("SELECT bundle FROM rekey WHERE site_id = ?", (site_id,)).fetchone()
            # Subjects point at blocks that are replaced below: check that at COMMIT, not per statement.
            db.defer_foreign_keys()
            db.execute("UPDATE site SET key_id = ?, bundle = ? WHERE site_id = ?", (key_id, bundle, site_id))
            db.execute("DELETE FROM block WHERE site_id = ?", (site_id,))
            db.execute("DELETE FROM gallery_log WHERE site_id = ?", (site_id,))  # logged changes of the old blocks (store_log.py)
            db.executemany(
                "INSERT INTO block (site_id, idx, data, version, copies) VALUES (?, ?, ?, ?, ?)",
                [(site_id, idx, data, version + 1, copies) for idx, (data, copies) in enumerate(zip(blocks, layouts))],
            )
            db.execute("UPDATE subject SET slot = slot + ? WHERE site_id = ?", (_SLOT_SHIFT, site_id))
            staged_value = (
                "(SELECT {0} FROM rekey_subject r WHERE r.site_id = subject.site_id AND r.subject_id = subject.subject_id)"
            )
            columns = ", ".join(f"{col} = {staged_value.format(col)}" for col in ("label", "enrollment", "sealed"))
            db.executemany(
                f"UPDATE subject SET block = ?, slot = ?, {columns} WHERE site_id = ? AND subject_id = ?",
                [(ref.block, ref.slot, site_id, subject_id) for subject_id, ref in placements.items()],
            )
            db.execute("DELETE FROM rekey WHERE site_id = ?", (site_id,))
            db.execute("UPDATE site SET version = ? WHERE site_id = ?", (version + 1, site_id))
            notify_change(db, site_id, version + 1)
            return version + 1


__all__ = ["RekeyStore", "StagedRekey", "StagedSubject"]
