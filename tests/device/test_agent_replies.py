"""Fail-secure reply handling of the door agent, driven directly with crafted, signed replies.

Real engine ciphertexts (site keys, gallery, scan) and real protocol signing with a test Ed25519
key; no broker: messages enter through the link's paho callback (`on_message`), what the agent
publishes is recorded by the link, and time is a fake clock. A positive control shows the door
does open for a good pair of replies, so the negative cases below would fail if the checks were
missing.
"""

import base64
import json
import time
from types import SimpleNamespace

import numpy as np
import pytest

from blindgate.device.agent import Agent
from blindgate.device.audit import AuditLog
from blindgate.device.decision import VerdictKind
from blindgate.device.directory import SubjectDirectory
from blindgate.device.integrity import TemplateCheck
from blindgate.device.labels import LabelCipher
from blindgate.device.lock import Lock
from blindgate.device.sealing import TemplateSealer
from blindgate.shared.config import DecisionConfig, DeviceConfig
from blindgate.shared.engine import Gallery, encrypt_enrollment, encrypt_probe, generate_site_keys, scan
from blindgate.shared.engine.context import LEVEL_REPLY
from blindgate.shared.protocol import (
    BlockResult,
    Reply,
    ReplyStatus,
    new_probe_request,
    new_signing_key,
    seal_reply,
)
from tests.shared.engine import tamper

from .fakes import RecordingLink

SITE, DEVICE, VERSION = "home", "door1", 7
MATCH, UNKNOWN, DOUBT, REJECTED = VerdictKind.MATCH, VerdictKind.UNKNOWN, VerdictKind.DOUBT, VerdictKind.REJECTED


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    rng = np.random.default_rng(5)
    keys = generate_site_keys()
    alice, bob, stranger = (rng.normal(0, 0.09, 128) for _ in range(3))
    gallery = Gallery(keys.evaluation())
    gallery.add(encrypt_enrollment(keys, alice))
    gallery.add(encrypt_enrollment(keys, bob))
    state = tmp_path_factory.mktemp("state")
    LabelCipher.create_key(state)
    labels = LabelCipher.load(state, SITE)
    TemplateSealer.create_key(state)
    sealer = TemplateSealer.load(state, SITE)
    sealed_templates = {
        subject: sealer.seal(subject, keys.key_id, template, name)
        for subject, template, name in (("s-alice", alice, "Alice"), ("s-bob", bob, "Bob"))
    }
    listing = {
        "gallery_version": VERSION,
        "subjects": [
            {"subject": "s-alice", "label": base64.b64encode(labels.encrypt("Alice")).decode(), "block": 0, "slot": 0},
            {"subject": "s-bob", "label": base64.b64encode(labels.encrypt("Bob")).decode(), "block": 0, "slot": 1},
        ],
    }
    return SimpleNamespace(
        keys=keys,
        gallery=gallery,
        labels=labels,
        listing=listing,
        state=state,
        alice=alice + rng.normal(0, 0.01, 128),
        stranger=stranger,
        signer=new_signing_key(),
        sealer=sealer,
        sealed_templates=sealed_templates,
    )


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def agent(world, tmp_path, clock):
    config = DeviceConfig(site=SITE, device_id=DEVICE, decision=DecisionConfig(frames_required=2, reply_timeout=0.3))
    fetches = []

    def fetch():
        fetches.append(1)
        return world.listing

    directory = SubjectDirectory(fetch, world.labels)
    lock = Lock("GPIO17", pin_factory="mock")
    link = RecordingLink(config)
    integrity = TemplateCheck(world.sealed_templates.__getitem__, world.sealer, world.keys.key_id, config.decision)
    a = Agent(
        config,
        world.keys,
        world.signer.public_key(),
        directory,
        lock,
        integrity,
        audit=AuditLog(tmp_path / "audit.jsonl"),
        clock=clock,
        link=link,
    )
    a.fetches = fetches
    yield a
    a.close()


def request(agent):
    req = new_probe_request(SITE, DEVICE, agent.keys.key_id, b"probe-bytes", ttl=5.0)
    agent.pending.add(req)
    return req


def sealed(world, req, embedding=None, signer=None, **changes):
    embedding = world.alice if embedding is None else embedding
    results = tuple(
        BlockResult.of(i, block.occupied, ct, block.copies)
        for i, (block, ct) in enumerate(zip(world.gallery.blocks, scan(world.gallery, encrypt_probe(world.keys, embedding))))
    )
    fields = dict(
        status=ReplyStatus.OK,
        site=req.site,
        device=req.device,
        request_id=req.request_id,
        nonce=req.nonce,
        gallery_version=VERSION,
        expires_at=time.time() + 10,
        results=results,
        probe_sha256=req.probe_sha256,
        mode=str(req.mode),
        subject=req.subject,
    )
    fields.update(changes)
    return seal_reply(Reply(**fields), signer or world.signer)


def arrive(agent, payload, retain=False):
    """A message arrives on the agent's reply topic (through the link's paho callback)."""
    agent.link.on_message(None, None, SimpleNamespace(topic=agent.link.topics.reply, payload=payload, retain=retain))


def frame(agent, world, make_payloads, embedding=None):
    """One frame: a request, the given messages arrive on the reply topic, the agent decides."""
    embedding = world.alice if embedding is None else embedding
    req = request(agent)
    for payload in make_payloads(req):
        arrive(agent, payload)
    verdict = agent.wait_reply(req, embedding, timeout=0.3)
    decision = agent.apply(verdict)
    return verdict, decision


def assert_locked(agent):
    assert agent.lock.is_locked
    assert agent.lock.pin.state == 0
    assert not any(e["event"] == "recognized" for e in agent.link.events())


def test_positive_control_two_good_replies_open_the_door(agent, world):
    v1, d1 = frame(agent, world, lambda req: [sealed(world, req)])
    assert v1.kind == MATCH and v1.subject == "s-alice" and v1.label == "Alice"
    assert agent.lock.is_locked and not d1.unlock
    v2, d2 = frame(agent, world, lambda req: [sealed(world, req)])
    assert d2.unlock and agent.lock.pin.state == 1 and not agent.lock.is_locked
    event = agent.link.events()[-1]
    assert set(event) == {"event", "event_type", "label", "ts"} and event["event"] == "recognized" and event["label"] == "Alice"
    assert agent.fetches == [1]  # directory fetched once, cached for the same gallery version
    audit = [json.loads(line) for line in (agent.audit.path).read_text().splitlines()]
    assert any(e.get("event") == "recognized" for e in audit)
    assert not any(k in json.dumps(audit) for k in ("distance", "score"))


def test_stranger_is_unknown_and_never_opens(agent, world):
    for _ in range(3):
        v, d = frame(agent, world, lambda req: [sealed(world, req, embedding=world.stranger)], embedding=world.stranger)
        assert v.kind == UNKNOWN
    assert_locked(agent)
    events = agent.link.events()
    assert [e["event"] for e in events] == ["unknown"] and events[0]["label"] is None


def _other_key(world, req):
    return [sealed(world, req, signer=new_signing_key())]


def _tampered(world, req):
    data = bytearray(sealed(world, req))
    data[len(data) // 2] ^= 0x01
    return [bytes(data)]


def _stale(world, req):
    return [sealed(world, req, expires_at=time.time() - 1)]


def _other_device(world, req):
    return [sealed(world, req, device="door2")]


def _other_site(world, req):
    return [sealed(world, req, site="office")]


def _wrong_nonce(world, req):
    return [sealed(world, req, nonce="00" * 16)]


def _unknown_request(world, req):
    other = new_probe_request(SITE, DEVICE, world.keys.key_id, b"x")
    return [sealed(world, other)]


def _substituted_probe(world, req):
    """A relay swapped a recorded resident's probe into this request: the cloud signed that probe's hash."""
    recorded = new_probe_request(SITE, DEVICE, world.keys.key_id, encrypt_probe(world.keys, world.alice))
    return [sealed(world, req, probe_sha256=recorded.probe_sha256)]


def _unbound_ok(world, req):
    return [sealed(world, req, probe_sha256="", mode="")]  # an ok reply that names no probe


def _other_mode(world, req):
    return [sealed(world, req, mode="verify", subject="s-alice")]


def _garbage(world, req):
    return [b"", b"garbage", b"BGP1R" + bytes(200), np.random.default_rng(1).bytes(5000)]


def _busy(world, req):
    return [sealed(world, req, status=ReplyStatus.BUSY, results=(), message="queue full")]


def _error(world, req):
    return [sealed(world, req, status=ReplyStatus.ERROR, results=(), message="unknown key id")]


def _corrupt_ciphertext(world, req):
    block = world.gallery.blocks[0]
    result = BlockResult.of(0, block.occupied, encrypt_probe(world.keys, world.alice), block.copies)
    return [sealed(world, req, results=(result,))]


def _slot_not_in_directory(world, req):
    # the real result, but claimed for block 3: no subject is listed there
    ct = scan(world.gallery, encrypt_probe(world.keys, world.alice))[0]
    block = world.gallery.blocks[0]
    return [sealed(world, req, results=(BlockResult.of(3, block.occupied, ct, block.copies),))]


def _newer_gallery_unlisted(world, req):
    return [sealed(world, req, gallery_version=VERSION + 1)]


@pytest.mark.parametrize(
    "make, expected",
    [
        (_other_key, "no reply in time"),
        (_tampered, "no reply in time"),
        (_stale, "stale"),
        (_other_device, "no reply in time"),
        (_other_site, "no reply in time"),
        (_wrong_nonce, "no reply in time"),
        (_unknown_request, "no reply in time"),
        (_substituted_probe, "no reply in time"),
        (_unbound_ok, "no reply in time"),
        (_other_mode, "no reply in time"),
        (_garbage, "no reply in time"),
        (_busy, "busy"),
        (_error, "error"),
        (_corrupt_ciphertext, "decode"),
        (_slot_not_in_directory, "no subject at block"),
        (_newer_gallery_unlisted, "gallery changed"),
    ],
    ids=lambda v: getattr(v, "__name__", v).strip("_") if callable(v) else None,
)
def test_bad_replies_keep_the_door_locked(agent, world, make, expected):
    for _ in range(3):
        verdict, decision = frame(agent, world, lambda req: make(world, req))
        assert verdict.kind == DOUBT, verdict
        assert expected in verdict.reason or (expected == "stale" and "no reply" in verdict.reason)
        assert not decision.unlock
    assert_locked(agent)
    assert agent.decision.failures == 0  # errors are not failed attempts


def test_no_reply_times_out(agent, world):
    start = time.monotonic()
    verdict, decision = frame(agent, world, lambda req: [])
    assert verdict.kind == DOUBT and "no reply" in verdict.reason
    assert 0.25 <= time.monotonic() - start < 2
    assert len(agent.pending) == 0
    assert_locked(agent)


def test_stale_reply_refused_even_when_request_expired_at_arrival(agent, world):
    req = request(agent)
    verdict = agent.handle_reply(sealed(world, req), False, world.alice, now=time.time() + 60)
    assert verdict.kind == REJECTED and "stale" in verdict.reason


def test_duplicated_reply_cannot_supply_the_second_agreeing_frame(agent, world):
    first = {}

    def good(req):
        first["payload"] = sealed(world, req)
        return [first["payload"]]

    v1, _ = frame(agent, world, good)
    assert v1.kind == MATCH
    v2, d2 = frame(agent, world, lambda req: [first["payload"]])  # broker replays the first reply
    assert v2.kind == DOUBT and not d2.unlock
    assert_locked(agent)


def test_late_good_reply_after_foreign_ones_is_still_accepted(agent, world):
    v, _ = frame(agent, world, lambda req: [b"garbage", sealed(world, req, signer=new_signing_key()), sealed(world, req)])
    assert v.kind == MATCH and agent.counters["replies_rejected"] == 2


def test_retained_messages_are_never_acted_on(agent, world):
    req = request(agent)
    payload = sealed(world, req)
    assert agent.handle_reply(payload, True, world.alice).kind == REJECTED
    arrive(agent, payload, retain=True)
    assert agent.link.next_reply(0) is None
    assert agent.counters["retained_ignored"] == 1
    assert agent.wait_reply(req, world.alice, 0.1).kind == DOUBT


def test_disconnect_fails_the_in_flight_request(agent, world):
    req = request(agent)
    agent.link.on_disconnect(None, None, None, "gone", None)
    verdict = agent.wait_reply(req, world.alice, timeout=5)
    assert verdict.kind == DOUBT and "disconnected" in verdict.reason


def test_hold_open_then_relock(agent, world, clock):
    frame(agent, world, lambda req: [sealed(world, req)])
    frame(agent, world, lambda req: [sealed(world, req)])
    assert agent.lock.pin.state == 1
    agent.tick()
    assert agent.lock.pin.state == 1  # still within the hold-open time
    clock.now += agent.config.decision.open_seconds
    agent.tick()
    assert agent.lock.pin.state == 0 and agent.lock.is_locked
    locks = [p for t, p, retained in agent.link.published if t == agent.link.topics.lock and retained]
    assert locks == ["UNLOCKED", "LOCKED"]


def test_observers_see_every_decision_and_each_lock_change(agent, world, clock):
    decided, lock_states = [], []
    agent.when_decided = lambda verdict, decision: decided.append((verdict.kind, decision.event, decision.unlock))
    agent.when_lock_changed = lock_states.append
    frame(agent, world, lambda req: [])  # a timeout: a doubtful frame is still a decision
    frame(agent, world, lambda req: [sealed(world, req)])
    frame(agent, world, lambda req: [sealed(world, req)])
    assert decided == [(DOUBT, None, False), (MATCH, None, False), (MATCH, "recognized", True)]
    assert lock_states == ["UNLOCKED"]
    clock.now += agent.config.decision.open_seconds
    agent.tick()
    assert lock_states == ["UNLOCKED", "LOCKED"]


def test_reply_to_a_substituted_probe_is_refused_with_its_reason(agent, world):
    req = request(agent)
    recorded = new_probe_request(SITE, DEVICE, world.keys.key_id, b"a resident's recorded probe")
    verdict = agent.handle_reply(sealed(world, req, probe_sha256=recorded.probe_sha256), False, world.alice)
    assert verdict.kind == REJECTED and "probe hash mismatch" in verdict.reason
    assert agent.handle_reply(sealed(world, req), False, world.alice).kind == MATCH  # positive control


def test_signed_transparent_or_nan_scale_results_never_open(agent, world):
    """A result with c1 = 0 'decrypts' to whatever its sender chose (here: distance 0 to Alice for a
    stranger); one with a NaN scale slips past `abs(nan - x) > tol`. Both are refused, even signed."""
    ctx, x = world.keys.context, world.stranger
    norm2 = float(x @ x)
    attacks = {
        "transparent": lambda ct: tamper.transparent(ctx, ct, LEVEL_REPLY, values=[-norm2] * 4096),
        "scale nan": lambda ct: tamper.nan_scale(ctx, ct, LEVEL_REPLY),
    }
    honest = scan(world.gallery, encrypt_probe(world.keys, x))[0]
    for name, attack in attacks.items():
        block = world.gallery.blocks[0]
        forged = (BlockResult.of(0, block.occupied, attack(honest), block.copies),)

        def replies(req, forged=forged):
            return [sealed(world, req, embedding=x, results=forged)]

        for _ in range(3):
            verdict, decision = frame(agent, world, replies, embedding=x)
            assert verdict.kind == DOUBT and name in verdict.reason, verdict
            assert not decision.unlock
    assert_locked(agent)
    # positive control: the honest replies for Alice still open the door
    frame(agent, world, lambda req: [sealed(world, req)])
    _, decision = frame(agent, world, lambda req: [sealed(world, req)])
    assert decision.unlock and not agent.lock.is_locked


def test_the_threshold_follows_the_templates_the_device_decoded(agent, world):
    """N is what the device compared against (occupied slots it decoded): more templates, a stricter threshold."""
    from blindgate.device.operating_point import operating_point

    slots = world.keys.params.slots
    template = world.sealer.open(world.sealed_templates["s-alice"], "s-alice", world.keys.key_id).template
    direction = np.random.default_rng(9).normal(size=128)
    live = template + 0.42 * direction / np.linalg.norm(direction)
    decision = agent.config.decision
    two, crowded = operating_point(decision, 2), operating_point(decision, slots)
    assert crowded.threshold + decision.doubt_margin < 0.42 <= two.threshold  # the calibration separates the cases

    v, _ = frame(agent, world, lambda req: [sealed(world, req, embedding=live)], embedding=live)
    assert v.kind == MATCH and agent.current_point is not None and agent.current_point.enrolled == 2  # positive control
    status = [json.loads(p) for t, p, retain in agent.link.published if t == agent.link.topics.status and retain]
    assert status[-1]["enrolled"] == 2 and status[-1]["threshold"] == pytest.approx(two.threshold, abs=1e-4)
    assert not any(k in json.dumps(status) for k in ("distance", "score"))

    def every_slot_occupied(req):
        honest = scan(world.gallery, encrypt_probe(world.keys, live))
        results = tuple(BlockResult.of(i, np.ones(slots, dtype=bool), ct) for i, ct in enumerate(honest))
        return [sealed(world, req, embedding=live, results=results)]

    v, _ = frame(agent, world, every_slot_occupied, embedding=live)
    assert v.kind == UNKNOWN and agent.current_point.enrolled == slots
    assert_locked(agent)
