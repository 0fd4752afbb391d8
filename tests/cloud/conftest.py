"""Helpers for the cloud service's tests: a site's keys, a simulated door device, service processes."""

from __future__ import annotations

import base64
import math
import os
import queue
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from shared.config import CloudConfig, MQTTConfig
from shared.engine import generate_site_keys
from shared.protocol import encode_probe_request, new_probe_request, probe_topic, reply_topic

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def site_keys():
    return generate_site_keys()


@pytest.fixture(scope="session")
def other_keys():
    return generate_site_keys()


def embeddings(n: int, seed: int = 0) -> np.ndarray:
    """Random dlib-like face embeddings."""
    return np.random.default_rng(seed).normal(0, 0.09, (n, 128))


def cloud_config(state_dir: Path, broker=None, **overrides) -> CloudConfig:
    mqtt_config = MQTTConfig(host=broker.host, port=broker.port) if broker else MQTTConfig(port=1)
    values = dict(state_dir=str(state_dir), workers=1, queue_size=8, log_format="text", mqtt=mqtt_config)
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
        self.replies: queue.Queue = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{site}-{device}-{os.getpid()}", protocol=mqtt.MQTTv5)
        self._subscribed = queue.Queue()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(reply_topic(site, device), qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.put(True)
        self.client.on_message = lambda c, u, m: self.replies.put(m)
        self.client.connect(host, port)
        self.client.loop_start()
        self._subscribed.get(timeout=10)

    def publish_raw(self, payload: bytes, *, request_id: str | None = None, ttl: float = 10.0, response: bool = True, topic: str | None = None):
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServiceProcess:
    """`python -m cloud.cli serve` as a subprocess, configured through BLINDGATE_* variables."""

    def __init__(self, state_dir: Path, broker, log_path: Path, **env) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = dict(os.environ)
        environ.update(
            BLINDGATE_STATE_DIR=str(state_dir),
            BLINDGATE_HTTP_PORT=str(self.port),
            BLINDGATE_MQTT_HOST=broker.host,
            BLINDGATE_MQTT_PORT=str(broker.port),
            BLINDGATE_WORKERS="1",
            BLINDGATE_LOG_FORMAT="text",
            PYTHONPATH=str(ROOT),
        )
        environ.update({k: str(v) for k, v in env.items()})
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cloud.cli", "serve"], cwd=ROOT, env=environ, stdout=self.log, stderr=self.log
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        import json
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited with {self.process.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as resp:
                    if json.load(resp).get("mqtt_connected"):
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"service not ready within {timeout} s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.log.close()
