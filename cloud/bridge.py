"""The MQTT bridge: probe requests in over a shared subscription, signed replies out.

The paho client runs its own network thread. `on_message` parses and checks a request there
(cheap), then hands it to the asyncio loop, where the matcher pool scans it and the reply is
sealed (signed) and published to the request's ResponseTopic with its CorrelationData, a
MessageExpiryInterval of `reply_ttl`, QoS 1 and never retained.

Refusals follow shared/protocol.md: expired or malformed requests, unknown sites or key ids get an
error reply when a ResponseTopic exists, otherwise they are dropped and counted. An unknown site,
an unknown door, a wrong signature and a wrong key id all get the one text `NOT_AUTHENTIC`, so
replies tell nobody which sites, doors or key ids exist. Nothing is
scanned unless its door signed it (cloud/request_auth.py): the signed topic must be the one it
arrived on, it must be fresh, and a replayed request id is dropped (no second scan). The signed
reply names the SHA-256 of the probe scanned, and the mode and subject, so a device can refuse
a reply to a substituted probe. A ResponseTopic
other than the probe topic's own reply topic is never published to (dropped, reason
``bad_response_topic``): the cloud replies only where the device that the topic names listens.
Nothing derived from a probe is ever logged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import secrets
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.client import ConnectFlags, DisconnectFlags
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from blindgate.shared.config import CloudConfig
from blindgate.shared.mqtt import make_client
from blindgate.shared.protocol import (
    Mode,
    ProbeRequest,
    ProtocolError,
    Reply,
    ReplyStatus,
    decode_probe_request,
    error_reply,
    ok_reply,
    parse_probe_topic,
    probe_subscription,
    reply_topic,
    seal_reply,
)

from .match_errors import MatchError, MatchErrorKind
from .matcher import MatcherPool
from .metrics import Metrics
from .request_auth import NOT_AUTHENTIC, DoorKeys, DoorLookup, SeenRequests, freshness_problem
from .store_records import SiteRecord

log = logging.getLogger("blindgate.cloud.bridge")

SiteLookup = Callable[[str], Awaitable[SiteRecord | None]]  # the site's record, None if not registered
FirstUse = Callable[[ProbeRequest], Awaitable[bool]]  # True the first time any replica sees this request


class MQTTBridge:
    """Subscribes to probes, answers each through the matcher pool. `start()` / `stop()` from asyncio."""

    def __init__(
        self,
        config: CloudConfig,
        pool: MatcherPool,
        signing_key: Ed25519PrivateKey,
        site_lookup: SiteLookup,
        metrics: Metrics,
        door_lookup: DoorLookup | None = None,  # without it no door is registered: every probe is refused
        site_refresh: SiteLookup | None = None,  # re-reads the store: a rekey through another replica
        first_use: FirstUse | None = None,  # cloud-wide once-only check of request ids (replicas: cloud/store_seen.py)
    ) -> None:
        self.config = config
        self.prefix = config.mqtt.topic_prefix
        self.subscription = probe_subscription(config.share_group, self.prefix)
        self.pool = pool
        self.signing_key = signing_key
        self.site_lookup = site_lookup
        self.site_refresh = site_refresh
        self.metrics = metrics
        self.doors = DoorKeys(door_lookup)
        self.seen = SeenRequests()
        self.first_use = first_use
        self.reply_ttl = float(config.reply_ttl)
        self.connected = threading.Event()  # set while connected to the broker
        self.subscribed = threading.Event()  # set once the broker has granted the probe subscription
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._tasks: set[concurrent.futures.Future[None]] = set()
        client_id = f"blindgate-cloud-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.client = make_client(config.mqtt, client_id)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, wait: float = 5.0) -> None:
        """Connect (retrying in the background) and wait up to `wait` s for the first subscription."""
        self._loop = asyncio.get_running_loop()
        mqtt_config = self.config.mqtt
        self.client.connect_async(mqtt_config.host, mqtt_config.port, keepalive=mqtt_config.keepalive)
        self.client.loop_start()
        if not await self._loop.run_in_executor(None, self.connected.wait, wait):
            log.warning(
                "MQTT broker not reachable yet; retrying in the background",
                extra={"host": mqtt_config.host, "port": mqtt_config.port},
            )

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop taking probes (unsubscribe, answer late arrivals busy), finish in-flight ones, disconnect."""
        self._closing = True
        if self.connected.is_set():
            self.client.unsubscribe(self.subscription)
        pending = [asyncio.wrap_future(t) for t in list(self._tasks) if not t.done()]
        if pending:
            log.info("finishing in-flight probes", extra={"count": len(pending)})
            await asyncio.wait(pending, timeout=timeout)
        self.client.disconnect()
        await asyncio.get_running_loop().run_in_executor(None, self.client.loop_stop)
        log.info("MQTT bridge stopped")

    # -- paho callbacks (network thread) ----------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: ConnectFlags, reason_code: ReasonCode, properties: Properties | None
    ) -> None:
        if reason_code.is_failure:
            log.error("MQTT connection refused", extra={"reason": str(reason_code)})
            return
        if not self._closing:
            client.subscribe(self.subscription, qos=1)  # again after every reconnect
        self.connected.set()
        log.info("MQTT connected", extra={"subscription": self.subscription})

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        log.warning(
            "cannot reach the MQTT broker; retrying",
            extra={"host": self.config.mqtt.host, "port": self.config.mqtt.port},
        )

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: DisconnectFlags, reason_code: ReasonCode, properties: Properties | None
    ) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if not self._closing:
            log.warning("MQTT disconnected; reconnecting", extra={"reason": str(reason_code)})

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode], properties: Properties | None
    ) -> None:
        if all(not code.is_failure for code in reason_codes):
            self.subscribed.set()
        else:
            log.error("MQTT subscription refused", extra={"reasons": [str(code) for code in reason_codes]})

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.metrics.inc("blindgate_probes_received_total")
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        try:
            site, device = parse_probe_topic(message.topic, self.prefix)
        except ProtocolError:
            self._drop("bad_topic")
            return
        if response_topic is not None and response_topic != reply_topic(site, device, self.prefix):
            self._drop("bad_response_topic")
            return
        fallback = {"site": site, "device": device, "request_id": correlation.hex() if correlation else "", "nonce": ""}
        try:
            req = decode_probe_request(bytes(message.payload))
        except ProtocolError as exc:
            self._refuse(response_topic, correlation, fallback, "malformed", f"malformed probe request: {exc}")
            return
        if (req.site, req.device) != (site, device):
            self._refuse(
                response_topic, correlation, fallback, "topic_mismatch", "the request's site/device differ from its topic's"
            )
            return
        if correlation is not None and correlation != bytes.fromhex(req.request_id):
            self._refuse(
                response_topic, correlation, fallback, "correlation_mismatch", "CorrelationData differs from the request id"
            )
            return
        if req.topic != message.topic:
            self._refuse(response_topic, correlation, fallback, "topic_mismatch", "the signed topic differs from its topic")
            return
        if (stale := freshness_problem(req)) is not None:
            self._refuse(response_topic, correlation, req, "expired" if req.expired() else "not_fresh", stale)
            return
        if self._closing:
            self._refuse(response_topic, correlation, req, "shutting_down", "the cloud is shutting down; retry", ReplyStatus.BUSY)
            return
        if response_topic is None:
            self._drop("no_response_topic")
            return
        if self._loop is None:  # a message before start(): paho delivers none, but say so if it ever does
            self._drop("not_started")
            return
        future = asyncio.run_coroutine_threadsafe(self._answer(req, response_topic, correlation), self._loop)
        self._tasks.add(future)
        future.add_done_callback(self._tasks.discard)

    # -- answering ----------------------------------------------------------------------------------

    def _drop(self, reason: str) -> None:
        self.metrics.inc("blindgate_probes_dropped_total", reason=reason)
        log.debug("probe dropped", extra={"reason": reason})

    def _refuse(
        self,
        response_topic: str | None,
        correlation: bytes | None,
        req_or_fields: ProbeRequest | dict[str, str],
        reason: str,
        message: str,
        status: ReplyStatus = ReplyStatus.ERROR,
    ) -> None:
        """An error (or busy) reply when there is somewhere to send it, else a counted drop."""
        if response_topic is None:
            self._drop(reason)
            return
        self.metrics.inc("blindgate_probes_refused_total", reason=reason)
        self._publish(response_topic, correlation, error_reply(req_or_fields, status, message, self.reply_ttl))

    async def _answer(self, req: ProbeRequest, response_topic: str, correlation: bytes | None) -> None:
        try:
            authentic = await self.doors.authentic(req)
        except Exception:
            log.exception("door key lookup failed", extra={"site": req.site, "device": req.device})
            authentic = False
        if not authentic:
            self._refuse(response_topic, correlation, req, "not_authentic", NOT_AUTHENTIC)
            return
        if not self.seen.first_use(req):
            self._drop("replayed")
            return
        if self.first_use is not None:  # another replica may have scanned it: the broker spreads probes
            try:
                first = await self.first_use(req)
            except Exception:
                log.exception("cloud-wide replay check failed", extra={"site": req.site, "device": req.device})
                self._refuse(response_topic, correlation, req, "unavailable", "the cloud cannot check this request now; retry")
                return
            if not first:
                self._drop("replayed")
                return
        try:
            record = await self.site_lookup(req.site)
            if record is not None and record.key_id != req.key_id and self.site_refresh is not None:
                record = await self.site_refresh(req.site)  # cached before another replica's rekey commit?
            if record is None or record.key_id != req.key_id:  # one text for every not-authentic case: no oracle
                self.metrics.inc("blindgate_probes_refused_total", reason="not_authentic")
                reply = error_reply(req, ReplyStatus.ERROR, NOT_AUTHENTIC, self.reply_ttl)
            else:
                if req.mode == Mode.VERIFY and req.subject is not None:  # decoding requires the subject
                    version, results = await self.pool.verify(req.site, req.key_id, req.probe, req.subject, record.version)
                else:
                    version, results = await self.pool.identify(req.site, req.key_id, req.probe, record.version)
                reply = ok_reply(req, version, results, self.reply_ttl)  # bound to the bytes actually scanned
        except MatchError as exc:
            if exc.kind == MatchErrorKind.BUSY:
                self.metrics.inc("blindgate_probes_busy_total")
            status = ReplyStatus.BUSY if exc.kind == MatchErrorKind.BUSY else ReplyStatus.ERROR
            hidden = exc.kind in (MatchErrorKind.UNKNOWN_SITE, MatchErrorKind.WRONG_KEY)  # the same text as above
            reply = error_reply(req, status, NOT_AUTHENTIC if hidden else exc.message, self.reply_ttl)
        except Exception:
            log.exception("probe failed", extra={"site": req.site, "device": req.device, "request_id": req.request_id})
            reply = error_reply(req, ReplyStatus.ERROR, "internal error in the cloud", self.reply_ttl)
        self._publish(response_topic, correlation if correlation is not None else bytes.fromhex(req.request_id), reply)
        log.debug(
            "probe answered",
            extra={"site": req.site, "device": req.device, "request_id": req.request_id, "status": reply.status},
        )

    def _publish(self, topic: str, correlation: bytes | None, reply: Reply) -> None:
        payload = seal_reply(reply, self.signing_key)
        props = Properties(PacketTypes.PUBLISH)
        if correlation:
            props.CorrelationData = correlation
        props.MessageExpiryInterval = max(1, math.ceil(self.reply_ttl))
        info = self.client.publish(topic, payload, qos=1, retain=False, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self.metrics.inc("blindgate_probes_dropped_total", reason="publish_failed")
            log.warning("reply not published", extra={"rc": info.rc, "request_id": reply.request_id})
            return
        self.metrics.inc("blindgate_probes_answered_total", status=reply.status)
