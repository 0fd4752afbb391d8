"""The gallery log: cheap logged enrollments, exact replay onto snapshots, recovery, slots never given twice."""

from __future__ import annotations

import secrets
import threading

import numpy as np
import pytest

from blindgate.cloud.matcher import MatcherPool
from blindgate.cloud.store import GalleryStore, StoreConflict, UnknownSubject
from blindgate.cloud.store_log import LogOp
from blindgate.shared.engine import (
    Block,
    Params,
    SiteKeys,
    SlotRef,
    decode_scan,
    encrypt_block,
    encrypt_enrollment,
    encrypt_probe,
)
from blindgate.shared.engine.context import LEVEL_ENROLL, load_ciphertext
from blindgate.shared.engine.gallery import COPY_CHOICES

from .conftest import embeddings

SITE = "home"
FAKE_EMPTY = {copies: b"empty block %d" % copies for copies in COPY_CHOICES}  # the store never parses blocks


def new_site(location, keys: SiteKeys | None = None) -> GalleryStore:
    store = GalleryStore(location)
    key_id, bundle = (keys.key_id, keys.evaluation_bytes) if keys else ("k" * 32, b"bundle")
    store.create_site(SITE, secrets.token_urlsafe(32), key_id, bundle)
    return store


def enroll_fake(store: GalleryStore, subject: str, key_id: str = "k" * 32):
    return store.log.enroll(SITE, subject, b"label", b"E" * 1000, key_id=key_id, params=Params(), empty_blocks=FAKE_EMPTY)


# -- the store alone (both backends) ---------------------------------------------------------------


def test_enroll_and_remove_write_log_rows_not_blocks(store_url):
    with new_site(store_url) as store:
        first = enroll_fake(store, "s0")
        second = enroll_fake(store, "s1")
        assert (first.version, second.version) == (1, 2) and (first.pending, second.pending) == (1, 2)
        assert first.ref.block == second.ref.block == 0 and first.ref.slot != second.ref.slot
        # the new block's snapshot is the empty block of its layout, at the version before the first add
        assert store.blocks(SITE) == [FAKE_EMPTY[store.block_layouts(SITE)[0]]]
        removed = store.log.remove(SITE, "s0")
        assert removed.version == 3 and removed.ref == first.ref and removed.pending == 3
        assert [s.subject_id for s in store.subjects(SITE)] == ["s1"]
        update = store.log.shard_update(SITE, None, {})
        assert [(e.version, e.op, e.slot) for e in update.entries] == [
            (1, LogOp.ADD, first.ref.slot),
            (2, LogOp.ADD, second.ref.slot),
            (3, LogOp.REMOVE, first.ref.slot),
        ]
        assert update.bundle == b"bundle" and [s.version for s in update.snapshots] == [0]
        # a reader already at version 2 of block 0 gets only the removal, and no snapshot
        update = store.log.shard_update(SITE, "k" * 32, {0: 2})
        assert update.bundle is None and update.snapshots == [] and [e.version for e in update.entries] == [3]
        # the freed slot is reused first
        assert enroll_fake(store, "s2").ref == first.ref
        with pytest.raises(StoreConflict):
            enroll_fake(store, "s1")  # id taken
        with pytest.raises(StoreConflict):
            enroll_fake(store, "s9", key_id="x" * 32)  # validated under other keys (rekeyed meanwhile)
        with pytest.raises(UnknownSubject):
            store.log.remove(SITE, "ghost")
        assert store.site(SITE).version == 4


def test_snapshot_drops_covered_rows_and_refuses_older_ones(store_url):
    with new_site(store_url) as store:
        for n in range(5):
            enroll_fake(store, f"s{n}")
        assert store.log.pending(SITE) == {0: 5}
        assert not store.log.put_snapshot(SITE, 0, 9, b"from the future")  # past the site's version
        assert store.log.put_snapshot(SITE, 0, 3, b"block at 3")
        assert store.log.pending(SITE) == {0: 2} and store.blocks(SITE) == [b"block at 3"]
        assert not store.log.put_snapshot(SITE, 0, 3, b"same version again")
        assert not store.log.put_snapshot(SITE, 0, 2, b"older")
        update = store.log.shard_update(SITE, None, {})
        assert [s.version for s in update.snapshots] == [3] and [e.version for e in update.entries] == [4, 5]
        # a whole-block write computed from the snapshot alone would lose versions 4 and 5
        with pytest.raises(StoreConflict):
            store.commit_enrollment(SITE, "whole", b"l", SlotRef(0, 4000), b"e", 0, b"block without the log")
        assert store.log.put_snapshot(SITE, 0, 5, b"block at 5") and store.log.pending(SITE) == {}


def test_concurrent_enrollments_through_two_stores_never_share_a_slot(store_url):
    new_site(store_url).close()
    stores = [GalleryStore(store_url), GalleryStore(store_url)]
    refs: list[SlotRef] = []
    errors: list[BaseException] = []

    def enroll_many(store: GalleryStore, tag: str) -> None:
        try:
            for n in range(15):
                refs.append(enroll_fake(store, f"{tag}{n}").ref)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=enroll_many, args=(store, f"t{i}-")) for i, store in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert len(refs) == len(set(refs)) == 30
        assert stores[0].site(SITE).version == 30
        assert sorted((s.block, s.slot) for s in stores[0].subjects(SITE)) == sorted((r.block, r.slot) for r in refs)
    finally:
        for store in stores:
            store.close()


# -- with real ciphertexts and matcher workers (SQLite) -------------------------------------------


def direct_blocks(site_keys: SiteKeys, ops: list[tuple[LogOp, SlotRef, bytes]], layouts: list[int]) -> list[bytes]:
    """The blocks built directly with the same adds and removes in the same slots."""
    keys = site_keys.evaluation()
    blocks = [Block(keys, copies) for copies in layouts]
    for op, ref, enrollment in ops:
        ct = load_ciphertext(keys.context, enrollment, LEVEL_ENROLL, "enrollment")
        (blocks[ref.block].add if op is LogOp.ADD else blocks[ref.block].remove)(ct, ref.slot)
    return [block.to_bytes() for block in blocks]


@pytest.mark.asyncio
async def test_replay_is_exact_and_a_restarted_pool_recovers_from_snapshot_plus_log(tmp_path, site_keys):
    faces = embeddings(7, seed=41)
    enrollments = [encrypt_enrollment(site_keys, face) for face in faces]
    store = new_site(tmp_path / "gallery.db", site_keys)
    ops: list[tuple[LogOp, SlotRef, bytes]] = []
    pool = MatcherPool(tmp_path / "gallery.db", workers=1)
    await pool.start()
    try:
        check = await pool.check_enrollment(SITE, enrollments[0])

        def enroll(n: int) -> int:
            done = store.log.enroll(
                SITE, f"s{n}", b"l", enrollments[n], key_id=check.key_id, params=check.params, empty_blocks=check.empty_blocks
            )
            ops.append((LogOp.ADD, done.ref, enrollments[n]))
            return done.version

        def remove(n: int) -> int:
            done = store.log.remove(SITE, f"s{n}")
            ops.append((LogOp.REMOVE, done.ref, enrollments[n]))
            return done.version

        for n in range(4):
            enroll(n)
        remove(1)
        # mid-way snapshot: the worker's replayed copy, stored; the log rows it covers are gone
        version, data = await pool.build_snapshot(SITE, 0, 5)
        assert version == 5 and data == direct_blocks(site_keys, ops, store.block_layouts(SITE))[0]
        assert store.log.put_snapshot(SITE, 0, version, data) and store.log.pending(SITE) == {}
        for n in range(4, 7):
            enroll(n)
        final = remove(2)
        expected = direct_blocks(site_keys, ops, store.block_layouts(SITE))
        version, data = await pool.build_snapshot(SITE, 0, final)
        assert (version, data) == (final, expected[0])  # the running worker: snapshot + incremental replay
    finally:
        await pool.close()

    restarted = MatcherPool(tmp_path / "gallery.db", workers=1)  # a fresh process: snapshot at 5 + rows 6..9
    await restarted.start()
    try:
        version, data = await restarted.build_snapshot(SITE, 0, final)
        assert (version, data) == (final, expected[0])
        version, results = await restarted.identify(SITE, site_keys.key_id, encrypt_probe(site_keys, faces[5]), final)
        layouts = store.block_layouts(SITE)
        match = decode_scan(site_keys, faces[5], [r.ciphertext for r in results], [r.occupancy() for r in results], layouts)
        assert version == final
        assert match.best == SlotRef(store.subject(SITE, "s5").block, store.subject(SITE, "s5").slot)
        assert not np.isnan(match.distances[0]).all()
    finally:
        await restarted.close()
        store.close()


@pytest.mark.asyncio
async def test_sharded_identify_equals_unsharded_and_each_worker_holds_its_blocks(tmp_path, site_keys):
    faces = embeddings(12, seed=42)
    store = new_site(tmp_path / "gallery.db", site_keys)
    for index, chunk in enumerate((faces[:4], faces[4:8], faces[8:])):
        subjects = [(f"b{index}s{slot}", b"l", slot, encrypt_enrollment(site_keys, f)) for slot, f in enumerate(chunk)]
        store.import_block(SITE, index, encrypt_block(site_keys, chunk), subjects)
    # one logged enrollment on top, in block 0
    extra = embeddings(1, seed=43)[0]
    one = MatcherPool(tmp_path / "gallery.db", workers=1)
    two = MatcherPool(tmp_path / "gallery.db", workers=2)
    await one.start()
    await two.start()
    try:
        check = await two.check_enrollment(SITE, encrypt_enrollment(site_keys, extra))
        done = store.log.enroll(
            SITE, "extra", b"l", encrypt_enrollment(site_keys, extra), key_id=check.key_id, params=check.params,
            empty_blocks=check.empty_blocks,
        )  # fmt: skip
        assert done.ref.block == 0
        layouts = store.block_layouts(SITE)
        for face in (faces[1], faces[6], faces[10], extra):
            probe = encrypt_probe(site_keys, face)
            answers = [await pool.identify(SITE, site_keys.key_id, probe, done.version) for pool in (one, two)]
            decoded = []
            for version, results in answers:
                assert version == done.version and [r.block for r in results] == [0, 1, 2]
                occupancy = [r.occupancy() for r in results]
                decoded.append(decode_scan(site_keys, face, [r.ciphertext for r in results], occupancy, layouts))
            assert decoded[0].best == decoded[1].best and decoded[0].best is not None
            np.testing.assert_array_equal(decoded[0].distances, decoded[1].distances)
        stats = await two.worker_stats(SITE)
        assert [(s.shard, s.blocks) for s in stats] == [(0, [0, 2]), (1, [1])]
        assert len({s.pid for s in stats}) == 2 and stats[1].cache_bytes < stats[0].cache_bytes
        (single,) = await one.worker_stats(SITE)
        assert single.blocks == [0, 1, 2] and single.cache_bytes > stats[0].cache_bytes
    finally:
        await one.close()
        await two.close()
        store.close()
