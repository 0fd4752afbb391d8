"""cloud/request_auth.py: door signatures (with key cache and rotation), freshness, single use."""

from __future__ import annotations

import asyncio

import pytest

from blindgate.cloud.request_auth import MAX_CLOCK_SKEW_S, MAX_REQUEST_TTL_S, DoorKeys, SeenRequests, freshness_problem
from blindgate.shared.protocol import decode_probe_request, encode_probe_request, new_probe_request, new_signing_key

NOW = 1_700_000_000.0


def signed(key, **kwargs):
    req = new_probe_request("home", "door1", "k" * 32, b"probe", now=kwargs.pop("now", NOW), **kwargs)
    return decode_probe_request(encode_probe_request(req, key))


class Registry:
    def __init__(self) -> None:
        self.keys: dict[tuple[str, str], bytes] = {}
        self.reads = 0

    async def lookup(self, site: str, door: str) -> bytes | None:
        self.reads += 1
        return self.keys.get((site, door))


def test_registered_key_verifies_and_is_cached():
    key, registry = new_signing_key(), Registry()
    registry.keys[("home", "door1")] = key.public_key().public_bytes_raw()
    doors = DoorKeys(registry.lookup)
    assert asyncio.run(doors.authentic(signed(key))) and asyncio.run(doors.authentic(signed(key)))
    assert registry.reads == 1


def test_unknown_door_and_wrong_key_are_refused():
    key, registry = new_signing_key(), Registry()
    doors = DoorKeys(registry.lookup)
    assert not asyncio.run(doors.authentic(signed(key)))  # no door registered
    registry.keys[("home", "door1")] = new_signing_key().public_key().public_bytes_raw()
    assert not asyncio.run(doors.authentic(signed(key)))  # another key registered
    assert not asyncio.run(DoorKeys().authentic(signed(key)))  # a bridge without a door registry


def test_a_rotated_key_is_picked_up_on_the_first_failure():
    old, new, registry = new_signing_key(), new_signing_key(), Registry()
    registry.keys[("home", "door1")] = old.public_key().public_bytes_raw()
    doors = DoorKeys(registry.lookup)
    assert asyncio.run(doors.authentic(signed(old)))
    registry.keys[("home", "door1")] = new.public_key().public_bytes_raw()  # rotated by another process
    assert asyncio.run(doors.authentic(signed(new)))
    assert not asyncio.run(doors.authentic(signed(old)))  # the old key no longer opens anything


def test_an_unsigned_request_is_refused():
    key, registry = new_signing_key(), Registry()
    registry.keys[("home", "door1")] = key.public_key().public_bytes_raw()
    assert not asyncio.run(DoorKeys(registry.lookup).authentic(new_probe_request("home", "door1", "k", b"p")))


@pytest.mark.parametrize(
    "kwargs, at, problem",
    [
        ({}, NOW + 1, None),
        ({"ttl": 5}, NOW + 5.1, "expired"),
        ({}, NOW - MAX_CLOCK_SKEW_S + 1, None),  # the door's clock a little ahead
        ({}, NOW - MAX_CLOCK_SKEW_S - 1, "in the future"),
        ({"ttl": MAX_REQUEST_TTL_S + 1}, NOW, "longer than"),
    ],
)
def test_freshness(kwargs, at, problem):
    found = freshness_problem(signed(new_signing_key(), **kwargs), now=at)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_each_request_id_is_used_once_until_it_expires():
    seen, key = SeenRequests(), new_signing_key()
    first, second = signed(key, ttl=5), signed(key, ttl=5)
    assert seen.first_use(first, now=NOW) and not seen.first_use(first, now=NOW + 1)
    assert seen.first_use(second, now=NOW + 1)
    assert seen.first_use(signed(key, ttl=5, now=NOW + 10), now=NOW + 10) and len(seen) == 1  # expired ids swept
