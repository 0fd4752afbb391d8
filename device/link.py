"""The door agent's MQTT v5 link: topics, connection, callbacks, publishing, the reply queue.

The link knows nothing about faces or locks. It connects (retrying in the background), keeps
the availability topic and last will, publishes probes as MQTT v5 requests (ResponseTopic,
CorrelationData, MessageExpiryInterval) and queues what arrives on the reply topic for the
agent to judge. Retained messages are never queued. A lost connection wakes whoever waits for
a reply (`LinkLost`): the request in flight fails secure. What the agent must do on (re)connect
or when Home Assistant comes back is attached as callbacks (`when_connected`, `when_ha_online`).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from blindgate.shared.config import DeviceConfig
from blindgate.shared.errors import BlindgateError
from blindgate.shared.mqtt import make_client
from blindgate.shared.protocol import ProbeRequest, encode_probe_request, probe_topic

from .reply_queue import ReplyQueue

log = logging.getLogger("blindgate.device.link")

ONLINE, OFFLINE = "online", "offline"


class LinkLost(BlindgateError, ConnectionError):
    """The broker connection dropped while a reply was awaited."""


@dataclass(frozen=True)
class DeviceTopics:
    """Every topic one door uses: `<prefix>/<site>/<device>/<leaf>` plus Home Assistant's status."""

    prefix: str
    site: str
    device: str
    ha_prefix: str

    @classmethod
    def of(cls, config: DeviceConfig) -> DeviceTopics:
        return cls(config.mqtt.topic_prefix, config.site, config.device_id, config.ha_discovery_prefix)

    def leaf(self, name: str) -> str:
        return f"{self.prefix}/{self.site}/{self.device}/{name}"

    @property
    def object_id(self) -> str:
        """The door's id in Home Assistant."""
        return f"{self.site}_{self.device}"

    @property
    def reply(self) -> str:
        return self.leaf("reply")

    @property
    def lock(self) -> str:
        return self.leaf("lock")

    @property
    def event(self) -> str:
        return self.leaf("event")

    @property
    def availability(self) -> str:
        return self.leaf("availability")

    @property
    def status(self) -> str:
        """Retained JSON: the operating point in force (threshold, expected rates, templates compared)."""
        return self.leaf("status")

    @property
    def health(self) -> str:
        """Retained JSON: can the door recognise anyone now (cloud answering, camera delivering; device/health.py)."""
        return self.leaf("health")

    @property
    def last_decision(self) -> str:
        """Retained JSON: the latest door event (event, label, ts, reason); device/activity.py."""
        return self.leaf("activity/decision")

    @property
    def last_recognized(self) -> str:
        """Retained JSON: who was recognised last, and when (label, ts); device/activity.py."""
        return self.leaf("activity/recognized")

    @property
    def probe(self) -> str:
        return probe_topic(self.site, self.device, self.prefix)

    @property
    def claim(self) -> str:
        """Sealed identity claims from registered sources (device/claims.py); the broker is not trusted with them."""
        return self.leaf("claim")

    @property
    def ha_status(self) -> str:
        return f"{self.ha_prefix}/status"


@dataclass(frozen=True)
class Incoming:
    """One message received on the reply topic."""

    payload: bytes
    retained: bool = False


class MqttLink:
    """One door's broker connection. Attach `when_connected`, `when_ha_online`, `when_retained_ignored`,
    `when_replies_dropped(count)` (once per burst of dropped reply-topic messages, before a probe)."""

    def __init__(self, config: DeviceConfig) -> None:
        self.config = config
        self.topics = DeviceTopics.of(config)
        self.client: mqtt.Client | None = None
        self.when_connected: Callable[[], None] | None = None
        self.when_ha_online: Callable[[], None] | None = None
        self.when_retained_ignored: Callable[[str], None] | None = None
        self.when_replies_dropped: Callable[[int], None] | None = None
        self.when_claim: Callable[[bytes, bool], None] | None = None  # (payload, retained), on the network thread
        self._connected = threading.Event()
        self._closing = threading.Event()
        self.replies: ReplyQueue[Incoming] = ReplyQueue(config.reply_queue)  # bounded, drop-oldest

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

    # -- connection ---------------------------------------------------------------------------

    def connect(self, client: mqtt.Client | None = None, wait: float | None = 10.0) -> None:
        """Connect (retrying in the background) and start the network thread; `wait` s for the first connect."""
        mqtt_config = self.config.mqtt
        if client is None:
            client = make_client(mqtt_config, client_id=f"blindgate-{self.topics.site}-{self.topics.device}")
        client.will_set(self.topics.availability, OFFLINE, qos=1, retain=True)
        client.on_connect = self.on_connect
        client.on_disconnect = self.on_disconnect
        client.on_message = self.on_message
        self._closing.clear()
        self.client = client
        client.connect_async(mqtt_config.host, mqtt_config.port, keepalive=mqtt_config.keepalive)
        client.loop_start()
        if wait and not self._connected.wait(wait):
            log.warning("broker %s:%s not reachable yet; retrying in the background", mqtt_config.host, mqtt_config.port)

    def on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        """paho callback: subscribe, announce online, then let the agent publish its state."""
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        client.subscribe([(self.topics.reply, 1), (self.topics.ha_status, 1), (self.topics.claim, 1)])
        self.replies.clear_lost()  # a past outage must not fail the first frame after this reconnect
        self._connected.set()
        client.publish(self.topics.availability, ONLINE, qos=1, retain=True)
        if self.when_connected is not None:
            self.when_connected()
        log.info("connected to broker")

    def on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        """paho callback: wake a waiting probe (it fails secure); paho reconnects by itself."""
        was = self._connected.is_set()
        self._connected.clear()
        self.replies.mark_lost()
        if was and not self._closing.is_set():
            log.warning("broker connection lost (%s); reconnecting", reason_code)

    def on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        """paho callback: queue replies, re-announce on Home Assistant's birth; never act on retained messages."""
        if msg.topic == self.topics.claim:  # the claim gate audits retained claims itself, then drops them
            if self.when_claim is not None:
                self.when_claim(bytes(msg.payload), bool(msg.retain))
            return
        if msg.retain:
            log.warning("ignoring a retained message on %s", msg.topic)
            if self.when_retained_ignored is not None:
                self.when_retained_ignored(msg.topic)
            return
        if msg.topic == self.topics.reply:
            self.replies.put(Incoming(bytes(msg.payload), bool(msg.retain)))
        elif msg.topic == self.topics.ha_status and msg.payload == ONLINE.encode():
            if self.when_ha_online is not None:
                self.when_ha_online()

    # -- publishing and replies ----------------------------------------------------------------

    def publish(self, topic: str, payload: str | bytes, retain: bool = False) -> None:
        """QoS 1; silently nothing before `connect` (paho queues while reconnecting)."""
        if self.client is not None:
            self.client.publish(topic, payload, qos=1, retain=retain)

    def publish_probe(self, request: ProbeRequest, ttl: float, door_key: Ed25519PrivateKey) -> int:
        """Send a probe as an MQTT v5 request signed with the door's key; the paho return code (0 = queued)."""
        if self.client is None:
            return mqtt.MQTT_ERR_NO_CONN
        dropped = self.replies.flush()  # nothing queued before this request can answer it
        if dropped and self.when_replies_dropped is not None:
            self.when_replies_dropped(dropped)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.topics.reply
        props.CorrelationData = bytes.fromhex(request.request_id)
        props.MessageExpiryInterval = max(1, math.ceil(ttl))
        info = self.client.publish(
            self.topics.probe, encode_probe_request(request, door_key), qos=1, retain=False, properties=props
        )
        return int(info.rc)

    def next_reply(self, timeout: float) -> Incoming | None:
        """The next message on the reply topic, None after `timeout` s; `LinkLost` if the connection dropped."""
        try:
            return self.replies.get(timeout)
        except ConnectionError:
            raise LinkLost("broker disconnected") from None

    def close(self, last_words: Sequence[tuple[str, str]] = ()) -> None:
        """Publish `last_words` (topic, retained payload) and `offline`, then disconnect. Safe to repeat."""
        self._closing.set()
        client, self.client = self.client, None
        if client is None:
            return
        try:
            for topic, payload in last_words:
                client.publish(topic, payload, qos=1, retain=True)
            info = client.publish(self.topics.availability, OFFLINE, qos=1, retain=True)
            if self._connected.is_set():
                info.wait_for_publish(2)
        except Exception:  # pragma: no cover - the broker is gone already
            pass
        client.disconnect()
        try:
            client.loop_stop()
        except AttributeError:  # paho race: the network thread ended by itself after disconnect
            pass


__all__ = ["DeviceTopics", "Incoming", "LinkLost", "MqttLink"]
