"""Claims: sealing, authentication, freshness, single use. Each attack has its honest counterpart."""

from __future__ import annotations

import base64
import json

import pytest

from blindgate.device.claims import (
    CLOCK_SKEW_S,
    PADDED_SIZE,
    ClaimError,
    ClaimOpener,
    ClaimRejection,
    CredentialKind,
    ReplayCache,
    new_source_key,
    open_claim,
    seal_claim,
)

TOPIC = "blindgate/home/door1/claim"
NOW = 1_700_000_000.0
KEY = new_source_key()


def keys(source: str) -> bytes | None:
    return {"keypad": KEY}.get(source)


def opener(ttl: float = 10.0) -> ClaimOpener:
    return ClaimOpener(TOPIC, keys, ttl)


def rejection(fn, *args, **kwargs) -> ClaimRejection:
    with pytest.raises(ClaimError) as caught:
        fn(*args, **kwargs)
    return caught.value.kind


def test_honest_claim_opens_once():
    payload = seal_claim(KEY, TOPIC, "keypad", CredentialKind.PIN, "4711", now=NOW)
    claim = opener().open(payload, now=NOW + 1)
    assert (claim.source, claim.kind, claim.value, claim.issued_at) == ("keypad", CredentialKind.PIN, "4711", NOW)
    assert "4711" not in repr(claim)  # the credential stays out of logs


def test_pin_never_on_the_wire_and_its_length_is_hidden():
    short = seal_claim(KEY, TOPIC, "keypad", "pin", "4711", now=NOW)
    long = seal_claim(KEY, TOPIC, "keypad", "pin", "987654321012", now=NOW)
    for payload, pin in ((short, b"4711"), (long, b"987654321012")):
        envelope = json.loads(payload)
        assert pin not in payload and pin not in base64.b64decode(envelope["sealed"])
    assert len(short) == len(long)
    assert len(base64.b64decode(json.loads(short)["sealed"])) == PADDED_SIZE + 16  # padding + GCM tag


def test_forged_key_is_refused():
    payload = seal_claim(new_source_key(), TOPIC, "keypad", "pin", "4711", now=NOW)
    assert rejection(opener().open, payload, now=NOW) is ClaimRejection.FORGED


def test_unknown_source_is_refused():
    payload = seal_claim(KEY, TOPIC, "garage-keypad", "pin", "4711", now=NOW)
    assert rejection(opener().open, payload, now=NOW) is ClaimRejection.UNKNOWN_SOURCE


def test_tampered_ciphertext_is_refused():
    envelope = json.loads(seal_claim(KEY, TOPIC, "keypad", "pin", "4711", now=NOW))
    sealed = bytearray(base64.b64decode(envelope["sealed"]))
    sealed[5] ^= 1
    envelope["sealed"] = base64.b64encode(bytes(sealed)).decode()
    assert rejection(opener().open, json.dumps(envelope).encode(), now=NOW) is ClaimRejection.FORGED


def test_claim_for_another_door_or_relabelled_source_is_refused():
    other_door = seal_claim(KEY, "blindgate/home/door2/claim", "keypad", "pin", "4711", now=NOW)
    assert rejection(opener().open, other_door, now=NOW) is ClaimRejection.FORGED
    # another registered source's name on this source's ciphertext: the AAD binds the source
    envelope = json.loads(seal_claim(KEY, TOPIC, "keypad", "pin", "4711", now=NOW))
    envelope["source"] = "ha"
    both = ClaimOpener(TOPIC, {"keypad": KEY, "ha": KEY}.get, 10.0)
    assert rejection(both.open, json.dumps(envelope).encode(), now=NOW) is ClaimRejection.FORGED


def test_replay_of_a_valid_claim_is_refused():
    gate = opener()
    payload = seal_claim(KEY, TOPIC, "keypad", "badge", "B-12", now=NOW)
    gate.open(payload, now=NOW)  # positive control
    assert rejection(gate.open, payload, now=NOW + 1) is ClaimRejection.REPLAYED


def test_expired_and_future_claims_are_refused():
    gate = opener(ttl=10.0)
    assert rejection(gate.open, seal_claim(KEY, TOPIC, "keypad", "pin", "4711", now=NOW - 11), now=NOW) is ClaimRejection.STALE
    future = seal_claim(KEY, TOPIC, "keypad", "pin", "4711", now=NOW + CLOCK_SKEW_S + 1)
    assert rejection(gate.open, future, now=NOW) is ClaimRejection.STALE
    gate.open(seal_claim(KEY, TOPIC, "keypad", "pin", "4711", now=NOW - 9), now=NOW)  # within ttl
    gate.open(seal_claim(KEY, TOPIC, "keypad", "pin", "4711", now=NOW + CLOCK_SKEW_S - 1), now=NOW)  # small skew


def test_retained_claim_is_refused():
    payload = seal_claim(KEY, TOPIC, "keypad", "pin", "4711", now=NOW)
    assert rejection(opener().open, payload, retained=True, now=NOW) is ClaimRejection.RETAINED


@pytest.mark.parametrize(
    "payload",
    [b"", b"not json", b"[]", b'{"v": 2}', b'{"v": 1, "source": "../x", "nonce": "", "sealed": ""}', b"x" * 5000],
)
def test_garbage_is_malformed(payload):
    assert rejection(opener().open, payload, now=NOW) is ClaimRejection.MALFORMED


def test_replay_memory_is_bounded_and_forgets_stale_ids():
    cache = ReplayCache(ttl=10.0, skew=0.0, limit=3)
    from blindgate.device.claims import Claim

    def claim(i: int, at: float) -> Claim:
        return Claim("keypad", CredentialKind.PIN, "4711", at, f"{i:032x}")

    for i in range(3):
        cache.first_use(claim(i, NOW), NOW)
    with pytest.raises(ClaimError) as caught:  # full of live ids: refused, not forgotten
        cache.first_use(claim(3, NOW), NOW)
    assert caught.value.kind is ClaimRejection.FLOOD
    cache.first_use(claim(4, NOW + 11), NOW + 11)  # the old ones are stale now and make room
    assert len(cache) == 1


def test_open_claim_needs_the_right_topic_key_lookup():
    payload = seal_claim(KEY, TOPIC, "keypad", "pin", "4711", now=NOW)
    assert open_claim(payload, TOPIC, keys).value == "4711"
