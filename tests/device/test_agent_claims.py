"""The agent in claimed-identity mode, driven with real engine ciphertexts and signed replies (no broker).

Claims enter through the link's paho callback on the claim topic; verify replies are crafted with
the real 1:1 engine (`verify`) and signed with a test key. Positive controls: the claimed person's
face opens (and the claim is used up); attacks: a stranger's face, a reply for another subject or
another mode, a cloud that lies about the distance, verify-mode frames without a claim.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest

from blindgate.device.agent import Agent
from blindgate.device.audit import AuditLog
from blindgate.device.claim_gate import door_claim_gate
from blindgate.device.claim_sources import ClaimSources
from blindgate.device.claims import seal_claim
from blindgate.device.credentials import set_credentials
from blindgate.device.decision import VerdictKind
from blindgate.device.directory import SubjectDirectory
from blindgate.device.integrity import TemplateCheck
from blindgate.device.labels import LabelCipher
from blindgate.device.lock import Lock
from blindgate.device.sealing import TemplateSealer
from blindgate.shared.config import DecisionConfig, DeviceConfig
from blindgate.shared.engine import encrypt_enrollment, encrypt_probe, generate_site_keys, verify
from blindgate.shared.protocol import BlockResult, Mode, Reply, ReplyStatus, new_probe_request, new_signing_key, seal_reply

from .fakes import RecordingLink

SITE, DEVICE, VERSION = "home", "door1", 3
ALICE, BOB = "a" * 32, "b" * 32


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    rng = np.random.default_rng(11)
    keys = generate_site_keys()
    alice, bob, stranger = (rng.normal(0, 0.09, 128) for _ in range(3))
    state = tmp_path_factory.mktemp("keys")
    TemplateSealer.create_key(state)
    LabelCipher.create_key(state)
    sealer = TemplateSealer.load(state, SITE)
    sealed = {ALICE: sealer.seal(ALICE, keys.key_id, alice, "Alice"), BOB: sealer.seal(BOB, keys.key_id, bob, "Bob")}
    enrolled = {ALICE: encrypt_enrollment(keys, alice), BOB: encrypt_enrollment(keys, bob)}
    return SimpleNamespace(
        keys=keys, sealer=sealer, sealed=sealed, enrolled=enrolled, labels=LabelCipher.load(state, SITE),
        alice=alice + rng.normal(0, 0.01, 128), stranger=stranger, signer=new_signing_key(),
    )  # fmt: skip


def make_agent(world, tmp_path, mode="either", lockout_failures=5):
    decision = DecisionConfig(frames_required=2, reply_timeout=0.3, mode=mode, claim_ttl=10.0, lockout_failures=lockout_failures)
    config = DeviceConfig(site=SITE, device_id=DEVICE, state_dir=str(tmp_path), decision=decision)
    link = RecordingLink(config)
    audit = AuditLog(tmp_path / "audit.jsonl")
    key = ClaimSources(tmp_path).add("keypad")
    set_credentials(tmp_path, ALICE, pin="4711")
    gate = door_claim_gate(mode, 10.0, tmp_path, link.topics.claim, audit)
    integrity = TemplateCheck(world.sealed.__getitem__, world.sealer, world.keys.key_id, decision)
    directory = SubjectDirectory(lambda: {"gallery_version": VERSION, "subjects": []}, world.labels)
    agent = Agent(config, world.keys, world.signer.public_key(), directory, Lock("GPIO17", pin_factory="mock"), integrity,
                  audit=audit, link=link, claims=gate)  # fmt: skip
    agent.source_key = key
    return agent


def send_claim(agent, pin="4711", retain=False):
    payload = seal_claim(agent.source_key, agent.link.topics.claim, "keypad", "pin", pin)
    agent.link.on_message(None, None, SimpleNamespace(topic=agent.link.topics.claim, payload=payload, retain=retain))
    agent.claims.poll()
    return payload


def verify_reply(world, req, embedding, template_of=None, **changes):
    """The cloud's honest 1:1 answer for `req` (or, with `template_of`, computed against another subject)."""
    ct = verify(world.keys.evaluation(), encrypt_probe(world.keys, embedding), world.enrolled[template_of or req.subject])
    occupied = np.zeros(world.keys.params.slots, dtype=bool)
    occupied[0] = True
    fields = dict(
        status=ReplyStatus.OK, site=SITE, device=DEVICE, request_id=req.request_id, nonce=req.nonce, gallery_version=VERSION,
        expires_at=time.time() + 10, results=(BlockResult.of(0, occupied, ct),), probe_sha256=req.probe_sha256,
        mode=str(req.mode), subject=req.subject,
    )  # fmt: skip
    fields.update(changes)
    return Reply(**fields)


def frame(agent, world, embedding, **reply_changes):
    """One verify frame for the active claim: request, signed reply, verdict, decision (and consume on opening)."""
    subject = agent.claims.subject()
    assert subject is not None
    req = new_probe_request(SITE, DEVICE, world.keys.key_id, b"probe", ttl=5.0, mode=Mode.VERIFY, subject=subject)
    agent.pending.add(req)
    reply = verify_reply(world, req, embedding, **reply_changes)
    payload = seal_reply(reply, world.signer)
    agent.link.on_message(None, None, SimpleNamespace(topic=agent.link.topics.reply, payload=payload, retain=False))
    verdict = agent.wait_reply(req, embedding, timeout=0.3)
    decision = agent.apply(verdict)
    if decision.unlock:
        agent.claims.consume()
    return verdict, decision


def test_claimed_person_opens_and_the_claim_is_used_up(world, tmp_path):
    agent = make_agent(world, tmp_path)
    try:
        send_claim(agent)
        v1, _ = frame(agent, world, world.alice)
        assert v1.kind is VerdictKind.MATCH and v1.subject == ALICE and v1.label == "Alice"
        _, d2 = frame(agent, world, world.alice)
        assert d2.unlock and agent.lock.pin.state == 1
        assert agent.claims.subject() is None  # one claim, one opening
        assert agent.link.events()[-1]["label"] == "Alice"
    finally:
        agent.close()


def test_right_claim_with_a_strangers_face_stays_locked(world, tmp_path):
    agent = make_agent(world, tmp_path)
    try:
        send_claim(agent)
        for _ in range(3):
            v, d = frame(agent, world, world.stranger)
            assert v.kind is VerdictKind.UNKNOWN and not d.unlock
        assert agent.lock.is_locked and agent.decision.failures == 1
    finally:
        agent.close()


def test_reply_for_another_subject_or_mode_never_matches(world, tmp_path):
    agent = make_agent(world, tmp_path)
    try:
        send_claim(agent)
        req = new_probe_request(SITE, DEVICE, world.keys.key_id, b"probe", ttl=5.0, mode=Mode.VERIFY, subject=ALICE)
        other = verify_reply(world, req, world.alice, subject=BOB)
        assert agent.judge.judge(other, req, world.alice).kind is VerdictKind.DOUBT
        identify = verify_reply(world, req, world.alice, mode=str(Mode.IDENTIFY), subject=None)
        assert agent.judge.judge(identify, req, world.alice).kind is VerdictKind.DOUBT
        assert agent.judge.judge(verify_reply(world, req, world.alice), req, world.alice).kind is VerdictKind.MATCH  # control
        # through the whole path the pending request refuses it as well: no verdict, the frame times out
        v, _ = frame(agent, world, world.alice, subject=BOB)
        assert v.kind is VerdictKind.DOUBT and agent.counters.get("replies_rejected") == 1
    finally:
        agent.close()


def test_cloud_that_verifies_against_another_template_raises_the_alarm(world, tmp_path):
    agent = make_agent(world, tmp_path)
    try:
        send_claim(agent)
        for _ in range(2):  # Bob's face, with Bob's template swapped in for Alice's claim: a lie
            bob_face = world.sealer.open(world.sealed[BOB], BOB, world.keys.key_id).template
            v, d = frame(agent, world, bob_face, template_of=BOB)
            assert v.kind is VerdictKind.DOUBT and not d.unlock
        assert agent.counters.get("cloud_integrity") == 2 and agent.lock.is_locked
    finally:
        agent.close()


def test_wrong_pins_lock_out_but_forged_claims_do_not(world, tmp_path):
    agent = make_agent(world, tmp_path, lockout_failures=3)
    try:
        for _ in range(5):  # a broker attacker's forgeries and replays: dropped, counted, no lockout
            payload = seal_claim(b"k" * 32, agent.link.topics.claim, "keypad", "pin", "4711")
            agent.link.on_message(None, None, SimpleNamespace(topic=agent.link.topics.claim, payload=payload, retain=False))
        good = send_claim(agent)
        agent.claims.consume()
        agent.link.on_message(None, None, SimpleNamespace(topic=agent.link.topics.claim, payload=good, retain=False))
        send_claim(agent, retain=True)
        agent.claims.poll()
        assert agent.counters["claims_rejected"] == 7 and not agent.decision.locked_out()
        assert agent.counters["claims_rejected_replayed"] == 1 and agent.counters["claims_rejected_retained"] == 1
        for _ in range(3):
            send_claim(agent, pin="0000")
        assert agent.decision.locked_out() and agent.counters["claims_failed"] == 3
        assert [e["event"] for e in agent.link.events()] == ["unknown"] * 3
    finally:
        agent.close()


def test_verify_mode_probes_nothing_without_a_claim(world, tmp_path):
    agent = make_agent(world, tmp_path, mode="verify")
    analyzed = []
    agent.analyzer = SimpleNamespace(analyze=lambda rgb: analyzed.append(1))
    try:
        assert agent.process_frame(np.zeros((4, 4, 3), np.uint8)) is None
        assert analyzed == [] and agent.counters["skipped_no_claim"] == 1
        assert agent.probe(world.alice).reason == "verify mode: no active claim"  # never a 1:N probe
        assert not [t for t, _, _ in agent.link.published if t.endswith("/probe")]
    finally:
        agent.close()


def test_identify_mode_ignores_claims(world, tmp_path):
    agent = make_agent(world, tmp_path, mode="identify")
    try:
        send_claim(agent)
        assert agent.claims.subject() is None and agent.counters["claims_rejected_ignored"] == 1
    finally:
        agent.close()
