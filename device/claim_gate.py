"""The door's claimed identity: which subject (if any) the next frames are verified against, 1:1.

`submit` runs on the MQTT thread and does only the cheap checks (device/claims.py: source
registered, AES-GCM opens for this door's topic, fresh, never seen, not retained); what fails
them is dropped, audited and counted, and is NEVER a failed attempt, since anyone on the broker
can send garbage and must not lock the residents out. Authenticated claims wait in a small
queue; `poll` (on the frame thread: scrypt takes tens of ms) resolves the credential to a
subject (device/credentials.py). A credential that matches nobody is a failed attempt
(`when_failed`); one that matches makes the active claim: (subject, expiry after `claim_ttl`).
The agent probes in verify mode while a claim is active (`subject()`), and `consume()`s it when
the door opens; a claim that expires without opening is a failed attempt too.

Mode "identify" ignores claims (audited); "verify" probes nothing without a claim
(`wants_probe`); "either" identifies 1:N and verifies 1:1 while a claim is active.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from blindgate.shared.errors import BlindgateError

from .audit import AuditLog
from .claim_sources import ClaimSources
from .claims import Claim, ClaimError, ClaimOpener, ClaimRejection, CredentialKind
from .credentials import CredentialStore

log = logging.getLogger("blindgate.device.claims")

QUEUE_LIMIT = 8  # authenticated claims waiting to be resolved; more is a misbehaving source


class ClaimConfigError(BlindgateError, ValueError):
    """A claim setting the door cannot run with."""


@dataclass(frozen=True)
class ActiveClaim:
    """Whom the door verifies against until `expires_at` (monotonic clock)."""

    subject: str
    source: str
    claim_id: str
    expires_at: float


class ClaimGate:
    """Claims in, the active claimed subject out. Attach `when_rejected(kind)` and `when_failed(reason)`."""

    def __init__(
        self,
        mode: str,
        ttl: float,
        opener: ClaimOpener | None,
        resolve: Callable[[CredentialKind, str], str | None],
        audit: AuditLog | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if mode not in ("identify", "verify", "either"):
            raise ClaimConfigError(f"config decision.mode: {mode!r} is not one of identify, verify, either")
        if not ttl > 0 or ttl > 600:
            raise ClaimConfigError(f"config decision.claim_ttl: {ttl!r} must be more than 0 and at most 600 seconds")
        self.mode, self.ttl = mode, float(ttl)
        self.opener, self.resolve = opener, resolve
        self.audit = audit or AuditLog(None)
        self.clock, self.wall = clock, wall
        self.when_rejected: Callable[[ClaimRejection], None] | None = None
        self.when_failed: Callable[[str], None] | None = None
        self._queue: deque[Claim] = deque()
        self._active: ActiveClaim | None = None
        self._guard = threading.Lock()

    # -- in (MQTT thread) -----------------------------------------------------------------------

    def submit(self, payload: bytes, retained: bool = False) -> None:
        """A message from the claim topic: queue it if authentic, fresh and new; otherwise drop and audit it."""
        try:
            if self.mode == "identify":
                raise ClaimError(ClaimRejection.IGNORED, "claims are ignored: decision.mode is identify")
            if self.opener is None:
                raise ClaimError(ClaimRejection.UNKNOWN_SOURCE, "no claim sources are registered on this door")
            claim = self.opener.open(payload, retained, now=self.wall())
            with self._guard:
                if len(self._queue) >= QUEUE_LIMIT:
                    raise ClaimError(ClaimRejection.FLOOD, f"more than {QUEUE_LIMIT} claims waiting: dropped")
                self._queue.append(claim)
        except ClaimError as exc:
            self._reject(exc.kind, str(exc))
        except Exception as exc:  # fail secure: whatever else breaks, the claim does not count
            self._reject(ClaimRejection.MALFORMED, f"unreadable claim: {type(exc).__name__}")

    def _reject(self, kind: ClaimRejection, message: str) -> None:
        log.warning("claim dropped (%s): %s", kind, message)
        self.audit.write(kind="claim_rejected", reason=str(kind), detail=message)
        if self.when_rejected is not None:
            self.when_rejected(kind)

    # -- resolving and expiry (frame and tick threads) ----------------------------------------------

    def poll(self) -> None:
        """Resolve queued claims (slow: scrypt) and expire the active one."""
        self.expire()
        while True:
            with self._guard:
                if not self._queue:
                    return
                claim = self._queue.popleft()
            try:
                subject = self.resolve(claim.kind, claim.value)
            except Exception as exc:  # a broken credential file is no attempt by the person: stay locked
                log.error("cannot resolve a claim from %s: %s", claim.source, type(exc).__name__)
                self.audit.write(kind="claim_rejected", reason="unresolvable", source=claim.source, claim_id=claim.claim_id)
                continue
            if subject is None:
                self.audit.write(
                    kind="claim_failed", reason="credential matches nobody", source=claim.source, claim_id=claim.claim_id
                )
                self._failed(f"claimed {claim.kind} matches nobody")
                continue
            active = ActiveClaim(subject, claim.source, claim.claim_id, self.clock() + self.ttl)
            with self._guard:
                self._active = active
            log.info("claim from %s accepted: verifying subject %s for %g s", claim.source, subject, self.ttl)
            self.audit.write(kind="claim_accepted", source=claim.source, claim_id=claim.claim_id, subject=subject)

    def expire(self) -> None:
        """A claim past its expiry is gone, and counts as a failed attempt (it did not open the door)."""
        with self._guard:
            active = self._active
            if active is None or self.clock() < active.expires_at:
                return
            self._active = None
        self.audit.write(kind="claim_failed", reason="expired without opening", source=active.source, claim_id=active.claim_id)
        self._failed("claim expired without opening")

    def _failed(self, reason: str) -> None:
        log.warning("failed claim: %s", reason)
        if self.when_failed is not None:
            self.when_failed(reason)

    # -- out ------------------------------------------------------------------------------------------

    def subject(self) -> str | None:
        """The claimed subject to verify against now, None without an active claim."""
        self.expire()
        with self._guard:
            return self._active.subject if self._active is not None else None

    def wants_probe(self) -> bool:
        """Should a frame be probed at all? Not in verify mode without an active claim."""
        return self.mode != "verify" or self.subject() is not None

    def consume(self) -> None:
        """The door opened: the claim is used up."""
        with self._guard:
            active, self._active = self._active, None
        if active is not None:
            self.audit.write(kind="claim_used", source=active.source, claim_id=active.claim_id, subject=active.subject)


def door_claim_gate(mode: str, ttl: float, state_dir: str | Path, claim_topic: str, audit: AuditLog | None = None) -> ClaimGate:
    """The gate of a provisioned door: sources and credentials from its state directory (re-read as they change)."""
    opener = ClaimOpener(claim_topic, ClaimSources(state_dir).key, ttl)
    return ClaimGate(mode, ttl, opener, CredentialStore(state_dir).resolve, audit)


__all__ = ["ActiveClaim", "ClaimConfigError", "ClaimGate", "door_claim_gate"]
