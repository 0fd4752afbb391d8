"""The SHIPPED broker sample (systemd/mosquitto-blindgate.conf + -dynsec.json) isolates doors.

The sample runs as shipped except for what a test must change: its listener moves to a free
loopback port, its paths to a temporary directory (with a CA and broker certificate generated
here, so every client below connects over verified TLS), and each user gets a random password.
Each claim is attacked with real clients and has a positive control (the honest path works).
"""

from __future__ import annotations

import glob
import json
import os
import queue
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from blindgate.shared.broker_auth import new_password, set_dynsec_password
from blindgate.shared.launch import free_port, mosquitto_binary
from tests.tls_ca import make_test_ca

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "systemd"
PLUGIN_GLOBS = ("/usr/lib/*/mosquitto_dynamic_security.so", "/usr/lib/mosquitto_dynamic_security.so", "/usr/local/lib/*.so")
DOOR_A, DOOR_B = "home-door1", "home-door2"  # users of the sample: site "home", doors door1 and door2
B = "blindgate/home/door2"
WAIT = 10.0


def _plugin() -> str | None:
    found = [p for pattern in PLUGIN_GLOBS for p in glob.glob(pattern) if p.endswith("mosquitto_dynamic_security.so")]
    return found[0] if found else None


@dataclass
class SampleBroker:
    port: int
    ca_file: str
    passwords: dict[str, str]
    process: subprocess.Popen


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SampleBroker]:
    binary, plugin = mosquitto_binary(), _plugin()
    if binary is None or plugin is None:
        pytest.skip("mosquitto with its dynamic-security plugin is not installed (apt-get install mosquitto)")
    work = tmp_path_factory.mktemp("sample-broker")
    tls = make_test_ca(work / "certs")
    port = free_port()
    conf = (SAMPLE_DIR / "mosquitto-blindgate.conf").read_text()
    for shipped, local in {
        "plugin /usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so": f"plugin {plugin}",
        "/var/lib/mosquitto/blindgate-dynsec.json": str(work / "dynsec.json"),
        "listener 8883\n": f"listener {port} 127.0.0.1\n",
        "/etc/mosquitto/certs/ca.crt": str(tls.ca_file),
        "/etc/mosquitto/certs/broker.crt": str(tls.cert_file),
        "/etc/mosquitto/certs/broker.key": str(tls.key_file),
    }.items():
        assert shipped in conf, f"the sample config changed: {shipped!r} is gone; update this test"
        conf = conf.replace(shipped, local)
    conf += f"persistence false\nlog_dest file {work / 'mosquitto.log'}\n" + ("user root\n" if os.geteuid() == 0 else "")
    (work / "mosquitto.conf").write_text(conf)
    dynsec = json.loads((SAMPLE_DIR / "mosquitto-blindgate-dynsec.json").read_text())
    passwords = {client["username"]: new_password() for client in dynsec["clients"]}
    for username, password in passwords.items():
        set_dynsec_password(dynsec, username, password)
    (work / "dynsec.json").write_text(json.dumps(dynsec))
    process = subprocess.Popen([binary, "-c", str(work / "mosquitto.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + WAIT
    while True:
        assert process.poll() is None, f"mosquitto exited {process.returncode}: {(work / 'mosquitto.log').read_text()}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "the sample broker did not listen"
            time.sleep(0.05)
    yield SampleBroker(port, str(tls.ca_file), passwords, process)
    process.terminate()
    process.wait(10)


class Conn:
    """A TLS MQTT v5 client of the sample broker that records CONNACK, SUBACK and PUBACK answers."""

    def __init__(self, broker: SampleBroker, user: str | None, password: str | None = None, client_id: str = "") -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.tls_set(ca_certs=broker.ca_file, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if user is not None:
            self.client.username_pw_set(user, broker.passwords.get(user, "") if password is None else password)
        self.connack: queue.Queue = queue.Queue()
        self.dropped = threading.Event()
        self.messages: queue.Queue = queue.Queue()
        self.acks: dict[int, queue.Queue] = {}
        self.client.on_connect = lambda c, u, f, rc, p: self.connack.put(rc)
        self.client.on_disconnect = lambda c, u, f, rc, p: self.dropped.set()
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload), bool(m.retain)))
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._ack(mid, rcs[0])
        self.client.on_publish = lambda c, u, mid, rc, p: self._ack(mid, rc)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.reason = self.connack.get(timeout=WAIT)

    def _ack(self, mid: int, reason) -> None:
        self.acks.setdefault(mid, queue.Queue()).put(reason)

    def _answer(self, mid: int):
        return self.acks.setdefault(mid, queue.Queue()).get(timeout=WAIT)

    def subscribe(self, topic: str) -> bool:
        """True when the broker granted the subscription."""
        _, mid = self.client.subscribe(topic, qos=1)
        return not self._answer(mid).is_failure

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> bool:
        """True when the broker accepted the QoS 1 publish (PUBACK success), False for "not authorized"."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        return not self._answer(info.mid).is_failure

    def next_message(self) -> tuple[str, bytes, bool]:
        return self.messages.get(timeout=WAIT)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def conns(sample: SampleBroker) -> Iterator:
    opened: list[Conn] = []

    def connect(user: str | None, password: str | None = None, client_id: str = "") -> Conn:
        conn = Conn(sample, user, password, client_id)
        opened.append(conn)
        if user in sample.passwords and password is None:
            assert not conn.reason.is_failure, f"{user} could not connect: {conn.reason}"
        return conn

    yield connect
    for conn in opened:
        conn.close()


def test_only_known_users_with_their_password_connect(conns, sample):
    assert conns(None).reason.is_failure  # anonymous
    assert conns(DOOR_A, "wrong password").reason.is_failure
    assert conns("stranger", "whatever").reason.is_failure
    assert not conns(DOOR_A).reason.is_failure  # positive control


def test_door_reads_only_its_own_replies(conns):
    a, b, cloud = conns(DOOR_A), conns(DOOR_B), conns("blindgate-cloud")
    assert b.subscribe(f"{B}/reply")  # positive control: door B takes its replies
    assert a.subscribe("blindgate/home/door1/reply")
    for topic in (f"{B}/reply", "blindgate/+/+/reply", "#", f"$share/g/{B}/reply"):
        assert not a.subscribe(topic), topic
    assert cloud.publish(f"{B}/reply", b"for door2")
    assert b.next_message() == (f"{B}/reply", b"for door2", False)
    assert cloud.publish("blindgate/home/door1/reply", b"sentinel")  # A's own reply comes after B's
    assert a.next_message() == ("blindgate/home/door1/reply", b"sentinel", False)
    assert a.messages.empty()


def test_door_cannot_write_another_doors_topics(conns):
    a, b, ha = conns(DOOR_A), conns(DOOR_B), conns("homeassistant")
    assert ha.subscribe("blindgate/+/+/lock") and ha.subscribe("blindgate/+/+/availability")
    for topic, payload in ((f"{B}/lock", "UNLOCKED"), (f"{B}/availability", "offline")):
        assert not a.publish(topic, payload, retain=True), topic
    for topic in (f"{B}/probe", f"{B}/event", "homeassistant/lock/home_door2/config", "homeassistant/event/home_door2/config"):
        assert not a.publish(topic, b"forged"), topic
    assert b.publish(f"{B}/lock", "LOCKED", retain=True)  # positive control: B's own state gets through
    assert ha.next_message() == (f"{B}/lock", b"LOCKED", False)
    assert a.publish("blindgate/home/door1/lock", "LOCKED", retain=True)  # and so does A's, on its own topic
    assert ha.next_message() == ("blindgate/home/door1/lock", b"LOCKED", False)
    assert ha.messages.empty()
    late = conns("homeassistant", client_id="ignored")  # retained state seen later is still B's own
    assert late.subscribe(f"{B}/lock")
    assert late.next_message() == (f"{B}/lock", b"LOCKED", True)


def test_door_cannot_take_another_doors_client_id(conns):
    """use_username_as_clientid: A asking for B's client id gets its own; B stays on, no Last Will fires."""
    ha = conns("homeassistant")
    assert ha.subscribe(f"{B}/availability")
    b = conns(DOOR_B, client_id="blindgate-home-door2")  # the client id the real link asks for
    impostor = conns(DOOR_A, client_id="blindgate-home-door2")
    assert not impostor.reason.is_failure
    assert b.publish(f"{B}/availability", "online")  # B is still connected: nothing kicked it off
    assert ha.next_message() == (f"{B}/availability", b"online", False)
    assert not b.dropped.is_set()
    # positive control: client ids are the user names, so a second A session does replace the first
    conns(DOOR_A, client_id="anything")
    assert impostor.dropped.wait(WAIT)
    assert not b.dropped.is_set()


def test_door_cannot_starve_another_door_through_the_shared_subscription(conns):
    a, b = conns(DOOR_A), conns(DOOR_B)
    for topic in ("$share/blindgate-cloud/blindgate/+/+/probe", f"$share/blindgate-cloud/{B}/probe", "blindgate/+/+/probe"):
        assert not a.subscribe(topic), topic
    cloud, cloud2 = conns("blindgate-cloud"), conns("blindgate-cloud-2")  # positive control: the cloud's users may
    assert cloud.subscribe("$share/blindgate-cloud/blindgate/+/+/probe")
    assert cloud2.subscribe("$share/blindgate-cloud/blindgate/+/+/probe")
    for i in range(10):
        assert b.publish(f"{B}/probe", f"probe {i}")
    got: list[bytes] = []
    deadline = time.monotonic() + WAIT
    while len(got) < 10 and time.monotonic() < deadline:
        for conn in (cloud, cloud2):
            while not conn.messages.empty():
                got.append(conn.messages.get()[1])
        time.sleep(0.02)
    assert sorted(got) == sorted(f"probe {i}".encode() for i in range(10))
    assert a.messages.empty()


def test_home_assistant_cannot_act_as_a_door(conns):
    ha, a = conns("homeassistant"), conns(DOOR_A)
    door1 = "blindgate/home/door1"
    for topic in (
        f"{door1}/probe",
        f"{door1}/event",
        f"{door1}/lock",
        f"{door1}/availability",
        "homeassistant/lock/home_door1/config",
    ):
        assert not ha.publish(topic, b"forged"), topic
    for topic in (f"{door1}/reply", "$share/blindgate-cloud/blindgate/+/+/probe", f"{door1}/probe"):
        assert not ha.subscribe(topic), topic
    # positive controls: HA reads what it shows and announces its own status to the doors
    assert ha.subscribe(f"{door1}/event") and ha.subscribe("homeassistant/lock/+/config")
    assert a.publish(f"{door1}/event", b'{"event": "unknown"}')
    assert ha.next_message() == (f"{door1}/event", b'{"event": "unknown"}', False)
    assert a.publish("homeassistant/lock/home_door1/config", b"{}")
    assert ha.next_message() == ("homeassistant/lock/home_door1/config", b"{}", False)
    assert a.subscribe("homeassistant/status")
    assert ha.publish("homeassistant/status", "online")
    assert a.next_message() == ("homeassistant/status", b"online", False)


def test_claims_reach_only_their_door_and_only_home_assistant_sends_them(conns):
    """A door reads its own claim topic only; Home Assistant (a claim source) may publish claims, doors may not.

    Claims are sealed end to end by a registered source (device/claims.py): the ACL is defence in depth.
    """
    ha, a, b = conns("homeassistant"), conns(DOOR_A), conns(DOOR_B)
    assert a.subscribe("blindgate/home/door1/claim")  # positive control
    for topic in (f"{B}/claim", "blindgate/+/+/claim", "blindgate/home/+/claim"):
        assert not a.subscribe(topic), topic
    for topic in ("blindgate/home/door1/claim", f"{B}/claim"):
        assert not b.publish(topic, b"forged"), topic  # a door cannot claim at any door
    assert not a.publish("blindgate/home/door1/claim", b"forged")
    assert ha.publish("blindgate/home/door1/claim", b"sealed claim")
    assert a.next_message() == ("blindgate/home/door1/claim", b"sealed claim", False)
    assert a.messages.empty()


def test_home_assistant_reads_each_doors_health_and_activity_that_only_the_door_writes(conns):
    """The topics behind the HA entities (device/health.py, device/activity.py, device/discovery.py)."""
    ha, a, b = conns("homeassistant"), conns(DOOR_A), conns(DOOR_B)
    door1 = "blindgate/home/door1"
    own = (
        (f"{door1}/health", b'{"state": "offline", "problems": ["cloud"]}'),
        (f"{door1}/activity/decision", b'{"event": "unknown", "label": null}'),
        (f"{door1}/activity/recognized", b'{"label": "Alice"}'),
        ("homeassistant/binary_sensor/home_door1/lock/config", b"{}"),
        ("homeassistant/lock/home_door1/config", b""),  # clearing the retired lock entity
    )
    assert ha.subscribe("blindgate/+/+/health") and ha.subscribe("blindgate/+/+/activity/+")
    assert ha.subscribe("homeassistant/binary_sensor/#") and ha.subscribe("homeassistant/lock/#")
    for topic, payload in own:  # positive control: door A writes its own, Home Assistant reads it
        assert a.publish(topic, payload, retain=True), topic
        assert ha.next_message() == (topic, payload, False)
    for topic in (
        f"{B}/health",
        f"{B}/activity/decision",
        f"{B}/activity/recognized",
        "homeassistant/binary_sensor/home_door2/lock/config",
    ):
        assert not a.publish(topic, b"forged", retain=True), topic  # not another door's
        assert not ha.publish(topic, b"forged", retain=True), topic  # and Home Assistant is no door
    assert b.publish(f"{B}/health", b'{"state": "online"}', retain=True)  # door B's own still gets through
    assert ha.next_message() == (f"{B}/health", b'{"state": "online"}', False)
    assert ha.messages.empty()
    for topic, _ in own[:4]:  # leave no retained state behind for the other tests
        assert a.publish(topic, b"", retain=True)
    assert b.publish(f"{B}/health", b"", retain=True)
