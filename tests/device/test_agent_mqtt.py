"""The agent's MQTT behaviour on a real Mosquitto (no cloud): availability, retained lock state,
HA discovery re-published on `homeassistant/status` online (never on a retained one), and probe
properties (MQTT v5). Reconnection and the Last Will are the link's (test_link.py)."""

import time

import numpy as np
import pytest

from blindgate.device.agent import Agent
from blindgate.device.decision import VerdictKind
from blindgate.device.directory import SubjectDirectory
from blindgate.device.integrity import TemplateCheck
from blindgate.device.labels import LabelCipher
from blindgate.device.lock import Lock
from blindgate.device.sealing import TemplateSealer
from blindgate.shared.config import DecisionConfig, DeviceConfig
from blindgate.shared.engine import generate_site_keys
from blindgate.shared.protocol import decode_probe_request, new_signing_key

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def keys():
    return generate_site_keys()


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


class Watcher:
    def __init__(self, broker, topics):
        self.messages = []
        self.client = broker.client()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload), bool(m.retain), m.properties))
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert wait_for(lambda: self.client.is_connected())
        time.sleep(0.2)

    def payloads(self, topic):
        return [p for t, p, _, _ in self.messages if t == topic]

    def close(self):
        self.client.disconnect()
        try:
            self.client.loop_stop()
        except AttributeError:  # paho race when the thread ends by itself
            pass


@pytest.fixture
def agent(broker, keys, tmp_path):
    LabelCipher.create_key(tmp_path)
    config = DeviceConfig(
        site="home",
        device_id="door1",
        mqtt=broker.mqtt_config("door", keepalive=5),
        decision=DecisionConfig(reply_timeout=1.0),
    )
    directory = SubjectDirectory(lambda: {"gallery_version": 0, "subjects": []}, LabelCipher.load(tmp_path, "home"))
    TemplateSealer.create_key(tmp_path)
    nothing_sealed = TemplateCheck({}.__getitem__, TemplateSealer.load(tmp_path, "home"), keys.key_id, config.decision)
    a = Agent(config, keys, new_signing_key().public_key(), directory, Lock("GPIO17", pin_factory="mock"), nothing_sealed)
    yield a
    a.close()


def test_availability_lock_state_discovery_and_ha_restart(broker, agent):
    watcher = Watcher(broker, ["blindgate/home/door1/#", "homeassistant/#"])
    try:
        # HA's status is retained on the broker: the agent gets it with the retain flag and
        # must not act on it (its own on-connect publication is the only discovery)
        watcher.client.publish("homeassistant/status", "online", qos=1, retain=True).wait_for_publish(5)
        agent.connect(wait=10)
        assert wait_for(lambda: agent.counters.get("retained_ignored", 0) == 1)
        time.sleep(0.3)
        assert len(watcher.payloads("homeassistant/binary_sensor/home_door1/lock/config")) == 1
        assert watcher.payloads("homeassistant/lock/home_door1/config") == [b""]  # the old lock entity is cleared
        assert watcher.payloads("blindgate/home/door1/availability") == [b"online"]
        assert watcher.payloads("blindgate/home/door1/lock") == [b"LOCKED"]
        # HA restarts (live message): re-publish discovery
        watcher.client.publish("homeassistant/status", "online", qos=1)
        assert wait_for(lambda: len(watcher.payloads("homeassistant/event/home_door1/config")) == 2)
        watcher.client.publish("homeassistant/status", b"", qos=1, retain=True).wait_for_publish(5)  # clear it
    finally:
        watcher.close()
    # late subscribers see the retained state
    late = Watcher(broker, ["blindgate/home/door1/availability", "blindgate/home/door1/lock", "homeassistant/binary_sensor/#"])
    try:
        assert wait_for(lambda: len(late.messages) >= 3)
        assert all(retained for _, _, retained, _ in late.messages)
    finally:
        late.close()


def test_probe_uses_mqtt5_request_response_and_times_out_secure(broker, agent, keys):
    watcher = Watcher(broker, ["blindgate/home/door1/probe"])
    try:
        agent.connect(wait=10)
        embedding = np.random.default_rng(2).normal(0, 0.09, 128)
        verdict = agent.probe(embedding)  # nobody answers
        assert verdict.kind == VerdictKind.DOUBT and "no reply" in verdict.reason
        assert wait_for(lambda: watcher.messages)
        topic, payload, retained, props = watcher.messages[0]
        request = decode_probe_request(payload)
        assert not retained and request.device == "door1" and request.key_id == keys.key_id
        assert props.ResponseTopic == "blindgate/home/door1/reply"
        assert props.CorrelationData == bytes.fromhex(request.request_id)
        assert props.MessageExpiryInterval == 1
        assert agent.lock.is_locked and len(agent.pending) == 0
    finally:
        watcher.close()
