"""The gallery store's operations (cloud/store.py): round trips, restarts, errors, atomicity, threads.

The database itself (schema, pragmas, migrations, real `kill -9` crashes) is tested in
test_store_schema.py. Every test here that takes `location` runs once per backend (SQLite file,
PostgreSQL database: conftest `store_url`); those that look at the SQLite file itself say so.
The store treats blocks, enrollments, labels and bundles as opaque bytes, so most tests use fake
bytes; one test runs the real engine to show the stored bytes rebuild a working gallery.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import psycopg
import pytest

from blindgate.cloud import store as store_module
from blindgate.cloud.store import (
    GalleryStore,
    SiteRecord,
    StoreConflict,
    StoreError,
    SubjectRecord,
    UnknownSite,
    UnknownSubject,
    hash_token,
    new_subject_id,
)
from blindgate.shared.engine.gallery import SlotRef

SITE = "site-a"
TOKEN = "k3Jq9-random-32-byte-token-in-base64url-xxxxx"
BUNDLE = b"BGK1E" + bytes(range(256)) * 40


@pytest.fixture
def location(store_url: str) -> str:
    """The store's location: an SQLite file path, or a PostgreSQL URL (conftest `store_url`)."""
    return store_url


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """An SQLite file, for the tests that inspect the file itself."""
    return tmp_path / "state" / "gallery.db"


@pytest.fixture
def store(location: str):
    with GalleryStore(location) as store:
        store.create_site(SITE, TOKEN, "key-1", BUNDLE)
        yield store


def site_record(store: GalleryStore, site: str) -> SiteRecord:
    """The site's record, which the test expects to exist."""
    record = store.site(site)
    assert record is not None, f"site {site!r} is not registered"
    return record


def enroll(store: GalleryStore, n: int, *, site: str = SITE, per_block: int = 4) -> tuple[str, int]:
    """Enroll fake subject number n at block n // per_block, slot n % per_block."""
    ref = SlotRef(n // per_block, n % per_block)
    subject_id = f"subject-{n:04d}"
    block = f"block {ref.block} after subject {n}".encode()
    version = store.commit_enrollment(site, subject_id, b"enc-label-%d" % n, ref, b"enrollment-%d" % n, ref.block, block)
    return subject_id, version


# -- round trips and restarts -----------------------------------------------------------------


def test_round_trip_of_everything(store: GalleryStore) -> None:
    site = store.site(SITE)
    assert isinstance(site, SiteRecord)
    assert (site.site_id, site.key_id, site.version) == (SITE, "key-1", 0)
    assert abs(site.created - time.time()) < 60
    assert store.sites() == [site]
    assert store.bundle(SITE) == BUNDLE
    assert store.blocks(SITE) == []
    assert store.subjects(SITE) == []

    subject_id = new_subject_id()
    version = store.commit_enrollment(SITE, subject_id, b"\x00label\xff", SlotRef(0, 7), b"E" * 1000, 0, b"B0v1")
    assert version == 1
    record = store.subject(SITE, subject_id)
    assert isinstance(record, SubjectRecord)
    assert (record.subject_id, record.label, record.block, record.slot) == (subject_id, b"\x00label\xff", 0, 7)
    assert record.ref == SlotRef(0, 7)
    assert store.subject_at(SITE, 0, 7) == record
    assert store.subject_at(SITE, 0, 6) is None
    assert store.subjects(SITE) == [record]
    assert store.enrollment(SITE, subject_id) == b"E" * 1000
    assert store.blocks(SITE) == [b"B0v1"]
    assert store.stats(SITE) == {
        "subjects": 1,
        "blocks": 1,
        "version": 1,
        "bytes": len(b"\x00label\xff") + 1000 + 4 + len(BUNDLE),
        "block_bytes": 4,
        "subject_bytes": len(b"\x00label\xff") + 1000,
        "bundle_bytes": len(BUNDLE),
    }


def test_readonly_reader_sees_consistent_gallery_snapshots(store: GalleryStore, location: str) -> None:
    enroll(store, 0)
    reader = GalleryStore(location, readonly=True)
    try:
        snap = reader.gallery(SITE)
        assert (snap.key_id, snap.version, snap.bundle) == ("key-1", 1, BUNDLE)
        assert snap.blocks == [b"block 0 after subject 0"]
        assert reader.gallery(SITE, known_version=1).blocks is None  # current: nothing re-read
        enroll(store, 1)
        enroll(store, 4)  # a second block
        snap = reader.gallery(SITE, known_version=1)
        assert snap.version == 3 and snap.blocks == [b"block 0 after subject 1", b"block 1 after subject 4"]
        assert reader.block(SITE, 1) == b"block 1 after subject 4" and reader.block(SITE, 2) is None
        with pytest.raises(UnknownSite):
            reader.gallery("nowhere")
        with pytest.raises(StoreError):  # a reader cannot write
            reader.create_site("site-b", TOKEN, "key-2", BUNDLE)
    finally:
        reader.close()


def test_readonly_needs_an_existing_file(db_path: Path) -> None:
    """SQLite only: a reader never creates the file (PostgreSQL: test_store_schema.py)."""
    with pytest.raises(StoreError, match="for reading"):
        GalleryStore(db_path.parent / "missing.db", readonly=True)


def test_directory_pairs_subjects_with_their_gallery_version(store: GalleryStore) -> None:
    assert store.directory(SITE) == (0, [])
    enroll(store, 0)
    enroll(store, 1)
    version, subjects = store.directory(SITE)
    assert version == 2 and [s.subject_id for s in subjects] == ["subject-0000", "subject-0001"]
    with pytest.raises(UnknownSite):
        store.directory("nowhere")


def test_restart_keeps_everything(location: str) -> None:
    with GalleryStore(location) as store:
        store.create_site(SITE, TOKEN, "key-1", BUNDLE)
        store.create_site("site-b", "other-token", "key-2", b"bundle-b")
        ids = [enroll(store, n)[0] for n in range(6)]
        enroll(store, 0, site="site-b")
        store.commit_removal(SITE, ids[2], 0, b"block 0 without subject 2")
        before = (store.sites(), store.subjects(SITE), store.blocks(SITE), store.stats(SITE), store.subjects("site-b"))
    with GalleryStore(location) as store:
        after = (store.sites(), store.subjects(SITE), store.blocks(SITE), store.stats(SITE), store.subjects("site-b"))
        assert after == before
        assert [s.site_id for s in store.sites()] == [SITE, "site-b"]
        assert site_record(store, SITE).version == 7 and site_record(store, "site-b").version == 1
        assert [s.subject_id for s in store.subjects(SITE)] == [i for i in ids if i != ids[2]]
        assert store.blocks(SITE) == [b"block 0 without subject 2", b"block 1 after subject 5"]
        assert store.enrollment(SITE, ids[5]) == b"enrollment-5"
        assert store.bundle("site-b") == b"bundle-b"
        assert store.check_token(SITE, TOKEN)
        assert store.integrity_check() == []
        # and it keeps working after the restart
        assert enroll(store, 6)[1] == 8


# -- versions, removals ---------------------------------------------------------------------------


def test_version_increments_with_every_enrollment_and_removal(store: GalleryStore) -> None:
    versions = [enroll(store, n)[1] for n in range(5)]
    assert versions == [1, 2, 3, 4, 5]
    assert store.commit_removal(SITE, "subject-0001", 0, b"block 0 minus 1") == 6
    assert site_record(store, SITE).version == 6
    assert store.subject(SITE, "subject-0001") is None
    assert store.subject_at(SITE, 0, 1) is None
    assert store.blocks(SITE)[0] == b"block 0 minus 1"
    # the freed slot can be taken again
    assert store.commit_enrollment(SITE, "again", b"l", SlotRef(0, 1), b"e", 0, b"block 0 refilled") == 7
    again = store.subject_at(SITE, 0, 1)
    assert again is not None and again.subject_id == "again"
    assert [s.subject_id for s in store.subjects(SITE)] == [
        "subject-0000",
        "subject-0002",
        "subject-0003",
        "subject-0004",
        "again",
    ]


def test_sites_have_independent_versions_and_slots(store: GalleryStore) -> None:
    store.create_site("site-b", "tok-b", "key-b", b"bundle-b")
    enroll(store, 0)
    enroll(store, 1)
    _, version_b = enroll(store, 0, site="site-b")  # same slot and subject id, other site: fine
    assert version_b == 1
    assert site_record(store, SITE).version == 2
    assert len(store.subjects("site-b")) == 1


# -- errors -------------------------------------------------------------------------------------


def test_conflicts(store: GalleryStore) -> None:
    with pytest.raises(StoreConflict, match="already registered"):
        store.create_site(SITE, "another-token", "key-2", b"other")
    assert store.bundle(SITE) == BUNDLE and store.check_token(SITE, TOKEN)

    enroll(store, 0)
    with pytest.raises(StoreConflict, match="slot 0:0 .* already holds"):
        store.commit_enrollment(SITE, "someone-else", b"l", SlotRef(0, 0), b"e", 0, b"clobbered")
    with pytest.raises(StoreConflict, match="already enrolled"):
        store.commit_enrollment(SITE, "subject-0000", b"l", SlotRef(0, 1), b"e", 0, b"clobbered")
    with pytest.raises(StoreConflict, match="gap"):
        store.commit_enrollment(SITE, "far-away", b"l", SlotRef(2, 0), b"e", 2, b"block 2")
    with pytest.raises(StoreConflict, match="is in block 0, not block 1"):
        store.commit_removal(SITE, "subject-0000", 1, b"block 1")
    with pytest.raises(ValueError, match="not in block"):
        store.commit_enrollment(SITE, "x", b"l", SlotRef(1, 0), b"e", 0, b"block 0")
    with pytest.raises(ValueError, match="non-negative"):
        store.commit_enrollment(SITE, "x", b"l", SlotRef(0, -1), b"e", 0, b"block 0")
    with pytest.raises(ValueError, match="must be bytes"):
        store.commit_enrollment(SITE, "x", "label as str", SlotRef(0, 1), b"e", 0, b"block 0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="subject id"):
        store.commit_enrollment(SITE, "", b"l", SlotRef(0, 1), b"e", 0, b"block 0")
    with pytest.raises(ValueError):
        store.create_site("site-c", "", "key", b"bundle")  # no empty tokens
    # nothing above changed anything
    assert site_record(store, SITE).version == 1
    assert store.blocks(SITE) == [b"block 0 after subject 0"]
    assert [s.subject_id for s in store.subjects(SITE)] == ["subject-0000"]
    assert store.site("site-c") is None


def test_unknown_site_and_subject(store: GalleryStore) -> None:
    for call in (
        lambda: store.bundle("nope"),
        lambda: store.blocks("nope"),
        lambda: store.subjects("nope"),
        lambda: store.subject("nope", "x"),
        lambda: store.subject_at("nope", 0, 0),
        lambda: store.enrollment("nope", "x"),
        lambda: store.stats("nope"),
        lambda: store.commit_enrollment("nope", "x", b"l", SlotRef(0, 0), b"e", 0, b"b"),
        lambda: store.commit_removal("nope", "x", 0, b"b"),
    ):
        with pytest.raises(UnknownSite, match="no site 'nope'"):
            call()
    assert store.site("nope") is None
    assert store.subject(SITE, "ghost") is None
    with pytest.raises(UnknownSubject, match="no subject 'ghost'"):
        store.enrollment(SITE, "ghost")
    with pytest.raises(UnknownSubject):
        store.commit_removal(SITE, "ghost", 0, b"b")
    assert issubclass(UnknownSite, StoreError) and issubclass(UnknownSubject, StoreError)
    assert issubclass(StoreConflict, StoreError)
    assert site_record(store, SITE).version == 0 and store.blocks(SITE) == []


def test_failed_commit_leaves_prior_data_intact(location: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with GalleryStore(location) as store:
        store.create_site(SITE, TOKEN, "key-1", BUNDLE)
        enroll(store, 0)
        enroll(store, 1)
        snapshot = (store.subjects(SITE), store.blocks(SITE), store.stats(SITE))

        # a slot conflict
        with pytest.raises(StoreConflict):
            store.commit_enrollment(SITE, "intruder", b"l", SlotRef(0, 1), b"e", 0, b"clobbered block")

        # a failure after the block and subject rows were written, before the version bump
        def boom(*args):
            raise RuntimeError("disk on fire")

        monkeypatch.setattr(store_module, "bump_version", boom)
        with pytest.raises(RuntimeError, match="disk on fire"):
            store.commit_enrollment(SITE, "half", b"l", SlotRef(0, 2), b"e", 0, b"half-written block")
        with pytest.raises(RuntimeError, match="disk on fire"):
            store.commit_enrollment(SITE, "half", b"l", SlotRef(1, 0), b"e", 1, b"half-written new block")
        with pytest.raises(RuntimeError, match="disk on fire"):
            store.commit_removal(SITE, "subject-0000", 0, b"half-removed block")
        monkeypatch.undo()

        assert (store.subjects(SITE), store.blocks(SITE), store.stats(SITE)) == snapshot
        assert store.subject(SITE, "half") is None
        assert not store.database.in_transaction
        assert enroll(store, 2)[1] == 3  # the store is still usable
    with GalleryStore(location) as store:
        assert store.blocks(SITE) == [b"block 0 after subject 2"]
        assert [s.subject_id for s in store.subjects(SITE)] == ["subject-0000", "subject-0001", "subject-0002"]


# -- tokens -------------------------------------------------------------------------------------


def test_token_check_and_only_a_hash_is_stored(store: GalleryStore) -> None:
    assert store.check_token(SITE, TOKEN)
    assert not store.check_token(SITE, TOKEN + "x")
    assert not store.check_token(SITE, TOKEN[:-1])
    assert not store.check_token(SITE, "")
    assert not store.check_token(SITE, None)  # type: ignore[arg-type]
    assert not store.check_token("other-site", TOKEN)
    store.create_site("site-b", "token-b", "key-b", b"b")
    assert store.check_token("site-b", "token-b") and not store.check_token("site-b", TOKEN)
    with store.database.read() as db:
        stored = [bytes(h) for (h,) in db.execute("SELECT token_hash FROM site ORDER BY site_id")]
    assert stored == [hash_token(TOKEN), hash_token("token-b")]


def test_no_token_is_in_the_file(db_path: Path) -> None:
    """SQLite only: the file and its WAL hold no token (PostgreSQL stores the same hashes, checked above)."""
    with GalleryStore(db_path) as store:
        store.create_site(SITE, TOKEN, "key-1", BUNDLE)
        store.create_site("site-b", "token-b", "key-b", b"b")
    files = [p for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)]
    assert files
    for file in files:
        raw = file.read_bytes()
        assert TOKEN.encode() not in raw and b"token-b" not in raw


def test_integrity_check_reports_problems(store: GalleryStore, location: str) -> None:
    enroll(store, 0)
    assert store.integrity_check() == []
    # sneak an orphan past the foreign keys, as a hand edit could: SQLite's are off by default,
    # PostgreSQL's are triggers that replication mode skips
    if location.startswith("postgresql://"):
        with psycopg.connect(location, autocommit=True) as raw:
            raw.execute("SET session_replication_role = replica")
            raw.execute("DELETE FROM block")
    else:
        with sqlite3.connect(location, timeout=10) as raw:
            raw.execute("DELETE FROM block")
        raw.close()
    problems = store.integrity_check()
    assert problems and "subject" in problems[0] and "block" in problems[0]


# -- threads ------------------------------------------------------------------------------------


def test_concurrent_commits_from_threads(store: GalleryStore) -> None:
    versions: list[int] = []
    errors: list[BaseException] = []

    def worker(first: int) -> None:
        try:
            for n in range(first, first + 10):
                versions.append(store.commit_enrollment(SITE, f"t{n}", b"l", SlotRef(0, n), b"e", 0, b"block %d" % n))
                store.subjects(SITE)
                store.check_token(SITE, TOKEN)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i * 10,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(versions) == list(range(1, 41))
    assert store.stats(SITE)["subjects"] == 40 and site_record(store, SITE).version == 40


# -- block layouts and versions -----------------------------------------------------------------


def test_blocks_keep_their_layout_and_the_version_they_reflect(store: GalleryStore) -> None:
    assert store.block_layouts(SITE) == []
    enroll(store, 0)  # block 0, one copy per template (the default)
    version = store.import_block(SITE, 1, b"imported block", [("imp", b"l", 0, b"e")], copies=4)
    enroll(store, 1)  # rewrites block 0: its layout stays
    assert store.block_layouts(SITE) == [1, 4]
    with store.database.read() as db:
        versions = db.execute("SELECT idx, version FROM block WHERE site_id = ? ORDER BY idx", (SITE,)).fetchall()
    assert [tuple(row) for row in versions] == [(0, 3), (1, version)] and version == 2
    with pytest.raises(ValueError, match="copies"):
        store.import_block(SITE, 2, b"b", [], copies=0)
    with pytest.raises(UnknownSite):
        store.block_layouts("nowhere")


# -- the real engine's bytes --------------------------------------------------------------------


def test_stored_engine_bytes_rebuild_the_gallery(location: str) -> None:
    np = pytest.importorskip("numpy")
    from blindgate.shared.engine import EvaluationKeys, Gallery, encrypt_enrollment, generate_site_keys
    from blindgate.shared.engine.gallery import Block

    keys = generate_site_keys()
    evaluation = EvaluationKeys.from_bytes(keys.evaluation_bytes)
    rng = np.random.default_rng(1)
    with GalleryStore(location) as store:
        store.create_site(SITE, TOKEN, evaluation.key_id, evaluation.to_bytes())
        gallery = Gallery(evaluation)
        for n in range(2):
            enrollment = encrypt_enrollment(keys, rng.normal(size=128) / 12)
            ref = gallery.add(enrollment)
            store.commit_enrollment(SITE, f"s{n}", b"label", ref, enrollment, ref.block, gallery.blocks[ref.block].to_bytes())
        digest = gallery.blocks[0].digest()
    with GalleryStore(location) as store:
        evaluation = EvaluationKeys.from_bytes(store.bundle(SITE), expected_key_id=site_record(store, SITE).key_id)
        gallery = Gallery(evaluation)
        gallery.blocks = [Block.from_bytes(evaluation, data) for data in store.blocks(SITE)]
        assert len(gallery) == 2 and gallery.blocks[0].digest() == digest
        # removal needs the stored enrollment ciphertext
        first = store.subject(SITE, "s0")
        assert first is not None
        gallery.remove(first.ref, store.enrollment(SITE, "s0"))
        store.commit_removal(SITE, "s0", first.block, gallery.blocks[first.block].to_bytes())
    with GalleryStore(location) as store:
        evaluation = EvaluationKeys.from_bytes(store.bundle(SITE))
        block = Block.from_bytes(evaluation, store.blocks(SITE)[0])
        assert block.count == 1 and bool(block.occupied[1]) and not block.occupied[0]
