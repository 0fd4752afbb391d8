"""The door with `[liveness] mode = "motion"` against the real cloud and broker: a photo does not open it.

The door is provisioned and Lin-Manuel Miranda enrolled from his photo, exactly as in
tests/device/test_agent_integration.py; the real agent (`build_agent`: dlib, the 68-point model,
the face follower, the real judge) runs over a camera source:
- attack: the enrolled photo itself as a print tilted hard in front of the camera
  (device/liveness_attacks.py) — the cloud matches it, the door prompts, watches, and never opens;
  a `liveness_failed` event names him and counts a failed attempt;
- positive control: the recorded clip of the live person — the same door opens for him.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from blindgate.device.build import build_agent
from blindgate.device.camera import ImageFolderSource, open_camera
from blindgate.device.decision import DoorEvent
from blindgate.device.imaging import load_image
from blindgate.device.liveness_attacks import AttackKind, attack_frames
from blindgate.device.lock import Lock
from blindgate.shared.config import DeviceConfig, load_config

from .conftest import provision

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
NAME = "Lin-Manuel Miranda"


@pytest.fixture(scope="module")
def door_config(tmp_path_factory, cloud, mqtt_broker, faces_dir):
    work = tmp_path_factory.mktemp("liveness")
    liveness = '[liveness]\nmode = "motion"\nwindow_s = 2.0\ntimeout_s = 5.0\n'
    people = {NAME: ["lin_manuel_miranda/lin1.png"]}
    one_frame = {"frames_required": 1}
    path = provision(work, cloud, mqtt_broker, faces_dir, "live", people, "unused", decision=one_frame, extra=liveness)
    return load_config(DeviceConfig, path, env={})


def run(config: DeviceConfig, camera) -> tuple[list[dict], list[int], dict]:
    """Run the real agent over `camera`; its events, the lock pin sampled on every frame, its counters."""
    lock = Lock("GPIO17", pin_factory="mock")
    agent = build_agent(config, lock=lock)
    assert agent.liveness is not None  # the 68-point model is loaded only because liveness is on
    events: list[dict] = []
    states: list[int] = []
    agent.when_decided = lambda verdict, decision: events.append({"event": decision.event, "label": verdict.label})
    agent.when_frame = lambda rgb, analysis: states.append(lock.pin.state)
    try:
        agent.connect(wait=10)
        agent.run(camera)
    finally:
        agent.close()
    return [e for e in events if e["event"]], states, dict(agent.counters)


def test_a_print_of_the_enrolled_photo_never_opens_and_counts_as_a_failed_attempt(door_config, faces_dir, tmp_path):
    photo = load_image(faces_dir / "people" / "lin_manuel_miranda" / "lin1.png")
    for n, rgb in enumerate(attack_frames(photo, AttackKind.PRINT, seconds=8.0, fps=30.0, seed=1, swing=1.8)):
        Image.fromarray(rgb).save(tmp_path / f"{n:04d}.png")
    camera = ImageFolderSource(tmp_path, fps=30.0)  # paced like a camera: the window is wall-clock time
    events, states, counters = run(door_config, camera)
    assert DoorEvent.LIVENESS_PROMPT in [e["event"] for e in events], f"the print was never matched: {counters}"
    failed = [e for e in events if e["event"] == DoorEvent.LIVENESS_FAILED]
    assert failed and all(e["label"] == NAME for e in failed)
    assert DoorEvent.RECOGNIZED not in [e["event"] for e in events]
    assert 1 not in states and counters.get("liveness_live", 0) == 0
    lines = [json.loads(line) for line in (Path(door_config.state_dir) / "audit.jsonl").read_text().splitlines()]
    liveness = [e for e in lines if str(e.get("event", "")).startswith("liveness")]
    assert {e["event"] for e in liveness} == {"liveness_prompt", "liveness_failed"}
    allowed = {"ts", "kind", "event", "subject", "label", "request_id", "reason", "prompt"}
    assert all(set(e) <= allowed for e in liveness), liveness  # the kind of outcome only, never a score


def test_positive_control_the_live_person_on_the_clip_opens(door_config, faces_dir):
    camera = open_camera(faces_dir / "video" / "short_hamilton_clip.mp4", realtime=True)
    events, states, counters = run(door_config, camera)
    assert DoorEvent.RECOGNIZED in [e["event"] for e in events], f"{counters} {events}"
    assert 1 in states
