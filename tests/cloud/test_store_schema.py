"""The gallery store's database (cloud/store_schema.py): schema, pragmas, transactions, versions, migrations, crashes.

The first tests look at the SQLite file itself (pragmas, file mode, raw SQL with SQLite's
functions) and say so; the PostgreSQL ones need a server (conftest `pg_url`, skipped without one).
Real `kill -9` crashes of a process that enrolls without pause run on both backends: after each,
the store opens as it was at the last commit, with every printed version there and nothing
half-written. Two GalleryStores on one PostgreSQL database (two replicas) commit into one site at
once without a duplicate version or a slot held twice.
"""

from __future__ import annotations

import importlib.util
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

import psycopg
import pytest

from blindgate.cloud.store import GalleryStore, StoreConflict, hash_token
from blindgate.cloud.store_schema import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    SqliteDatabase,
    StoreError,
    StoreIntegrityError,
    open_database,
    redact_url,
    store_location,
)
from blindgate.shared.engine.gallery import SlotRef

SUBJECT_SQL = (
    "INSERT INTO subject (site_id, subject_id, label, block, slot, enrollment, created) VALUES (?, ?, x'00', ?, 0, x'00', 0)"
)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """An SQLite store file: the tests that take it check SQLite's own pragmas, modes and file format."""
    return tmp_path / "state" / "gallery.db"


def test_pragmas_wal_full_and_foreign_keys(db_path: Path) -> None:
    database = SqliteDatabase(db_path)
    try:
        db = database.connection
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        database.close()
    assert db_path.stat().st_mode & 0o777 == 0o600


def test_slot_uniqueness_is_a_database_constraint(db_path: Path) -> None:
    database = SqliteDatabase(db_path)
    try:
        with database.write() as db:
            db.execute("INSERT INTO site VALUES ('s', 'k', zeroblob(32), x'00', 0, 0)")
            db.execute("INSERT INTO block (site_id, idx, data) VALUES ('s', 0, x'00')")
            db.execute(SUBJECT_SQL, ("s", "first", 0))
        with pytest.raises(StoreIntegrityError, match="UNIQUE"), database.write() as db:
            db.execute(SUBJECT_SQL, ("s", "dup", 0))
        with pytest.raises(StoreIntegrityError, match="FOREIGN KEY"), database.write() as db:  # a subject lives in a stored block
            db.execute(SUBJECT_SQL, ("s", "orphan", 5))
        with database.read() as db:
            assert db.execute("SELECT subject_id FROM subject").fetchall() == [("first",)]
    finally:
        database.close()


def test_write_rolls_back_whole_on_any_error(db_path: Path) -> None:
    database = SqliteDatabase(db_path)
    try:
        with pytest.raises(RuntimeError, match="midway"), database.write() as db:
            db.execute("INSERT INTO site VALUES ('s', 'k', zeroblob(32), x'00', 0, 0)")
            raise RuntimeError("midway")
        assert not database.in_transaction
        with database.read() as db:
            assert db.execute("SELECT count(*) FROM site").fetchone()[0] == 0
    finally:
        database.close()


def test_closed_store_raises(db_path: Path) -> None:
    database = SqliteDatabase(db_path)
    database.close()
    database.close()  # idempotent
    with pytest.raises(StoreError, match="closed"), database.read():
        pass
    with pytest.raises(StoreError, match="closed"), database.write():
        pass
    store = GalleryStore(db_path)
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.sites()


def test_readonly_needs_an_existing_store_and_cannot_write(db_path: Path) -> None:
    with pytest.raises(StoreError, match="for reading"):
        SqliteDatabase(db_path, readonly=True)
    SqliteDatabase(db_path).close()
    reader = SqliteDatabase(db_path, readonly=True)
    try:
        with pytest.raises(StoreError), reader.write() as db:
            db.execute("INSERT INTO site VALUES ('s', 'k', zeroblob(32), x'00', 0, 0)")
    finally:
        reader.close()


def test_newer_schema_is_refused_clearly(db_path: Path) -> None:
    SqliteDatabase(db_path).close()
    with sqlite3.connect(db_path) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StoreError, match=f"newer blindgate.*schema {SCHEMA_VERSION + 1}.*upgrade"):
        SqliteDatabase(db_path)


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    raw = sqlite3.connect(other)
    raw.execute("CREATE TABLE notes (text TEXT)")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="not a blindgate gallery store"):
        SqliteDatabase(other)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError, match="not a blindgate gallery store"):
        SqliteDatabase(garbage)


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


def _read_lines(proc: subprocess.Popen[bytes], lines: list[str], buffer: bytearray, timeout: float) -> None:
    """Append the child's complete stdout lines that arrive within `timeout` seconds."""
    assert proc.stdout is not None and proc.stderr is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if ready:
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            raise AssertionError(f"child exited early (rc={proc.wait()}): {proc.stderr.read().decode()}")
        buffer += chunk
        *complete, rest = buffer.split(b"\n")
        lines += [line.decode() for line in complete]
        buffer[:] = rest


def _check_consistent(location: str, printed: int, helpers) -> int:
    """Open after a crash and check: clean, every printed version there, no half-written enrollment."""
    with GalleryStore(location) as store:
        assert store.integrity_check() == []
        site = store.site("s")
        if site is None:  # killed before the site was created
            assert printed == 0
            return 0
        version = site.version
        assert version >= printed, f"committed version {printed} was printed but the store has {version}"
        subjects = store.subjects("s")
        assert len(subjects) == version
        assert [s.subject_id for s in subjects] == [f"subject-{n:06d}" for n in range(version)]
        for n, subject in enumerate(subjects):
            assert subject.ref == SlotRef(n // PER_BLOCK, n % PER_BLOCK)
            assert subject.label == b"label-%d" % n
        for n in (0, version - 1) if version else ():
            assert store.enrollment("s", f"subject-{n:06d}") == helpers.fake_enrollment(n)
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
def test_kill_9_never_loses_or_half_writes_an_enrollment(tmp_path: Path, store_url: str) -> None:
    """On each backend: SQLite's file, or a PostgreSQL server whose client dies mid-transaction."""
    (tmp_path / "tests_kill_helpers.py").write_text(HELPERS.format(per_block=PER_BLOCK))
    spec = importlib.util.spec_from_file_location("tests_kill_helpers", tmp_path / "tests_kill_helpers.py")
    assert spec is not None and spec.loader is not None
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    location = store_url

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
            [sys.executable, str(child), location],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=tmp_path,
        )
        assert proc.stdout is not None and proc.stderr is not None
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
            version = _check_consistent(location, printed, helpers)
        except AssertionError as exc:
            raise AssertionError(f"{context}: {exc}") from exc
    assert version >= sum(when for how, when in plans if how == "after")


def test_a_schema_1_store_migrates_to_the_current_schema_keeping_everything(db_path: Path) -> None:
    # A file as the first release wrote it: schema 1, no `sealed` column, no door or rekey tables.
    db_path.parent.mkdir(parents=True)
    raw = sqlite3.connect(db_path)
    raw.executescript(SCHEMA_1)
    raw.execute("INSERT INTO site VALUES ('s', 'k', zeroblob(32), x'00', 1, 0)")
    raw.execute("INSERT INTO block (site_id, idx, data) VALUES ('s', 0, x'00')")
    raw.execute(SUBJECT_SQL, ("s", "kept", 0))
    raw.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()

    with GalleryStore(db_path) as store:
        assert [s.subject_id for s in store.subjects("s")] == ["kept"]
        db = store.database.connection
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        assert "sealed" in {row[1] for row in db.execute("PRAGMA table_info(subject)")}
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"door", "rekey", "rekey_subject"} <= tables


def test_a_schema_2_store_gives_each_door_the_site_token_and_retires_the_site_s(db_path: Path) -> None:
    """Schema 2 doors all held the site's token: after the migration each holds it as its own, so removing
    a door revokes it; a site without doors keeps its token."""
    db_path.parent.mkdir(parents=True)
    raw = sqlite3.connect(db_path)
    raw.executescript(SCHEMA_1)
    raw.executescript(SCHEMA_2)
    raw.execute("ALTER TABLE subject ADD COLUMN sealed BLOB NOT NULL DEFAULT x''")
    raw.execute("INSERT INTO site VALUES ('s', 'k', ?, x'00', 0, 0)", (hash_token("site-token"),))
    raw.execute("INSERT INTO site VALUES ('bare', 'k', ?, x'00', 0, 0)", (hash_token("bare-token"),))
    raw.execute("INSERT INTO door (site_id, door_id, public_key, created) VALUES ('s', 'door1', zeroblob(32), 0)")
    raw.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    raw.execute("PRAGMA user_version = 2")
    raw.commit()
    raw.close()

    with GalleryStore(db_path) as store:
        assert store.check_token("s", "site-token") and store.doors.token_doors("s", "site-token") == ["door1"]
        assert store.check_token("bare", "bare-token") and store.doors.token_doors("bare", "bare-token") == []
        store.doors.add("s", "door2", b"\x02" * 32, "door2-token")
        store.doors.remove("s", "door1")
        assert not store.check_token("s", "site-token")  # the door held it: revoked with the door
        assert store.check_token("s", "door2-token")  # positive control


def _schema_3_file(path: Path) -> dict[str, list[tuple]]:
    """A store as schema 3 wrote it, with rows in every table; returns those rows by table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = sqlite3.connect(path)
    raw.executescript(SCHEMA_1)
    raw.executescript(SCHEMA_2)
    raw.execute("ALTER TABLE subject ADD COLUMN sealed BLOB NOT NULL DEFAULT x''")
    raw.execute("ALTER TABLE door ADD COLUMN token_hash BLOB")
    raw.execute("INSERT INTO site VALUES ('s', 'k', ?, x'00', 5, 1.5)", (hash_token("site-token"),))
    raw.execute("INSERT INTO site VALUES ('t', 'k2', ?, x'01', 2, 2.5)", (hash_token("t-token"),))
    for site, idx in (("s", 0), ("s", 1), ("t", 0)):
        raw.execute("INSERT INTO block (site_id, idx, data) VALUES (?, ?, ?)", (site, idx, b"block %s %d" % (site.encode(), idx)))
    for site, subject, block in (("s", "a", 0), ("s", "b", 1), ("t", "c", 0)):
        raw.execute(
            "INSERT INTO subject (site_id, subject_id, label, block, slot, enrollment, created, sealed) "
            "VALUES (?, ?, x'0102', ?, 0, x'0304', 3.5, x'05')",
            (site, subject, block),
        )
    raw.execute("INSERT INTO door VALUES ('s', 'door1', zeroblob(32), 4.5, ?)", (hash_token("door-token"),))
    raw.execute("INSERT INTO rekey VALUES ('s', 'k-new', x'06', 5.5)")
    raw.execute("INSERT INTO rekey_subject VALUES ('s', 'a', x'07', x'08', x'09')")
    raw.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    raw.execute("PRAGMA user_version = 3")
    raw.commit()
    rows = {table: raw.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall() for table in OLD_TABLES}
    raw.close()
    return rows


OLD_TABLES = ("site", "block", "subject", "door", "rekey", "rekey_subject")


def test_a_schema_3_store_migrates_to_4_keeping_every_row_and_dating_its_blocks(db_path: Path) -> None:
    before = _schema_3_file(db_path)
    with GalleryStore(db_path) as store:
        assert store.block_layouts("s") == [1, 1]
        assert store.check_token("s", "door-token") and store.rekey.staged("s") is not None
    raw = sqlite3.connect(db_path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        for table in OLD_TABLES:  # every old column of every row, unchanged (the new ones come last)
            rows = raw.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
            assert [row[: len(before[table][0])] for row in rows] == before[table], table
        # each block reflects its site's version at the migration, one copy per template
        assert raw.execute("SELECT site_id, idx, version, copies FROM block ORDER BY 1, 2").fetchall() == [
            ("s", 0, 5, 1),
            ("s", 1, 5, 1),
            ("t", 0, 2, 1),
        ]
        tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"gallery_log", "cloud_secret"} <= tables
        # the log refuses an unknown operation: the CHECK came with the table
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            raw.execute("INSERT INTO gallery_log VALUES ('s', 6, 0, 0, 'rename', 'a', x'00', 0)")
    finally:
        raw.close()


def test_store_locations() -> None:
    assert store_location("", "/var/lib/blindgate") == Path("/var/lib/blindgate/gallery.db")
    assert store_location("postgresql://u:pw@db/bg", "/x") == "postgresql://u:pw@db/bg"
    assert redact_url("postgresql://user:secret@db.example:5433/gallery") == "postgresql://user@db.example:5433/gallery"
    with pytest.raises(StoreError, match="unsupported"):
        open_database("mysql://db/bg")


def test_sqlite_urls_open_the_file(tmp_path: Path) -> None:
    with GalleryStore(f"sqlite://{tmp_path / 'via-url.db'}") as store:
        store.create_site("s", "token", "k", b"bundle")
    with GalleryStore(tmp_path / "via-url.db") as store:
        assert [site.site_id for site in store.sites()] == ["s"]


# -- PostgreSQL -----------------------------------------------------------------------------------


def test_postgresql_fresh_install_is_at_the_current_schema(pg_url: str) -> None:
    with GalleryStore(pg_url) as store:
        store.create_site("s", "token", "k", b"bundle")
        with store.database.read() as db:
            assert db.execute("SELECT version FROM blindgate_schema").fetchall() == [(SCHEMA_VERSION,)]
            tables = {row[0] for row in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
            columns = {
                row[0] for row in db.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'block'")
            }
        assert {"site", "block", "subject", "door", "rekey", "rekey_subject", "gallery_log", "cloud_secret"} <= tables
        assert {"version", "copies"} <= columns
    with GalleryStore(pg_url) as store:  # a second open finds it current and keeps the data
        assert [site.site_id for site in store.sites()] == ["s"]


def test_postgresql_refuses_a_newer_schema_and_foreign_databases(pg_url: str, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="store schema 0"):
        GalleryStore(pg_url, readonly=True)  # a reader never migrates
    GalleryStore(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as raw:
        raw.execute("UPDATE blindgate_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match=f"newer blindgate.*schema {SCHEMA_VERSION + 1}.*upgrade"):
        GalleryStore(pg_url)
    with pytest.raises(StoreError, match=f"newer blindgate.*schema {SCHEMA_VERSION + 1}"):
        GalleryStore(pg_url, readonly=True)
    with psycopg.connect(pg_url, autocommit=True) as raw:
        raw.execute("DROP SCHEMA public CASCADE")
        raw.execute("CREATE SCHEMA public")
        raw.execute("CREATE TABLE notes (text TEXT)")
    with pytest.raises(StoreError, match="other tables"):
        GalleryStore(pg_url)


def test_two_replicas_opening_a_new_database_at_once_migrate_it_once(pg_url: str) -> None:
    """Without the advisory lock the second CREATE TABLE fails ('relation already exists')."""
    start = threading.Barrier(4)
    errors: list[BaseException] = []
    stores: list[GalleryStore] = []

    def open_store() -> None:
        start.wait()
        try:
            stores.append(GalleryStore(pg_url))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == [] and len(stores) == 4
        stores[0].create_site("s", "token", "k", b"bundle")
        assert [site.site_id for site in stores[3].sites()] == ["s"]
        with stores[1].database.read() as db:
            assert db.execute("SELECT version FROM blindgate_schema").fetchall() == [(SCHEMA_VERSION,)]
    finally:
        for store in stores:
            store.close()


def test_a_lost_postgresql_connection_is_a_store_error_and_the_next_call_reconnects(pg_url: str) -> None:
    with GalleryStore(pg_url) as store:
        store.create_site("s", "token", "k", b"bundle")
        with store.database.read() as db:
            (pid,) = db.execute("SELECT pg_backend_pid()").fetchone()
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(StoreError, match="lost the connection.*check that the PostgreSQL server is running"):
            store.sites()
        assert [site.site_id for site in store.sites()] == ["s"]  # reconnected
        assert not store.database.in_transaction


def test_an_unreachable_server_is_a_clear_store_error() -> None:
    with pytest.raises(StoreError, match="cannot connect.*127.0.0.1:1/nowhere.*check") as caught:
        GalleryStore("postgresql://someone:hunter2@127.0.0.1:1/nowhere")
    assert "hunter2" not in str(caught.value)


@pytest.mark.timeout(120)
def test_two_replicas_enrolling_into_one_site_at_once_never_share_a_version_or_slot(pg_url: str) -> None:
    """Two GalleryStores (two connections, like two replicas), two threads each, racing for 8 slots of one block.

    Every commit either succeeds or raises StoreConflict (stale version, slot or id taken); the
    successful versions are 1..n with no duplicate, and no slot is held twice.
    """
    replicas = [GalleryStore(pg_url), GalleryStore(pg_url)]
    replicas[0].create_site("s", "token", "k", b"bundle")
    won: list[tuple[int, int]] = []  # (version, slot)
    lost: list[StoreConflict] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def enroll(store: GalleryStore, worker: int) -> None:
        rng = random.Random(worker)
        start.wait()
        try:
            for attempt in range(25):
                seen = store.site("s")
                assert seen is not None
                slot = rng.randrange(8)
                try:
                    version = store.commit_enrollment(
                        "s",
                        f"w{worker}-{attempt}",
                        b"l",
                        SlotRef(0, slot),
                        b"e",
                        0,
                        b"block with slot %d" % slot,
                        expected_version=seen.version if attempt % 2 else None,  # half stale-checked, half not
                    )
                except StoreConflict as exc:
                    lost.append(exc)
                else:
                    won.append((version, slot))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=enroll, args=(replicas[n % 2], n)) for n in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert len(won) + len(lost) == 100 and won
        versions = sorted(version for version, _ in won)
        assert versions == list(range(1, len(won) + 1))  # strictly increasing, no duplicate, no gap
        subjects = replicas[1].subjects("s")
        assert len({s.ref for s in subjects}) == len(subjects) == len(won) <= 8
        assert sorted(slot for _, slot in won) == sorted(s.slot for s in subjects)
        assert replicas[0].site("s").version == len(won)  # type: ignore[union-attr]
        assert replicas[0].integrity_check() == []
    finally:
        for store in replicas:
            store.close()


SCHEMA_2 = """
CREATE TABLE door (site_id TEXT NOT NULL REFERENCES site (site_id) ON DELETE CASCADE, door_id TEXT NOT NULL,
                   public_key BLOB NOT NULL, created REAL NOT NULL, PRIMARY KEY (site_id, door_id));
CREATE TABLE rekey (site_id TEXT PRIMARY KEY NOT NULL, key_id TEXT NOT NULL, bundle BLOB NOT NULL, created REAL NOT NULL);
CREATE TABLE rekey_subject (site_id TEXT NOT NULL, subject_id TEXT NOT NULL, label BLOB NOT NULL, enrollment BLOB NOT NULL,
                            sealed BLOB NOT NULL, PRIMARY KEY (site_id, subject_id));
"""

SCHEMA_1 = """
CREATE TABLE site (site_id TEXT PRIMARY KEY NOT NULL, key_id TEXT NOT NULL, token_hash BLOB NOT NULL,
                   bundle BLOB NOT NULL, version INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
CREATE TABLE block (id INTEGER PRIMARY KEY, site_id TEXT NOT NULL REFERENCES site (site_id) ON DELETE CASCADE,
                    idx INTEGER NOT NULL, data BLOB NOT NULL, UNIQUE (site_id, idx));
CREATE TABLE subject (id INTEGER PRIMARY KEY, site_id TEXT NOT NULL REFERENCES site (site_id) ON DELETE CASCADE,
                      subject_id TEXT NOT NULL, label BLOB NOT NULL, block INTEGER NOT NULL, slot INTEGER NOT NULL,
                      enrollment BLOB NOT NULL, created REAL NOT NULL, UNIQUE (site_id, subject_id),
                      UNIQUE (site_id, block, slot), FOREIGN KEY (site_id, block) REFERENCES block (site_id, idx));
"""
