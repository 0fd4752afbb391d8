"""The matcher pool on a real store: bulk import, catching up with logged enrollments, busy, shard workers."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time

import numpy as np
import pytest

from blindgate.cloud.match_errors import MatchError, MatchErrorKind
from blindgate.cloud.matcher import MatcherPool
from blindgate.cloud.store import GalleryStore, new_subject_id
from blindgate.shared.engine import SiteKeys, decode_scan, encrypt_block, encrypt_enrollment, encrypt_probe
from blindgate.shared.protocol import BlockResult

from .conftest import embeddings

pytestmark = pytest.mark.asyncio


def best_slot(site_keys: SiteKeys, face: np.ndarray, results: list[BlockResult]) -> int:
    """The slot the device decodes as the closest match."""
    occupancy = [r.occupancy() for r in results]
    match = decode_scan(site_keys, face, [r.ciphertext for r in results], occupancy, [r.copies for r in results])
    assert match.best is not None, "no match decoded"
    return match.best.slot


async def test_bulk_import_reload_busy_and_stale_commit(tmp_path, site_keys):
    faces = embeddings(40, seed=31)
    store = GalleryStore(tmp_path / "gallery.db")
    store.create_site("home", secrets.token_urlsafe(32), site_keys.key_id, site_keys.evaluation_bytes)
    subjects = [(new_subject_id(), b"l", slot, encrypt_enrollment(site_keys, f)) for slot, f in enumerate(faces)]
    assert store.import_block("home", 0, encrypt_block(site_keys, faces), subjects) == 1
    assert len(store.subjects("home")) == 40

    pool = MatcherPool(tmp_path / "gallery.db", workers=1, queue_size=1)
    await pool.start()
    try:
        version, results = await pool.identify("home", site_keys.key_id, encrypt_probe(site_keys, faces[17]), 1)
        assert version == 1 and best_slot(site_keys, faces[17], results) == 17

        # refusals
        with pytest.raises(MatchError) as err:
            await pool.identify("nosuch", site_keys.key_id, b"x", 0)
        assert err.value.kind == MatchErrorKind.UNKNOWN_SITE
        with pytest.raises(MatchError) as err:
            await pool.identify("home", "0" * 32, b"x", 0)
        assert err.value.kind == MatchErrorKind.WRONG_KEY

        # queue_size 1: a second probe while one is in flight is refused at once
        probe = encrypt_probe(site_keys, faces[3])
        first = asyncio.ensure_future(pool.identify("home", site_keys.key_id, probe, 1))
        await asyncio.sleep(0)  # one loop turn: the probe is counted in flight before it awaits its worker
        assert pool.inflight == 1
        started = time.perf_counter()
        with pytest.raises(MatchError) as err:
            await pool.identify("home", site_keys.key_id, probe, 1)
        assert err.value.kind == MatchErrorKind.BUSY and time.perf_counter() - started < 0.05
        await first

        # enroll one more: the pool only parses it, the store logs it; a garbage ciphertext is refused
        with pytest.raises(MatchError) as err:
            await pool.check_enrollment("home", b"not a ciphertext", 1)
        assert err.value.kind == MatchErrorKind.BAD_REQUEST
        extra = embeddings(1, seed=32)[0]
        enrollment = encrypt_enrollment(site_keys, extra)
        check = await pool.check_enrollment("home", enrollment, 1)
        done = store.log.enroll(
            "home", new_subject_id(), b"l", enrollment, key_id=check.key_id, params=check.params, empty_blocks=check.empty_blocks
        )
        assert done.version == 2 and (done.ref.block, done.ref.slot) == (0, 40)

        # the worker notices the new version by itself, replays the log row and scans the new template
        version, results = await pool.identify("home", site_keys.key_id, encrypt_probe(site_keys, extra), 0)
        assert version == 2 and best_slot(site_keys, extra, results) == 40
    finally:
        await pool.close()
        store.close()


async def test_a_flooded_site_is_busy_while_a_quiet_site_still_gets_a_slot(tmp_path, monkeypatch):
    """Per-site share of the queue: site A's flood fills its share only; site B's probe is still scanned."""
    pool = MatcherPool(tmp_path / "gallery.db", workers=1, queue_size=8)  # share: 4 slots per site
    release = asyncio.Event()

    async def slow_scan(fn, *args):  # a worker that holds each scan until released
        await release.wait()
        return 1, []

    monkeypatch.setattr(pool, "_scan_all", slow_scan)
    flood = [asyncio.ensure_future(pool.identify("siteA", "k", b"p")) for _ in range(12)]
    await asyncio.sleep(0)
    refused = [f for f in flood if f.done()]
    assert len(refused) == 8 and all(f.exception().kind == MatchErrorKind.BUSY for f in refused)
    assert pool.inflight == 4
    quiet = asyncio.ensure_future(pool.identify("siteB", "k", b"p"))  # the quiet site: a slot is left for it
    await asyncio.sleep(0)
    assert not quiet.done() and pool.inflight == 5
    release.set()
    assert await asyncio.wait_for(quiet, 3.0) == (1, [])
    await asyncio.gather(*(f for f in flood if f not in refused))
    assert pool.inflight == 0 and pool._site_inflight == {}
    # a configured share: one site may take the whole queue if the operator says so
    assert MatcherPool(tmp_path / "g.db", queue_size=8, site_share=8).site_share == 8
    assert MatcherPool(tmp_path / "g.db", queue_size=1).site_share == 1


async def test_a_dead_worker_is_replaced_alone_and_a_probe_fans_out_once(tmp_path, site_keys):
    """Two shards: killing one worker replaces only its executor; a fanned-out probe counts once in the queue."""
    faces = embeddings(6, seed=33)
    store = GalleryStore(tmp_path / "gallery.db")
    store.create_site("home", secrets.token_urlsafe(32), site_keys.key_id, site_keys.evaluation_bytes)
    for index, chunk in enumerate((faces[:3], faces[3:])):
        subjects = [(new_subject_id(), b"l", slot, encrypt_enrollment(site_keys, f)) for slot, f in enumerate(chunk)]
        store.import_block("home", index, encrypt_block(site_keys, chunk), subjects)
    pool = MatcherPool(tmp_path / "gallery.db", workers=2, queue_size=1)
    await pool.start()
    try:
        probe = encrypt_probe(site_keys, faces[4])
        scan = asyncio.ensure_future(pool.identify("home", site_keys.key_id, probe, 2))
        await asyncio.sleep(0)
        assert pool.inflight == 1  # one probe, two shards scanning it
        version, results = await scan
        assert version == 2 and [r.block for r in results] == [0, 1]
        before = await pool.worker_stats("home")
        os.kill(before[1].pid, signal.SIGKILL)
        with pytest.raises(MatchError) as err:
            await pool.identify("home", site_keys.key_id, probe, 2)
        assert err.value.kind == MatchErrorKind.UNAVAILABLE
        after = await pool.worker_stats("home")
        assert after[0].pid == before[0].pid and after[1].pid != before[1].pid and after[1].blocks == []
        version, results = await pool.identify("home", site_keys.key_id, probe, 2)  # the new worker loads its share
        assert [r.block for r in results] == [0, 1]
    finally:
        await pool.close()
        store.close()
