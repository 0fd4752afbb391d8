"""A matcher worker's memory bound: parsed keys and gallery blocks, least recently used out, by bytes.

A worker keeps each site's parsed evaluation keys (~13 MB for dlib's 128 values once SEAL expands
the seeded keys) and the gallery blocks of its shard (~34 MB per block; with n workers, worker i
holds blocks i, i + n, ... only, so the accounting counts those) so that a probe does not re-parse
them. Without a bound, every site ever probed, or every fresh bundle a token holder registers,
stays resident for the worker's lifetime. `ByteLRU` holds at most `limit` bytes by its own
accounting; an entry larger than the whole bound is used once and not kept.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from blindgate.shared.engine import Params
from blindgate.shared.limits import KEY_PRIMES, MAX_BLOCK_CIPHERTEXT_BYTES, RING_DEGREE

DEFAULT_CACHE_BYTES = 4 * 1024**3  # CloudConfig.worker_cache_bytes' default

log = logging.getLogger("blindgate.cloud.matcher")

K = TypeVar("K")
V = TypeVar("V")


def keys_bytes(galois_keys: int) -> int:
    """Memory of parsed evaluation keys: relin + `galois_keys` Galois keys, each KEY_PRIMES - 1 full
    ciphertexts over KEY_PRIMES primes (2 Galois keys in a new bundle, 7 in an older one)."""
    return (galois_keys + 1) * (KEY_PRIMES - 1) * 2 * KEY_PRIMES * RING_DEGREE * 8


def blocks_bytes(params: Params, blocks: int, copies: int = 1) -> int:
    """Memory of `blocks` loaded gallery blocks of one layout: dim / copies diagonals and one norms ciphertext each."""
    return blocks * (max(1, params.dim // copies) + 1) * MAX_BLOCK_CIPHERTEXT_BYTES


def per_worker(held: dict[int, int]) -> Callable[[], dict[tuple[tuple[str, str], ...], float]]:
    """A gauge reading of `held` (worker pid -> cache bytes, as each worker last reported) by pid."""
    return lambda: {(("pid", str(pid)),): float(size) for pid, size in held.items()}


class ByteLRU(Generic[K, V]):
    """A mapping that evicts its least recently used entries to stay within `limit` bytes.

    `size_of(value)` is what an entry costs; `cache[key] = value` is `put(key, value, size_of(value))`.
    """

    def __init__(self, limit: int, size_of: Callable[[V], int]) -> None:
        self.limit = max(0, int(limit))
        self.size_of = size_of
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._total = 0
        self.evictions = 0

    @property
    def total(self) -> int:
        """Bytes held now (never more than `limit`)."""
        return self._total

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: K) -> V | None:
        """The entry, now the most recently used; None if absent or evicted."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def __setitem__(self, key: K, value: V) -> None:
        self.put(key, value, self.size_of(value))

    def put(self, key: K, value: V, size: int) -> bool:
        """Hold `value` as `size` bytes, evicting the oldest entries; False (not held) if it alone exceeds the bound."""
        self.pop(key)
        size = max(0, int(size))
        if size > self.limit:  # used for this request, reloaded for the next: slow, so say why
            log.warning("a cache entry exceeds worker_cache_bytes; raise it", extra={"bytes": size, "limit": self.limit})
            return False
        while self._entries and self._total + size > self.limit:
            _, (_, evicted) = self._entries.popitem(last=False)
            self._total -= evicted
            self.evictions += 1
        self._entries[key] = (value, size)
        self._total += size
        return True

    def pop(self, key: K, default: V | None = None) -> V | None:
        """Forget the entry (if any) and return it."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return default
        self._total -= entry[1]
        return entry[0]
