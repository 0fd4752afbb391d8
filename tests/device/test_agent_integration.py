"""End to end against the REAL cloud service and a real Mosquitto broker.

The cloud (`python -m blindgate.cloud.cli serve`) runs as a subprocess; the device is provisioned and
enrolled with `blindgate-device` (in-process `blindgate.device.cli.main`), then the agent runs over the
recorded Hamilton clip (or a folder of photos) with a mock-pin lock whose level is sampled
over time. Skips when the face data or mosquitto is missing.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from blindgate.device.agent import Agent
from blindgate.device.build import build_agent, open_configured_camera
from blindgate.device.lock import Lock
from blindgate.shared.config import DeviceConfig, load_config

from .conftest import provision

pytestmark = pytest.mark.timeout(240)


class Watcher:
    """Subscribes to the device's topics and HA discovery; records everything it sees."""

    def __init__(self, broker, site: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.client = broker.client()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload), bool(m.retain)))
        self.client.connect(broker.host, broker.port)
        self.client.subscribe([(f"blindgate/{site}/door1/#", 1), ("homeassistant/#", 1)])
        self.client.loop_start()
        time.sleep(0.3)

    def close(self) -> None:
        self.client.disconnect()
        try:
            self.client.loop_stop()
        except AttributeError:  # paho race when the thread ends by itself
            pass

    def events(self) -> list[dict]:
        return [json.loads(p) for t, p, _ in self.messages if t.endswith("/event")]


def run_agent(config_path: Path) -> tuple[Agent, list[tuple[float, int]]]:
    """Run the agent over its camera source; sample the lock pin every 20 ms; events in `agent.seen_events`."""
    config = load_config(DeviceConfig, config_path, env={})
    lock = Lock("GPIO17", pin_factory="mock")
    pin = lock.pin
    agent = build_agent(config, lock=lock)
    agent.seen_events = []

    def record(verdict, decision):
        if decision.event:
            agent.seen_events.append(decision.event)

    agent.when_decided = record
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample():
        while not done.is_set():
            samples.append((time.monotonic(), pin.state))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        agent.connect(wait=10)
        with open_configured_camera(config) as camera:
            agent.run(camera)
        time.sleep(1.2)  # hold-open ends: the ticker has stopped, close() locks
    finally:
        agent.close()
        time.sleep(0.1)
        done.set()
        sampler.join()
    samples.append((time.monotonic(), pin.state))
    return agent, samples


def test_door_opens_for_enrolled_person_and_relocks(tmp_path, cloud, mqtt_broker, faces_dir):
    video = faces_dir / "video" / "short_hamilton_clip.mp4"
    config = provision(
        tmp_path,
        cloud,
        mqtt_broker,
        faces_dir,
        "home",
        {"Lin-Manuel Miranda": ["lin_manuel_miranda/lin1.png"], "Joe Biden": ["biden/biden.jpg", "biden/biden2.jpg"]},
        str(video),
    )
    watcher = Watcher(mqtt_broker, "home")
    try:
        agent, samples = run_agent(config)
        time.sleep(0.3)
    finally:
        watcher.close()
    states = [s for _, s in samples]
    assert 1 in states, f"door never opened; counters {agent.counters}"
    assert states[0] == 0 and states[-1] == 0  # locked before and after
    intervals, start = [], None  # each opening: held open_seconds (1 s), then locked again
    for t, s in samples:
        if s == 1 and start is None:
            start = t
        elif s == 0 and start is not None:
            intervals.append(t - start)
            start = None
    assert start is None and intervals
    assert all(0.8 <= d <= 1.5 for d in intervals), intervals
    events = watcher.events()
    recognized = [e for e in events if e["event"] == "recognized"]
    assert recognized and all(e["label"] == "Lin-Manuel Miranda" for e in recognized)
    for e in events:
        assert set(e) == {"event", "event_type", "label", "ts"} and e["event_type"] == e["event"]
    topics = {t: (p, r) for t, p, r in watcher.messages}
    availability = [p for t, p, _ in watcher.messages if t == "blindgate/home/door1/availability"]
    assert availability[0] == b"online" and availability[-1] == b"offline"
    assert any(t.endswith("/lock") and p == b"UNLOCKED" for t, p, _ in watcher.messages)
    lock_cfg = json.loads(topics["homeassistant/binary_sensor/home_door1/lock/config"][0])
    assert lock_cfg["unique_id"] and lock_cfg["device"]["identifiers"] and lock_cfg["device_class"] == "lock"
    assert topics["homeassistant/lock/home_door1/config"][0] == b""  # the old lock entity is cleared
    assert "homeassistant/event/home_door1/config" in topics
    # nothing a device publishes is retained except availability, lock state and discovery
    for t, _, retained in watcher.messages:
        if t.endswith(("/event", "/probe", "/reply")):
            assert not retained
    timings = list(agent.timings)
    assert timings and all(k in timings[0] for k in ("detect_ms", "embed_ms", "encrypt_ms", "round_trip_ms", "decrypt_ms"))
    audit = (tmp_path / "home" / "audit.jsonl").read_text()
    assert "recognized" in audit and "distance" not in audit


def test_stays_locked_when_person_not_enrolled(tmp_path, cloud, mqtt_broker, faces_dir):
    video = faces_dir / "video" / "short_hamilton_clip.mp4"
    config = provision(
        tmp_path,
        cloud,
        mqtt_broker,
        faces_dir,
        "office",
        {"Barack Obama": ["obama/obama.jpg"], "Alex Lacamoire": ["alex_lacamoire/alex1.jpg"]},
        str(video),
    )
    agent, samples = run_agent(config)
    assert all(s == 0 for _, s in samples)
    assert agent.counters.get("verdict_match", 0) == 0
    assert agent.counters.get("verdict_unknown", 0) > 0  # it did see and judge faces
    assert "recognized" not in agent.seen_events


def test_photo_of_another_person_never_opens(tmp_path, cloud, mqtt_broker, faces_dir):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("obama.jpg", "obama1.jpg", "obama2.jpg", "obama3.jpg", "obama-480p.jpg"):
        (photos / name).symlink_to(faces_dir / "people" / "obama" / name)
    config = provision(
        tmp_path,
        cloud,
        mqtt_broker,
        faces_dir,
        "lobby",
        {"Lin-Manuel Miranda": ["lin_manuel_miranda/lin1.png"], "Joe Biden": ["biden/biden.jpg"]},
        str(photos),
    )
    agent, samples = run_agent(config)
    assert all(s == 0 for _, s in samples)
    assert agent.counters.get("verdict_match", 0) == 0
    assert agent.counters.get("verdict_unknown", 0) >= 3
    assert agent.seen_events[:1] == ["unknown"]
