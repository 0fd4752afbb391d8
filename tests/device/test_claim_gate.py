"""The claim gate: what becomes an active claim, what is a failed attempt, and what is only dropped."""

from __future__ import annotations

import json

import pytest

from blindgate.device.audit import AuditLog
from blindgate.device.claim_gate import ClaimConfigError, ClaimGate
from blindgate.device.claims import ClaimOpener, ClaimRejection, CredentialKind, new_source_key, seal_claim

TOPIC = "blindgate/home/door1/claim"
KEY = new_source_key()


class Clocks:
    def __init__(self) -> None:
        self.mono, self.wall = 100.0, 1_700_000_000.0

    def advance(self, s: float) -> None:
        self.mono += s
        self.wall += s


def resolve(kind: CredentialKind, value: str) -> str | None:
    return {(CredentialKind.PIN, "4711"): "s-alice", (CredentialKind.BADGE, "B-1"): "s-bob"}.get((kind, value))


@pytest.fixture
def clocks():
    return Clocks()


def make_gate(clocks, tmp_path, mode="either", ttl=10.0):
    gate = ClaimGate(
        mode,
        ttl,
        ClaimOpener(TOPIC, {"keypad": KEY}.get, ttl),
        resolve,
        AuditLog(tmp_path / "audit.jsonl"),
        lambda: clocks.mono,
        lambda: clocks.wall,
    )
    gate.rejected, gate.failed = [], []
    gate.when_rejected = gate.rejected.append
    gate.when_failed = gate.failed.append
    return gate


def claim(clocks, value="4711", kind="pin", key=KEY, source="keypad"):
    return seal_claim(key, TOPIC, source, kind, value, now=clocks.wall)


def audit(tmp_path):
    return [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]


def test_valid_claim_becomes_active_until_consumed(clocks, tmp_path):
    gate = make_gate(clocks, tmp_path)
    gate.submit(claim(clocks))
    assert gate.subject() is None  # not before it is resolved
    gate.poll()
    assert gate.subject() == "s-alice" and gate.wants_probe()
    gate.consume()
    assert gate.subject() is None
    assert gate.failed == [] and gate.rejected == []
    assert "4711" not in (tmp_path / "audit.jsonl").read_text()


def test_unauthenticated_claims_are_dropped_not_failed_attempts(clocks, tmp_path):
    gate = make_gate(clocks, tmp_path)
    payload = claim(clocks)
    gate.submit(claim(clocks, key=new_source_key()))  # forged
    gate.submit(claim(clocks, source="stranger"))  # unknown source
    gate.submit(payload, retained=True)  # retained
    gate.submit(b"garbage")
    clocks.advance(11)
    gate.submit(claim(clocks.__class__()))  # stale: issued 11 s ago
    gate.poll()
    assert gate.subject() is None and gate.failed == []
    assert gate.rejected == [
        ClaimRejection.FORGED,
        ClaimRejection.UNKNOWN_SOURCE,
        ClaimRejection.RETAINED,
        ClaimRejection.MALFORMED,
        ClaimRejection.STALE,
    ]
    assert [e["reason"] for e in audit(tmp_path)] == [str(k) for k in gate.rejected]


def test_replayed_claim_is_dropped(clocks, tmp_path):
    gate = make_gate(clocks, tmp_path)
    payload = claim(clocks)
    gate.submit(payload)
    gate.poll()
    gate.consume()
    gate.submit(payload)
    gate.poll()
    assert gate.subject() is None and gate.rejected == [ClaimRejection.REPLAYED] and gate.failed == []


def test_wrong_credential_is_a_failed_attempt(clocks, tmp_path):
    gate = make_gate(clocks, tmp_path)
    gate.submit(claim(clocks, value="0000"))
    gate.poll()
    assert gate.subject() is None and len(gate.failed) == 1 and gate.rejected == []
    assert audit(tmp_path)[-1]["kind"] == "claim_failed"
    assert "0000" not in (tmp_path / "audit.jsonl").read_text()


def test_claim_that_expires_unopened_is_a_failed_attempt(clocks, tmp_path):
    gate = make_gate(clocks, tmp_path, ttl=10.0)
    gate.submit(claim(clocks, value="B-1", kind="badge"))
    gate.poll()
    clocks.advance(9.9)
    assert gate.subject() == "s-bob" and gate.failed == []
    clocks.advance(0.2)
    gate.expire()
    assert gate.subject() is None and gate.failed == ["claim expired without opening"]
    gate.expire()
    assert len(gate.failed) == 1  # counted once


def test_identify_mode_ignores_claims_and_verify_mode_probes_only_with_one(clocks, tmp_path):
    identify = make_gate(clocks, tmp_path, mode="identify")
    identify.submit(claim(clocks))
    identify.poll()
    assert identify.subject() is None and identify.rejected == [ClaimRejection.IGNORED] and identify.wants_probe()
    verify = make_gate(clocks, tmp_path, mode="verify")
    assert not verify.wants_probe()
    verify.submit(claim(clocks))
    verify.poll()
    assert verify.wants_probe() and verify.subject() == "s-alice"


def test_a_flood_of_authentic_claims_is_bounded(clocks, tmp_path):
    gate = make_gate(clocks, tmp_path)
    for _ in range(20):
        gate.submit(claim(clocks))
    assert gate.rejected.count(ClaimRejection.FLOOD) == 12


def test_bad_settings_are_refused(clocks, tmp_path):
    with pytest.raises(ClaimConfigError):
        make_gate(clocks, tmp_path, ttl=0)
    with pytest.raises(ClaimConfigError):
        make_gate(clocks, tmp_path, mode="verfy")
