"""Which probe requests the bridge may scan: signed by their door's registered key, fresh, used once.

A relay (the broker, or anyone on an unencrypted link) can record and re-send requests, or swap
the probe inside one. So the cloud scans only a request that (1) verifies under the Ed25519 key
registered for the door its topic names (the signature covers the header: topic, request id,
nonce, expiry and the probe's SHA-256, and the probe itself), (2) is fresh: not expired, not
issued more than `MAX_CLOCK_SKEW_S` in the future, valid for at most `MAX_REQUEST_TTL_S`, and
(3) has not been seen before: request ids are remembered until their expiry.

Unknown doors and bad signatures are the same refusal (no oracle of which doors exist).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from blindgate.shared.protocol import ProbeRequest, ProtocolError, verify_probe_request

# (site, door) -> the door's raw 32-byte public key, None if not registered
DoorLookup = Callable[[str, str], Awaitable[bytes | None]]

MAX_CLOCK_SKEW_S = 10.0  # how far in the future a door's clock may put issued_at
MAX_REQUEST_TTL_S = 60.0  # bounds how long a request id must be remembered
# The one refusal text for unknown site, unknown door, bad signature and wrong key id (cloud/bridge.py).
NOT_AUTHENTIC = "the request is not signed by a door registered for this site"


async def _no_doors(site: str, door: str) -> bytes | None:
    return None


class DoorKeys:
    """The doors' public keys, cached per process; re-read when unknown or when a signature fails (rotation)."""

    def __init__(self, lookup: DoorLookup | None = None) -> None:
        self._lookup = lookup or _no_doors
        self._cache: dict[tuple[str, str], Ed25519PublicKey] = {}

    def forget(self, site: str, door: str) -> None:
        """Drop a cached key (it was just replaced)."""
        self._cache.pop((site, door), None)

    def forget_all(self) -> None:
        """Drop every cached key (changes from other replicas may have been missed)."""
        self._cache.clear()

    async def authentic(self, req: ProbeRequest) -> bool:
        """Whether the key registered for the request's door signed it (re-reading the key once on failure)."""
        where = (req.site, req.device)
        cached = self._cache.get(where)
        if cached is not None and _verifies(req, cached):
            return True
        raw = await self._lookup(*where)
        if raw is None:
            self._cache.pop(where, None)
            return False
        try:
            key = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError:
            return False
        self._cache[where] = key
        return _verifies(req, key)


def _verifies(req: ProbeRequest, key: Ed25519PublicKey) -> bool:
    try:
        verify_probe_request(req, key)
    except ProtocolError:
        return False
    return True


def freshness_problem(req: ProbeRequest, now: float | None = None) -> str | None:
    """Why the request is not fresh, or None if it is."""
    now = time.time() if now is None else now
    if req.expired(now):
        return "the request expired before the cloud received it"
    if req.issued_at > now + MAX_CLOCK_SKEW_S:
        return "the request was issued in the future: check the door's clock"
    if req.expires_at - req.issued_at > MAX_REQUEST_TTL_S:
        return f"the request is valid for longer than {MAX_REQUEST_TTL_S:.0f} s"
    return None


class SeenRequests:
    """Request ids already answered, each remembered until its request's expiry: a replay gets no second scan."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str, str], float] = {}
        self._next_sweep = 0.0

    def first_use(self, req: ProbeRequest, now: float | None = None) -> bool:
        """True the first time this (site, door, request id) is seen; remembers it."""
        now = time.time() if now is None else now
        if now >= self._next_sweep:
            self._seen = {k: exp for k, exp in self._seen.items() if exp >= now}
            self._next_sweep = now + 1.0
        key = (req.site, req.device, req.request_id)
        if key in self._seen:
            return False
        self._seen[key] = req.expires_at
        return True

    def __len__(self) -> int:
        return len(self._seen)
