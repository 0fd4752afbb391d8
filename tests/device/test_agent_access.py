"""The agent applies the access rules after a confirmed match, and keeps unknown-face snapshots locally.

Frames go through `process_frame` (analyzer, probe, rules, decision, lock, event, audit); the
analyzer and the probe are stand-ins returning a face and the judge's verdict, so these tests are
about what happens after the cloud's reply was judged (tests/device/test_agent_replies.py covers
the judging). Each refusal has a positive control: the same person, allowed, opens the door.
"""

import json
from datetime import datetime
from types import SimpleNamespace

import numpy as np
import pytest

from blindgate.device.access_rules import AccessRules, PersonRule, Window
from blindgate.device.access_store import AccessPolicy, AccessRuleFile
from blindgate.device.agent import Agent
from blindgate.device.audit import AuditLog
from blindgate.device.decision import VerdictKind
from blindgate.device.faces import FaceBox, FaceResult, StageTimings
from blindgate.device.judge import Verdict
from blindgate.device.lock import Lock
from blindgate.device.snapshots import SnapshotStore
from blindgate.shared.config import DecisionConfig, DeviceConfig

from .fakes import RecordingLink

ALICE = "a" * 32
FRAME = np.full((48, 64, 3), 90, dtype=np.uint8)
MONDAY_NOON = datetime(2024, 1, 1, 12, 0)


class FaceEveryFrame:
    def analyze(self, rgb):
        return FaceResult(np.zeros(128), FaceBox(0, 40, 40, 0), 100.0, 1, StageTimings())


@pytest.fixture
def door(tmp_path):
    config = DeviceConfig(decision=DecisionConfig(frames_required=2, cooldown_s=3.0))
    clock = SimpleNamespace(now=1000.0)
    wall = SimpleNamespace(now=MONDAY_NOON)
    rules = AccessRuleFile(tmp_path / "state")
    rules.path.parent.mkdir()
    snaps = SnapshotStore(tmp_path / "snaps", keep=2, max_age_s=86400.0, encode=lambda rgb: b"\xff\xd8jpeg\xff\xd9")
    agent = Agent(
        config,
        None,  # keys: the probe is a stand-in below
        None,
        None,
        Lock("GPIO17", pin_factory="mock"),
        None,
        analyzer=FaceEveryFrame(),
        audit=AuditLog(tmp_path / "audit.jsonl"),
        clock=lambda: clock.now,
        link=RecordingLink(config),
        access=AccessPolicy(rules, clock=lambda: wall.now),
        snapshots=snaps,
    )
    agent.next_verdict = Verdict(VerdictKind.MATCH, "match", subject=ALICE, label="Alice", request_id="r")
    agent.probe = lambda embedding: agent.next_verdict
    yield SimpleNamespace(agent=agent, clock=clock, wall=wall, rules=rules, snaps=snaps, audit=tmp_path / "audit.jsonl")
    agent.close()


def frames(door, n=2):
    decisions = []
    for _ in range(n):
        decisions.append(door.agent.process_frame(FRAME))
        door.clock.now += 0.2
    return decisions


def audit_lines(door):
    return [json.loads(line) for line in door.audit.read_text().splitlines()]


def test_positive_control_an_allowed_person_opens(door):
    *_, last = frames(door)
    assert last.unlock and not door.agent.lock.is_locked
    assert door.agent.link.events()[-1]["event"] == "recognized"


def test_a_disabled_person_is_denied_and_the_door_stays_locked(door):
    door.rules.write(AccessRules(people={ALICE: PersonRule(enabled=False)}))
    decisions = frames(door, 6)
    assert not any(d.unlock for d in decisions) and door.agent.lock.is_locked and door.agent.lock.pin.state == 0
    events = door.agent.link.events()
    assert [e["event"] for e in events] == ["denied"]  # one per cooldown, not one per run
    assert events[0]["label"] == "Alice" and events[0]["reason"] == "recognized, access disabled for this person"
    denied = [e for e in audit_lines(door) if e.get("event") == "denied"]
    assert denied and denied[0]["reason"] == "recognized, access disabled for this person" and denied[0]["subject"] == ALICE
    assert not any(k in door.audit.read_text() for k in ("distance", "score"))
    assert door.agent.decision.failures == 0  # a known person refused is no failed attempt


def test_rule_changes_apply_without_a_restart(door):
    door.rules.write(AccessRules(people={ALICE: PersonRule(enabled=False)}))
    frames(door)
    assert door.agent.lock.is_locked
    door.rules.write(AccessRules())  # `blindgate-device access enable` while the door runs
    door.clock.now += 5
    *_, last = frames(door)
    assert last.unlock and not door.agent.lock.is_locked


def test_outside_the_window_is_denied_inside_it_opens(door):
    door.rules.write(AccessRules(people={ALICE: PersonRule(windows=[Window.parse("mon-fri 07:00-19:00")])}))
    door.wall.now = datetime(2024, 1, 6, 12, 0)  # Saturday
    frames(door)
    event = door.agent.link.events()[-1]
    assert event["event"] == "denied" and "outside access hours (mon-fri 07:00-19:00)" in event["reason"]
    assert door.agent.lock.is_locked
    door.wall.now, door.clock.now = MONDAY_NOON, door.clock.now + 5
    *_, last = frames(door)
    assert last.unlock and door.agent.link.events()[-1]["event"] == "recognized"


def test_unknown_face_leaves_a_local_snapshot_named_in_the_event(door):
    door.agent.next_verdict = Verdict(VerdictKind.UNKNOWN, "no match", request_id="r")
    frames(door)
    event = door.agent.link.events()[-1]
    assert event["event"] == "unknown" and event["label"] is None
    files = door.snaps.files()
    assert [p.name for p in files] == [event["snapshot"]]
    payloads = b"".join(p if isinstance(p, bytes) else str(p).encode() for _, p, _ in door.agent.link.published)
    assert b"jpeg" not in payloads  # only the name goes out, never the image
    assert [e["snapshot"] for e in audit_lines(door) if e.get("event") == "unknown"] == [event["snapshot"]]


def test_no_snapshot_for_a_recognized_or_denied_person(door):
    frames(door)
    assert door.snaps.files() == [] and "snapshot" not in door.agent.link.events()[-1]
