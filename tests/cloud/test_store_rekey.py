"""Key renewal in the gallery store (cloud/store_rekey.py): staging, the atomic switch, refusals that change nothing.

Every test runs on each backend (conftest `store_url`).
"""

from __future__ import annotations

import pytest

from blindgate.cloud.store import GalleryStore, StoreConflict, StoreError, UnknownSite, UnknownSubject
from blindgate.cloud.store_schema import Dialect
from blindgate.shared.engine.gallery import SlotRef

SITE = "site-a"
TOKEN = "k3Jq9-random-32-byte-token-in-base64url-xxxxx"
OLD_BUNDLE = b"old-bundle" * 100
NEW_BUNDLE = b"new-bundle" * 100


@pytest.fixture
def store(store_url: str):
    with GalleryStore(store_url) as store:
        store.create_site(SITE, TOKEN, "key-old", OLD_BUNDLE)
        for n in range(3):  # block 0 holds two subjects, block 1 one
            ref = SlotRef(n // 2, n % 2)
            store.commit_enrollment(SITE, f"s{n}", b"label-%d" % n, ref, b"old-enr-%d" % n, ref.block, b"old-block-%d" % n)
        yield store


def snapshot(store: GalleryStore) -> tuple:
    """Everything a rekey may touch, to show a refused one touched nothing."""
    with store.database.read() as db:
        return (
            db.execute("SELECT key_id, bundle, version FROM site").fetchall(),
            db.execute("SELECT idx, data FROM block ORDER BY idx").fetchall(),
            db.execute("SELECT subject_id, label, block, slot, enrollment, sealed, id FROM subject ORDER BY id").fetchall(),
        )


def stage_all(store: GalleryStore, subjects=("s0", "s1", "s2")) -> int:
    version = store.rekey.stage(SITE, "key-new", NEW_BUNDLE)
    for s in subjects:
        store.rekey.stage_subject(
            SITE, "key-new", s, b"new-label-" + s.encode(), b"new-enr-" + s.encode(), b"sealed-" + s.encode()
        )
    return version


# New placement: all three in one block, in reverse order.
PLACES = {"s0": SlotRef(0, 2), "s1": SlotRef(0, 1), "s2": SlotRef(0, 0)}


def test_commit_switches_keys_blocks_and_subjects_in_one_step(store: GalleryStore) -> None:
    before_ids = [r[6] for r in snapshot(store)[2]]
    version = stage_all(store)
    assert version == 3
    # staging changes nothing the scans see
    assert store.site(SITE).key_id == "key-old" and store.site(SITE).version == 3
    staged = store.rekey.staged(SITE)
    assert staged is not None and staged.key_id == "key-new" and staged.bundle == NEW_BUNDLE
    assert [s.subject_id for s in staged.subjects] == ["s0", "s1", "s2"]  # enrollment order

    assert store.rekey.commit(SITE, "key-new", PLACES, [b"new-block-0"], expected_version=3) == 4
    site = store.site(SITE)
    assert (site.key_id, site.version) == ("key-new", 4)
    assert store.bundle(SITE) == NEW_BUNDLE
    assert store.blocks(SITE) == [b"new-block-0"]
    assert {s.subject_id: s.ref for s in store.subjects(SITE)} == PLACES
    assert store.enrollment(SITE, "s1") == b"new-enr-s1"
    assert store.subject(SITE, "s2").label == b"new-label-s2"
    with store.database.read() as db:
        sealed = db.execute("SELECT sealed FROM subject WHERE subject_id = 's0'").fetchone()[0]
    assert sealed == b"sealed-s0"
    assert [r[6] for r in snapshot(store)[2]] == before_ids  # same rows: enrollment order and created kept
    assert store.rekey.staged(SITE) is None  # staging cleared
    assert store.integrity_check() == []


def test_refused_commits_change_nothing(store: GalleryStore) -> None:
    stage_all(store, ("s0", "s1"))  # s2 missing
    before = snapshot(store)
    with pytest.raises(StoreConflict, match="1 missing"):
        store.rekey.commit(SITE, "key-new", PLACES, [b"nb"])
    assert snapshot(store) == before
    store.rekey.stage_subject(SITE, "key-new", "s2", b"l", b"e", b"s")
    with pytest.raises(StoreConflict, match="key id"):
        store.rekey.commit(SITE, "key-other", PLACES, [b"nb"])
    with pytest.raises(StoreConflict, match="version"):
        store.rekey.commit(SITE, "key-new", PLACES, [b"nb"], expected_version=2)
    with pytest.raises(StoreConflict, match="place 2"):
        store.rekey.commit(SITE, "key-new", {"s0": SlotRef(0, 0), "s1": SlotRef(0, 1)}, [b"nb"])
    with pytest.raises(ValueError, match="same slot"):
        store.rekey.commit(SITE, "key-new", {"s0": SlotRef(0, 0), "s1": SlotRef(0, 0), "s2": SlotRef(0, 1)}, [b"nb"])
    with pytest.raises(ValueError, match="only 1 blocks"):
        store.rekey.commit(SITE, "key-new", {**PLACES, "s2": SlotRef(1, 0)}, [b"nb"])
    assert snapshot(store) == before
    assert store.rekey.staged(SITE) is not None  # still there: the device can fix it and commit
    # positive control: the same staging commits once it is right
    assert store.rekey.commit(SITE, "key-new", PLACES, [b"nb"], expected_version=3) == 4


def test_a_failing_write_mid_commit_rolls_everything_back(store: GalleryStore) -> None:
    stage_all(store)
    before = snapshot(store)
    # A database error after the first writes (the block insert hits a trigger): the whole switch is undone.
    with store.database.write() as db:
        if db.dialect is Dialect.SQLITE:
            db.execute("CREATE TRIGGER fail_block BEFORE INSERT ON block BEGIN SELECT RAISE(ABORT, 'disk trouble'); END")
        else:
            db.execute("CREATE FUNCTION fail_block() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE 'disk trouble'; END $$")
            db.execute("CREATE TRIGGER fail_block BEFORE INSERT ON block FOR EACH ROW EXECUTE FUNCTION fail_block()")
    with pytest.raises(StoreError, match="disk trouble"):
        store.rekey.commit(SITE, "key-new", PLACES, [b"nb"])
    assert snapshot(store) == before
    with store.database.write() as db:
        db.execute("DROP TRIGGER fail_block" + ("" if db.dialect is Dialect.SQLITE else " ON block"))
    assert store.rekey.commit(SITE, "key-new", PLACES, [b"nb"]) == 4  # positive control


def test_gallery_change_after_staging_is_refused(store: GalleryStore) -> None:
    stage_all(store)
    store.commit_enrollment(SITE, "s3", b"l", SlotRef(1, 1), b"e", 1, b"b")  # someone enrolled meanwhile
    with pytest.raises(StoreConflict, match="1 missing"):
        store.rekey.commit(SITE, "key-new", PLACES, [b"nb"])
    with pytest.raises(StoreConflict, match="version"):
        store.rekey.commit(SITE, "key-new", PLACES, [b"nb"], expected_version=3)
    assert store.site(SITE).key_id == "key-old"


def test_staging_rules(store: GalleryStore) -> None:
    with pytest.raises(StoreConflict, match="no rekey staged"):
        store.rekey.stage_subject(SITE, "key-new", "s0", b"l", b"e", b"s")
    with pytest.raises(StoreConflict, match="already"):
        store.rekey.stage(SITE, "key-old", NEW_BUNDLE)
    with pytest.raises(StoreConflict, match="version"):
        store.rekey.stage(SITE, "key-new", NEW_BUNDLE, expected_version=1)
    with pytest.raises(UnknownSite):
        store.rekey.stage("nowhere", "key-new", NEW_BUNDLE)
    stage_all(store)
    with pytest.raises(UnknownSubject):
        store.rekey.stage_subject(SITE, "key-new", "stranger", b"l", b"e", b"s")
    with pytest.raises(StoreConflict, match="key-new"):
        store.rekey.stage_subject(SITE, "key-x", "s0", b"l", b"e", b"s")
    # a new staging replaces the unfinished one, subjects included
    store.rekey.stage(SITE, "key-newer", NEW_BUNDLE + b"x")
    staged = store.rekey.staged(SITE)
    assert staged is not None and staged.key_id == "key-newer" and staged.subjects == []
    store.rekey.abort(SITE)
    assert store.rekey.staged(SITE) is None
    assert store.site(SITE).key_id == "key-old"


def test_removing_the_site_drops_its_staging(store: GalleryStore) -> None:
    stage_all(store)
    with store.database.write() as db:
        db.execute("DELETE FROM site WHERE site_id = ?", (SITE,))
        assert db.execute("SELECT count(*) FROM rekey_subject").fetchone()[0] == 0
    with pytest.raises(UnknownSite):
        store.rekey.staged(SITE)
