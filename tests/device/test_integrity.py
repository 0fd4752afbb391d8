"""The device's plaintext recheck of a claimed match (device/integrity.py), alone and in the agent.

Attack: a cloud holding the evaluation keys answers Enc(-|x|^2) under a VALID signature (every
slot decodes to distance ~0): the agent must stay locked and raise `cloud_integrity`. Positive
control: honest replies for the enrolled face still open the door, labelled from the sealed blob.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from types import SimpleNamespace

import numpy as np
import pytest

from blindgate.device.agent import Agent
from blindgate.device.audit import AuditLog
from blindgate.device.cloud_client import CloudError
from blindgate.device.decision import VerdictKind
from blindgate.device.directory import SubjectDirectory
from blindgate.device.integrity import AGREEMENT, TemplateCheck, agree
from blindgate.device.labels import LabelCipher
from blindgate.device.lock import Lock
from blindgate.device.sealing import TemplateSealer
from blindgate.device.site_state import SiteState
from blindgate.shared.config import DecisionConfig, DeviceConfig
from blindgate.shared.engine import Gallery, decode_scan, encrypt_enrollment, encrypt_probe, generate_site_keys, scan
from blindgate.shared.protocol import BlockResult, Reply, ReplyStatus, new_probe_request, new_signing_key, seal_reply

from .forge import forged_reply
from .test_agent_replies import FakeClock, RecordingLink, arrive

SITE, DEVICE, VERSION = "home", "door1", 3
ALICE, BOB = "a" * 32, "b" * 32
CONFIG = DecisionConfig(threshold=0.6, frames_required=2, reply_timeout=0.3)  # explicit: the geometry below
T = 0.6


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    rng = np.random.default_rng(11)
    keys = generate_site_keys()
    alice, bob, stranger = (rng.normal(0, 0.09, 128) for _ in range(3))
    gallery = Gallery(keys.evaluation())
    gallery.add(encrypt_enrollment(keys, alice))
    gallery.add(encrypt_enrollment(keys, bob))
    state = tmp_path_factory.mktemp("state")
    LabelCipher.create_key(state)
    TemplateSealer.create_key(state)
    labels, sealer = LabelCipher.load(state, SITE), TemplateSealer.load(state, SITE)
    listing = {
        "gallery_version": VERSION,
        "subjects": [
            {"subject": ALICE, "label": base64.b64encode(labels.encrypt("Alice")).decode(), "block": 0, "slot": 0},
            {"subject": BOB, "label": base64.b64encode(labels.encrypt("Bob")).decode(), "block": 0, "slot": 1},
        ],
    }
    blobs = {ALICE: sealer.seal(ALICE, keys.key_id, alice, "Alice"), BOB: sealer.seal(BOB, keys.key_id, bob, "Bob")}
    return SimpleNamespace(
        keys=keys,
        gallery=gallery,
        labels=labels,
        sealer=sealer,
        listing=listing,
        blobs=blobs,
        alice=alice,
        alice_live=alice + rng.normal(0, 0.01, 128),
        stranger=stranger,
        signer=new_signing_key(),
    )


class Blobs:
    """The cloud's sealed-template route: serves `world.blobs`, counts fetches, can be made to lie."""

    def __init__(self, blobs):
        self.blobs, self.fetched = dict(blobs), []

    def __call__(self, subject):
        self.fetched.append(subject)
        if subject not in self.blobs:
            raise KeyError(f"404 {subject}")
        return self.blobs[subject]


def check(world, tmp_path, blobs=None, **kw):
    store = blobs if blobs is not None else Blobs(world.blobs)
    return TemplateCheck(store, world.sealer, world.keys.key_id, CONFIG, SiteState(tmp_path, SITE), **kw), store


# -- TemplateCheck alone ---------------------------------------------------------------------------


def test_agreement_allows_encryption_noise_even_at_distance_zero_but_not_a_lie():
    assert agree(0.0, 1.5e-3)  # decrypted 0 + 2e-6 on the squared distance: sqrt makes it 1.4e-3
    assert agree(0.0, 0.0039)  # 4 partial sums (a 4-copy block) added: 1.5e-5 on the squared distance, seen
    assert not agree(0.0, 0.011)  # 1.2e-4 on the squared distance: beyond any encryption error
    assert agree(0.4, 0.4 + AGREEMENT / 2)
    assert not agree(0.4, 0.4 + 3 * AGREEMENT)
    assert not agree(0.5, 0.0)  # "distance 0" for someone 0.5 away
    assert not agree(0.0, 0.05)
    assert not agree(0.3, float("nan"))


def test_honest_match_is_confirmed_with_the_sealed_label_and_cached(world, tmp_path):
    tc, store = check(world, tmp_path)
    true_distance = float(np.linalg.norm(world.alice - world.alice_live))
    for _ in range(3):
        result = tc.confirm(VERSION, ALICE, true_distance + AGREEMENT / 2, world.alice_live, T)
        assert result.ok and result.label == "Alice" and not result.alarm
    assert store.fetched == [ALICE]  # one GET per subject and gallery version
    assert tc.confirm(VERSION + 1, ALICE, true_distance, world.alice_live, T).ok
    assert store.fetched == [ALICE, ALICE]


def test_lie_about_the_distance_raises_the_alarm(world, tmp_path):
    tc, _ = check(world, tmp_path)
    result = tc.confirm(VERSION, ALICE, 0.0, world.stranger, T)  # the cloud claims distance 0 for a stranger
    assert not result.ok and result.alarm and "distance" not in json.dumps(result.label)
    true_distance = float(np.linalg.norm(world.alice - world.alice_live))
    assert tc.confirm(VERSION, ALICE, true_distance + 3 * AGREEMENT, world.alice_live, T).alarm  # beyond the error


def test_swapped_missing_or_garbled_blob_raises_the_alarm(world, tmp_path):
    live = world.alice_live
    distance = float(np.linalg.norm(world.alice - live))
    swapped = Blobs({ALICE: world.blobs[BOB], BOB: world.blobs[BOB]})  # Bob's blob served as Alice's
    missing = Blobs({})
    garbled = Blobs({ALICE: world.blobs[ALICE][:-1] + bytes([world.blobs[ALICE][-1] ^ 1])})
    for store in (swapped, missing, garbled):
        result = check(world, tmp_path, blobs=store)[0].confirm(VERSION, ALICE, distance, live, T)
        assert not result.ok and result.alarm, store.blobs.keys()


def test_unreachable_cloud_is_doubt_without_alarm_a_refusal_is_an_alarm(world, tmp_path):
    distance = float(np.linalg.norm(world.alice - world.alice_live))

    def down(subject):
        raise CloudError(0, "connection refused")

    def refuses(subject):
        raise CloudError(404, "no such subject")

    result = check(world, tmp_path, blobs=down)[0].confirm(VERSION, ALICE, distance, world.alice_live, T)
    assert not result.ok and not result.alarm
    result = check(world, tmp_path, blobs=refuses)[0].confirm(VERSION, ALICE, distance, world.alice_live, T)
    assert not result.ok and result.alarm


def test_borderline_agreement_is_doubt_without_alarm(world, tmp_path):
    tc, _ = check(world, tmp_path)
    far = world.alice + 0.6 / np.sqrt(128) * 1.02  # just over the 0.6 threshold, inside the doubt margin
    d = float(np.linalg.norm(world.alice - far))
    assert CONFIG.threshold < d <= CONFIG.threshold + CONFIG.doubt_margin
    result = tc.confirm(VERSION, ALICE, d - AGREEMENT / 2, far, T)  # the cloud said "just under"
    assert not result.ok and not result.alarm


def test_denied_subject_never_confirms_even_with_an_honest_blob(world, tmp_path):
    tc, _ = check(world, tmp_path)
    distance = float(np.linalg.norm(world.alice - world.alice_live))
    assert tc.confirm(VERSION, ALICE, distance, world.alice_live, T).ok  # positive control
    SiteState(tmp_path, SITE).deny([ALICE])  # as `blindgate-device remove` does, in another process
    result = tc.confirm(VERSION, ALICE, distance, world.alice_live, T)
    assert not result.ok and result.alarm and "removed" in result.reason
    assert tc.confirm(VERSION, BOB, float(np.linalg.norm(world.alice_live - world.alice)), world.alice_live, T).alarm


# -- in the agent: a correctly signed forged reply --------------------------------------------------


@pytest.fixture
def agent(world, tmp_path):
    config = DeviceConfig(site=SITE, device_id=DEVICE, decision=CONFIG)
    directory = SubjectDirectory(lambda: world.listing, world.labels)
    tc, store = check(world, tmp_path)
    a = Agent(
        config,
        world.keys,
        world.signer.public_key(),
        directory,
        Lock("GPIO17", pin_factory="mock"),
        audit=AuditLog(tmp_path / "audit.jsonl"),
        clock=FakeClock(),
        link=RecordingLink(config),
        integrity=tc,
    )
    a.store = store
    yield a
    a.close()


def honest(world, req, embedding):
    results = tuple(
        BlockResult.of(i, block.occupied, ct, block.copies)
        for i, (block, ct) in enumerate(zip(world.gallery.blocks, scan(world.gallery, req.probe)))
    )
    fields = dict(
        status=ReplyStatus.OK,
        site=SITE,
        device=DEVICE,
        request_id=req.request_id,
        nonce=req.nonce,
        gallery_version=VERSION,
        expires_at=time.time() + 10,
        results=results,
    )
    if hasattr(req, "probe_sha256"):
        fields["probe_sha256"], fields["mode"] = req.probe_sha256, str(req.mode)
    return Reply(**fields)


def frame(agent, world, embedding, answer):
    req = new_probe_request(SITE, DEVICE, world.keys.key_id, encrypt_probe(world.keys, embedding), ttl=5.0)
    agent.pending.add(req)
    arrive(agent, seal_reply(answer(req), world.signer))
    verdict = agent.wait_reply(req, embedding, timeout=0.5)
    return verdict, agent.apply(verdict)


def test_positive_control_honest_replies_open_with_the_sealed_label(agent, world):
    for _ in range(2):
        verdict, decision = frame(agent, world, world.alice_live, lambda req: honest(world, req, world.alice_live))
        assert verdict.kind is VerdictKind.MATCH and verdict.label == "Alice"
    assert decision.unlock and agent.lock.pin.state == 1
    assert agent.counters.get("cloud_integrity", 0) == 0 and agent.store.fetched == [ALICE]


def test_signed_minus_norm_forgery_keeps_the_door_locked_and_raises_cloud_integrity(agent, world):
    occupied = [b.occupied for b in world.gallery.blocks]
    forge = lambda req: forged_reply(world.keys.evaluation(), req, VERSION, occupied)  # noqa: E731
    # the attack is real: without the check the stranger decodes as a near-perfect match
    req = new_probe_request(SITE, DEVICE, world.keys.key_id, encrypt_probe(world.keys, world.stranger), ttl=5.0)
    lie = forge(req)
    results = lie.results
    match = decode_scan(
        world.keys, world.stranger, [r.ciphertext for r in results], [r.occupancy() for r in results], [1] * len(results)
    )
    assert match.best is not None and match.distance < 0.05
    for _ in range(3):
        verdict, decision = frame(agent, world, world.stranger, forge)
        assert verdict.kind is VerdictKind.DOUBT and not decision.unlock
    assert agent.lock.is_locked and agent.lock.pin.state == 0
    assert agent.counters["cloud_integrity"] == 3
    events = agent.link.events()
    assert [e["event"] for e in events] == ["cloud_integrity"] * 3
    assert all(set(e) == {"event", "event_type", "label", "ts"} and e["label"] is None for e in events)
    audit = agent.audit.path.read_text()
    assert "cloud_integrity" in audit and 'distance":' not in audit and "recognized" not in audit


def test_forged_match_on_a_removed_subject_stays_locked(agent, world, tmp_path):
    SiteState(tmp_path, SITE).deny([ALICE])
    for _ in range(2):
        verdict, decision = frame(agent, world, world.alice_live, lambda req: honest(world, req, world.alice_live))
        assert verdict.kind is VerdictKind.DOUBT
    assert agent.lock.is_locked and agent.counters["cloud_integrity"] == 2


@pytest.mark.parametrize("claimed", [1, 2])
def test_a_signed_reply_lying_about_the_block_layout_never_opens(agent, world, claimed):
    """The cloud names each block's layout (copies); naming another one for the real scan is one more lie."""
    assert world.gallery.blocks[0].copies != claimed  # the honest layout differs from the claim

    def relabelled(req):
        reply = honest(world, req, world.alice_live)
        return dataclasses.replace(reply, results=tuple(dataclasses.replace(r, copies=claimed) for r in reply.results))

    for face in (world.stranger, world.alice_live):
        for _ in range(2):
            verdict, decision = frame(agent, world, face, relabelled)
            assert verdict.kind is not VerdictKind.MATCH and not decision.unlock
    assert agent.lock.is_locked and agent.lock.pin.state == 0
    # positive control: the same reply with its true layout opens for Alice
    for _ in range(2):
        verdict, decision = frame(agent, world, world.alice_live, lambda req: honest(world, req, world.alice_live))
    assert verdict.kind is VerdictKind.MATCH and decision.unlock
