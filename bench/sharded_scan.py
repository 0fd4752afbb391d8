"""Benchmark: one identification through a real MatcherPool over a real store, sharded over N workers.

Run through `bench/matching.py --workers N` (or directly). Prints one JSON object on stdout:

    python bench/matching.py --sizes 65536 --workers 2
    python bench/sharded_scan.py --sizes 65536 --workers 1

Per gallery size: the store is filled by bulk import (`GalleryStore.import_block`, the layouts
enrollment gives: `copies_for_block`), a `MatcherPool(workers=N)` (block i on worker i mod N)
scans real probes, and the reply is decoded and checked against numpy. Reported: median seconds
per identification (the pool's fan-out and merge included), and per worker its blocks, its cache
accounting and its resident memory (VmRSS).

Then the gallery log: bytes one enrollment writes to the SQLite store (file + WAL growth,
checkpointed before each measurement) as a logged row (`GalleryLog.enroll`), against one whole
block written (`put_snapshot`: the 30 MB write every enrollment made before the log), and the
replay cost: a fresh pool's first
identification with `--log-entries` logged enrollments past the last snapshot, minus one without.

Subject rows of the bulk-imported blocks carry a placeholder instead of their enrollment ciphertext
(the scan never reads it, and 65,536 real ones would be 10 GB of SQLite); logged enrollments are real.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from cloud_load import SITE, build_gallery  # bench/ is on sys.path when run as a script

from blindgate.cloud.matcher import MatcherPool
from blindgate.cloud.store import GalleryStore
from blindgate.shared.engine import (
    SiteKeys,
    decode_scan,
    encrypt_enrollment,
    encrypt_probe,
    generate_site_keys,
    plan_blocks,
)


def log(msg: str) -> None:
    print(f"[sharded_scan] {msg}", file=sys.stderr, flush=True)


def build_store(path: Path, keys: SiteKeys, faces: np.ndarray) -> list[int]:
    """Register the site and bulk-import `faces` in enrollment's layouts (placeholder enrollments); each block's copies."""
    build_gallery(path, keys, faces, enrollments=False)
    return [copies for _, _, copies in plan_blocks(keys.params, len(faces))]


def store_bytes(path: Path) -> int:
    """SQLite file + WAL size now."""
    wal = Path(str(path) + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def checkpoint(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


async def scan_timing(path: Path, keys: SiteKeys, faces: np.ndarray, workers: int, runs: int) -> dict:
    pool = MatcherPool(path, workers=workers, queue_size=8, cache_bytes=16 * 1024**3)
    await pool.start()
    try:
        started = time.perf_counter()
        version, _ = await pool.identify(SITE, keys.key_id, encrypt_probe(keys, faces[0]), 0)
        first = time.perf_counter() - started
        times, correct = [], True
        rng = np.random.default_rng(5)
        for _ in range(runs):
            x = faces[int(rng.integers(len(faces)))] + rng.normal(0, 0.01, faces.shape[1])
            probe = encrypt_probe(keys, x)
            started = time.perf_counter()
            _, results = await pool.identify(SITE, keys.key_id, probe, version)
            times.append(time.perf_counter() - started)
            match = decode_scan(
                keys, x, [r.ciphertext for r in results], [r.occupancy() for r in results], [r.copies for r in results]
            )
            expected = float(np.min(np.linalg.norm(faces - x, axis=1)))
            correct = correct and abs(match.distance - expected) < 1e-2
        stats = await pool.worker_stats(SITE)
    finally:
        await pool.close()
    return {
        "workers": workers,
        "first_identify_s": round(first, 3),
        "identify_median_s": round(statistics.median(times), 3),
        "identify_s": [round(t, 3) for t in times],
        "decoded_distance_matches_numpy": correct,
        "per_worker": [
            {
                "shard": s.shard,
                "blocks": s.blocks,
                "cache_bytes": s.cache_bytes,
                "resident_mb": round(s.resident_bytes / 2**20, 1),
            }
            for s in stats
        ],
    }


async def log_costs(path: Path, keys: SiteKeys, layouts: list[int], entries: int, workers: int) -> dict:
    """Bytes per enrollment (logged vs whole block) and replay seconds per logged entry on a fresh pool."""
    pool = MatcherPool(path, workers=workers, cache_bytes=16 * 1024**3)
    await pool.start()
    faces = np.random.default_rng(9).normal(0, 0.09, (entries, keys.params.dim))
    try:
        store = GalleryStore(path)
        check = await pool.check_enrollment(SITE, encrypt_enrollment(keys, faces[0]))
        written = []
        for n, face in enumerate(faces):
            enrollment = encrypt_enrollment(keys, face)
            checkpoint(path)
            before = store_bytes(path)
            store.log.enroll(
                SITE,
                f"logged-{n}",
                b"label",
                enrollment,
                key_id=check.key_id,
                params=check.params,
                empty_blocks=check.empty_blocks,
            )
            written.append(store_bytes(path) - before)
        pending = store.log.pending(SITE)
        block = max(pending)
        # the old way: one enrollment rewrote its whole block (here: the same bytes written back)
        version, data = await pool.build_snapshot(SITE, block, 0)
        checkpoint(path)
        before = store_bytes(path)
        snapshot_written = store.log.put_snapshot(SITE, block, version, data)
        snapshot_bytes = store_bytes(path) - before
        store.close()
    finally:
        await pool.close()
    return {
        "logged_enrollment_bytes_median": int(statistics.median(written)),
        "enrollment_ciphertext_bytes": len(enrollment),
        "snapshot_written": snapshot_written,
        "block_bytes": len(data),
        "snapshot_write_bytes": snapshot_bytes,
        "log_entries": entries,
        "log_block": block,
        "block_copies": layouts[block] if block < len(layouts) else None,
    }


async def replay_cost(path: Path, keys: SiteKeys, entries: int, workers: int) -> dict:
    """A fresh pool's first identification with `entries` logged rows pending vs none."""
    timings = {}
    for label in ("with_log", "after_snapshot"):
        pool = MatcherPool(path, workers=workers, cache_bytes=16 * 1024**3)
        await pool.start()
        try:
            probe = encrypt_probe(keys, np.zeros(keys.params.dim) + 0.01)
            started = time.perf_counter()
            version, _ = await pool.identify(SITE, keys.key_id, probe, 0)
            timings[label] = time.perf_counter() - started
            if label == "with_log":
                with GalleryStore(path) as store:
                    for block in store.log.pending(SITE):
                        at, data = await pool.build_snapshot(SITE, block, version)
                        store.log.put_snapshot(SITE, block, at, data)
        finally:
            await pool.close()
    per_entry = (timings["with_log"] - timings["after_snapshot"]) / max(1, entries)
    return {
        "first_identify_with_log_s": round(timings["with_log"], 3),
        "first_identify_after_snapshot_s": round(timings["after_snapshot"], 3),
        "replay_s_per_entry": round(per_entry, 4),
    }


async def run(sizes: list[int], workers: int, runs: int, entries: int) -> dict:
    keys = generate_site_keys()
    out: dict = {"workers": workers, "cpus": os.cpu_count(), "sizes": {}}
    for n in sizes:
        faces = np.random.default_rng(n).normal(0, 0.09, (n, keys.params.dim))
        with tempfile.TemporaryDirectory(prefix="blindgate-shard-bench-") as tmp:
            path = Path(tmp) / "gallery.db"
            layouts = build_store(path, keys, faces)
            log(f"gallery {n}: {len(layouts)} blocks, scanning with {workers} workers")
            entry = await scan_timing(path, keys, faces, workers, runs)
            entry["blocks"] = len(layouts)
            if entries:
                log(f"gallery {n}: {entries} logged enrollments")
                entry["log"] = await log_costs(path, keys, layouts, entries, workers)
                # log again past the new snapshot, then a restart replays them
                with GalleryStore(path) as store:
                    pool = MatcherPool(path, workers=1)
                    await pool.start()
                    try:
                        for k in range(entries):
                            enrollment = encrypt_enrollment(keys, faces[k] + 0.001)
                            check = await pool.check_enrollment(SITE, enrollment)
                            store.log.enroll(
                                SITE, f"replay-{k}", b"l", enrollment, key_id=check.key_id, params=check.params,
                                empty_blocks=check.empty_blocks,
                            )  # fmt: skip
                    finally:
                        await pool.close()
                entry["replay"] = await replay_cost(path, keys, entries, workers)
            out["sizes"][str(n)] = entry
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="65536", help="gallery sizes, comma-separated")
    parser.add_argument("--workers", type=int, default=2, help="matcher workers (shards)")
    parser.add_argument("--runs", type=int, default=5, help="timed identifications per size")
    parser.add_argument(
        "--log-entries", type=int, default=32, help="logged enrollments for the byte and replay figures (0: skip)"
    )
    args = parser.parse_args(argv)
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    print(json.dumps(asyncio.run(run(sizes, args.workers, args.runs, args.log_entries)), indent=2))


if __name__ == "__main__":
    main()
