"""The door agent: frame -> face -> encrypted probe -> cloud reply -> verdict -> decision -> lock.

Per frame: the `Analyzer` finds a good face (poor frames are skipped), `encrypt_probe` encrypts
its embedding, the `MqttLink` sends it as an MQTT v5 request and the reply is awaited up to
`decision.reply_timeout`. A reply counts only if `open_reply` verifies the cloud's Ed25519
signature and `PendingRequests.accept` finds it answers this device's current, unexpired request
(so duplicates and replays are refused). The `ReplyJudge` (device/judge.py) decrypts the
distances, applies the operating point's threshold for the templates decoded, names the subject
and confirms it against the sealed template; the `DecisionEngine` alone decides when the
`DoorLock` opens. With a claimed identity (device/claim_gate.py) the probe is a 1:1 verification
of that subject instead.

Fail secure: a timeout, a broker disconnect, a bad signature, a stale, duplicated or foreign
reply, garbage, a busy/error status, an unknown slot or a borderline distance all keep the door
locked. Retained messages are never acted on. Events carry only the decision and the decrypted
label (a denial its reason, an unknown face its local snapshot's file name), never a distance or
score; so do the audit log and the log lines. The access rules (device/access_store.py) may refuse
a confirmed match: a `denied` event, the door stays locked.

Observers attach by callbacks, gpiozero style: `when_decided(verdict, decision)` after every
judged frame, `when_lock_changed(state)` when the published lock state changes and
`when_frame(rgb, analysis)` for every frame read. `divert`, while set, takes the frames instead
of the door (an enrollment at the camera): nothing is probed, the door stays as it is.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blindgate.shared.config import DeviceConfig
from blindgate.shared.engine import SiteKeys, encrypt_probe
from blindgate.shared.protocol import (
    Mode,
    ProbeRequest,
    ProtocolError,
    new_probe_request,
    new_signing_key,
    open_reply,
)
from blindgate.shared.protocol.cloud_keys import ReplyVerifier

from .access_store import AccessPolicy
from .activity import DoorActivity
from .audit import AuditLog, now_iso
from .camera import CameraSource
from .claim_gate import ClaimGate
from .claims import ClaimRejection
from .decision import Decision, DecisionEngine, DoorEvent, VerdictKind
from .directory import SubjectDirectory
from .discovery import LOCKED, UNLOCKED, publish_discovery
from .faces import Analyzer, FaceResult, Rejection
from .health import FRAME_STALL_S, DoorHealth
from .integrity import TemplateCheck
from .judge import ReplyJudge, Verdict
from .link import LinkLost, MqttLink
from .liveness_watch import LivenessWatch, Outcome
from .lock import DoorLock
from .notify import Notifier
from .operating_point import OperatingPoint, check_decision_config
from .requests import PendingRequests
from .snapshots import SnapshotStore

log = logging.getLogger("blindgate.device.agent")

TIMED_STAGES = ("detect_ms", "embed_ms", "encrypt_ms", "round_trip_ms", "decrypt_ms")


class Agent:
    """One door. `build_agent(config)` (device/build.py) assembles it from the state directory."""

    def __init__(
        self,
        config: DeviceConfig,
        keys: SiteKeys,
        verify_key: ReplyVerifier,
        directory: SubjectDirectory,
        lock: DoorLock,
        integrity: TemplateCheck,
        analyzer: Analyzer | None = None,
        audit: AuditLog | None = None,
        clock: Callable[[], float] = time.monotonic,
        link: MqttLink | None = None,
        door_key: Ed25519PrivateKey | Callable[[], Ed25519PrivateKey] | None = None,
        claims: ClaimGate | None = None,
        access: AccessPolicy | None = None,
        snapshots: SnapshotStore | None = None,
        liveness: LivenessWatch | None = None,
    ) -> None:
        check_decision_config(config.decision)  # a bad mode or target is an error at start, not at the door
        self.config = config
        self.site, self.device = config.site, config.device_id
        self.keys = keys
        self.verify_key = verify_key
        self.directory = directory
        self.lock = lock
        self.analyzer = analyzer
        self.audit = audit or AuditLog(None)
        self.decision = DecisionEngine(config.decision, clock=clock)
        self.pending = PendingRequests(self.device)
        self.link = link or MqttLink(config)
        self.integrity = integrity  # the sealed-template check: no match opens without it
        self.access = access  # who may enter now (device/access_store.py); None: everyone enrolled
        self.snapshots = snapshots  # unknown-face JPEGs kept on the device (device/snapshots.py); None: off
        self.liveness = liveness  # `[liveness]` on: a match opens only after the face moved like a head
        # signs each request (from_config: door.key, re-read after a rotation); without one, a throwaway
        # key the cloud does not know, so every probe is refused and the door stays locked
        fixed_key = door_key if isinstance(door_key, Ed25519PrivateKey) else new_signing_key()
        self.door_key: Callable[[], Ed25519PrivateKey] = door_key if callable(door_key) else lambda: fixed_key
        self.link.when_connected = self._announce
        self.link.when_ha_online = self.publish_discovery
        self.link.when_retained_ignored = lambda topic: self._count("retained_ignored")
        self.link.when_replies_dropped = self._replies_dropped
        # claimed identity (1:1, device/claim_gate.py); without a gate no claim source is known: all refused
        d = config.decision
        self.claims = claims or ClaimGate(d.mode, d.claim_ttl, None, lambda kind, value: None, self.audit, clock=clock)
        self.claims.when_rejected = self._claim_rejected
        self.claims.when_failed = self._claim_failed
        self.link.when_claim = self.claims.submit
        self.health, self.activity = DoorHealth(self.link, clock), DoorActivity(self.link)  # Home Assistant's view
        self.timings: deque[dict[str, float]] = deque(maxlen=2000)
        self.counters: dict[str, int] = {}
        self.last_frame_at: float | None = None
        self.when_decided: Callable[[Verdict, Decision], None] | None = None
        self.when_lock_changed: Callable[[str], None] | None = None
        self.when_reply_rejected: Callable[[str], None] | None = None  # the reason (device/metrics.py kinds it)
        self.when_operating_point: Callable[[OperatingPoint], None] | None = None  # the identify threshold changed
        # every frame read, with the face analysis (None: not analysed); the console's live view draws it
        self.when_frame: Callable[[np.ndarray, FaceResult | Rejection | None], None] | None = None
        # while set, frames go here instead of the door and nothing is probed (enrolling at the camera)
        self.divert: Callable[[np.ndarray], None] | None = None
        self.judge = ReplyJudge(keys, directory, integrity, config.decision)
        self.judge.when_alarm = self._integrity_alarm
        self.judge.when_operating_point = self._operating_point_changed
        self._shown_lock: str | None = None
        self._state = threading.RLock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # -- reply handling (the security-critical part; no MQTT needed) ---------------------------

    def handle_reply(self, payload: bytes, retained: bool, embedding: np.ndarray, now: float | None = None) -> Verdict:
        """Judge one message received on the reply topic against the pending requests."""
        if retained:
            return Verdict(VerdictKind.REJECTED, "retained message ignored")
        t0 = time.perf_counter()
        try:
            reply = open_reply(payload, self.verify_key)
        except ProtocolError as exc:
            return Verdict(VerdictKind.REJECTED, str(exc))
        except Exception as exc:  # anything unexpected in parsing is still just an unusable message
            return Verdict(VerdictKind.REJECTED, f"unreadable reply: {type(exc).__name__}")
        try:
            request = self.pending.accept(reply, now=now)
        except ProtocolError as exc:
            return Verdict(VerdictKind.REJECTED, str(exc), request_id=reply.request_id)
        verdict = self.judge.judge(reply, request, embedding)
        return replace(verdict, timings=dict(verdict.timings, decrypt_ms=(time.perf_counter() - t0) * 1000))

    def _claim_rejected(self, kind: ClaimRejection) -> None:
        """An unauthenticated, stale, replayed or retained claim: counted (audited by the gate), never a failed attempt."""
        self._count("claims_rejected")
        self._count(f"claims_rejected_{kind}")

    def _claim_failed(self, reason: str) -> None:
        """An authenticated claim that matched nobody or expired unopened: a failed attempt toward the lockout."""
        self._count("claims_failed")
        with self._state:
            decision = self.decision.observe_failed_claim(reason)
        if decision.event:
            self.publish_event(decision.event, None)
            self.audit.write(kind="event", event=decision.event, reason=decision.reason)

    @property
    def current_point(self) -> OperatingPoint | None:
        """The identify operating point of the latest decoded reply (status topic, Home Assistant)."""
        return self.judge.current_point

    def _operating_point_changed(self, point: OperatingPoint) -> None:
        log.info(
            "operating point: threshold %.4f for %d templates, expected false open %.2g per frame, true open %.2f",
            point.threshold,
            point.enrolled,
            point.expected_false_open,
            point.expected_true_open,
            extra={"operating_point": point.as_dict()},
        )
        self.publish_status()
        if self.when_operating_point is not None:
            self.when_operating_point(point)

    def _replies_dropped(self, count: int) -> None:
        """One audit line per burst of reply-topic messages the bounded queue dropped (a flood is not judged)."""
        log.warning("dropped %d queued reply-topic messages (flood or stale)", count)
        self.audit.write(kind="replies_dropped", count=count)

    def _integrity_alarm(self, reason: str, request_id: str) -> None:
        """The `cloud_integrity` alarm: event (no distance), audit line, counter; the door stays locked."""
        self._count("cloud_integrity")
        log.error("cloud integrity alarm: %s", reason)
        self.publish_event(DoorEvent.CLOUD_INTEGRITY, None)
        self.audit.write(kind="event", event=DoorEvent.CLOUD_INTEGRITY, request_id=request_id, reason=reason)

    def wait_reply(self, request: ProbeRequest, embedding: np.ndarray, timeout: float) -> Verdict:
        """Wait for the answer to `request`; foreign/unusable messages are skipped, time runs on."""
        deadline = time.monotonic() + timeout
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    incoming = self.link.next_reply(remaining)
                except LinkLost:  # the request is in flight no more
                    self.health.cloud_missed()
                    return Verdict(VerdictKind.DOUBT, "broker disconnected", request_id=request.request_id)
                if incoming is None:
                    continue
                verdict = self.handle_reply(incoming.payload, incoming.retained, embedding)
                if verdict.kind is not VerdictKind.REJECTED:
                    self.health.cloud_answered()
                    return verdict
                self._count("replies_rejected")
                log.warning("reply rejected: %s", verdict.reason)
                self.audit.write(kind="reply_rejected", reason=verdict.reason)
                if self.when_reply_rejected is not None:
                    self.when_reply_rejected(verdict.reason)
            self.health.cloud_missed()
            return Verdict(VerdictKind.DOUBT, "no reply in time", request_id=request.request_id)
        finally:
            self.pending.discard(request.request_id)

    # -- acting on verdicts --------------------------------------------------------------------

    def apply(self, verdict: Verdict, frame: np.ndarray | None = None) -> Decision:
        """Feed a frame's verdict to the decision rules, drive the lock, publish; then `when_decided`."""
        with self._state:
            if verdict.kind is VerdictKind.MATCH and verdict.subject:
                refused = self.access.refusal(verdict.subject) if self.access is not None else None
                challenge = self.liveness.config.timeout_s if self.liveness is not None else None
                decision = self.decision.observe_match(verdict.subject, refused, challenge_s=challenge)
                if decision.challenge and self.liveness is not None:
                    self.liveness.start(verdict.subject, verdict.label)
            elif verdict.kind is VerdictKind.UNKNOWN:
                decision = self.decision.observe_unknown()
            else:
                decision = self.decision.observe_doubt(verdict.reason)
            decision = self._drive_lock(decision)
        return self._publish(verdict, decision, frame)

    def _drive_lock(self, decision: Decision) -> Decision:
        """Unlock when the rules say so (caller holds `_state`); a lock that fails to open is a non-decision."""
        if not decision.unlock:
            return decision
        try:
            self.lock.unlock()
        except Exception as exc:
            log.error("unlock failed, staying locked: %s", exc)
            self.decision.force_locked()
            self._safe_lock()
            return Decision(reason=f"unlock failed: {exc}")
        self.publish_lock_state()
        return decision

    def _publish(self, verdict: Verdict, decision: Decision, frame: np.ndarray | None) -> Decision:
        """The decision's event (MQTT, activity, audit), then `when_decided`."""
        if decision.event:
            named = (DoorEvent.RECOGNIZED, DoorEvent.DENIED, DoorEvent.LIVENESS_FAILED)
            label = verdict.label if decision.event in named else None
            with_reason = (DoorEvent.DENIED, DoorEvent.LIVENESS_FAILED)
            extra: dict[str, str | None] = {"reason": decision.reason} if decision.event in with_reason else {}
            if decision.challenge and self.liveness is not None:
                extra["prompt"] = self.liveness.prompt  # no name: it may be spoken aloud at the door
            if decision.event is DoorEvent.UNKNOWN and frame is not None and self.snapshots is not None:
                extra["snapshot"] = self.snapshots.save(frame)  # the local file name; the image stays here
            self.publish_event(decision.event, label, **extra)
            self.audit.write(
                kind="event",
                event=decision.event,
                subject=decision.subject,
                label=label,
                request_id=verdict.request_id,
                **(extra | {"reason": decision.reason}),
            )
        elif verdict.kind is VerdictKind.DOUBT:
            self.audit.write(kind="doubt", request_id=verdict.request_id, reason=verdict.reason)
        if self.when_decided is not None:
            self.when_decided(verdict, decision)
        return decision

    def _liveness_outcome(self, outcome: Outcome | None) -> None:
        """Feed a finished liveness window to the decision rules: open, or a failed attempt (never a score)."""
        if outcome is None:
            return
        self._count(f"liveness_{outcome.kind}")
        with self._state:
            decision = self._drive_lock(self.decision.observe_liveness(outcome.subject, outcome.live, outcome.kind))
        log.info("liveness: %s after %.1f s, %d landmark frames", outcome.kind, outcome.seconds, outcome.frames)
        kind = VerdictKind.MATCH if outcome.live else VerdictKind.DOUBT
        self._publish(Verdict(kind, f"liveness {outcome.kind}", outcome.subject, outcome.label), decision, None)
        if decision.unlock:
            self.claims.consume()  # a claim opens the door once

    def tick(self) -> None:
        """Relock when the hold-open time is over (and whenever the lock is open without reason)."""
        self.claims.expire()  # a claim that ran out unopened is a failed attempt
        if self.liveness is not None:
            self._liveness_outcome(self.liveness.expire())  # the face left mid-window: not live
        self.health.check()  # a camera that stopped delivering frames
        with self._state:
            if self.decision.tick():
                self._safe_lock()
                self.publish_lock_state()
                self.audit.write(kind="lock", state=LOCKED, reason="hold-open time over")
            elif not self.decision.is_open and not self.lock.is_locked:
                self._safe_lock()  # belt and braces: nothing else may leave it open
                self.publish_lock_state()

    def _safe_lock(self) -> None:
        try:
            self.lock.lock()
        except Exception as exc:  # pragma: no cover - hardware failure
            log.critical("LOCK FAILED: %s", exc)

    # -- one frame ------------------------------------------------------------------------------

    def probe(self, embedding: np.ndarray) -> Verdict:
        """Encrypt, send, await and judge one probe (no decision yet)."""
        t0 = time.perf_counter()
        ciphertext = encrypt_probe(self.keys, embedding)
        t1 = time.perf_counter()
        ttl = float(self.config.decision.reply_timeout)
        subject = self.claims.subject()  # an active claim: verify 1:1 against that subject only
        if subject is None and self.config.decision.mode == "verify":
            return Verdict(VerdictKind.DOUBT, "verify mode: no active claim")  # never a 1:N probe
        mode = Mode.VERIFY if subject is not None else Mode.IDENTIFY
        request = new_probe_request(
            self.site,
            self.device,
            self.keys.key_id,
            ciphertext,
            ttl=ttl,
            mode=mode,
            subject=subject,
            topic=self.link.topics.probe,
        )
        self.pending.expire()
        self.pending.add(request)
        if not self.link.is_connected:
            self.pending.discard(request.request_id)
            return Verdict(VerdictKind.DOUBT, "broker not connected", request_id=request.request_id)
        t2 = time.perf_counter()
        rc = self.link.publish_probe(request, ttl, self.door_key())
        if rc != 0:
            self.pending.discard(request.request_id)
            return Verdict(VerdictKind.DOUBT, f"publish failed (rc {rc})", request_id=request.request_id)
        verdict = self.wait_reply(request, embedding, ttl)
        t3 = time.perf_counter()
        decrypt_ms = verdict.timings.get("decrypt_ms", 0.0)
        return replace(
            verdict, timings=dict(verdict.timings, encrypt_ms=(t1 - t0) * 1000, round_trip_ms=(t3 - t2) * 1000 - decrypt_ms)
        )

    def process_frame(self, rgb: np.ndarray) -> Decision | None:
        """Analyze a frame; None when it has no usable face (skipped, not a verdict)."""
        if self.analyzer is None:
            raise RuntimeError("this agent has no face analyzer")
        self.last_frame_at = time.monotonic()
        self.health.frame_seen()
        self.claims.poll()  # resolve waiting claims (scrypt, so on this thread) before the frame
        if self.liveness is not None and self.liveness.active:
            self._count("liveness_frames")  # watching the matched face move: no probe meanwhile
            self._liveness_outcome(self.liveness.offer(rgb))
            return None
        divert = self.divert
        if divert is not None:
            self._count("skipped_diverted")  # someone is enrolling in front of the camera: no probe
            divert(rgb)
            return None
        if not self.claims.wants_probe():
            self._count("skipped_no_claim")  # verify mode: nothing is probed without a claim
            self._show(rgb, None)
            return None
        result = self.analyzer.analyze(rgb)
        self._show(rgb, result)
        if isinstance(result, Rejection):
            self._count(f"skipped_{result.kind}")
            return None
        verdict = self.probe(result.embedding)
        self._count(f"verdict_{verdict.kind}")
        t = result.timings
        stages = {"detect_ms": t.detect_ms + t.quality_ms, "embed_ms": t.embed_ms, **verdict.timings}
        stages["total_ms"] = sum(stages.get(k, 0.0) for k in TIMED_STAGES)
        self.timings.append(stages)
        decision = self.apply(replace(verdict, timings=stages), frame=rgb)
        if decision.unlock:
            self.claims.consume()  # a claim opens the door once
        log.info(
            "frame: %s (%s) -> %s",
            verdict.kind,
            verdict.reason,
            decision.event or decision.reason,
            extra={"verdict": str(verdict.kind), "event": decision.event},
        )
        return decision

    def _show(self, rgb: np.ndarray, result: FaceResult | Rejection | None) -> None:
        """Tell `when_frame`; an observer's failure is logged and never touches the door's decision."""
        if self.when_frame is None:
            return
        try:
            self.when_frame(rgb, result)
        except Exception:
            log.exception("frame observer failed")

    # -- what the door tells the broker ---------------------------------------------------------

    def connect(self, client: Any = None, wait: float | None = 10.0) -> None:
        """Connect to the broker (retrying in the background) and start the network thread."""
        self.link.connect(client, wait)

    def _announce(self) -> None:
        self.publish_lock_state()
        self.publish_discovery()
        self.publish_status()
        self.health.publish()

    def publish_lock_state(self) -> None:
        """Publish the lock state (retained) and tell `when_lock_changed` when it changed."""
        state = LOCKED if self.lock.is_locked else UNLOCKED
        self.link.publish(self.link.topics.lock, state, retain=True)
        if state != self._shown_lock:
            self._shown_lock = state
            if self.when_lock_changed is not None:
                self.when_lock_changed(state)

    def publish_status(self) -> None:
        """Publish the operating point in force (retained), once the first reply has told how many templates there are."""
        point = self.current_point
        if point is None:
            return
        body = {
            "enrolled": point.enrolled,
            "threshold": round(point.threshold, 4),
            "expected_false_open": float(f"{point.expected_false_open:.3g}"),
            "expected_true_open": round(point.expected_true_open, 3),
            "mode": self.config.decision.mode,
            "source": point.source,
            "max_false_open": self.config.decision.max_false_open,
        }
        self.link.publish(self.link.topics.status, json.dumps(body), retain=True)

    def publish_event(self, event: DoorEvent, label: str | None, **extra: str | None) -> None:
        """One door event (never retained); `extra`: a denial's reason, an unknown face's snapshot file name."""
        body = {"event": DoorEvent(event), "event_type": DoorEvent(event), "label": label, "ts": now_iso(), **extra}
        self.link.publish(self.link.topics.event, json.dumps(body), retain=False)
        self.activity.record(body)

    def publish_discovery(self) -> None:
        publish_discovery(self.link)

    # -- health and the main loop ----------------------------------------------------------------

    def healthy(self) -> bool:
        """Broker connected and the camera delivered a frame recently."""
        fresh = self.last_frame_at is not None and time.monotonic() - self.last_frame_at < FRAME_STALL_S
        return self.link.is_connected and fresh

    def _tick_loop(self, notifier: Notifier | None) -> None:
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

    def run(self, camera: CameraSource, notifier: Notifier | None = None, max_frames: int | None = None) -> None:
        """Process frames until the camera ends, `stop()` is called or `max_frames` are read."""
        self._stop.clear()
        self._ticker = threading.Thread(target=self._tick_loop, args=(notifier,), name="blindgate-tick", daemon=True)
        self._ticker.start()
        self.health.start()  # the camera is read from now on
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
                    self.apply(Verdict(VerdictKind.DOUBT, f"internal error: {type(exc).__name__}"))
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
        self.link.close(last_words=[(self.link.topics.lock, LOCKED)])
        try:
            self.lock.close()
        except Exception:  # pragma: no cover
            pass


__all__ = ["Agent", "Verdict"]
