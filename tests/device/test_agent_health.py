"""The running door tells Home Assistant when it cannot recognise anyone: a silent cloud or a stalled
camera makes its entities unavailable, and they come back when the cloud answers or frames return.

Real engine ciphertexts and signing (fixtures of test_agent_replies); the cloud is a fake paho client
that answers each probe at once with an honest signed reply, or stays silent; Home Assistant's view
is evaluated from the discovery configs and the retained messages (tests/device/ha_schema.py).
"""

import json
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from blindgate.device.agent import Agent
from blindgate.device.audit import AuditLog
from blindgate.device.decision import VerdictKind
from blindgate.device.directory import SubjectDirectory
from blindgate.device.discovery import discovery_configs
from blindgate.device.faces import Rejection, RejectionKind, StageTimings
from blindgate.device.health import CLOUD_MISSES
from blindgate.device.integrity import TemplateCheck
from blindgate.device.lock import Lock
from blindgate.shared.config import DecisionConfig, DeviceConfig

from . import ha_schema
from .fakes import AnsweringClient, RecordingLink
from .test_agent_replies import DEVICE, SITE, sealed
from .test_agent_replies import world as world  # noqa: F401  (the module-scoped fixture)

pytestmark = pytest.mark.timeout(120)


class Cloud(AnsweringClient):
    """The fake client answering each probe at once with an honest reply while `up`, else silent; records everything."""

    def __init__(self, link, world):
        super().__init__(link, lambda req: sealed(world, req) if self.up else None, record=True)
        self.up = True


class ClientLink(RecordingLink):
    """The real link, publishing through its (fake) client as paho would; everything is recorded."""

    def publish(self, topic, payload, retain=False):
        if self.client is not None:
            self.client.publish(topic, payload, qos=1, retain=retain)


def make_agent(world, tmp_path, link, analyzer=None):
    config = link.config
    integrity = TemplateCheck(world.sealed_templates.__getitem__, world.sealer, world.keys.key_id, config.decision)
    return Agent(
        config,
        world.keys,
        world.signer.public_key(),
        SubjectDirectory(lambda: world.listing, world.labels),
        Lock("GPIO17", pin_factory="mock"),
        integrity,
        analyzer,
        audit=AuditLog(tmp_path / "audit.jsonl"),
        link=link,
    )


def retained(link):
    kept = {}
    for topic, payload, retain in link.published:
        if retain:
            data = payload if isinstance(payload, bytes) else payload.encode()
            kept.pop(topic, None) if data == b"" else kept.__setitem__(topic, data)
    return kept


def home_assistant_sees(link):
    """Entity unique id (short) -> available?, from the door's discovery configs and retained state."""
    kept = retained(link)
    return {
        c["unique_id"].removeprefix(f"blindgate_{SITE}_{DEVICE}_"): ha_schema.available(c, kept)
        for c in discovery_configs(link.topics).values()
    }


def connected(world, tmp_path):
    config = DeviceConfig(site=SITE, device_id=DEVICE, decision=DecisionConfig(reply_timeout=0.2))
    link = ClientLink(config)
    agent = make_agent(world, tmp_path, link)
    cloud = Cloud(link, world)
    link.client = cloud
    link.on_connect(cloud, None, None, SimpleNamespace(is_failure=False), None)
    return agent, link, cloud


def test_a_silent_cloud_makes_the_door_unavailable_and_an_answer_brings_it_back(world, tmp_path):
    agent, link, cloud = connected(world, tmp_path)
    try:
        assert agent.probe(world.alice).kind is VerdictKind.MATCH  # positive control: the cloud answers
        seen = home_assistant_sees(link)
        assert all(seen.values()), seen
        cloud.up = False
        for _ in range(CLOUD_MISSES - 1):
            assert agent.probe(world.alice).kind is VerdictKind.DOUBT
        assert all(home_assistant_sees(link).values())  # a miss or two is no outage
        assert agent.probe(world.alice).kind is VerdictKind.DOUBT
        seen = home_assistant_sees(link)
        assert not seen["lock_state"] and not seen["event"] and not seen["enrolled"], seen
        assert seen["problem"]  # the problem sensor stays to say why
        assert agent.health.current.problems == {"cloud"} and agent.lock.is_locked
        cloud.up = True
        assert agent.probe(world.alice).kind is VerdictKind.MATCH
        assert all(home_assistant_sees(link).values())
    finally:
        agent.close()


class NoFace:
    def analyze(self, rgb):
        return Rejection(RejectionKind.NO_FACE, "no face", None, None, 0, StageTimings())


class Camera:
    """Frames at `gaps` seconds apart, then the end of the stream."""

    def __init__(self, gaps):
        self.gaps = list(gaps)

    def read(self):
        if not self.gaps:
            return None
        time.sleep(self.gaps.pop(0))
        return SimpleNamespace(rgb=np.zeros((8, 8, 3), np.uint8))


def health_states(link):
    return [json.loads(p)["problems"] for t, p, _ in link.published if t == link.topics.health][1:]  # after the announcement


def run_with(world, tmp_path, gaps):
    link = ClientLink(DeviceConfig(site=SITE, device_id=DEVICE))
    agent = make_agent(world, tmp_path, link, analyzer=NoFace())
    link.client = Cloud(link, world)
    link.on_connect(link.client, None, None, SimpleNamespace(is_failure=False), None)  # announces online and healthy
    agent.health.frame_stall_s = 0.4
    during = []
    agent.health.when_changed = lambda h: during.append(home_assistant_sees_problem(link))
    try:
        thread = threading.Thread(target=agent.run, args=(Camera(gaps),))
        thread.start()
        thread.join(30)
        assert not thread.is_alive()
    finally:
        agent.close()
    return health_states(link), during


def home_assistant_sees_problem(link):
    seen = home_assistant_sees(link)
    return seen["lock_state"], seen["problem"]


def test_a_stalled_camera_makes_the_door_unavailable_until_frames_return(world, tmp_path):
    link_states, _ = run_with(world, tmp_path, [0.05] * 12)  # positive control: steady frames, no problem
    assert link_states == []
    link_states, during = run_with(world, tmp_path, [0.05, 1.0, 0.05])  # a second without frames
    assert link_states == [["camera"], []]
    # while stalled: the lock state unavailable, the problem sensor available; then both back
    assert during == [(False, True), (True, True)]
