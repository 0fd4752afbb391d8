"""The durable gallery store: round trips, restarts, errors, atomicity and real `kill -9` crashes.

The store treats blocks, enrollments, labels and bundles as opaque bytes, so most tests use fake
bytes; one test runs the real engine to show the stored bytes rebuild a working gallery.
"""

from __future__ import annotations

import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from blindgate.cloud.store import (
    SCHEMA_VERSION,
    GalleryStore,
    SiteRecord,
    StoreConflict,
    StoreError,
    SubjectRecord,
    UnknownSite,
    UnknownSubject,
    new_subject_id,
)
from blindgate.shared.engine.gallery import SlotRef

SITE = "site-a"
TOKEN = "k3Jq9-random-32-byte-token-in-base64url-xxxxx"
BUNDLE = b"BGK1E" + bytes(range(256)) * 40


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "gallery.db"


@pytest.fixture
def store(db_path: Path):
    with GalleryStore(db_path) as store:
        store.create_site(SITE, TOKEN, "key-1", BUNDLE)
        yield store


def enroll(store: GalleryStore, n: int, *, site: str = SITE, per_block: int = 4) -> tuple[str, int]:
    """Enroll fake subject number n at block n // per_block, slot n % per_block."""
    ref = SlotRef(n // per_block, n % per_block)
    subject_id = f"subject-{n:04d}"
    block = f"block {ref.block} after subject {n}".encode()
    version = store.commit_enrollment(
        site, subject_id, b"enc-label-%d" % n, ref, b"enrollment-%d" % n, ref.block, block
    )
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


def test_readonly_reader_sees_consistent_gallery_snapshots(store: GalleryStore, db_path: Path) -> None:
    enroll(store, 0)
    reader = GalleryStore(db_path, readonly=True)
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


def test_new_subject_ids_are_random_and_opaque() -> None:
    ids = {new_subject_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_restart_keeps_everything(db_path: Path) -> None:
    with GalleryStore(db_path) as store:
        store.create_site(SITE, TOKEN, "key-1", BUNDLE)
        store.create_site("site-b", "other-token", "key-2", b"bundle-b")
        ids = [enroll(store, n)[0] for n in range(6)]
        enroll(store, 0, site="site-b")
        store.commit_removal(SITE, ids[2], 0, b"block 0 without subject 2")
        before = (store.sites(), store.subjects(SITE), store.blocks(SITE), store.stats(SITE), store.subjects("site-b"))
    with GalleryStore(db_path) as store:
        after = (store.sites(), store.subjects(SITE), store.blocks(SITE), store.stats(SITE), store.subjects("site-b"))
        assert after == before
        assert [s.site_id for s in store.sites()] == [SITE, "site-b"]
        assert store.site(SITE).version == 7 and store.site("site-b").version == 1
        assert [s.subject_id for s in store.subjects(SITE)] == [i for i in ids if i != ids[2]]
        assert store.blocks(SITE) == [b"block 0 without subject 2", b"block 1 after subject 5"]
        assert store.enrollment(SITE, ids[5]) == b"enrollment-5"
        assert store.bundle("site-b") == b"bundle-b"
        assert store.check_token(SITE, TOKEN)
        assert store.integrity_check() == []
        # and it keeps working after the restart
        assert enroll(store, 6)[1] == 8


def test_pragmas_wal_full_and_foreign_keys(db_path: Path) -> None:
    with GalleryStore(db_path) as store:
        db = store._db
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db_path.stat().st_mode & 0o777 == 0o600


# -- versions, removals ---------------------------------------------------------------------------


def test_version_increments_with_every_enrollment_and_removal(store: GalleryStore) -> None:
    versions = [enroll(store, n)[1] for n in range(5)]
    assert versions == [1, 2, 3, 4, 5]
    assert store.commit_removal(SITE, "subject-0001", 0, b"block 0 minus 1") == 6
    assert store.site(SITE).version == 6
    assert store.subject(SITE, "subject-0001") is None
    assert store.subject_at(SITE, 0, 1) is None
    assert store.blocks(SITE)[0] == b"block 0 minus 1"
    # the freed slot can be taken again
    assert store.commit_enrollment(SITE, "again", b"l", SlotRef(0, 1), b"e", 0, b"block 0 refilled") == 7
    assert store.subject_at(SITE, 0, 1).subject_id == "again"
    assert [s.subject_id for s in store.subjects(SITE)] == [
        "subject-0000", "subject-0002", "subject-0003", "subject-0004", "again"
    ]


def test_sites_have_independent_versions_and_slots(store: GalleryStore) -> None:
    store.create_site("site-b", "tok-b", "key-b", b"bundle-b")
    enroll(store, 0)
    enroll(store, 1)
    _, version_b = enroll(store, 0, site="site-b")  # same slot and subject id, other site: fine
    assert version_b == 1
    assert store.site(SITE).version == 2
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
        store.commit_enrollment(SITE, "x", "label as str", SlotRef(0, 1), b"e", 0, b"block 0")
    with pytest.raises(ValueError, match="subject id"):
        store.commit_enrollment(SITE, "", b"l", SlotRef(0, 1), b"e", 0, b"block 0")
    with pytest.raises(ValueError):
        store.create_site("site-c", "", "key", b"bundle")  # no empty tokens
    # nothing above changed anything
    assert store.site(SITE).version == 1
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
    assert store.site(SITE).version == 0 and store.blocks(SITE) == []


def test_failed_commit_leaves_prior_data_intact(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with GalleryStore(db_path) as store:
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

        monkeypatch.setattr(store, "_bump", boom)
        with pytest.raises(RuntimeError, match="disk on fire"):
            store.commit_enrollment(SITE, "half", b"l", SlotRef(0, 2), b"e", 0, b"half-written block")
        with pytest.raises(RuntimeError, match="disk on fire"):
            store.commit_enrollment(SITE, "half", b"l", SlotRef(1, 0), b"e", 1, b"half-written new block")
        with pytest.raises(RuntimeError, match="disk on fire"):
            store.commit_removal(SITE, "subject-0000", 0, b"half-removed block")
        monkeypatch.undo()

        assert (store.subjects(SITE), store.blocks(SITE), store.stats(SITE)) == snapshot
        assert store.subject(SITE, "half") is None
        assert not store._db.in_transaction
        assert enroll(store, 2)[1] == 3  # the store is still usable
    with GalleryStore(db_path) as store:
        assert store.blocks(SITE) == [b"block 0 after subject 2"]
        assert [s.subject_id for s in store.subjects(SITE)] == ["subject-0000", "subject-0001", "subject-0002"]


def test_slot_uniqueness_is_a_database_constraint(store: GalleryStore) -> None:
    enroll(store, 0)
    with pytest.raises(sqlite3.IntegrityError):
        store._db.execute(
            "INSERT INTO subject (site_id, subject_id, label, block, slot, enrollment, created) "
            "VALUES (?, 'dup', x'00', 0, 0, x'00', 0)",
            (SITE,),
        )
    with pytest.raises(sqlite3.IntegrityError):  # a subject must live in a stored block
        store._db.execute(
            "INSERT INTO subject (site_id, subject_id, label, block, slot, enrollment, created) "
            "VALUES (?, 'orphan', x'00', 5, 0, x'00', 0)",
            (SITE,),
        )


def test_closed_store_raises(db_path: Path) -> None:
    store = GalleryStore(db_path)
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.sites()
    with pytest.raises(StoreError, match="closed"):
        store.create_site(SITE, TOKEN, "k", b"b")


# -- tokens -------------------------------------------------------------------------------------


def test_token_check_and_only_a_hash_is_stored(store: GalleryStore, db_path: Path) -> None:
    assert store.check_token(SITE, TOKEN)
    assert not store.check_token(SITE, TOKEN + "x")
    assert not store.check_token(SITE, TOKEN[:-1])
    assert not store.check_token(SITE, "")
    assert not store.check_token(SITE, None)  # type: ignore[arg-type]
    assert not store.check_token("other-site", TOKEN)
    store.create_site("site-b", "token-b", "key-b", b"b")
    assert store.check_token("site-b", "token-b") and not store.check_token("site-b", TOKEN)
    store.close()
    files = [p for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)]
    assert files
    for file in files:
        raw = file.read_bytes()
        assert TOKEN.encode() not in raw and b"token-b" not in raw


# -- schema versions and foreign files ---------------------------------------------------------


def test_newer_schema_is_refused_clearly(db_path: Path) -> None:
    GalleryStore(db_path).close()
    with sqlite3.connect(db_path) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StoreError, match=f"newer blindgate.*schema {SCHEMA_VERSION + 1}.*upgrade"):
        GalleryStore(db_path)


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    raw = sqlite3.connect(other)
    raw.execute("CREATE TABLE notes (text TEXT)")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="not a blindgate gallery store"):
        GalleryStore(other)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError, match="not a blindgate gallery store"):
        GalleryStore(garbage)


def test_integrity_check_reports_problems(store: GalleryStore) -> None:
    enroll(store, 0)
    assert store.integrity_check() == []
    # sneak an orphan past the foreign keys, as a hand edit of the file could
    store._db.execute("PRAGMA foreign_keys = OFF")
    store._db.execute("DELETE FROM block")
    store._db.execute("PRAGMA foreign_keys = ON")
    problems = store.integrity_check()
    assert problems and "subject" in problems[0] and "block" in problems[0]


# -- threads ------------------------------------------------------------------------------------


def test_concurrent_commits_from_threads(store: GalleryStore) -> None:
    versions: list[int] = []
    errors: list[BaseException] = []

    def worker(first: int) -> None:
        try:
            for n in range(first, first + 10):
                versions.append(store.commit_enrollment(
                    SITE, f"t{n}", b"l", SlotRef(0, n), b"e", 0, b"block %d" % n
                ))
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
    assert store.stats(SITE)["subjects"] == 40 and store.site(SITE).version == 40


# -- the real engine's bytes --------------------------------------------------------------------


def test_stored_engine_bytes_rebuild_the_gallery(db_path: Path) -> None:
    np = pytest.importorskip("numpy")
    from blindgate.shared.engine import EvaluationKeys, Gallery, encrypt_enrollment, generate_site_keys
    from blindgate.shared.engine.gallery import Block

    keys = generate_site_keys()
    evaluation = EvaluationKeys.from_bytes(keys.evaluation_bytes)
    rng = np.random.default_rng(1)
    with GalleryStore(db_path) as store:
        store.create_site(SITE, TOKEN, evaluation.key_id, evaluation.to_bytes())
        gallery = Gallery(evaluation)
        for n in range(2):
            enrollment = encrypt_enrollment(keys, rng.normal(size=128) / 12)
            ref = gallery.add(enrollment)
            store.commit_enrollment(SITE, f"s{n}", b"label", ref, enrollment, ref.block,
                                    gallery.blocks[ref.block].to_bytes())
        digest = gallery.blocks[0].digest()
    with GalleryStore(db_path) as store:
        evaluation = EvaluationKeys.from_bytes(store.bundle(SITE), expected_key_id=store.site(SITE).key_id)
        gallery = Gallery(evaluation)
        gallery.blocks = [Block.from_bytes(evaluation, data) for data in store.blocks(SITE)]
        assert len(gallery) == 2 and gallery.blocks[0].digest() == digest
        # removal needs the stored enrollment ciphertext
        first = store.subject(SITE, "s0")
        gallery.remove(first.ref, store.enrollment(SITE, "s0"))
        store.commit_removal(SITE, "s0", first.block, gallery.blocks[first.block].to_bytes())
    with GalleryStore(db_path) as store:
        evaluation = EvaluationKeys.from_bytes(store.bundle(SITE))
        block = Block.from_bytes(evaluation, store.blocks(SITE)[0])
        assert block.count == 1 and bool(block.occupied[1]) and not block.occupied[0]


# -- kill -9 ------------------------------------------------------------------------------------

PER_BLOCK = 3

# The child: enroll forever, ~1-2 MB blocks whose bytes say which version wrote them and how many
# subjects the block holds, printing each committed version. Killed with SIGKILL at random moments.
CHILD = textwrap.dedent(
    """
    import sys
    from blindgate.cloud.store import GalleryStore
    from blindgate.shared.engine.gallery import SlotRef
    from tests_kill_helpers import PER_BLOCK, fake_block, fake_enrollment

    store = GalleryStore(sys.argv[1])
    if store.site("s") is None:
        store.create_site("s", "token", "key", b"bundle" * 1000)
    version = store.site("s").version
    print("ready", version, flush=True)
    while True:
        n = version  # only enrollments here: subject n is the (n+1)-th
        ref = SlotRef(n // PER_BLOCK, n % PER_BLOCK)
        version = store.commit_enrollment(
            "s", "subject-%06d" % n, b"label-%d" % n, ref, fake_enrollment(n),
            ref.block, fake_block(version + 1, ref.block, ref.slot + 1),
        )
        print(version, flush=True)
    """
)

HELPERS = textwrap.dedent(
    """
    PER_BLOCK = {per_block}
    HEAD = len(b"<v=00000000 i=000000 c=000>")

    def fake_block(version, index, count):
        head = b"<v=%08d i=%06d c=%03d>" % (version, index, count)
        size = 1_000_000 + (version * 7919) % 1_000_000  # 1-2 MB
        return head + bytes([version % 251]) * size + head

    def parse_block(data):
        head = data[:HEAD]
        assert data[-HEAD:] == head, "torn block"
        version, index, count = (int(part.split(b"=")[1]) for part in head[1:-1].split())
        body = data[HEAD:-HEAD]
        assert len(body) == 1_000_000 + (version * 7919) % 1_000_000, "block of the wrong size"
        assert body == bytes([version % 251]) * len(body), "block body is not what version %d wrote" % version
        return version, index, count

    def fake_enrollment(n):
        return (b"enrollment %d;" % n) * 100
    """
)


def _read_lines(proc: subprocess.Popen, lines: list[str], buffer: bytearray, timeout: float) -> None:
    """Append the child's complete stdout lines that arrive within `timeout` seconds."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if ready:
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            raise AssertionError(f"child exited early (rc={proc.wait()}): {proc.stderr.read().decode()}")
        buffer += chunk
        *complete, rest = buffer.split(b"\n")
        lines += [line.decode() for line in complete]
        buffer[:] = rest


def _check_consistent(db_path: Path, printed: int, helpers) -> int:
    """Open after a crash and check: clean, every printed version there, no half-written enrollment."""
    with GalleryStore(db_path) as store:
        assert store.integrity_check() == []
        site = store.site("s")
        if site is None:  # killed before the site was created
            assert printed == 0
            return 0
        version = site.version
        assert version >= printed, f"committed version {printed} was printed but the store has {version}"
        subjects = store.subjects("s")
        assert len(subjects) == version
        assert [s.subject_id for s in subjects] == ["subject-%06d" % n for n in range(version)]
        for n, subject in enumerate(subjects):
            assert subject.ref == SlotRef(n // PER_BLOCK, n % PER_BLOCK)
            assert subject.label == b"label-%d" % n
        for n in (0, version - 1) if version else ():
            assert store.enrollment("s", "subject-%06d" % n) == helpers.fake_enrollment(n)
        blocks = store.blocks("s")
        assert len(blocks) == -(-version // PER_BLOCK)
        for index, data in enumerate(blocks):
            written_by, block_index, count = helpers.parse_block(data)
            in_block = [s for s in subjects if s.block == index]
            assert (block_index, count) == (index, len(in_block))
            # the block was last written by the enrollment of its last subject
            assert written_by == index * PER_BLOCK + count
        assert store.stats("s")["version"] == version
        return version


@pytest.mark.timeout(180)
def test_kill_9_never_loses_or_half_writes_an_enrollment(tmp_path: Path) -> None:
    import importlib.util

    (tmp_path / "tests_kill_helpers.py").write_text(HELPERS.format(per_block=PER_BLOCK))
    spec = importlib.util.spec_from_file_location("tests_kill_helpers", tmp_path / "tests_kill_helpers.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    db_path = tmp_path / "crash.db"

    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    version = 0
    # Round 0 kills blind, possibly before or while the schema and site are created; the others
    # wait for some committed lines, then kill a random few milliseconds later (mid-commit,
    # mid-checkpoint, mid-print...).
    plans = [("blind", rng.uniform(0.0, 0.5))] + [("after", rng.randint(1, 8)) for _ in range(5)]
    for round_, (how, when) in enumerate(plans):
        proc = subprocess.Popen(
            [sys.executable, str(child), str(db_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path,
        )
        lines: list[str] = []
        buffer = bytearray()
        try:
            deadline = time.monotonic() + 60
            if how == "blind":
                time.sleep(when)
            else:
                while len(lines) < 1 + when:
                    assert time.monotonic() < deadline, f"child too slow: {lines}"
                    _read_lines(proc, lines, buffer, 1.0)
                time.sleep(rng.uniform(0.0, 0.03))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            # collect what it printed before dying
            rest = proc.stdout.read()
            buffer += rest
            lines += [line.decode() for line in bytes(buffer).split(b"\n") if line]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL, (how, when, proc.returncode)
        context = f"seed {seed}, round {round_} ({how} {when}), output {lines[:3]}...{lines[-3:]}"
        if lines:
            assert lines[0] == f"ready {version}", context
        committed = [int(line) for line in lines[1:]]
        assert committed == list(range(version + 1, version + 1 + len(committed))), context
        printed = committed[-1] if committed else version
        try:
            version = _check_consistent(db_path, printed, helpers)
        except AssertionError as exc:
            raise AssertionError(f"{context}: {exc}") from exc
    assert version >= sum(when for how, when in plans if how == "after")
