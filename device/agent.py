"""The door agent: camera -> face -> encrypted probe -> cloud (MQTT v5) -> decrypt -> decide -> lock.

Per frame: `FaceAnalyzer.analyze` (poor frames are skipped), `encrypt_probe`, a probe request
on `blindgate/<site>/<device>/probe` with ResponseTopic, CorrelationData and
MessageExpiryInterval, then the reply is awaited up to `decision.reply_timeout`. A reply counts
only if `open_reply` verifies the cloud's Ed25519 signature and `PendingRequests.accept` finds
it answers this device's current, unexpired request (so duplicates and replays are refused).
The device decrypts the distances itself (`decode_scan`), applies the threshold, maps the best
(block, slot) to a subject through a cache of the cloud's subject list (refreshed when the
reply's gallery version differs), and feeds the verdict to the `DecisionEngine`, which alone
unlocks the `Lock`.

Fail secure: a timeout, a broker disconnect, a bad signature, a stale, duplicated or foreign
reply, garbage, a busy/error status, an unknown slot or a borderline distance all keep the door
locked. Retained messages are never acted on. Events carry only the decision and the decrypted
label, never a distance or score; so do the audit log and the log lines.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from blindgate.shared.config import DeviceConfig
from blindgate.shared.engine import EngineError, SiteKeys, decode_scan, encrypt_probe
from blindgate.shared.errors import BlindgateError
from blindgate.shared.protocol import (
    STATUS_OK,
    PendingRequests,
    ProbeRequest,
    ProtocolError,
    Reply,
    encode_probe_request,
    new_probe_request,
    open_reply,
    probe_topic,
)

from .decision import EVENT_DENIED, EVENT_RECOGNIZED, EVENT_UNKNOWN, Decision, DecisionEngine
from .labels import LabelCipher, LabelError

log = logging.getLogger("blindgate.device.agent")

# Distances just above the threshold are neither a match nor a confident non-match: they keep
# the door locked without counting as a failed attempt (the same person in poor light).
DOUBT_MARGIN = 0.05
# Without a frame for this long the agent is not healthy (the systemd watchdog stops pinging).
FRAME_STALL_S = 10.0
SW_VERSION = "0.1.0"

MATCH, UNKNOWN, DOUBT, REJECTED = "match", "unknown", "doubt", "rejected"


@dataclass(frozen=True)
class Verdict:
    """What one frame's reply means. `REJECTED`: not an answer to the request being awaited."""

    kind: str
    reason: str = ""
    subject: str | None = None
    label: str | None = None
    request_id: str | None = None
    gallery_version: int | None = None
    timings: dict = field(default_factory=dict)


class DirectoryError(BlindgateError, RuntimeError):
    """The subject list could not be fetched or does not match the reply's gallery."""


class SubjectDirectory:
    """(block, slot) -> (subject id, decrypted label), cached per gallery version."""

    def __init__(self, fetch: Callable[[], dict], labels: LabelCipher) -> None:
        self._fetch = fetch
        self._labels = labels
        self._guard = threading.Lock()
        self.version: int | None = None
        self._slots: dict[tuple[int, int], tuple[str, str | None]] = {}

    def refresh(self) -> int:
        try:
            answer = self._fetch()
            version = int(answer["gallery_version"])
            slots = {}
            for item in answer["subjects"]:
                try:
                    label = self._labels.decrypt(base64.b64decode(item["label"], validate=True))
                except (LabelError, ValueError, TypeError):
                    label = None  # shown as null; never trust a name we cannot authenticate
                slots[(int(item["block"]), int(item["slot"]))] = (str(item["subject"]), label)
        except DirectoryError:
            raise
        except Exception as exc:  # network, HTTP error, malformed answer
            raise DirectoryError(f"subject list unavailable: {exc}") from None
        with self._guard:
            self.version, self._slots = version, slots
        return version

    def lookup(self, gallery_version: int, block: int, slot: int) -> tuple[str, str | None]:
        with self._guard:
            current = self.version
        if current != gallery_version:
            current = self.refresh()
            if current != gallery_version:
                raise DirectoryError(f"gallery changed during the scan (reply v{gallery_version}, list v{current})")
        with self._guard:
            found = self._slots.get((block, slot))
        if found is None:
            raise DirectoryError(f"no subject at block {block} slot {slot} in gallery v{gallery_version}")
        return found


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    """Append-only JSON lines in the state directory: decisions and lock changes, no images or scores."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._guard = threading.Lock()

    def write(self, **entry: Any) -> None:
        if self.path is None:
            return
        line = json.dumps({"ts": now_iso(), **entry}, default=str) + "\n"
        with self._guard:
            try:
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(line)
            except OSError as exc:
                log.warning("audit log write failed: %s", exc)


class Agent:
    """One door. Build with `Agent.from_config` or pass the parts (tests pass mocks)."""

    def __init__(
        self,
        config: DeviceConfig,
        keys: SiteKeys,
        verify_key,
        directory: SubjectDirectory,
        lock,
        analyzer=None,
        audit: AuditLog | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.site, self.device = config.site, config.device_id
        self.prefix = config.mqtt.topic_prefix
        self.keys = keys
        self.verify_key = verify_key
        self.directory = directory
        self.lock = lock
        self.analyzer = analyzer
        self.audit = audit or AuditLog(None)
        self.decision = DecisionEngine(config.decision, clock=clock)
        self.pending = PendingRequests(self.device)
        self.threshold = float(config.decision.threshold)
        self.timings: deque[dict] = deque(maxlen=2000)
        self.counters: dict[str, int] = {}
        self._replies: queue.Queue = queue.Queue()
        self._state = threading.RLock()
        self._client = None
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self.last_frame_at: float | None = None
        self.events: list[dict] = []  # what was published (kept short; tests and `status`)

    # -- topics -------------------------------------------------------------------------------

    def topic(self, leaf: str) -> str:
        return f"{self.prefix}/{self.site}/{self.device}/{leaf}"

    @property
    def object_id(self) -> str:
        return f"{self.site}_{self.device}"

    @property
    def ha_status_topic(self) -> str:
        return f"{self.config.ha_discovery_prefix}/status"

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # -- reply handling (the security-critical part; no MQTT needed) ---------------------------

    def handle_reply(self, payload: bytes, retained: bool, embedding, now: float | None = None) -> Verdict:
        """Judge one message received on the reply topic against the pending requests."""
        if retained:
            return Verdict(REJECTED, "retained message ignored")
        t0 = time.perf_counter()
        try:
            reply = open_reply(payload, self.verify_key)
        except ProtocolError as exc:
            return Verdict(REJECTED, str(exc))
        except Exception as exc:  # anything unexpected in parsing is still just an unusable message
            return Verdict(REJECTED, f"unreadable reply: {type(exc).__name__}")
        try:
            request = self.pending.accept(reply, now=now)
        except ProtocolError as exc:
            return Verdict(REJECTED, str(exc), request_id=reply.request_id)
        verdict = self._judge(reply, request, embedding)
        timings = dict(verdict.timings, decrypt_ms=(time.perf_counter() - t0) * 1000)
        return Verdict(**{**verdict.__dict__, "timings": timings})

    def _judge(self, reply: Reply, request: ProbeRequest, embedding) -> Verdict:
        rid, version = request.request_id, reply.gallery_version
        if reply.status != STATUS_OK:
            return Verdict(DOUBT, f"cloud answered {reply.status}: {reply.message[:200]}", request_id=rid)
        slots = self.keys.params.slots
        blocks = [r.block for r in reply.results]
        if len(set(blocks)) != len(blocks) or any(b < 0 for b in blocks):
            return Verdict(DOUBT, "reply lists a block twice", request_id=rid)
        try:
            occupancy = [r.occupancy(slots) for r in reply.results]
            match = decode_scan(self.keys, embedding, [r.ciphertext for r in reply.results], occupancy)
        except (EngineError, ProtocolError, ValueError) as exc:
            return Verdict(DOUBT, f"cannot decode the result: {exc}", request_id=rid)
        distance = match.distance
        if match.best is None or not math.isfinite(distance):
            return Verdict(UNKNOWN, "no enrolled subject", request_id=rid, gallery_version=version)
        if distance > self.threshold + DOUBT_MARGIN:
            return Verdict(UNKNOWN, "unknown face", request_id=rid, gallery_version=version)
        if distance > self.threshold:
            return Verdict(DOUBT, "borderline face", request_id=rid, gallery_version=version)
        block = reply.results[match.best.block].block
        try:
            subject, label = self.directory.lookup(version, block, match.best.slot)
        except DirectoryError as exc:
            return Verdict(DOUBT, str(exc), request_id=rid, gallery_version=version)
        return Verdict(MATCH, "match", subject=subject, label=label, request_id=rid, gallery_version=version)

    def wait_reply(self, request: ProbeRequest, embedding, timeout: float) -> Verdict:
        """Wait for the answer to `request`; foreign/unusable messages are skipped, time runs on."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return Verdict(DOUBT, "no reply in time", request_id=request.request_id)
                try:
                    item = self._replies.get(timeout=remaining)
                except queue.Empty:
                    continue
                if item is None:  # broker connection lost: the request is in flight no more
                    return Verdict(DOUBT, "broker disconnected", request_id=request.request_id)
                payload, retained = item
                verdict = self.handle_reply(payload, retained, embedding)
                if verdict.kind != REJECTED:
                    return verdict
                self._count("replies_rejected")
                log.warning("reply rejected: %s", verdict.reason)
                self.audit.write(kind="reply_rejected", reason=verdict.reason)
        finally:
            self.pending.discard(request.request_id)

    # -- acting on verdicts --------------------------------------------------------------------

    def apply(self, verdict: Verdict) -> Decision:
        """Feed a frame's verdict to the decision rules and drive the lock accordingly."""
        with self._state:
            if verdict.kind == MATCH and verdict.subject:
                decision = self.decision.observe_match(verdict.subject)
            elif verdict.kind == UNKNOWN:
                decision = self.decision.observe_unknown()
            else:
                decision = self.decision.observe_doubt(verdict.reason)
            if decision.unlock:
                try:
                    self.lock.unlock()
                except Exception as exc:
                    log.error("unlock failed, staying locked: %s", exc)
                    self.decision.force_locked()
                    self._safe_lock()
                    decision = Decision(reason=f"unlock failed: {exc}")
                else:
                    self.publish_lock_state()
        if decision.event:
            label = verdict.label if decision.event in (EVENT_RECOGNIZED, EVENT_DENIED) else None
            self.publish_event(decision.event, label)
            self.audit.write(
                kind="event",
                event=decision.event,
                subject=decision.subject,
                label=label,
                request_id=verdict.request_id,
                reason=decision.reason,
            )
        elif verdict.kind == DOUBT:
            self.audit.write(kind="doubt", request_id=verdict.request_id, reason=verdict.reason)
        return decision

    def tick(self) -> None:
        with self._state:
            if self.decision.tick():
                self._safe_lock()
                self.publish_lock_state()
                self.audit.write(kind="lock", state="LOCKED", reason="hold-open time over")
            elif not self.decision.is_open and not self.lock.is_locked:
                self._safe_lock()  # belt and braces: nothing else may leave it open
                self.publish_lock_state()

    def _safe_lock(self) -> None:
        try:
            self.lock.lock()
        except Exception as exc:  # pragma: no cover - hardware failure
            log.critical("LOCK FAILED: %s", exc)

    # -- one frame ------------------------------------------------------------------------------

    def probe(self, embedding) -> Verdict:
        """Encrypt, send, await and judge one probe (no decision yet)."""
        t0 = time.perf_counter()
        ciphertext = encrypt_probe(self.keys, embedding)
        t1 = time.perf_counter()
        ttl = float(self.config.decision.reply_timeout)
        request = new_probe_request(self.site, self.device, self.keys.key_id, ciphertext, ttl=ttl)
        self.pending.expire()
        self.pending.add(request)
        if not self._connected.is_set() or self._client is None:
            self.pending.discard(request.request_id)
            return Verdict(DOUBT, "broker not connected", request_id=request.request_id)
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.topic("reply")
        props.CorrelationData = bytes.fromhex(request.request_id)
        props.MessageExpiryInterval = max(1, math.ceil(ttl))
        t2 = time.perf_counter()
        info = self._client.publish(
            probe_topic(self.site, self.device, self.prefix), encode_probe_request(request), qos=1, retain=False, properties=props
        )
        if info.rc != 0:
            self.pending.discard(request.request_id)
            return Verdict(DOUBT, f"publish failed (rc {info.rc})", request_id=request.request_id)
        verdict = self.wait_reply(request, embedding, ttl)
        t3 = time.perf_counter()
        decrypt_ms = verdict.timings.get("decrypt_ms", 0.0)
        timings = dict(verdict.timings, encrypt_ms=(t1 - t0) * 1000, round_trip_ms=(t3 - t2) * 1000 - decrypt_ms)
        return Verdict(**{**verdict.__dict__, "timings": timings})

    def process_frame(self, rgb: np.ndarray) -> Decision | None:
        """Analyze a frame; None when it has no usable face (skipped, not a verdict)."""
        self.last_frame_at = time.monotonic()
        result = self.analyzer.analyze(rgb)
        if not hasattr(result, "embedding"):
            self._count(f"skipped_{result.kind}")
            return None
        verdict = self.probe(result.embedding)
        self._count(f"verdict_{verdict.kind}")
        t = result.timings
        stages = {"detect_ms": t.detect_ms + t.quality_ms, "embed_ms": t.embed_ms, **verdict.timings}
        stages["total_ms"] = sum(stages.get(k, 0.0) for k in ("detect_ms", "embed_ms", "encrypt_ms", "round_trip_ms", "decrypt_ms"))
        self.timings.append(stages)
        decision = self.apply(verdict)
        log.info(
            "frame: %s (%s) -> %s",
            verdict.kind,
            verdict.reason,
            decision.event or decision.reason,
            extra={"verdict": verdict.kind, "event": decision.event},
        )
        return decision

    # -- MQTT -----------------------------------------------------------------------------------

    def connect(self, client=None, wait: float | None = 10.0) -> None:
        """Connect to the broker (retrying in the background) and start the network thread."""
        from blindgate.shared.mqtt import make_client

        if client is None:
            client = make_client(self.config.mqtt, client_id=f"blindgate-{self.site}-{self.device}")
        client.will_set(self.topic("availability"), "offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        client.connect_async(self.config.mqtt.host, self.config.mqtt.port, keepalive=self.config.mqtt.keepalive)
        client.loop_start()
        if wait and not self._connected.wait(wait):
            log.warning("broker %s:%s not reachable yet; retrying in the background", self.config.mqtt.host, self.config.mqtt.port)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        client.subscribe([(self.topic("reply"), 1), (self.ha_status_topic, 1)])
        self._connected.set()
        client.publish(self.topic("availability"), "online", qos=1, retain=True)
        self.publish_lock_state()
        self.publish_discovery()
        log.info("connected to broker")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._replies.put(None)  # wakes a waiting probe: it fails secure
        if was and not self._stop.is_set():
            log.warning("broker connection lost (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, msg) -> None:
        if msg.retain:
            log.warning("ignoring a retained message on %s", msg.topic)
            self._count("retained_ignored")
            return
        if msg.topic == self.topic("reply"):
            self._replies.put((bytes(msg.payload), bool(msg.retain)))
        elif msg.topic == self.ha_status_topic and msg.payload == b"online":
            self.publish_discovery()

    def _publish(self, topic: str, payload, retain: bool = False) -> None:
        if self._client is not None:
            self._client.publish(topic, payload, qos=1, retain=retain)

    def publish_lock_state(self) -> None:
        self._publish(self.topic("lock"), "LOCKED" if self.lock.is_locked else "UNLOCKED", retain=True)

    def publish_event(self, event: str, label: str | None) -> None:
        assert event in (EVENT_RECOGNIZED, EVENT_UNKNOWN, EVENT_DENIED)
        body = {"event": event, "label": label, "ts": now_iso()}
        self.events.append(body)
        del self.events[:-100]
        self._publish(self.topic("event"), json.dumps(body), retain=False)

    def discovery_configs(self) -> dict[str, dict]:
        """Home Assistant MQTT discovery: a state-only lock and an event entity, one device."""
        device = {
            "identifiers": [f"blindgate_{self.object_id}"],
            "name": f"blindgate {self.site} {self.device}",
            "manufacturer": "blindgate",
            "model": "door agent",
            "sw_version": SW_VERSION,
        }
        availability = {
            "availability_topic": self.topic("availability"),
            "payload_available": "online",
            "payload_not_available": "offline",
        }
        prefix = self.config.ha_discovery_prefix
        lock = {
            "name": "Door",
            "unique_id": f"blindgate_{self.object_id}_lock",
            "state_topic": self.topic("lock"),
            "state_locked": "LOCKED",
            "state_unlocked": "UNLOCKED",
            # Home Assistant's MQTT lock requires a command topic. The device never subscribes
            # to it: the door opens for recognised faces only, never by MQTT command.
            "command_topic": self.topic("lock/set"),
            "optimistic": False,
            "device": device,
            **availability,
        }
        event = {
            "name": "Face",
            "unique_id": f"blindgate_{self.object_id}_event",
            "state_topic": self.topic("event"),
            "event_types": [EVENT_RECOGNIZED, EVENT_UNKNOWN, EVENT_DENIED],
            "value_template": "{{ {'event_type': value_json.event, 'label': value_json.label} | tojson }}",
            "device": device,
            **availability,
        }
        return {
            f"{prefix}/lock/{self.object_id}/config": lock,
            f"{prefix}/event/{self.object_id}/config": event,
        }

    def publish_discovery(self) -> None:
        for topic, config in self.discovery_configs().items():
            self._publish(topic, json.dumps(config), retain=True)

    # -- health and the main loop ----------------------------------------------------------------

    def healthy(self) -> bool:
        """Broker connected and the camera delivered a frame recently."""
        fresh = self.last_frame_at is not None and time.monotonic() - self.last_frame_at < FRAME_STALL_S
        return self._connected.is_set() and fresh

    def _tick_loop(self, notifier) -> None:
        next_ping = 0.0
        while not self._stop.wait(0.05):
            try:
                self.tick()
            except Exception:  # pragma: no cover
                log.exception("tick failed")
            if notifier is not None and notifier.interval and time.monotonic() >= next_ping:
                if self.healthy():
                    notifier.watchdog()
                next_ping = time.monotonic() + notifier.interval

    def run(self, camera, notifier=None, max_frames: int | None = None) -> None:
        """Process frames until the camera ends, `stop()` is called or `max_frames` are read."""
        self._stop.clear()
        self._ticker = threading.Thread(target=self._tick_loop, args=(notifier,), name="blindgate-tick", daemon=True)
        self._ticker.start()
        if notifier is not None:
            notifier.ready("running")
        frames = 0
        try:
            while not self._stop.is_set():
                frame = camera.read()
                if frame is None:
                    log.info("camera stream ended")
                    break
                frames += 1
                try:
                    self.process_frame(frame.rgb)
                except Exception as exc:  # fail secure: a frame that breaks keeps the door locked
                    log.exception("frame failed")
                    self.apply(Verdict(DOUBT, f"internal error: {type(exc).__name__}"))
                if max_frames is not None and frames >= max_frames:
                    break
        finally:
            if not self._stop.is_set():
                # The stream ended with the door open: the hold-open time runs out as usual.
                deadline = time.monotonic() + self.decision.config.open_seconds + 1.0
                while self.decision.is_open and time.monotonic() < deadline:
                    time.sleep(0.05)
            if notifier is not None:
                notifier.stopping()
            self._stop.set()
            self._ticker.join(2)
            self.tick()  # no frames are judged any more: nothing may stay open

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Lock, announce offline, disconnect. Safe to call more than once."""
        self._stop.set()
        with self._state:
            self.decision.force_locked()
            self._safe_lock()
        client, self._client = self._client, None
        if client is not None:
            try:
                client.publish(self.topic("lock"), "LOCKED", qos=1, retain=True)
                info = client.publish(self.topic("availability"), "offline", qos=1, retain=True)
                if self._connected.is_set():
                    info.wait_for_publish(2)
            except Exception:  # pragma: no cover
                pass
            client.disconnect()
            try:
                client.loop_stop()
            except AttributeError:  # paho race: the network thread ended by itself after disconnect
                pass
        try:
            self.lock.close()
        except Exception:  # pragma: no cover
            pass

    # -- construction from the device's state directory -----------------------------------------

    @classmethod
    def from_config(cls, config: DeviceConfig, lock=None, analyzer=None) -> "Agent":
        from .cloud_client import CloudClient
        from .faces import FaceAnalyzer
        from .lock import Lock
        from .state import DeviceState

        state = DeviceState(config.state_dir)
        keys = state.load_keys()
        link = state.load_cloud()
        if link.key_id != keys.key_id:
            raise RuntimeError(f"{state.cloud_path} names key {link.key_id}, but {state.keys_path} holds {keys.key_id}")
        labels = LabelCipher.load(state.dir, config.site)
        client = CloudClient(config.cloud_url, config.site, token=link.token, timeout=5.0)
        directory = SubjectDirectory(client.subjects, labels)
        if lock is None:
            lock = Lock(config.lock.pin, config.lock.active_high, config.lock.pin_factory)
        if analyzer is None:
            analyzer = FaceAnalyzer(face_config(config))
        return cls(config, keys, link.verify_key(), directory, lock, analyzer, AuditLog(state.audit_path))


def face_config(config: DeviceConfig):
    from .faces import FaceConfig

    f = config.face
    return FaceConfig(
        min_face_px=f.min_face_px,
        min_sharpness=f.min_sharpness,
        detect_max_width=f.detect_max_width or None,
        upsample=f.upsample,
        model=f.model,
    )


def open_configured_camera(config: DeviceConfig):
    from .camera import open_camera

    c = config.camera
    return open_camera(c.source, width=c.width or None, height=c.height or None, fps=c.fps or None, realtime=c.realtime)


__all__ = ["Agent", "AuditLog", "DirectoryError", "SubjectDirectory", "Verdict"]
