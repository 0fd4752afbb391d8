"""(f) Keys that can be renewed: `blindgate-device rekey` against the REAL cloud, broker and agent (mock pin).

After the rekey every enrolled person is still recognised (no re-enrollment, no photo), and a door
still holding the OLD keys gets the cloud's "wrong key" error reply and never opens. Skips when
the face data or mosquitto is missing.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from blindgate.device.agent import Agent
from blindgate.device.build import build_agent, open_configured_camera
from blindgate.device.cli import main as device_main
from blindgate.device.decision import VerdictKind
from blindgate.device.lock import Lock
from blindgate.device.state import DeviceState
from blindgate.shared.config import DeviceConfig, load_config
from blindgate.shared.launch import write_device_config

from .conftest import provision

pytestmark = pytest.mark.timeout(300)

PEOPLE = {"Lin-Manuel Miranda": ["lin_manuel_miranda/lin1.png"], "Joe Biden": ["biden/biden.jpg", "biden/biden2.jpg"]}


def run_door(config_path: Path) -> tuple[Agent, list[tuple[VerdictKind, str]], list[int]]:
    """Run the agent over its camera; returns it, every verdict (kind, reason) and the sampled lock pin."""
    config = load_config(DeviceConfig, config_path, env={})
    lock = Lock("GPIO17", pin_factory="mock")
    pin = lock.pin  # gone from the lock once it is closed
    agent = build_agent(config, lock=lock)
    verdicts: list[tuple[VerdictKind, str]] = []
    agent.when_decided = lambda verdict, decision: verdicts.append((verdict.kind, verdict.reason))
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(pin.state)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        agent.connect(wait=10)
        with open_configured_camera(config) as camera:
            agent.run(camera)
    finally:
        agent.close()
        done.set()
        sampler.join()
    samples.append(pin.state)
    return agent, verdicts, samples


def listed(config: Path, capsys) -> dict:
    capsys.readouterr()
    assert device_main(["--config", str(config), "list", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_rekey_keeps_everyone_and_refuses_the_old_key(tmp_path, cloud, mqtt_broker, faces_dir, capsys):
    video = str(faces_dir / "video" / "short_hamilton_clip.mp4")
    config = provision(tmp_path, cloud, mqtt_broker, faces_dir, "renewed", PEOPLE, video)
    state = DeviceState(tmp_path / "renewed")
    before = listed(config, capsys)
    old_key_id = state.load_keys().key_id
    # A door that keeps the old keys: a copy of the state directory as it is before the rekey.
    shutil.copytree(state.dir, tmp_path / "old-door")
    old_config = write_device_config(
        tmp_path / "old.toml",
        site="renewed",
        cloud_url=cloud.url,
        broker=mqtt_broker,
        state_dir=tmp_path / "old-door",
        camera=video,
    )

    capsys.readouterr()
    assert device_main(["--config", str(config), "rekey"]) == 0
    out = capsys.readouterr().out
    assert "[1/2]" in out and "[2/2]" in out and "Lin-Manuel Miranda" in out

    new_key_id = state.load_keys().key_id
    assert new_key_id != old_key_id and state.load_cloud().key_id == new_key_id
    assert sorted(p.name for p in state.dir.glob("site.keys*")) == ["site.keys"]  # no .next, no .old left
    after = listed(config, capsys)
    assert after["gallery_version"] == before["gallery_version"] + 1
    assert {(s["subject"], s["name"]) for s in after["subjects"]} == {(s["subject"], s["name"]) for s in before["subjects"]}
    assert sorted(s["name"] for s in after["subjects"]) == sorted(PEOPLE)

    # Positive control: under the new keys the door opens for the enrolled person, with no re-enrollment.
    agent, verdicts, samples = run_door(config)
    assert 1 in samples, f"door never opened after the rekey; counters {agent.counters}, verdicts {verdicts[:5]}"
    assert samples[0] == 0 and samples[-1] == 0
    assert agent.counters.get("cloud_integrity", 0) == 0
    assert {kind for kind, _ in verdicts} & {VerdictKind.MATCH}

    # The old key id is refused: every probe gets the error reply, nothing matches, the door never opens.
    old_agent, old_verdicts, old_samples = run_door(old_config)
    assert old_verdicts, "the old door judged no face"
    assert all(s == 0 for s in old_samples)
    assert old_agent.counters.get("verdict_match", 0) == 0
    assert all(kind is VerdictKind.DOUBT for kind, _ in old_verdicts), old_verdicts[:3]
    # the one not-authentic text (issue 11): an old key id reads like an unknown site or door, no oracle
    assert all("cloud answered error" in reason and "not signed by a door registered" in reason for _, reason in old_verdicts), (
        old_verdicts[:3]
    )
