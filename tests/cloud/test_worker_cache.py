"""worker_cache.py: a matcher worker's caches never hold more than their byte bound."""

from __future__ import annotations

import random

import pytest

from blindgate.cloud.matcher import MatcherPool
from blindgate.cloud.metrics import Metrics
from blindgate.cloud.worker_cache import ByteLRU, keys_bytes
from blindgate.shared.engine import Params


def test_least_recently_used_entries_go_first():
    cache: ByteLRU[str, str] = ByteLRU(10, len)
    cache["a"], cache["b"] = "aaaa", "bbbb"
    assert cache.get("a") == "aaaa"  # now b is the oldest
    cache["c"] = "cccc"
    assert "b" not in cache and cache.get("a") == "aaaa" and cache.get("c") == "cccc"
    assert cache.total == 8 and cache.evictions == 1


def test_an_entry_larger_than_the_bound_is_not_kept():
    cache: ByteLRU[str, bytes] = ByteLRU(10, len)
    cache["small"] = b"12345"
    assert cache.put("huge", b"x" * 11, 11) is False
    assert "huge" not in cache and cache.get("small") == b"12345"  # and nothing was evicted for it


def test_replacing_an_entry_recounts_it():
    cache: ByteLRU[str, bytes] = ByteLRU(10, len)
    cache["a"] = b"x" * 8
    cache["a"] = b"x" * 2
    assert cache.total == 2 and cache.pop("a") == b"xx" and cache.total == 0


def test_the_bound_holds_under_any_sequence_of_operations():
    rng = random.Random(11)
    cache: ByteLRU[int, int] = ByteLRU(1000, lambda size: size)
    for _ in range(5000):
        key = rng.randrange(50)
        op = rng.random()
        if op < 0.6:
            cache[key] = rng.randrange(0, 1200)
        elif op < 0.8:
            cache.get(key)
        else:
            cache.pop(key)
        assert 0 <= cache.total <= 1000
        assert cache.total == sum(cache.get(k) or 0 for k in list(cache._entries))


def test_parsed_keys_are_counted_at_their_expanded_size(site_keys):
    """A new bundle (relin + 2 Galois keys) and an older one (relin + 7) as SEAL holds them expanded."""
    galois = site_keys.evaluation().galois.size()
    assert galois == len(Params(dim=128).galois_elements()) == 2
    assert 4_500_000 < keys_bytes(galois) < 5_000_000  # 3 keys x 3 parts x 2 x 4 primes x 8192 x 8
    assert 12_000_000 < keys_bytes(7) < 14_000_000  # 8 keys


@pytest.mark.asyncio
async def test_a_worker_keeps_its_cache_within_the_configured_bound(tmp_path, site_keys, other_keys):
    """Through the pool: two fresh bundles with room for one parsed key set; the gauge reports it."""
    one = keys_bytes(site_keys.evaluation().galois.size())
    metrics = Metrics()
    pool = MatcherPool(tmp_path / "gallery.db", metrics=metrics, cache_bytes=4 * one + 4)  # keys get a quarter
    await pool.start()
    try:
        for keys in (site_keys, other_keys, site_keys):
            assert (await pool.parse_bundle(keys.evaluation_bytes))[0] == keys.key_id
            (held,) = pool.cache_held.values()
            assert held == one <= pool.cache_bytes
        assert "blindgate_worker_cache_bytes{pid=" in metrics.render()
    finally:
        await pool.close()
