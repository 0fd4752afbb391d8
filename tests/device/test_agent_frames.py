"""The agent's frame hooks: `when_frame` sees every frame read, `divert` takes frames away from the door.

A real agent (real link minus the broker, a cloud answering with real encrypted replies) and a stand-in
analyzer. While a capture diverts the frames nothing is analysed or probed and the door stays as it is;
once released, probing resumes (positive control). An observer that fails never changes a decision.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from blindgate.device.decision import DoorEvent
from blindgate.device.faces import FaceBox, FaceResult, Rejection, RejectionKind, StageTimings
from blindgate.shared.config import DecisionConfig, DeviceConfig

from .fakes import AnsweringClient, RecordingLink
from .test_agent_replies import DEVICE, SITE, sealed
from .test_agent_replies import world as world  # noqa: F401  (the module-scoped fixture)
from .test_agent_robustness import make_agent

BOX = FaceBox(top=20, right=120, bottom=120, left=20)


class Analyzer:
    """Stands in for dlib: returns the next scripted analysis (the last one repeats) and counts calls."""

    def __init__(self, *results: FaceResult | Rejection) -> None:
        self.results = list(results)
        self.calls = 0

    def analyze(self, rgb: np.ndarray) -> FaceResult | Rejection:
        self.calls += 1
        return self.results.pop(0) if len(self.results) > 1 else self.results[0]


def face_of(embedding: np.ndarray) -> FaceResult:
    return FaceResult(embedding, BOX, 150.0, 1, StageTimings(detect_ms=5.0, embed_ms=20.0))


def too_small() -> Rejection:
    return Rejection(RejectionKind.TOO_SMALL, "face too small (30 px < 60 px)", BOX, 80.0, 1, StageTimings())


def frame(value: int = 90) -> np.ndarray:
    return np.full((160, 200, 3), value, dtype=np.uint8)


def make_door(world, tmp_path, mode: str = "identify"):
    config = DeviceConfig(site=SITE, device_id=DEVICE, decision=DecisionConfig(frames_required=2, reply_timeout=2.0, mode=mode))
    link = RecordingLink(config)
    agent = make_agent(world, tmp_path, link)
    link.client = AnsweringClient(link, lambda req: sealed(world, req), record=True)
    link.on_connect(link.client, None, None, SimpleNamespace(is_failure=False), None)
    return agent


@pytest.fixture
def agent(world, tmp_path):
    a = make_door(world, tmp_path)
    yield a
    a.close()


def probes(agent) -> int:
    return sum(1 for topic, _, _ in agent.link.published if topic == agent.link.topics.probe)


def test_when_frame_sees_each_frame_with_its_analysis(agent, world):
    seen = []
    agent.when_frame = lambda rgb, analysis: seen.append((rgb, analysis))
    alice, small = face_of(world.alice), too_small()
    agent.analyzer = Analyzer(small, alice)
    frames = [frame(10), frame(20)]
    assert agent.process_frame(frames[0]) is None  # skipped, not judged
    assert agent.process_frame(frames[1]) is not None
    assert len(seen) == 2
    assert seen[0][0] is frames[0] and seen[0][1] is small  # the very array and analysis, no copy
    assert seen[1][0] is frames[1] and seen[1][1] is alice
    assert agent.counters["skipped_too_small"] == 1 and probes(agent) == 1


def test_verify_mode_without_a_claim_shows_the_frame_unanalysed(world, tmp_path):
    agent = make_door(world, tmp_path, mode="verify")
    try:
        seen = []
        agent.when_frame = lambda rgb, analysis: seen.append((rgb, analysis))
        agent.analyzer = Analyzer(face_of(world.alice))
        rgb = frame()
        assert agent.process_frame(rgb) is None
        assert seen == [(rgb, None)] and agent.analyzer.calls == 0 and probes(agent) == 0
    finally:
        agent.close()


def test_a_diverted_frame_goes_to_the_capture_and_nothing_is_probed_until_released(agent, world):
    seen: list[FaceResult | Rejection | None] = []
    diverted: list[np.ndarray] = []
    agent.when_frame = lambda rgb, analysis: seen.append(analysis)
    agent.analyzer = Analyzer(face_of(world.alice))
    agent.divert = diverted.append
    rgbs = [frame(n) for n in (1, 2, 3)]
    for rgb in rgbs:
        assert agent.process_frame(rgb) is None
    assert len(diverted) == 3 and all(a is b for a, b in zip(diverted, rgbs, strict=True))
    assert agent.counters["skipped_diverted"] == 3
    assert agent.analyzer.calls == 0 and seen == []  # the capture analyses and shows its frames itself
    assert probes(agent) == 0 and agent.link.events() == [] and agent.lock.is_locked
    assert not any(key.startswith("verdict_") for key in agent.counters)
    # positive control: released, the same face is probed again and Alice gets in
    agent.divert = None
    decisions = [agent.process_frame(frame()) for _ in range(2)]
    assert probes(agent) == 2 and agent.analyzer.calls == 2 and len(seen) == 2
    assert decisions[-1] is not None and decisions[-1].event is DoorEvent.RECOGNIZED and not agent.lock.is_locked
    assert agent.counters["skipped_diverted"] == 3  # no longer counted


def test_a_failing_frame_observer_does_not_change_the_decision(agent, world, caplog):
    calls = []

    def broken(rgb, analysis):
        calls.append(analysis)
        raise RuntimeError("the console broke")

    agent.when_frame = broken
    agent.analyzer = Analyzer(too_small(), face_of(world.alice))
    assert agent.process_frame(frame()) is None  # a skipped frame is still counted as one
    assert agent.counters["skipped_too_small"] == 1
    decisions = [agent.process_frame(frame()) for _ in range(2)]
    assert len(calls) == 3 and probes(agent) == 2  # the observer was called each time, and each face was judged
    assert decisions[0] is not None and decisions[0].event is None  # one agreeing frame of two
    assert decisions[1] is not None and decisions[1].event is DoorEvent.RECOGNIZED and decisions[1].unlock
    assert not agent.lock.is_locked
    assert [e["event"] for e in agent.link.events()] == ["recognized"]
    assert "frame observer failed" in caplog.text
