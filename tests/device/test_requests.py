"""device/requests.py: a signed reply counts once, for this device's own fresh request."""

from __future__ import annotations

from dataclasses import replace

import pytest

from blindgate.device.requests import PendingRequests
from blindgate.shared import protocol
from blindgate.shared.protocol import ProtocolError, Reply, ReplyStatus, new_probe_request

NOW = 1_700_000_000.0
TTL = 5.0


def request(device: str = "door1"):
    return new_probe_request("home", device, "k" * 32, b"probe", ttl=TTL, now=NOW)


def reply_to(req, **change) -> Reply:
    reply = Reply(
        status=ReplyStatus.OK,
        site=req.site,
        device=req.device,
        request_id=req.request_id,
        nonce=req.nonce,
        gallery_version=1,
        expires_at=NOW + 10,
        probe_sha256=req.probe_sha256,
        mode=str(req.mode),
        subject=req.subject,
    )
    return replace(reply, **change)


@pytest.fixture
def pending():
    return PendingRequests("door1")


def test_accepts_its_own_fresh_reply_once(pending):
    req = request()
    pending.add(req)
    assert len(pending) == 1 and req.request_id in pending
    assert pending.accept(reply_to(req), now=NOW + 1) is req
    assert len(pending) == 0
    with pytest.raises(ProtocolError, match="no pending request"):
        pending.accept(reply_to(req), now=NOW + 1)  # the duplicate


def test_each_request_is_answered_separately(pending):
    first, second = request(), request()
    pending.add(first)
    pending.add(second)
    assert pending.accept(reply_to(second), now=NOW) is second
    assert pending.accept(reply_to(first), now=NOW) is first


def test_unknown_request_id_is_refused(pending):
    pending.add(request())
    with pytest.raises(ProtocolError, match="no pending request"):
        pending.accept(reply_to(request()), now=NOW)
    assert len(pending) == 1


@pytest.mark.parametrize("change", [{"device": "door2"}, {"site": "office"}])
def test_reply_for_another_device_is_refused(pending, change):
    req = request()
    pending.add(req)
    with pytest.raises(ProtocolError, match="not this device"):
        pending.accept(reply_to(req, **change), now=NOW)
    assert req.request_id in pending  # a foreign reply does not cancel our request
    assert pending.accept(reply_to(req), now=NOW) is req


def test_request_sent_for_another_device_is_refused():
    pending = PendingRequests("door1")
    req = request(device="door2")
    pending.add(req)
    with pytest.raises(ProtocolError, match="not this device"):
        pending.accept(reply_to(req), now=NOW)


def test_wrong_nonce_is_refused(pending):
    req = request()
    pending.add(req)
    with pytest.raises(ProtocolError, match="nonce does not match"):
        pending.accept(reply_to(req, nonce="00" * 16), now=NOW)
    assert pending.accept(reply_to(req), now=NOW) is req


def test_expired_request_is_refused_and_forgotten(pending):
    req = request()
    pending.add(req)
    with pytest.raises(ProtocolError, match="stale reply"):
        pending.accept(reply_to(req), now=NOW + TTL + 0.1)
    assert len(pending) == 0


def test_expired_reply_is_refused_and_forgotten(pending):
    req = request()
    pending.add(req)
    with pytest.raises(ProtocolError, match="stale reply"):
        pending.accept(reply_to(req, expires_at=NOW + 1), now=NOW + 2)
    assert len(pending) == 0


def test_expire_forgets_only_stale_requests(pending):
    old = request()
    pending.add(old)
    fresh = replace(request(), request_id="ef" * 16, expires_at=NOW + 60)
    pending.add(fresh)
    pending.expire(now=NOW + TTL + 1)
    assert old.request_id not in pending and fresh.request_id in pending
    with pytest.raises(ProtocolError, match="no pending request"):
        pending.accept(reply_to(old), now=NOW)


def test_discard_forgets_a_request(pending):
    req = request()
    pending.add(req)
    pending.discard(req.request_id)
    pending.discard("never-added")
    with pytest.raises(ProtocolError, match="no pending request"):
        pending.accept(reply_to(req), now=NOW)


def test_request_state_lives_on_the_device_side_only():
    assert not hasattr(protocol, "PendingRequests")


def test_ok_reply_for_another_probe_is_refused(pending):
    """Probe substitution: the reply is bound to our request but scanned a recorded probe."""
    req = request()
    pending.add(req)
    recorded = new_probe_request("home", "door1", "k" * 32, b"a resident's probe", ttl=TTL, now=NOW)
    for hash_ in (recorded.probe_sha256, ""):
        with pytest.raises(ProtocolError, match="probe hash mismatch"):
            pending.accept(reply_to(req, probe_sha256=hash_), now=NOW)
    assert pending.accept(reply_to(req), now=NOW) is req  # positive control


@pytest.mark.parametrize("change", [{"mode": "verify"}, {"subject": "s" * 32}, {"mode": ""}])
def test_ok_reply_for_another_mode_or_subject_is_refused(pending, change):
    req = request()
    pending.add(req)
    with pytest.raises(ProtocolError, match="mode or subject"):
        pending.accept(reply_to(req, **change), now=NOW)
    assert pending.accept(reply_to(req), now=NOW) is req


def test_verify_reply_must_name_the_requested_subject(pending):
    req = new_probe_request("home", "door1", "k" * 32, b"probe", ttl=TTL, now=NOW, mode="verify", subject="a" * 32)
    pending.add(req)
    with pytest.raises(ProtocolError, match="mode or subject"):
        pending.accept(reply_to(req, subject="b" * 32), now=NOW)
    assert pending.accept(reply_to(req), now=NOW) is req


@pytest.mark.parametrize("status", [ReplyStatus.ERROR, ReplyStatus.BUSY])
def test_result_less_replies_may_carry_no_hash_but_not_a_wrong_one(pending, status):
    req, other = request(), request()
    pending.add(req)
    pending.add(other)
    assert pending.accept(reply_to(req, status=status, probe_sha256="", mode=""), now=NOW) is req
    with pytest.raises(ProtocolError, match="probe hash mismatch"):
        pending.accept(reply_to(other, status=status, probe_sha256="00" * 32), now=NOW)
