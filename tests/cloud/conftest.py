"""Helpers for the cloud service's tests: a site's keys, a simulated door device, service processes."""

from __future__ import annotations

import base64
import math
import os
import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from blindgate.shared.config import CloudConfig, MQTTConfig
from blindgate.shared.engine import generate_site_keys
from blindgate.shared.protocol import encode_probe_request, new_probe_request, probe_topic, reply_topic
from tests.broker import Broker


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
    mqtt_config = MQTTConfig(host=broker.host, port=broker.port) if broker else MQTTConfig(port=1)
    values: dict[str, Any] = dict(state_dir=str(state_dir), workers=1, queue_size=8, log_format="text", mqtt=mqtt_config)
    values.update(overrides)
    return CloudConfig(**values)


def enroll_headers(token: str, key_id: str, label: bytes = b"encrypted-label") -> dict:
    return {
        "Authorization": f"Bearer {token}",
        "X-Blindgate-Key-Id": key_id,
        "X-Blindgate-Label": base64.b64encode(label).decode(),
        "Content-Type": "application/octet-stream",
    }


class Device:
    """A door device's MQTT side: publishes probes, collects (message, properties) replies."""

    def __init__(self, host: str, port: int, site: str, device: str) -> None:
        self.site, self.device = site, device
        self.host, self.port = host, port
        self.subscribed = threading.Event()  # set while the reply subscription is granted
        self.replies: queue.Queue = queue.Queue()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"test-{site}-{device}-{os.getpid()}", protocol=mqtt.MQTTv5
        )
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(reply_topic(site, device), qos=1)
        self.client.on_disconnect = lambda c, u, f, rc, p: self.subscribed.clear()
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.replies.put(m)
        self.client.connect(host, port)
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

    def probe(self, key_id: str, probe: bytes, ttl: float = 10.0, **kwargs):
        req = new_probe_request(self.site, self.device, key_id, probe, ttl=ttl, **kwargs)
        self.publish_raw(encode_probe_request(req), request_id=req.request_id, ttl=ttl)
        return req

    def reply(self, timeout: float = 20.0) -> mqtt.MQTTMessage:
        return self.replies.get(timeout=timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
