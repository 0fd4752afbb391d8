"""The agent with `[liveness] mode = "motion"`: a match opens only after the face moved like a head.

A real agent (real link minus the broker, a cloud answering with real encrypted replies), a
stand-in analyzer and a stand-in face follower; the judge of the window is replaced where a
test needs a given outcome (its geometry has its own tests: tests/device/test_liveness.py).
Attacked: a flat window, too little movement, too few frames, a follower that fails, a face
that leaves (timeout): each keeps the door locked and counts a failed attempt; five lock out.
Positive control: a live window opens. The score never appears in an event or the audit log.
"""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from blindgate.device import liveness_watch
from blindgate.device.decision import DoorEvent
from blindgate.device.liveness import LivenessKind, LivenessResult
from blindgate.device.liveness_watch import LivenessConfigError, LivenessWatch
from blindgate.shared.config import DecisionConfig, DeviceConfig, LivenessConfig

from .fakes import AnsweringClient, RecordingLink
from .test_agent_frames import Analyzer, face_of, frame
from .test_agent_replies import DEVICE, SITE, sealed
from .test_agent_replies import world as world  # noqa: F401  (the module-scoped fixture)
from .test_agent_robustness import audit_kinds, make_agent

SECRET_RESIDUAL = 0.123456  # a score no event or audit line may carry


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Follower:
    """Landmarks for each frame (a fixed array), or an error, or no face."""

    def __init__(self, fail: bool = False, face: bool = True) -> None:
        self.fail, self.face, self.offered, self.resets = fail, face, 0, 0

    def offer(self, rgb: np.ndarray) -> np.ndarray | None:
        self.offered += 1
        if self.fail:
            raise RuntimeError("landmark model broke")
        return np.zeros((68, 2)) if self.face else None

    def reset(self) -> None:
        self.resets += 1


@pytest.fixture
def judged(monkeypatch):
    """Make the window's judge return `outcome[0]` (a LivenessKind)."""
    outcome = [LivenessKind.LIVE]

    def judge(landmarks, settings):
        return LivenessResult(outcome[0], SECRET_RESIDUAL, 0.05, 12, len([p for p in landmarks if p is not None]), None)

    monkeypatch.setattr(liveness_watch, "judge_window", judge)
    return outcome


def door(world, tmp_path, follower=None, clock=None):
    config = DeviceConfig(
        site=SITE,
        device_id=DEVICE,
        decision=DecisionConfig(frames_required=2, reply_timeout=2.0, cooldown_s=0.0),
        liveness=LivenessConfig(mode="motion", window_s=2.0, timeout_s=4.0),
    )
    link = RecordingLink(config)
    agent = make_agent(world, tmp_path, link)
    link.client = AnsweringClient(link, lambda req: sealed(world, req), record=True)
    link.on_connect(link.client, None, None, SimpleNamespace(is_failure=False), None)
    clock = clock or Clock()
    agent.liveness = LivenessWatch(follower or Follower(), config.liveness, clock=clock)
    agent.decision.clock = clock  # one clock for the window and the decision rules
    agent.analyzer = Analyzer(face_of(world.alice))
    return agent, clock


def probes(agent) -> int:
    return sum(1 for topic, _, _ in agent.link.published if topic == agent.link.topics.probe)


def events(agent) -> list[dict]:
    return agent.link.events()


def match_then_watch(agent, clock, frames: int = 20) -> None:
    """Two matching frames complete the run (the prompt), then `frames` frames over the 2 s window."""
    agent.process_frame(frame())
    agent.process_frame(frame())
    assert agent.liveness.active and agent.lock.is_locked
    for _ in range(frames):
        clock.now += 2.1 / frames
        agent.process_frame(frame())


def test_a_match_prompts_and_opens_only_after_a_live_window(world, tmp_path, judged):
    agent, clock = door(world, tmp_path)
    try:
        agent.process_frame(frame())
        agent.process_frame(frame())
        prompt = events(agent)[-1]
        assert prompt["event"] == DoorEvent.LIVENESS_PROMPT and prompt["label"] is None  # no name spoken aloud
        assert prompt["prompt"] == "turn your head slightly"
        assert agent.lock.is_locked
        sent = probes(agent)
        for _ in range(19):
            clock.now += 0.1
            agent.process_frame(frame())
            assert agent.lock.is_locked
        assert probes(agent) == sent  # no probes while the face is watched
        clock.now += 0.2
        agent.process_frame(frame())
        assert not agent.lock.is_locked  # positive control: live opens
        assert events(agent)[-1]["event"] == DoorEvent.RECOGNIZED and events(agent)[-1]["label"] == "Alice"
        assert agent.counters["liveness_live"] == 1
    finally:
        agent.close()


@pytest.mark.parametrize("kind", [LivenessKind.FLAT, LivenessKind.STILL, LivenessKind.FEW_FRAMES, LivenessKind.NO_BLINK])
def test_not_live_keeps_the_door_locked_and_counts_a_failed_attempt(world, tmp_path, judged, kind):
    judged[0] = kind
    agent, clock = door(world, tmp_path)
    try:
        match_then_watch(agent, clock)
        assert agent.lock.is_locked and not agent.liveness.active
        failed = events(agent)[-1]
        assert failed["event"] == DoorEvent.LIVENESS_FAILED and failed["label"] == "Alice"
        assert str(kind) in failed["reason"] and "failed attempt 1/5" in failed["reason"]
        assert agent.decision.failures == 1
    finally:
        agent.close()


def test_five_flat_windows_lock_out_and_then_even_a_live_one_does_not_open(world, tmp_path, judged):
    judged[0] = LivenessKind.FLAT
    agent, clock = door(world, tmp_path)
    try:
        for _ in range(5):
            match_then_watch(agent, clock)
        assert agent.decision.locked_out()
        judged[0] = LivenessKind.LIVE
        agent.process_frame(frame())
        agent.process_frame(frame())
        assert events(agent)[-1]["event"] == DoorEvent.DENIED and agent.lock.is_locked
    finally:
        agent.close()


def test_a_failing_landmark_model_keeps_the_door_locked(world, tmp_path, judged):
    agent, clock = door(world, tmp_path, follower=Follower(fail=True))
    try:
        match_then_watch(agent, clock, frames=1)
        assert agent.lock.is_locked and events(agent)[-1]["event"] == DoorEvent.LIVENESS_FAILED
        assert "error" in events(agent)[-1]["reason"] and agent.decision.failures == 1
    finally:
        agent.close()


def test_a_face_that_leaves_mid_window_times_out_locked(world, tmp_path, judged):
    agent, clock = door(world, tmp_path)
    try:
        agent.process_frame(frame())
        agent.process_frame(frame())
        assert agent.liveness.active
        clock.now += 3.0
        agent.tick()
        assert agent.liveness.active  # not yet: timeout_s is 4
        clock.now += 1.5
        agent.tick()
        assert not agent.liveness.active and agent.lock.is_locked
        assert events(agent)[-1]["event"] == DoorEvent.LIVENESS_FAILED and "timeout" in events(agent)[-1]["reason"]
    finally:
        agent.close()


def test_the_score_never_leaves_the_agent(world, tmp_path, judged):
    agent, clock = door(world, tmp_path)
    try:
        match_then_watch(agent, clock)
        judged[0] = LivenessKind.FLAT
        clock.now += 10
        agent.tick()  # the hold-open time is over
        match_then_watch(agent, clock)
        published = " ".join(str(p) for _, p, _ in agent.link.published)
        logged = json.dumps(audit_kinds(tmp_path))
        for text in (published, logged):
            assert "0.123" not in text and "residual" not in text
        assert agent.liveness.last_result.residual == SECRET_RESIDUAL  # it existed, on the device only
    finally:
        agent.close()


def test_liveness_off_by_default_and_bad_settings_refused():
    assert DeviceConfig().liveness.mode == "off"
    with pytest.raises(LivenessConfigError, match="mode"):
        LivenessWatch(Follower(), LivenessConfig(mode="sometimes"))
    with pytest.raises(LivenessConfigError, match="timeout_s"):
        LivenessWatch(Follower(), LivenessConfig(mode="motion", window_s=3.0, timeout_s=1.0))
    blink = LivenessWatch(Follower(), replace(LivenessConfig(), mode="motion+blink"))
    assert blink.settings.blink and blink.prompt.endswith("and blink")
