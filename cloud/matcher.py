"""The matcher pool: encrypted scans, verifications and enrollment work in worker processes.

TenSEAL holds the GIL and SEAL is single-threaded, so every CPU-heavy engine call runs in a
process of a `ProcessPoolExecutor` started with the "spawn" context (never fork: the service
has threads by then). Each worker opens the gallery store's SQLite file read-only and keeps
each site's evaluation keys and gallery blocks in memory; before every request it reads the
site's gallery version (one indexed row) and reloads the site when the store has moved on, so
a worker never scans a gallery older than the version the request says it must be at least.

Enrollment and removal compute the new block in a worker from a fresh copy of the stored block
(the worker's scan cache is not touched) and hand the serialized block back; the service then
commits it through `GalleryStore.commit_enrollment` / `commit_removal`. A worker never writes.

The pool is bounded: when `queue_size` probes are in flight (waiting or running), `identify`
and `verify` fail at once with `MatchError(MatchErrorKind.BUSY)`, which the bridge turns into a busy reply.
One site may hold at most `site_share` of those slots (default half the queue), so a flood from one
site is answered busy while the other sites' probes still get a slot.

Used from asyncio:

    pool = MatcherPool(db_path, workers=2, queue_size=8)
    await pool.start()
    version, results = await pool.identify(site, key_id, probe, min_version)
    await pool.close()
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from blindgate.shared.engine import Block, EngineError, EvaluationKeys, Gallery, SlotRef, scan_blocks, verify
from blindgate.shared.engine.context import Params, context_for
from blindgate.shared.logs import setup_logging
from blindgate.shared.protocol import BlockResult

from .match_errors import MatchError, MatchErrorKind
from .metrics import Metrics
from .store import GalleryStore, StoreError, UnknownSite, UnknownSubject
from .store_rekey import StagedSubject
from .worker_cache import DEFAULT_CACHE_BYTES, ByteLRU, blocks_bytes, keys_bytes, per_worker

log = logging.getLogger("blindgate.cloud.matcher")

T = TypeVar("T")
ScanAnswer = tuple[int, list[BlockResult]]  # (gallery version scanned, one result per non-empty block)


# --- worker side ---------------------------------------------------------------------------------
# Module globals of a worker process; the main process never touches them. The pool starts its
# workers with "spawn", so the imports at the top are paid once per worker, before its first request.


@dataclass
class _SiteCache:
    version: int
    key_id: str
    keys: EvaluationKeys
    blocks: list[Block] = field(default_factory=list)


_db_path: str | None = None
_db: GalleryStore | None = None  # read-only
# Bounded by worker_cache_bytes (a quarter for keys parsed alone), least recently used out (cloud/worker_cache.py).
_sites: ByteLRU[str, _SiteCache] = ByteLRU(0, lambda c: keys_bytes(c.keys.params) + blocks_bytes(c.keys.params, len(c.blocks)))
_keys: ByteLRU[str, EvaluationKeys] = ByteLRU(0, lambda k: keys_bytes(k.params))  # key_id -> keys (parsing costs tens of ms)


def _watch_parent(parent: int) -> None:
    """Exit when the service process is gone (killed with -9, it cannot shut the pool down)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def _init_worker(db_path: str, log_level: str | None, log_format: str, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
    global _db_path
    _db_path = db_path
    _keys.limit = cache_bytes // 4
    _sites.limit = cache_bytes - _keys.limit
    if log_level:
        setup_logging(log_level, log_format)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True, name="parent-watch").start()
    # Build the CKKS context once, before the first request needs it.
    context_for(Params())


def _warm() -> int:
    return os.getpid()


def _tracked(fn: Callable[..., T], *args: object) -> tuple[T, int, int]:
    """`fn(*args)`, with this worker's pid and cache bytes afterwards (the pool's gauge)."""
    result = fn(*args)
    return result, os.getpid(), _sites.total + _keys.total


def _store() -> GalleryStore:
    """This worker's read-only view of the gallery store, opened on first use."""
    global _db
    if _db is None:
        if _db_path is None:
            raise MatchError(MatchErrorKind.UNAVAILABLE, "the matcher worker was started without a gallery store")
        try:
            _db = GalleryStore(_db_path, readonly=True)
        except StoreError as exc:
            raise MatchError(MatchErrorKind.UNAVAILABLE, f"gallery store cannot be opened: {exc}") from None
    return _db


def _read(what: Callable[..., T], site: str, *args: object) -> T:
    """Call a store read about `site`, turning its errors into the matcher's."""
    try:
        return what(site, *args)
    except UnknownSite:
        raise MatchError(MatchErrorKind.UNKNOWN_SITE, f"site {site!r} is not registered with this cloud") from None
    except UnknownSubject as exc:
        raise MatchError(MatchErrorKind.UNKNOWN_SUBJECT, str(exc)) from None
    except StoreError as exc:
        raise MatchError(MatchErrorKind.UNAVAILABLE, f"gallery store cannot be read: {exc}") from None


def _site(site: str, key_id: str | None, min_version: int) -> _SiteCache:
    """The site's gallery at the store's current version (reloaded if this worker is behind)."""
    cached = _sites.get(site)
    try:
        snap = _read(_store().gallery, site, cached.version if cached else None)
    except MatchError:
        _sites.pop(site, None)
        raise
    if key_id is not None and key_id != snap.key_id:
        raise MatchError(MatchErrorKind.WRONG_KEY, f"key id {key_id!r} is not site {site!r}'s registered key id")
    if snap.version < min_version:
        raise MatchError(MatchErrorKind.UNAVAILABLE, f"gallery store is at version {snap.version}, request needs {min_version}")
    if snap.blocks is None and cached is not None and cached.key_id == snap.key_id:
        return cached
    if snap.blocks is None or snap.bundle is None:  # cached under another key id: read everything again
        _sites.pop(site, None)
        return _site(site, key_id, min_version)
    started = time.perf_counter()
    keys = _keys.get(snap.key_id)
    if keys is None:
        keys = _keys[snap.key_id] = EvaluationKeys.from_bytes(snap.bundle, expected_key_id=snap.key_id)
    blocks = [Block.from_bytes(keys, data) for data in snap.blocks]
    cached = _SiteCache(version=snap.version, key_id=snap.key_id, keys=keys, blocks=blocks)
    _sites[site] = cached
    log.info(
        "site loaded",
        extra={
            "site": site,
            "gallery_version": snap.version,
            "blocks": len(blocks),
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    return cached


def _identify(site: str, key_id: str, probe: bytes, min_version: int) -> ScanAnswer:
    state = _site(site, key_id, min_version)
    try:
        outputs = scan_blocks(state.keys, state.blocks, probe)
    except EngineError as exc:
        raise MatchError(MatchErrorKind.BAD_REQUEST, str(exc)) from None
    results = [
        BlockResult.of(index, block.occupied, out)
        for index, (block, out) in enumerate(zip(state.blocks, outputs))
        if out is not None
    ]
    return state.version, results


def _subject_row(site: str, subject: str) -> tuple[int, int, bytes]:
    """(block, slot, enrollment ciphertext) of a stored subject."""
    record = _read(_store().subject, site, subject)
    if record is None:
        raise MatchError(MatchErrorKind.UNKNOWN_SUBJECT, f"site {site!r} has no subject {subject!r}")
    return record.block, record.slot, _read(_store().enrollment, site, subject)


def _verify(site: str, key_id: str, probe: bytes, subject: str, min_version: int) -> ScanAnswer:
    state = _site(site, key_id, min_version)
    block, slot, enrollment = _subject_row(site, subject)
    try:
        result = verify(state.keys, probe, enrollment)
    except EngineError as exc:
        raise MatchError(MatchErrorKind.BAD_REQUEST, str(exc)) from None
    occupied = np.zeros(state.keys.params.slots, dtype=bool)
    occupied[slot] = True
    return state.version, [BlockResult.of(block, occupied, result)]


def _stored_block(site: str, index: int, keys: EvaluationKeys) -> Block:
    """A fresh copy of one stored block (enrollment changes a copy, the cache stays as committed)."""
    data = _read(_store().block, site, index)
    return Block(keys) if data is None else Block.from_bytes(keys, data)


def _enroll(site: str, enrollment: bytes, min_version: int) -> tuple[int, SlotRef, bytes]:
    """Add one template to a copy of the block holding the first free slot; returns (base version, ref, block bytes)."""
    state = _site(site, None, min_version)
    gallery = Gallery(state.keys)
    try:
        ct = gallery.load_enrollment(enrollment)  # validate before any work
    except EngineError as exc:
        raise MatchError(MatchErrorKind.BAD_REQUEST, str(exc)) from None
    gallery.blocks = list(state.blocks)
    ref = gallery.next_slot()
    block = _stored_block(site, ref.block, state.keys)
    block.add(ct, ref.slot)
    return state.version, ref, block.to_bytes()


def _remove(site: str, subject: str, min_version: int) -> tuple[int, int, bytes]:
    """Subtract a subject's template from a copy of its block; returns (base version, block index, block bytes)."""
    state = _site(site, None, min_version)
    index, slot, enrollment = _subject_row(site, subject)
    gallery = Gallery(state.keys)
    block = _stored_block(site, index, state.keys)
    try:
        block.remove(gallery.load_enrollment(enrollment), slot)
    except EngineError as exc:
        raise MatchError(MatchErrorKind.UNAVAILABLE, f"stored gallery is inconsistent: {exc}") from None
    return state.version, index, block.to_bytes()


def _validate_bundle(bundle: bytes) -> tuple[str, bytes]:
    """Parse and check an evaluation bundle strictly (refuses secret keys); (key id, canonical bytes)."""
    try:
        keys = EvaluationKeys.from_bytes(bundle)
    except EngineError as exc:
        raise MatchError(MatchErrorKind.BAD_REQUEST, str(exc)) from None
    _keys[keys.key_id] = keys
    return keys.key_id, keys.to_bytes()


def _staged_keys(site: str, key_id: str) -> tuple[EvaluationKeys, list[StagedSubject]]:
    """The evaluation keys and subjects of the site's staged rekey to `key_id` (parsed once per worker)."""
    staged = _read(_store().rekey.staged, site)
    if staged is None or staged.key_id != key_id:
        raise MatchError(MatchErrorKind.WRONG_KEY, f"site {site!r} has no rekey to key id {key_id!r} staged")
    keys = _keys.get(key_id)
    if keys is None:
        try:
            keys = _keys[key_id] = EvaluationKeys.from_bytes(staged.bundle, expected_key_id=key_id)
        except EngineError as exc:
            raise MatchError(MatchErrorKind.BAD_REQUEST, str(exc)) from None
    return keys, staged.subjects


def _check_rekey_enrollment(site: str, key_id: str, enrollment: bytes) -> None:
    """Refuse an enrollment ciphertext that is not valid under the staged new keys."""
    keys, _ = _staged_keys(site, key_id)
    try:
        Gallery(keys).load_enrollment(enrollment)
    except EngineError as exc:
        raise MatchError(MatchErrorKind.BAD_REQUEST, str(exc)) from None


def _rekey_blocks(site: str, key_id: str) -> tuple[dict[str, SlotRef], list[bytes]]:
    """The whole gallery rebuilt under the staged keys from the staged enrollments: (placements, block bytes)."""
    keys, subjects = _staged_keys(site, key_id)
    gallery = Gallery(keys)
    placements = {}
    for subject in subjects:
        try:
            placements[subject.subject_id] = gallery.add(subject.enrollment)
        except EngineError as exc:
            raise MatchError(MatchErrorKind.BAD_REQUEST, f"staged enrollment of {subject.subject_id!r}: {exc}") from None
    return placements, [block.to_bytes() for block in gallery.blocks]


# --- main-process side -------------------------------------------------------------------------


class MatcherPool:
    """Worker processes that scan; bounded, awaited from asyncio."""

    def __init__(
        self,
        db_path: str | Path,
        workers: int = 1,
        queue_size: int = 8,
        metrics: Metrics | None = None,
        site_share: int = 0,  # slots one site may hold; 0 = half the queue (at least 1)
        log_level: str | None = None,
        log_format: str = "json",
        cache_bytes: int = DEFAULT_CACHE_BYTES,  # per worker: parsed keys and blocks (cloud/worker_cache.py)
    ) -> None:
        self.log_settings = (log_level, log_format)
        self.cache_bytes = int(cache_bytes)
        self.cache_held: dict[int, int] = {}  # worker pid -> its cache bytes after its last call
        self.db_path = str(db_path)
        self.workers = max(1, int(workers))
        self.queue_size = max(1, int(queue_size))
        self.site_share = min(self.queue_size, int(site_share) if site_share > 0 else max(1, self.queue_size // 2))
        self._site_inflight: dict[str, int] = {}
        self.metrics = metrics
        if metrics is not None:
            metrics.gauge("blindgate_worker_cache_bytes", "bytes a matcher worker caches", per_worker(self.cache_held))
        self._executor: ProcessPoolExecutor | None = None
        self._inflight = 0
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def inflight(self) -> int:
        """Probes waiting for or being scanned by a worker."""
        return self._inflight

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.db_path, *self.log_settings, self.cache_bytes),
        )

    async def start(self) -> None:
        """Start the workers and wait until each has built its CKKS context."""
        self._executor = self._new_executor()
        loop = asyncio.get_running_loop()
        pids = await asyncio.gather(*(loop.run_in_executor(self._executor, _warm) for _ in range(self.workers)))
        log.info("matcher workers ready", extra={"workers": self.workers, "pids": sorted(set(pids))})

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if self._executor is None or self._closing:
            raise MatchError(MatchErrorKind.UNAVAILABLE, "the matcher is shutting down")
        loop = asyncio.get_running_loop()
        try:
            result, pid, held = await loop.run_in_executor(self._executor, _tracked, fn, *args)
            self.cache_held[pid] = held
            return result
        except BrokenProcessPool:
            # A worker died (killed, out of memory): replace the pool so later requests work.
            log.error("a matcher worker died; restarting the pool")
            broken, self._executor = self._executor, (None if self._closing else self._new_executor())
            self.cache_held.clear()
            if broken is not None:
                broken.shutdown(wait=False, cancel_futures=True)
            raise MatchError(MatchErrorKind.UNAVAILABLE, "a matcher worker failed; retry") from None

    async def _probe(self, site: str, fn: Callable[..., ScanAnswer], *args: object) -> ScanAnswer:
        if self._closing:
            raise MatchError(MatchErrorKind.BUSY, "the cloud is shutting down")
        if self._inflight >= self.queue_size:
            raise MatchError(MatchErrorKind.BUSY, f"{self._inflight} probes are already waiting for a matcher")
        held = self._site_inflight.get(site, 0)
        if held >= self.site_share:  # this site's share is used up; other sites still get slots
            raise MatchError(MatchErrorKind.BUSY, "this site's probes already fill its share of the matcher queue")
        self._site_inflight[site] = held + 1
        self._inflight += 1
        self._idle.clear()
        started = time.perf_counter()
        try:
            return await self._run(fn, *args)
        finally:
            self._inflight -= 1
            if (left := self._site_inflight.pop(site, 1) - 1) > 0:
                self._site_inflight[site] = left
            if self._inflight == 0:
                self._idle.set()
            if self.metrics is not None:
                self.metrics.observe_scan(time.perf_counter() - started)

    async def identify(self, site: str, key_id: str, probe: bytes, min_version: int = 0) -> ScanAnswer:
        """1:N: (gallery version, [BlockResult per non-empty block]). MatchError on refusal."""
        return await self._probe(site, _identify, site, key_id, bytes(probe), int(min_version))

    async def verify(self, site: str, key_id: str, probe: bytes, subject: str, min_version: int = 0) -> ScanAnswer:
        """1:1 against one subject: (gallery version, [one BlockResult]). MatchError on refusal."""
        return await self._probe(site, _verify, site, key_id, bytes(probe), subject, int(min_version))

    async def prepare_enrollment(self, site: str, enrollment: bytes, min_version: int) -> tuple[int, SlotRef, bytes]:
        """(base version, SlotRef, serialized block) for one new template; not yet committed."""
        return await self._run(_enroll, site, bytes(enrollment), int(min_version))

    async def prepare_removal(self, site: str, subject: str, min_version: int) -> tuple[int, int, bytes]:
        """(base version, block index, serialized block) without the subject; not yet committed."""
        return await self._run(_remove, site, subject, int(min_version))

    async def check_rekey_enrollment(self, site: str, key_id: str, enrollment: bytes) -> None:
        """MatchError(BAD_REQUEST) unless `enrollment` is valid under the site's staged new keys."""
        await self._run(_check_rekey_enrollment, site, key_id, bytes(enrollment))

    async def prepare_rekey(self, site: str, key_id: str) -> tuple[dict[str, SlotRef], list[bytes]]:
        """(placements, serialized blocks) of the gallery under the staged keys; not yet committed."""
        return await self._run(_rekey_blocks, site, key_id)

    async def validate_bundle(self, bundle: bytes) -> str:
        """Key id of a valid evaluation bundle; MatchError(BAD_REQUEST) otherwise (parsed in a worker)."""
        return (await self.parse_bundle(bundle))[0]

    async def parse_bundle(self, bundle: bytes) -> tuple[str, bytes]:
        """(key id, canonical re-serialization) of a valid bundle: store those bytes, never the upload."""
        return await self._run(_validate_bundle, bytes(bundle))

    async def drain(self, timeout: float) -> bool:
        """Refuse new probes and wait up to `timeout` for those in flight; True if all finished."""
        self._closing = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        """Stop the workers: calls still queued are cancelled, running ones finish first."""
        self._closing = True
        executor, self._executor = self._executor, None
        if executor is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, lambda: executor.shutdown(wait=True, cancel_futures=True))
