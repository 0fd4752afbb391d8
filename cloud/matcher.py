"""The matcher pool: encrypted scans, verifications and enrollment checks in worker processes, sharded.

TenSEAL holds the GIL and SEAL is single-threaded, so every CPU-heavy engine call runs in a
worker process started with the "spawn" context (never fork: the service has threads by then).

Sharding. With `workers` = n, worker i holds only blocks j of each site with j % n == i, so a
probe fans out to every worker at once (one core each) and the partial results merge into one
reply, in block order; resident gallery memory per worker is 1/n of the gallery. Each worker is
its own single-process executor: a dead worker is replaced alone. If the shards answered from
different gallery versions (a commit landed in between), the probe is scanned again at the newest
version, and refused UNAVAILABLE if that happens twice. Other jobs go to any worker, round-robin.

Catching up. Before every request a worker reads the site's gallery version (one indexed row);
when the store has moved on it reads its shard's newer block snapshots and the gallery log rows
after its own versions (cloud/store_log.py) and applies them in version order, so a worker never
scans a gallery older than the version the request says it must be at least. First load =
snapshot + replay. A worker never writes: enrollments are logged by the service after
`check_enrollment` parsed them, and a block's new snapshot (`build_snapshot`) is the bytes of the
worker's replayed copy, stored by the service.

The pool is bounded: when `queue_size` probes are in flight (waiting or running), `identify`
and `verify` fail at once with `MatchError(MatchErrorKind.BUSY)`, which the bridge turns into a busy reply.
One site may hold at most `site_share` of those slots (default half the queue), so a flood from one
site is answered busy while the other sites' probes still get a slot. A fanned-out probe counts once.

Used from asyncio:

    pool = MatcherPool(db_path, workers=2, queue_size=8)
    await pool.start()
    version, results = await pool.identify(site, key_id, probe, min_version)
    await pool.close()
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from blindgate.shared.engine import Block, EngineError, EvaluationKeys, Gallery, SlotRef, scan_blocks, verify
from blindgate.shared.engine.context import Params, context_for
from blindgate.shared.engine.gallery import COPY_CHOICES
from blindgate.shared.logs import setup_logging
from blindgate.shared.protocol import BlockResult

from .match_errors import MatchError, MatchErrorKind
from .metrics import Metrics
from .store import GalleryStore, StoreError, UnknownSite, UnknownSubject
from .store_log import LogOp
from .store_rekey import StagedSubject
from .worker_cache import DEFAULT_CACHE_BYTES, ByteLRU, blocks_bytes, keys_bytes, per_worker

log = logging.getLogger("blindgate.cloud.matcher")

T = TypeVar("T")
ScanAnswer = tuple[int, list[BlockResult]]  # (gallery version scanned, one result per non-empty block)


@dataclass(frozen=True)
class WorkerStats:
    """One worker's view of a site: which blocks it holds, at which version, and its memory."""

    shard: int
    pid: int
    version: int | None  # None: the site is not loaded in this worker
    blocks: list[int]
    cache_bytes: int  # worker_cache.py accounting: keys + the blocks it holds
    resident_bytes: int  # VmRSS


@dataclass(frozen=True)
class EnrollmentCheck:
    """A valid enrollment ciphertext's site keys: what `GalleryLog.enroll` needs to place it."""

    key_id: str
    params: Params
    empty_blocks: dict[int, bytes] = field(repr=False)  # copies -> empty block bytes


# --- worker side ---------------------------------------------------------------------------------
# Module globals of a worker process; the main process never touches them. The pool starts its
# workers with "spawn", so the imports at the top are paid once per worker, before its first request.


@dataclass
class _SiteCache:
    """One site in a worker: its keys and the blocks of this worker's shard, each at the version it reflects."""

    version: int
    key_id: str
    keys: EvaluationKeys
    blocks: dict[int, Block] = field(default_factory=dict)  # block index -> block (this shard's only)
    reflects: dict[int, int] = field(default_factory=dict)  # block index -> gallery version it reflects


def _site_bytes(cache: _SiteCache) -> int:
    """What a cached site costs: its keys and the blocks this worker holds (not the whole gallery)."""
    params = cache.keys.params
    return keys_bytes(cache.keys.galois.size()) + sum(blocks_bytes(params, 1, block.copies) for block in cache.blocks.values())


_db_path: str | None = None
_db: GalleryStore | None = None  # read-only
_shard, _shards = 0, 1  # this worker holds the blocks i with i % _shards == _shard
# Bounded by worker_cache_bytes (a quarter for keys parsed alone), least recently used out (cloud/worker_cache.py).
_sites: ByteLRU[str, _SiteCache] = ByteLRU(0, _site_bytes)
# key_id -> keys (parsing costs tens of ms)
_keys: ByteLRU[str, EvaluationKeys] = ByteLRU(0, lambda k: keys_bytes(k.galois.size()))


def _watch_parent(parent: int) -> None:
    """Exit when the service process is gone (killed with -9, it cannot shut the pool down)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def _init_worker(
    db_path: str,
    log_level: str | None,
    log_format: str,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    shard: int = 0,
    shards: int = 1,
) -> None:
    global _db_path, _shard, _shards
    _db_path, _shard, _shards = db_path, shard, shards
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


def _catch_up(site: str, cached: _SiteCache | None) -> _SiteCache:
    """Bring this worker's shard of `site` to the store's version: newer snapshots, then the log replayed."""
    started = time.perf_counter()
    known = dict(cached.reflects) if cached is not None else {}
    update = _read(_store().log.shard_update, site, cached.key_id if cached else None, known, _shard, _shards)
    if update.bundle is not None or cached is None:  # first load, or new keys: everything from the snapshots
        keys = _keys.get(update.key_id)
        if keys is None:
            if update.bundle is None:  # pragma: no cover - shard_update sends the bundle to a reader without keys
                raise MatchError(MatchErrorKind.UNAVAILABLE, f"site {site!r}: no evaluation bundle in the store's answer")
            keys = _keys[update.key_id] = EvaluationKeys.from_bytes(update.bundle, expected_key_id=update.key_id)
        cached = _SiteCache(version=update.version, key_id=update.key_id, keys=keys)
    blocks, reflects = cached.blocks, cached.reflects
    for index in set(blocks) - set(update.blocks):
        blocks.pop(index)
        reflects.pop(index)
    try:
        for snap in update.snapshots:
            blocks[snap.index] = Block.from_bytes(cached.keys, snap.data)
            reflects[snap.index] = snap.version
        loader = Gallery(cached.keys)
        for entry in update.entries:
            ct = loader.load_enrollment(entry.enrollment)
            if entry.op is LogOp.ADD:
                blocks[entry.block].add(ct, entry.slot)
            else:
                blocks[entry.block].remove(ct, entry.slot)
            reflects[entry.block] = entry.version
    except (EngineError, KeyError) as exc:
        _sites.pop(site, None)
        raise MatchError(MatchErrorKind.UNAVAILABLE, f"stored gallery of site {site!r} is inconsistent: {exc}") from None
    for index in blocks:  # every change up to the site's version is applied: each block reflects it
        reflects[index] = update.version
    cached.version = update.version
    _sites[site] = cached
    log.info(
        "site caught up",
        extra={
            "site": site,
            "gallery_version": update.version,
            "shard": _shard,
            "blocks": len(blocks),
            "snapshots": len(update.snapshots),
            "replayed": len(update.entries),
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    return cached


def _site(site: str, key_id: str | None, min_version: int) -> _SiteCache:
    """The site's keys and this shard's blocks at the store's current version (caught up if this worker is behind)."""
    cached = _sites.get(site)
    record = _read(_store().site, site)  # one indexed row
    if record is None:
        _sites.pop(site, None)
        raise MatchError(MatchErrorKind.UNKNOWN_SITE, f"site {site!r} is not registered with this cloud")
    if key_id is not None and key_id != record.key_id:
        raise MatchError(MatchErrorKind.WRONG_KEY, f"key id {key_id!r} is not site {site!r}'s registered key id")
    if record.version < min_version:
        raise MatchError(MatchErrorKind.UNAVAILABLE, f"gallery store is at version {record.version}, request needs {min_version}")
    if cached is not None and cached.version == record.version and cached.key_id == record.key_id:
        return cached
    cached = _catch_up(site, cached)
    if key_id is not None and key_id != cached.key_id:  # rekeyed between the two reads
        raise MatchError(MatchErrorKind.WRONG_KEY, f"key id {key_id!r} is not site {site!r}'s registered key id")
    return cached


def _identify(site: str, key_id: str, probe: bytes, min_version: int) -> ScanAnswer:
    """Scan this shard's blocks of the site: (version, one result per non-empty block, by index)."""
    state = _site(site, key_id, min_version)
    indexes = sorted(state.blocks)
    blocks = [state.blocks[index] for index in indexes]
    try:
        outputs = scan_blocks(state.keys, blocks, probe)
    except EngineError as exc:
        raise MatchError(MatchErrorKind.BAD_REQUEST, str(exc)) from None
    results = [
        BlockResult.of(index, block.occupied, out, block.copies)
        for index, block, out in zip(indexes, blocks, outputs)
        if out is not None
    ]
    return state.version, results


def _verify(site: str, key_id: str, probe: bytes, subject: str, min_version: int) -> ScanAnswer:
    """1:1 against a subject's stored enrollment ciphertext (no block needed: any shard can answer)."""
    state = _site(site, key_id, min_version)
    record = _read(_store().subject, site, subject)
    if record is None:
        raise MatchError(MatchErrorKind.UNKNOWN_SUBJECT, f"site {site!r} has no subject {subject!r}")
    enrollment = _read(_store().enrollment, site, subject)
    try:
        result = verify(state.keys, probe, enrollment)
    except EngineError as exc:
        raise MatchError(MatchErrorKind.BAD_REQUEST, str(exc)) from None
    occupied = np.zeros(state.keys.params.slots, dtype=bool)
    occupied[record.slot] = True
    return state.version, [BlockResult.of(record.block, occupied, result)]


def _empty_blocks(keys: EvaluationKeys) -> dict[int, bytes]:
    """Layout (copies) -> an empty block's bytes under `keys` (header only): a new block's first snapshot."""
    return {copies: Block(keys, copies=copies).to_bytes() for copies in COPY_CHOICES if copies <= keys.params.dim}


def _check_enrollment(site: str, enrollment: bytes, min_version: int) -> EnrollmentCheck:
    """Parse an enrollment ciphertext under the site's keys (BAD_REQUEST if invalid); nothing is computed."""
    state = _site(site, None, min_version)
    try:
        Gallery(state.keys).load_enrollment(enrollment)
    except EngineError as exc:
        raise MatchError(MatchErrorKind.BAD_REQUEST, str(exc)) from None
    return EnrollmentCheck(state.key_id, state.keys.params, _empty_blocks(state.keys))


def _snapshot(site: str, index: int, min_version: int) -> tuple[int, bytes]:
    """(version, bytes) of block `index` as this worker replayed it: the next stored snapshot."""
    state = _site(site, None, min_version)
    block = state.blocks.get(index)
    if block is None:
        raise MatchError(MatchErrorKind.UNAVAILABLE, f"site {site!r} has no block {index} on shard {_shard}")
    return state.reflects[index], block.to_bytes()


def _resident_bytes() -> int:
    """This process' resident memory (VmRSS), from /proc; 0 where there is none."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _shard_stats(site: str) -> WorkerStats:
    """What this worker holds of `site` (nothing loaded here) and its memory."""
    cached = _sites.get(site)
    held = sorted(cached.blocks) if cached is not None else []
    version = cached.version if cached is not None else None
    return WorkerStats(_shard, os.getpid(), version, held, _sites.total + _keys.total, _resident_bytes())


def _prewarm(site: str) -> int:
    """Catch this worker's shard of `site` up now, so the next probe does not pay the replay."""
    return _site(site, None, 0).version


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


def _rekey_blocks(site: str, key_id: str) -> tuple[dict[str, SlotRef], list[bytes], list[int]]:
    """The whole gallery rebuilt under the staged keys from the staged enrollments: (placements, block bytes, layouts)."""
    keys, subjects = _staged_keys(site, key_id)
    gallery = Gallery(keys)
    placements = {}
    for subject in subjects:
        try:
            placements[subject.subject_id] = gallery.add(subject.enrollment)
        except EngineError as exc:
            raise MatchError(MatchErrorKind.BAD_REQUEST, f"staged enrollment of {subject.subject_id!r}: {exc}") from None
    return placements, [block.to_bytes() for block in gallery.blocks], gallery.layouts()


# --- main-process side -------------------------------------------------------------------------


class MatcherPool:
    """Worker processes that scan, one per shard of every site's blocks; bounded, awaited from asyncio."""

    def __init__(
        self,
        db_path: str | Path,
        workers: int = 1,
        queue_size: int = 8,
        metrics: Metrics | None = None,
        site_share: int = 0,  # slots one site may hold; 0 = half the queue (at least 1)
        log_level: str | None = None,
        log_format: str = "json",
        cache_bytes: int = DEFAULT_CACHE_BYTES,  # per worker: parsed keys and its blocks (cloud/worker_cache.py)
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
        # One single-process executor per shard: shard i holds block j of every site when j % workers == i.
        self._executors: list[ProcessPoolExecutor | None] = [None] * self.workers
        self._pids: list[int | None] = [None] * self.workers
        self._next = 0  # round-robin for jobs that need no particular shard
        self._background: set[asyncio.Task[int]] = set()
        self._inflight = 0
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def inflight(self) -> int:
        """Probes waiting for or being scanned by the workers (a fanned-out probe counts once)."""
        return self._inflight

    def shard_of(self, block: int) -> int:
        """The worker (shard) that holds block `block` of every site."""
        return block % self.workers

    def _new_executor(self, shard: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.db_path, *self.log_settings, self.cache_bytes, shard, self.workers),
        )

    async def start(self) -> None:
        """Start the workers and wait until each has built its CKKS context."""
        self._executors = [self._new_executor(shard) for shard in range(self.workers)]
        pids = await asyncio.gather(*(self._run_on(shard, _warm) for shard in range(self.workers)))
        log.info("matcher workers ready", extra={"workers": self.workers, "pids": sorted(set(pids))})

    async def _run_on(self, shard: int, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` in the worker of `shard`; a dead worker is replaced (its shard only) and UNAVAILABLE raised."""
        executor = self._executors[shard]
        if executor is None or self._closing:
            raise MatchError(MatchErrorKind.UNAVAILABLE, "the matcher is shutting down")
        loop = asyncio.get_running_loop()
        try:
            result, pid, held = await loop.run_in_executor(executor, _tracked, fn, *args)
            self.cache_held[pid] = held
            self._pids[shard] = pid
            return result
        except BrokenProcessPool:
            # The worker died (killed, out of memory): replace its executor so later requests work.
            log.error("a matcher worker died; restarting it", extra={"shard": shard})
            if self._executors[shard] is executor:
                self._executors[shard] = None if self._closing else self._new_executor(shard)
                dead = self._pids[shard]
                if dead is not None:
                    self.cache_held.pop(dead, None)
                executor.shutdown(wait=False, cancel_futures=True)
            raise MatchError(MatchErrorKind.UNAVAILABLE, "a matcher worker failed; retry") from None

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` in any worker (round-robin): jobs that need no particular shard."""
        shard, self._next = self._next % self.workers, self._next + 1
        return await self._run_on(shard, fn, *args)

    async def _on_all(self, fn: Callable[..., T], *args: object) -> list[T]:
        """`fn(*args)` on every shard at once; the first error is raised after all have answered."""
        answers = await asyncio.gather(*(self._run_on(shard, fn, *args) for shard in range(self.workers)), return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        return answers  # type: ignore[return-value]

    async def _scan_all(self, site: str, key_id: str, probe: bytes, min_version: int) -> ScanAnswer:
        """Fan a probe out to every shard and merge the partial results (block order, one gallery version)."""
        answers = await self._on_all(_identify, site, key_id, probe, min_version)
        versions = {version for version, _ in answers}
        if len(versions) > 1:  # a commit landed between the shards' reads: all again at the newest
            answers = await self._on_all(_identify, site, key_id, probe, max(versions))
            versions = {version for version, _ in answers}
            if len(versions) > 1:
                raise MatchError(MatchErrorKind.UNAVAILABLE, f"gallery of site {site!r} changed during the scan; retry")
        results = sorted((result for _, part in answers for result in part), key=lambda result: result.block)
        return versions.pop(), results

    async def _probe(self, site: str, job: Callable[[], Awaitable[ScanAnswer]]) -> ScanAnswer:
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
            return await job()
        finally:
            self._inflight -= 1
            if (left := self._site_inflight.pop(site, 1) - 1) > 0:
                self._site_inflight[site] = left
            if self._inflight == 0:
                self._idle.set()
            if self.metrics is not None:
                self.metrics.observe_scan(time.perf_counter() - started)

    async def identify(self, site: str, key_id: str, probe: bytes, min_version: int = 0) -> ScanAnswer:
        """1:N over every shard: (gallery version, [BlockResult per non-empty block], block order). MatchError on refusal."""
        probe = bytes(probe)
        return await self._probe(site, lambda: self._scan_all(site, key_id, probe, int(min_version)))

    async def verify(self, site: str, key_id: str, probe: bytes, subject: str, min_version: int = 0) -> ScanAnswer:
        """1:1 against one subject: (gallery version, [one BlockResult]). MatchError on refusal.

        It compares with the subject's stored enrollment ciphertext, not with a block, so any
        worker answers (round-robin).
        """
        probe = bytes(probe)
        return await self._probe(site, lambda: self._run(_verify, site, key_id, probe, subject, int(min_version)))

    async def check_enrollment(self, site: str, enrollment: bytes, min_version: int = 0) -> EnrollmentCheck:
        """The site keys an enrollment ciphertext is valid under; MatchError(BAD_REQUEST) if invalid."""
        return await self._run(_check_enrollment, site, bytes(enrollment), int(min_version))

    async def build_snapshot(self, site: str, block: int, min_version: int) -> tuple[int, bytes]:
        """(version, bytes) of one block as its shard's worker replayed it, at least at `min_version`."""
        return await self._run_on(self.shard_of(block), _snapshot, site, int(block), int(min_version))

    async def worker_stats(self, site: str) -> list[WorkerStats]:
        """Each shard's blocks of `site`, cache bytes and resident memory (diagnostics, benchmarks)."""
        return await self._on_all(_shard_stats, site)

    def prewarm(self, site: str) -> None:
        """Fire and forget: every shard catches up with `site` now (after a change made elsewhere)."""
        if self._closing:
            return
        for shard in range(self.workers):
            task = asyncio.ensure_future(self._run_on(shard, _prewarm, site))
            self._background.add(task)
            task.add_done_callback(self._prewarmed)

    def _prewarmed(self, task: asyncio.Task[int]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("matcher prewarm failed", extra={"error": str(exc)})

    async def check_rekey_enrollment(self, site: str, key_id: str, enrollment: bytes) -> None:
        """MatchError(BAD_REQUEST) unless `enrollment` is valid under the site's staged new keys."""
        await self._run(_check_rekey_enrollment, site, key_id, bytes(enrollment))

    async def prepare_rekey(self, site: str, key_id: str) -> tuple[dict[str, SlotRef], list[bytes], list[int]]:
        """(placements, serialized blocks, their layouts) of the gallery under the staged keys; not yet committed."""
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
        executors, self._executors = self._executors, [None] * self.workers
        loop = asyncio.get_running_loop()
        for executor in executors:
            if executor is not None:
                await loop.run_in_executor(None, functools.partial(executor.shutdown, wait=True, cancel_futures=True))
        for task in list(self._background):
            if not task.done():
                task.cancel()
