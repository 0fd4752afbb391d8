"""The door under faults and floods: a bounded reply queue, one audit line per burst, broker restarts.

Real engine ciphertexts and signing (fixtures of test_agent_replies); the flood goes through the
link's paho callback, the restart uses a real Mosquitto. Each attack has its positive control: an
honest reply still gets a MATCH right after the flood, and right after the broker comes back.
"""

import json
import threading
from types import SimpleNamespace

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from blindgate.device.agent import Agent
from blindgate.device.audit import AuditLog
from blindgate.device.decision import VerdictKind
from blindgate.device.directory import SubjectDirectory
from blindgate.device.integrity import TemplateCheck
from blindgate.device.link import MqttLink
from blindgate.device.lock import Lock
from blindgate.shared.config import DecisionConfig, DeviceConfig, MQTTConfig
from blindgate.shared.protocol import decode_probe_request

from .fakes import AnsweringClient
from .test_agent_replies import DEVICE, SITE, RecordingLink, sealed
from .test_agent_replies import world as world  # noqa: F401  (the module-scoped fixture)


def make_agent(world, tmp_path, link):
    config = link.config
    integrity = TemplateCheck(world.sealed_templates.__getitem__, world.sealer, world.keys.key_id, config.decision)
    return Agent(
        config,
        world.keys,
        world.signer.public_key(),
        SubjectDirectory(lambda: world.listing, world.labels),
        Lock("GPIO17", pin_factory="mock"),
        integrity,
        audit=AuditLog(tmp_path / "audit.jsonl"),
        link=link,
    )


def audit_kinds(tmp_path):
    path = tmp_path / "audit.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines]


def test_a_flood_while_idle_is_bounded_and_audited_once_then_an_honest_reply_matches(world, tmp_path):
    config = DeviceConfig(site=SITE, device_id=DEVICE, decision=DecisionConfig(reply_timeout=2.0))
    link = RecordingLink(config)
    agent = make_agent(world, tmp_path, link)
    try:
        link.client = AnsweringClient(link, lambda req: sealed(world, req))
        link.on_connect(link.client, None, None, SimpleNamespace(is_failure=False), None)
        junk = b"\x00" * (256 * 1024)
        for _ in range(300):  # while the door is idle: nothing is waiting for a reply
            link.on_message(None, None, SimpleNamespace(topic=link.topics.reply, payload=junk, retain=False))
        assert len(link.replies) == config.reply_queue  # 16 x 256 KB at most, not 300
        verdict = agent.probe(world.alice)
        assert verdict.kind is VerdictKind.MATCH  # positive control: the honest answer is not lost
        entries = audit_kinds(tmp_path)
        assert [e["kind"] for e in entries] == ["replies_dropped"]  # one line for the burst, none per message
        assert entries[0]["count"] == 300 and agent.counters.get("replies_rejected", 0) == 0
    finally:
        agent.close()


def _login(broker, user):
    """How this broker takes `user` (credentials when it has them, anonymous on an open test broker)."""
    if hasattr(broker, "mqtt_config"):
        return broker.mqtt_config(user)
    return MQTTConfig(host=broker.host, port=broker.port)


@pytest.mark.timeout(120)
def test_the_first_frame_after_a_broker_restart_gets_a_real_verdict(world, tmp_path, broker):
    """Before: the outage's stale marker failed the next frame with "broker disconnected"."""
    door = _login(broker, "door")
    door.keepalive = 5
    config = DeviceConfig(site=SITE, device_id=DEVICE, mqtt=door, decision=DecisionConfig(reply_timeout=5.0))
    agent = make_agent(world, tmp_path, MqttLink(config))
    cloud = _login(broker, "cloud")
    responder = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if cloud.username:
        responder.username_pw_set(cloud.username, cloud.password)
    responder_up, door_up = threading.Event(), threading.Event()

    def on_responder_connect(client, userdata, flags, rc, props):
        client.subscribe([(agent.link.topics.probe, 1)])

    def on_probe(client, userdata, msg):
        client.publish(agent.link.topics.reply, sealed(world, decode_probe_request(msg.payload)), qos=1)

    responder.on_connect = on_responder_connect
    responder.on_subscribe = lambda *a: responder_up.set()
    responder.on_message = on_probe
    announce = agent.link.when_connected

    def on_door_connect():
        announce()
        door_up.set()

    agent.link.when_connected = on_door_connect
    try:
        responder.connect(broker.host, broker.port, keepalive=5)
        responder.loop_start()
        agent.connect(wait=10)
        assert door_up.wait(10) and responder_up.wait(10)
        assert agent.probe(world.alice).kind is VerdictKind.MATCH  # positive control before the restart
        door_up.clear()
        responder_up.clear()
        broker.restart()
        assert door_up.wait(30) and responder_up.wait(30), "clients did not reconnect"
        verdict = agent.probe(world.alice)  # the FIRST frame after the restart
        assert verdict.kind is VerdictKind.MATCH, verdict.reason
    finally:
        agent.close()
        responder.disconnect()
        try:
            responder.loop_stop()
        except AttributeError:  # paho race when the thread ends by itself
            pass
