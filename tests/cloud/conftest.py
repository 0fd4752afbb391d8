"""Helpers for the cloud service's tests: a site's keys, a simulated door device, service processes, store backends.

Store backends: `pg_url` is a fresh PostgreSQL database on the local server (admin URL from
$BLINDGATE_TEST_PG_URL, default postgresql://postgres@127.0.0.1:5432/postgres), dropped after the
test; the test SKIPS when no server answers. `store_url` runs a test once per backend: an SQLite
file path, then a PostgreSQL URL.
"""

from __future__ import annotations

import base64
import math
import os
import queue
import secrets
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from blindgate.shared.config import CloudConfig, MQTTConfig
from blindgate.shared.engine import generate_site_keys
from blindgate.shared.mqtt import make_client
from blindgate.shared.protocol import (
    encode_probe_request,
    new_probe_request,
    new_signing_key,
    probe_topic,
    public_key_to_text,
    reply_topic,
)
from tests.broker import Broker

PG_ADMIN_URL = os.environ.get("BLINDGATE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_admin():
    """An autocommit connection to the test server's admin database; pytest.skip when none answers."""
    import psycopg

    try:
        return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        from blindgate.cloud.store_schema import redact_url

        pytest.skip(
            f"PostgreSQL not reachable at {redact_url(PG_ADMIN_URL)} ({str(exc).strip()[:200]}): "
            "set BLINDGATE_TEST_PG_URL or start a server"
        )


@pytest.fixture
def pg_url():
    """A fresh, empty PostgreSQL database for one test (blindgate_test_<hex>), dropped WITH (FORCE) after it."""
    admin = _pg_admin()
    name = f"blindgate_test_{secrets.token_hex(6)}"
    try:
        admin.execute(f"CREATE DATABASE {name}")
        yield urlsplit(PG_ADMIN_URL)._replace(path=f"/{name}").geturl()
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a store test opens its `GalleryStore`: an SQLite file path, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "state" / "gallery.db")
    return request.getfixturevalue("pg_url")


@pytest.fixture(scope="session")
def site_keys():
    return generate_site_keys()


@pytest.fixture(scope="session")
def other_keys():
    return generate_site_keys()


def embeddings(n: int, seed: int = 0) -> np.ndarray:
    """Random dlib-like face embeddings."""
    return np.random.default_rng(seed).normal(0, 0.09, (n, 128))


def cloud_config(state_dir: Path, broker: Broker | None = None, **overrides: Any) -> CloudConfig:
    """A test service's config: one worker, text logs, and a broker that is not there unless given."""
    mqtt_config = broker.mqtt_config("cloud") if broker else MQTTConfig(port=1)
    values: dict[str, Any] = dict(state_dir=str(state_dir), workers=1, queue_size=8, log_format="text", mqtt=mqtt_config)
    # In-process route tests opt in to open registration (a configured provision_token still wins);
    # the closed default is tested in tests/cloud/test_registration.py with open_registration=False.
    values["open_registration"] = True
    values.update(overrides)
    return CloudConfig(**values)


def enroll_headers(
    token: str, key_id: str, label: bytes = b"encrypted-label", subject: str | None = None, sealed: bytes | None = None
) -> dict:
    """Enrollment headers; `subject` (the device's chosen id) and `sealed` (its sealed template) when given."""
    headers = {
        "Authorization": f"Bearer {token}",
        "X-Blindgate-Key-Id": key_id,
        "X-Blindgate-Label": base64.b64encode(label).decode(),
        "Content-Type": "application/octet-stream",
    }
    if subject is not None:
        headers["X-Blindgate-Subject"] = subject
    if sealed is not None:
        headers["X-Blindgate-Sealed"] = base64.b64encode(sealed).decode()
    return headers


class Device:
    """A door device's MQTT side: publishes probes signed with its door key, collects (message, properties) replies.

    Its key must be registered for its site: `door_headers()` at registration, or `register_door`.
    """

    def __init__(self, mqtt_config: MQTTConfig, site: str, device: str, tag: str = "", door_key: Any = None) -> None:
        self.site, self.device = site, device
        self.door_key = door_key or new_signing_key()  # an Ed25519PrivateKey
        self.token = ""  # the site's token, when a test keeps it here
        self.mqtt_config = mqtt_config  # the broker and this test door's credentials
        self.host, self.port = mqtt_config.host, mqtt_config.port
        self.subscribed = threading.Event()  # set while the reply subscription is granted
        self.replies: queue.Queue = queue.Queue()
        self.client = make_client(mqtt_config, f"test-{site}-{device}-{os.getpid()}{tag}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(reply_topic(site, device), qos=1)
        self.client.on_disconnect = lambda c, u, f, rc, p: self.subscribed.clear()
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.replies.put(m)
        self.client.connect(self.host, self.port)
        self.client.loop_start()
        self.wait_subscribed(10)

    def wait_subscribed(self, timeout: float) -> None:
        """Block until the broker has granted the reply subscription (again, after a reconnect)."""
        assert self.subscribed.wait(timeout), f"device {self.device} not subscribed after {timeout} s"

    def publish_raw(
        self, payload: bytes, *, request_id: str | None = None, ttl: float = 10.0, response: bool = True, topic: str | None = None
    ):
        props = Properties(PacketTypes.PUBLISH)
        if response:
            props.ResponseTopic = reply_topic(self.site, self.device)
        if request_id:
            props.CorrelationData = bytes.fromhex(request_id)
        props.MessageExpiryInterval = max(1, math.ceil(ttl))
        self.client.publish(topic or probe_topic(self.site, self.device), payload, qos=1, properties=props).wait_for_publish(5)

    @property
    def public_key(self) -> str:
        return public_key_to_text(self.door_key.public_key())

    def door_headers(self) -> dict[str, str]:
        """Headers that register this door's key along with its site (POST /v1/sites/{site})."""
        return {"X-Blindgate-Door": self.device, "X-Blindgate-Door-Key": self.public_key}

    def probe(self, key_id: str, probe: bytes, ttl: float = 10.0, **kwargs):
        req = new_probe_request(self.site, self.device, key_id, probe, ttl=ttl, **kwargs)
        self.publish_raw(encode_probe_request(req, self.door_key), request_id=req.request_id, ttl=ttl)
        return req

    def reply(self, timeout: float = 20.0) -> mqtt.MQTTMessage:
        return self.replies.get(timeout=timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def register_door(client, token: str, device: Device) -> None:
    """Register `device`'s door key with its site through the API (aiohttp test client)."""
    resp = await client.put(
        f"/v1/sites/{device.site}/doors/{device.device}",
        json={"public_key": device.public_key},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert resp.status in (200, 201), await resp.text()
