"""Relay attacks on the probe path: a real man in the middle between the door and the cloud.

The door's agent (real, `build_agent`, real dlib, gpiozero mock pin) talks to its own
Mosquitto; the real cloud service (`blindgate.shared.launch.CloudService`) listens on another
one. A relay (two paho clients) carries probes from the door's broker to the cloud's and replies
back, exactly like an unencrypted link or a broker under the attacker's control. Each test sets
what the relay does to the probes, then shows real face photos at the door:

- positive control: relayed honestly, the resident (two agreeing frames) opens the door;
- probe substitution (the issue's attack): the relay recorded the resident's probe request and
  puts that probe into the stranger's fresh request (request id, nonce, header, signature kept,
  or with the header's probe hash fixed up): the cloud refuses it, the door stays locked;
- a request re-signed with a key the cloud has not registered: error reply, no scan;
- every request replayed: no second scan, and the resident still opens;
- `blindgate-device rotate-door-key`: the new key works at once, nobody re-enrolls, the old key is refused.
"""

from __future__ import annotations

import re
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from types import SimpleNamespace

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from blindgate.device.build import build_agent, face_config
from blindgate.device.cli import main as device_main
from blindgate.device.decision import VerdictKind
from blindgate.device.faces import FaceAnalyzer, load_image
from blindgate.device.lock import Lock
from blindgate.device.state import DeviceState
from blindgate.shared.config import DeviceConfig, load_config
from blindgate.shared.launch import CloudService, write_device_config
from blindgate.shared.protocol import decode_probe_request, encode_probe_request, new_signing_key
from tests.broker import start_broker

SITE = "relayed"
pytestmark = pytest.mark.timeout(240)
Tamper = Callable[[bytes], list[bytes]]  # what the relay sends on for one probe payload


class Relay:
    """Carries probes door-broker -> cloud-broker (through `tamper`) and replies back, untouched."""

    def __init__(self, door_broker, cloud_broker) -> None:
        self.tamper: Tamper = lambda payload: [payload]
        self.seen: list[bytes] = []  # every probe request the door sent
        self._ready = threading.Barrier(3)
        self.door = self._client(door_broker, f"blindgate/{SITE}/+/probe", self._probe_in)
        self.cloud = self._client(cloud_broker, f"blindgate/{SITE}/+/reply", self._reply_in)
        self._ready.wait(10)

    def _client(self, broker, topic: str, handler) -> mqtt.Client:
        client = broker.client()
        client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        client.on_subscribe = lambda c, u, mid, rcs, p: self._ready.wait(10)
        client.on_message = handler
        client.connect(broker.host, broker.port)
        client.loop_start()
        return client

    @staticmethod
    def _forward(client: mqtt.Client, msg: mqtt.MQTTMessage, payload: bytes) -> None:
        props = Properties(PacketTypes.PUBLISH)
        for name in ("ResponseTopic", "CorrelationData", "MessageExpiryInterval"):
            if hasattr(msg.properties, name):
                setattr(props, name, getattr(msg.properties, name))
        client.publish(msg.topic, payload, qos=1, properties=props)

    def _probe_in(self, client, userdata, msg) -> None:
        self.seen.append(bytes(msg.payload))
        for payload in self.tamper(bytes(msg.payload)):
            self._forward(self.cloud, msg, payload)

    def _reply_in(self, client, userdata, msg) -> None:
        self._forward(self.door, msg, bytes(msg.payload))

    def close(self) -> None:
        for client in (self.door, self.cloud):
            client.disconnect()
            try:
                client.loop_stop()
            except AttributeError:  # paho race when the thread ends by itself
                pass


@pytest.fixture(scope="module")
def system(tmp_path_factory, faces_dir):
    work = tmp_path_factory.mktemp("relay")
    door_broker, cloud_broker = start_broker(work / "door-mqtt"), start_broker(work / "cloud-mqtt")
    cloud = CloudService(work / "cloud", cloud_broker, work / "cloud.log")
    relay = None
    try:
        cloud.start()
        config = write_device_config(
            work / "door.toml",
            site=SITE,
            cloud_url=cloud.url,
            broker=door_broker,  # the door reaches the cloud only through the relay
            state_dir=work / "door",
            camera="unused",
            decision={"reply_timeout": 3.0, "open_seconds": 0.5, "cooldown_s": 0.5},
        )
        kit = faces_dir / "people" / "kit_harington"
        assert device_main(["--config", str(config), *cloud.init_args()]) == 0
        assert device_main(["--config", str(config), "enroll", "Kit", str(kit / "kit1.jpg"), str(kit / "kit2.jpg")]) == 0
        relay = Relay(door_broker, cloud_broker)
        device_config = load_config(DeviceConfig, config, env={})
        analyzer = FaceAnalyzer(face_config(device_config))
        yield SimpleNamespace(
            cloud=cloud,
            relay=relay,
            config=config,
            device_config=device_config,
            analyzer=analyzer,
            resident=[load_image(kit / n) for n in ("kit1.jpg", "kit2.jpg")],
            stranger=[load_image(faces_dir / "people" / "alex_lacamoire" / n) for n in ("alex1.jpg", "alex2.jpg", "alex3.png")],
        )
    finally:
        if relay is not None:
            relay.close()
        cloud.stop(20)
        door_broker.stop()
        cloud_broker.stop()


class Door:
    """The real agent with a mock-pin lock; every verdict and every unlock is recorded."""

    def __init__(self, system) -> None:
        self.agent = build_agent(system.device_config, lock=Lock("GPIO17", pin_factory="mock"), analyzer=system.analyzer)
        self.verdicts: list = []
        self.unlocks = 0
        self.agent.when_decided = self._decided
        self.agent.connect(wait=10)
        assert self.agent.link.is_connected

    def _decided(self, verdict, decision) -> None:
        self.verdicts.append(verdict)
        self.unlocks += bool(decision.unlock)

    def show(self, images) -> list:
        start = len(self.verdicts)
        for rgb in images:
            assert self.agent.process_frame(rgb) is not None, "no usable face in a test photo"
        return self.verdicts[start:]

    def close(self) -> None:
        self.agent.close()


@pytest.fixture
def door(system):
    system.relay.tamper = lambda payload: [payload]
    d = Door(system)
    yield d
    d.close()
    system.relay.tamper = lambda payload: [payload]


def metric(system, name: str, **labels: str) -> float:
    """One counter of the cloud's /metrics (0 when absent)."""
    with urllib.request.urlopen(f"{system.cloud.url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name + ("{" + want + "}" if want else "")) + r" ([0-9.e+]+)"
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def scans(system) -> float:
    return metric(system, "blindgate_probes_answered_total", status="ok")


def test_positive_control_the_resident_opens_through_an_honest_relay(system, door):
    verdicts = door.show(system.resident)
    assert [v.kind for v in verdicts] == [VerdictKind.MATCH, VerdictKind.MATCH], verdicts
    assert door.unlocks == 1 and len(system.relay.seen) >= 2
    unknown = door.show(system.stranger[:1])
    assert unknown[0].kind == VerdictKind.UNKNOWN  # and the stranger, relayed honestly, is unknown


def test_substituted_probe_never_opens_the_door(system, door):
    door.show(system.resident[:1])  # the relay records the resident's probe on its way
    recorded = decode_probe_request(system.relay.seen[-1])
    throwaway = new_signing_key()

    def naive(payload: bytes) -> list[bytes]:  # swap the probe bytes, keep header and signature
        req = decode_probe_request(payload)
        body = payload[:-64]
        return [body[: body.rindex(req.probe)] + recorded.probe + payload[-64:]]

    def rehashed(payload: bytes) -> list[bytes]:  # also fix up the header's probe hash
        req = decode_probe_request(payload)
        return [encode_probe_request(replace(req, probe=recorded.probe), throwaway)[:-64] + payload[-64:]]

    before = scans(system)
    for tamper in (naive, rehashed):
        system.relay.tamper = tamper
        verdicts = door.show(system.stranger)
        # refused by the cloud: an error reply (or, for an unparseable request, one the door cannot even match)
        assert all(v.kind == VerdictKind.DOUBT for v in verdicts), verdicts
        assert all("cloud answered error" in v.reason or v.reason == "no reply in time" for v in verdicts), verdicts
    assert door.unlocks == 0 and door.agent.lock.is_locked
    assert scans(system) == before  # the cloud scanned none of them
    assert metric(system, "blindgate_probes_refused_total", reason="malformed") >= 3  # probe hash mismatch
    assert metric(system, "blindgate_probes_refused_total", reason="not_authentic") >= 3  # door signature fails
    system.relay.tamper = lambda payload: [payload]
    assert [v.kind for v in door.show(system.resident)] == [VerdictKind.MATCH] * 2 and door.unlocks == 1


def test_request_signed_by_an_unregistered_key_is_not_scanned(system, door):
    door.show(system.resident[:1])
    recorded = decode_probe_request(system.relay.seen[-1])
    impostor = new_signing_key()  # the relay signs its forgery itself

    def forge(payload: bytes) -> list[bytes]:
        return [encode_probe_request(replace(decode_probe_request(payload), probe=recorded.probe), impostor)]

    system.relay.tamper = forge
    before, refused = scans(system), metric(system, "blindgate_probes_refused_total", reason="not_authentic")
    verdicts = door.show(system.stranger[:2])
    assert all(v.kind == VerdictKind.DOUBT and "not signed by a door registered" in v.reason for v in verdicts), verdicts
    assert door.unlocks == 0 and door.agent.lock.is_locked
    assert scans(system) == before
    assert metric(system, "blindgate_probes_refused_total", reason="not_authentic") == refused + 2


def test_replayed_requests_get_no_second_scan(system, door):
    system.relay.tamper = lambda payload: [payload, payload]  # every request sent twice
    before, dropped = scans(system), metric(system, "blindgate_probes_dropped_total", reason="replayed")
    verdicts = door.show(system.resident)
    assert [v.kind for v in verdicts] == [VerdictKind.MATCH] * 2 and door.unlocks == 1  # positive control
    assert scans(system) == before + 2  # two requests, two scans, not four
    assert metric(system, "blindgate_probes_dropped_total", reason="replayed") == dropped + 2


def test_rotated_door_key_works_without_re_enrollment(system, door):
    old = DeviceState(system.device_config.state_dir).load_door_key()
    assert device_main(["--config", str(system.config), "rotate-door-key"]) == 0
    verdicts = door.show(system.resident)  # the running agent signs with the new key from its next probe
    assert [v.kind for v in verdicts] == [VerdictKind.MATCH] * 2 and door.unlocks == 1
    system.relay.tamper = lambda payload: [encode_probe_request(decode_probe_request(payload), old)]
    verdicts = door.show(system.resident[:1])  # the old key (say, stolen) is refused
    assert verdicts[0].kind == VerdictKind.DOUBT and "not signed by a door registered" in verdicts[0].reason
