"""The console's live view: frames drawn and encoded once, the gate of each analysis, decisions without scores, the state.

What the page shows may name a person and the false-open chance, never a distance, score or threshold:
the decision list and `door_state` are checked for that against a real agent that has just opened for Alice.
"""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from blindgate.device.console.live import (
    BAD_RGB,
    CAPTION,
    DECISIONS_KEPT,
    GOOD_RGB,
    Gate,
    LiveView,
    Shown,
    describe_chance,
    door_state,
    gate_of,
    render_jpeg,
)
from blindgate.device.decision import Decision, DoorEvent, VerdictKind
from blindgate.device.faces import FaceBox, FaceResult, Rejection, RejectionKind, StageTimings
from blindgate.device.judge import Verdict
from blindgate.shared.config import DecisionConfig, DeviceConfig

from ..fakes import AnsweringClient, RecordingLink
from ..test_agent_replies import DEVICE, SITE, sealed
from ..test_agent_replies import world as world  # noqa: F401  (the module-scoped fixture)
from ..test_agent_robustness import make_agent

GREY = 128
BOX = FaceBox(top=100, right=300, bottom=300, left=100)


def frame(height: int = 480, width: int = 640) -> np.ndarray:
    return np.full((height, width, 3), GREY, dtype=np.uint8)


def face(box: FaceBox = BOX, count: int = 1, embedding: np.ndarray | None = None) -> FaceResult:
    return FaceResult(np.zeros(128) if embedding is None else embedding, box, 150.0, count, StageTimings())


def rejection(kind: RejectionKind, box: FaceBox | None = BOX) -> Rejection:
    return Rejection(kind, f"{kind}", box, 12.0 if box else None, 1 if box else 0, StageTimings())


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    return image.convert("RGB")


def near(pixel: object, colour: tuple[int, int, int], tolerance: int = 45) -> bool:
    assert isinstance(pixel, tuple)
    return all(abs(int(p) - c) <= tolerance for p, c in zip(pixel, colour, strict=True))


# -- render_jpeg ------------------------------------------------------------------------------------


def test_render_downscales_to_the_width_keeping_the_aspect_and_draws_a_good_box_in_green():
    data = render_jpeg(Shown(1, frame(), (BOX,), Gate.GOOD, CAPTION[Gate.GOOD]), width=320, quality=95)
    image = decode(data)
    assert image.size == (320, 240)
    # the box (100..300 in the frame) is at 50..150 in the half-size picture, a 3 px outline inside the edge
    assert near(image.getpixel((51, 100)), GOOD_RGB) and near(image.getpixel((100, 51)), GOOD_RGB)
    assert near(image.getpixel((148, 100)), GOOD_RGB)
    # control: inside and outside the box the frame is untouched grey, not a colour anywhere
    assert near(image.getpixel((100, 100)), (GREY, GREY, GREY), 10)
    assert near(image.getpixel((250, 100)), (GREY, GREY, GREY), 10)
    # the caption bar at the bottom is black
    assert near(image.getpixel((300, 236)), (0, 0, 0), 20)


def test_render_draws_a_rejected_face_in_amber_not_green():
    image = decode(render_jpeg(Shown(1, frame(), (BOX,), Gate.TOO_SMALL, CAPTION[Gate.TOO_SMALL]), width=320, quality=95))
    edge = image.getpixel((51, 100))
    assert near(edge, BAD_RGB) and not near(edge, GOOD_RGB)


def test_render_never_upscales_a_smaller_frame():
    image = decode(render_jpeg(Shown(1, frame(100, 200), (), Gate.NO_FACE, "no face"), width=480))
    assert image.size == (200, 100)
    # exactly the width: not resized either, and the box lands where it is in the frame
    small_box = FaceBox(top=10, right=60, bottom=60, left=10)
    image = decode(render_jpeg(Shown(1, frame(100, 200), (small_box,), Gate.GOOD, "face ok"), width=200, quality=95))
    assert image.size == (200, 100) and near(image.getpixel((11, 30)), GOOD_RGB)


def test_a_too_narrow_live_width_is_refused():
    with pytest.raises(ValueError, match="at least 32"):
        LiveView(width=16)


# -- LiveView: frames -----------------------------------------------------------------------------


def test_each_frame_gets_the_next_number_and_is_encoded_once_however_often_asked():
    live = LiveView(width=320)
    assert live.seq == 0 and live.jpeg() is None and live.current() is None and live.frames_encoded == 0
    live.frame_seen(frame(), face())
    assert live.seq == 1
    first = live.jpeg()
    assert first is not None and first[0] == 1 and decode(first[1]).size == (320, 240)
    for _ in range(5):
        assert live.jpeg() == first
    assert live.frames_encoded == 1  # five more browsers asked, nothing encoded again
    live.frame_seen(frame(), None)
    live.frame_seen(frame(), rejection(RejectionKind.TOO_BLURRY))
    assert live.seq == 3 and live.frames_encoded == 1  # frames alone cost no encoding
    latest = live.jpeg()
    assert latest is not None and latest[0] == 3 and latest[1] != first[1]
    assert live.jpeg() == latest and live.frames_encoded == 2


@pytest.mark.parametrize(
    ("analysis", "gate", "caption", "boxes"),
    [
        (face(), Gate.GOOD, "face ok", (BOX,)),
        (face(count=3), Gate.GOOD, "face ok (largest of 3)", (BOX,)),
        (rejection(RejectionKind.TOO_SMALL), Gate.TOO_SMALL, "too small: step closer", (BOX,)),
        (rejection(RejectionKind.TOO_BLURRY), Gate.TOO_BLURRY, "too blurry: hold still", (BOX,)),
        (rejection(RejectionKind.NO_FACE, box=None), Gate.NO_FACE, "no face", ()),
        (None, Gate.NOT_CHECKED, "waiting for a badge or PIN", ()),
    ],
)
def test_frame_seen_maps_the_analysis_to_a_gate_caption_and_boxes(analysis, gate, caption, boxes):
    live = LiveView()
    rgb = frame()
    live.frame_seen(rgb, analysis)
    shown = live.current()
    assert shown is not None
    assert (shown.gate, shown.caption, shown.boxes) == (gate, caption, boxes)
    assert shown.rgb is rgb  # a reference, not a copy: the agent's loop pays nothing for it
    assert gate_of(analysis) == (gate, boxes)


# -- LiveView: decisions ---------------------------------------------------------------------------

SECRET = "0.4127"  # a distance as the judge might word it; it must never reach the page


def leaky_verdict(kind: VerdictKind = VerdictKind.MATCH, label: str | None = "Alice") -> Verdict:
    return Verdict(
        kind,
        f"distance {SECRET} below threshold 0.5310",
        subject="s-alice",
        label=label,
        request_id="r1",
        gallery_version=7,
        timings={"decrypt_ms": 3.0, "score": 0.4127},
    )


def test_decided_keeps_only_events_and_names_only_the_recognized_or_denied():
    live = LiveView()
    live.decided(leaky_verdict(), Decision(reason="need 2 agreeing frames"))  # no event: not kept
    live.decided(leaky_verdict(VerdictKind.DOUBT, None), Decision(reason="borderline"))
    assert live.decisions() == []
    live.decided(leaky_verdict(), Decision(DoorEvent.RECOGNIZED, "s-alice", unlock=True, reason="2 agreeing frames"))
    live.decided(leaky_verdict(VerdictKind.UNKNOWN, label="Alice"), Decision(DoorEvent.UNKNOWN, reason="unknown face"))
    live.decided(leaky_verdict(), Decision(DoorEvent.DENIED, "s-alice", reason="outside the allowed hours"))
    live.decided(leaky_verdict(label="Alice"), Decision(DoorEvent.CLOUD_INTEGRITY, reason="sealed template mismatch"))
    newest_first = live.decisions()
    integrity, denied = newest_first[0], newest_first[1]
    assert [d["event"] for d in newest_first] == ["cloud_integrity", "denied", "unknown", "recognized"]
    assert [d["label"] for d in newest_first] == [None, "Alice", None, "Alice"]
    assert denied["reason"] == "outside the allowed hours" and "reason" not in integrity
    for entry in newest_first:
        expected = {"time", "event", "label", "reason"} if entry["event"] == "denied" else {"time", "event", "label"}
        assert set(entry) == expected
    text = json.dumps(newest_first)
    assert SECRET not in text and "0.531" not in text and "distance" not in text and "score" not in text
    assert "s-alice" not in text and "r1" not in text  # neither the subject id nor the request id


def test_decisions_keep_only_the_latest_few():
    live = LiveView()
    for n in range(DECISIONS_KEPT + 5):
        live.decided(Verdict(VerdictKind.MATCH, label=f"P{n}"), Decision(DoorEvent.RECOGNIZED, f"s{n}", unlock=True))
    kept = live.decisions()
    assert len(kept) == DECISIONS_KEPT
    assert kept[0]["label"] == f"P{DECISIONS_KEPT + 4}" and kept[-1]["label"] == "P5"


# -- describe_chance ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chance", "text"),
    [
        (0.0, "below 1 in a million per frame"),
        (-1e-9, "below 1 in a million per frame"),
        (0.001, "about 1 in 1,000 per frame"),
        (0.00123, "about 1 in 810 per frame"),
        (1e-6, "about 1 in 1,000,000 per frame"),
        (0.25, "about 1 in 4 per frame"),
        (0.5, "50% per frame"),
        (0.875, "88% per frame"),
        (1.0, "100% per frame"),
    ],
)
def test_describe_chance_reads_like_people_say_it(chance, text):
    assert describe_chance(chance) == text


# -- door_state on a real agent ------------------------------------------------------------------------


class Analyzer:
    """Stands in for dlib: every frame shows `result`."""

    def __init__(self, result: FaceResult | Rejection) -> None:
        self.result = result

    def analyze(self, rgb: np.ndarray) -> FaceResult | Rejection:
        return self.result


@pytest.fixture
def agent(world, tmp_path):
    config = DeviceConfig(site=SITE, device_id=DEVICE, decision=DecisionConfig(frames_required=2, reply_timeout=2.0))
    link = RecordingLink(config)
    a = make_agent(world, tmp_path, link)
    link.client = AnsweringClient(link, lambda req: sealed(world, req))
    link.on_connect(link.client, None, None, SimpleNamespace(is_failure=False), None)
    yield a
    a.close()


def values(state: object) -> list[object]:
    """Every leaf value of the state, nested dicts and lists flattened."""
    if isinstance(state, dict):
        return [v for item in state.values() for v in values(item)]
    if isinstance(state, list):
        return [v for item in state for v in values(item)]
    return [state]


def test_door_state_before_any_frame(agent):
    live = LiveView()
    live.attach(agent)
    state = door_state(agent, live)
    assert state["lock"] == "locked" and state["broker"] == "connected" and state["cloud"] == "reachable"
    assert state["camera"] == "ok" and state["frame"] == 0 and state["face"] == "no picture yet" and state["gate"] is None
    assert state["decisions"] == [] and state["false_open"] is None and state["enrolled"] is None
    assert state["mode"] == agent.config.decision.mode


def test_door_state_after_alice_opens_shows_her_name_and_the_chance_but_no_distance_or_threshold(agent, world):
    earlier = []
    agent.when_frame = lambda rgb, analysis: earlier.append(analysis)  # an observer already attached stays
    live = LiveView()
    live.attach(agent)
    agent.analyzer = Analyzer(face(embedding=world.alice))
    decisions = [agent.process_frame(frame()) for _ in range(2)]
    assert decisions[-1] is not None and decisions[-1].event is DoorEvent.RECOGNIZED  # positive control: it opened
    assert len(earlier) == 2
    point = agent.current_point
    assert point is not None
    state = door_state(agent, live)
    assert state["lock"] == "unlocked" and state["broker"] == "connected" and state["cloud"] == "reachable"
    assert state["frame"] == 2 and state["gate"] == "good" and state["face"] == "face ok"
    assert [(d["event"], d["label"]) for d in state["decisions"]] == [("recognized", "Alice")]
    assert state["false_open"] == describe_chance(point.expected_false_open) and state["false_open"].startswith("about 1 in ")
    assert state["enrolled"] == point.enrolled == 2
    # nothing numeric but counts; no threshold, distance or score in any key or value
    assert all(not isinstance(v, float) for v in values(state))
    text = json.dumps(state).lower()
    assert f"{point.threshold:.3f}" not in text and f"{point.threshold:.2f}" not in text
    assert not any(word in text for word in ("threshold", "distance", "score", "similarity", "s-alice"))


def test_door_state_follows_the_broker_and_the_cloud(agent):
    live = LiveView()
    for _ in range(3):
        agent.health.cloud_missed()
    agent.link.on_disconnect(None, None, None, "test", None)
    state = door_state(agent, live)
    assert state["broker"] == "disconnected" and state["cloud"] == "unreachable"
    agent.health.cloud_answered()
    assert door_state(agent, live)["cloud"] == "reachable"
