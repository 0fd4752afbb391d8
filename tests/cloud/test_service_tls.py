"""MQTT over TLS end to end: a broker certified by a CA made at test time, the real cloud service and a
door client, both with `[mqtt] tls = true, ca_file = ...` (BLINDGATE_MQTT_TLS / _CA_FILE for the cloud)."""

from __future__ import annotations

import queue
import secrets

import pytest

from blindgate.shared.config import MQTTConfig
from blindgate.shared.engine import decode_scan, encrypt_enrollment, encrypt_probe
from blindgate.shared.launch import CloudService
from blindgate.shared.mqtt import make_client
from blindgate.shared.protocol import new_signing_key, open_reply, public_key_from_text, public_key_to_text
from tests.broker import start_broker
from tests.tls_ca import make_test_ca

from .conftest import Device, embeddings, enroll_headers
from .test_service import http

FACES = embeddings(2, seed=33)


@pytest.fixture
def tls_broker(tmp_path):
    broker = start_broker(tmp_path / "mosquitto", tls=make_test_ca(tmp_path / "ca"))
    yield broker
    broker.stop()


def test_probe_over_tls_gets_its_reply(tls_broker, tmp_path, site_keys):
    token = secrets.token_urlsafe(16)
    service = CloudService(tmp_path / "state", tls_broker, tmp_path / "service.log", env={"BLINDGATE_PROVISION_TOKEN": token})
    door_key = new_signing_key()
    service.start()  # ready = its MQTT bridge is connected, which it can only be over TLS
    device = None
    try:
        headers = {
            "Authorization": f"Bearer {token}",
            "X-Blindgate-Door": "door1",
            "X-Blindgate-Door-Key": public_key_to_text(door_key.public_key()),
        }
        status, info = http("POST", f"{service.url}/v1/sites/home", site_keys.evaluation_bytes, headers)
        assert status == 201, info
        for face in FACES:
            status, body = http(
                "POST",
                f"{service.url}/v1/sites/home/subjects",
                encrypt_enrollment(site_keys, face),
                enroll_headers(info["token"], site_keys.key_id),
            )
            assert status == 201, body
        config = tls_broker.mqtt_config("door")
        assert config.tls and config.ca_file
        device = Device(config, "home", "door1", door_key=door_key)
        device.probe(site_keys.key_id, encrypt_probe(site_keys, FACES[1]))
        reply = open_reply(bytes(device.reply(30).payload), public_key_from_text(info["cloud_public_key"]))
        assert reply.status == "ok", reply.message
        results = reply.results
        match = decode_scan(
            site_keys, FACES[1], [r.ciphertext for r in results], [r.occupancy() for r in results], [r.copies for r in results]
        )
        assert match.best is not None and match.best.slot == 1
    finally:
        if device is not None:
            device.close()
        service.stop()


def first_answer(config: MQTTConfig) -> str:
    """How a connection attempt ends first: "connected", "refused" (CONNACK failure or TLS error) or "dropped"."""
    client = make_client(config, f"tls-test-{secrets.token_hex(3)}")
    answers: queue.Queue = queue.Queue()
    client.on_connect = lambda c, u, f, rc, p: answers.put("refused" if rc.is_failure else "connected")
    client.on_disconnect = lambda c, u, f, rc, p: answers.put("dropped")
    try:
        client.connect(config.host, config.port, keepalive=5)
    except OSError:  # ssl.SSLCertVerificationError is one
        return "refused"
    client.loop_start()
    try:
        return answers.get(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()


def test_tls_broker_refuses_plain_and_unverified_clients(tls_broker, tmp_path):
    assert first_answer(tls_broker.mqtt_config("door", tls=False)) == "dropped"  # right password, no TLS
    other_ca = make_test_ca(tmp_path / "other-ca")  # a CA that never signed the broker's certificate
    assert first_answer(tls_broker.mqtt_config("door", ca_file=str(other_ca.ca_file))) == "refused"
    assert first_answer(tls_broker.mqtt_config("door", password="wrong")) == "refused"
    assert first_answer(tls_broker.mqtt_config("door")) == "connected"  # positive control
