"""The access rule and the door's decision rules: pure logic, no I/O, a clock passed in.

`access_verdict` is the ONE place where a decrypted distance becomes a verdict kind (match,
unknown, doubt); the threshold comes from the operating point (device/operating_point.py: the
target `max_false_open` and the templates compared, or an explicit `threshold`) and the doubt
margin from `DecisionConfig`. The agent, the integrity check, the evaluation and the demo call it.

Every frame the agent gets a verdict about it (`observe_match`, `observe_unknown`,
`observe_doubt`) and calls `tick()` regularly; the `DecisionEngine` says when to unlock, when to
lock again, and which event (if any) to publish.

Rules:
- Open only after `frames_required` consecutive frames matched the SAME subject, the first of
  them no older than `window_s`. Anything else in between (another subject, an unknown face, a
  doubtful frame: timeout, bad/stale reply, error, distance just over the threshold) restarts
  the count. Frames without a usable face are not verdicts and do not break the count; the
  window bounds how old the first agreeing frame may be.
- Hold open `open_seconds`, then lock (`tick`). While open, verdicts are ignored (no re-opening
  or extension).
- Cooldown: for `cooldown_s` after the door relocks, verdicts are ignored and nothing counts.
- Failed attempt: a confident non-match — `frames_required` consecutive unknown-face frames
  within `window_s`, exactly as an opening needs. One failed attempt is counted per such
  run; after one, unknown frames count toward the next only after `cooldown_s` (a stranger
  standing at the door is one attempt per cooldown, not ten per second). Timeouts, errors and
  doubtful frames are NOT failed attempts: they keep the door locked but cannot lock out the
  residents because the network is slow.
- Lockout: after `lockout_failures` failed attempts (each within `FAILURE_MEMORY_S` of the
  latest, reset by an opening), nothing opens for `lockout_s` (at least 30 s). A recognised
  subject during a lockout produces a "denied" event (at most one per `cooldown_s`).
- Access rules: a completed run of a subject the rules refuse now (disabled, outside their
  hours: device/access_rules.py) is a "denied" event with the reason, never an opening; it is
  no failed attempt (the person is known) and, like a lockout denial, at most one per `cooldown_s`.
- Liveness (`[liveness] mode`, off by default): a completed run that would open instead waits
  for the liveness check (a `liveness_prompt` event); verdicts are ignored meanwhile. A live
  outcome for that subject within the time opens; anything else (not live, too little movement,
  an error, the time over) is a `liveness_failed` event and a failed attempt, every time.
- Fail secure: only a completed run of matches opens; every other path keeps the door locked.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from blindgate.shared.config import DecisionConfig

# Failed attempts older than this (relative to the newest) are forgotten.
FAILURE_MEMORY_S = 300.0
# The system notes (Android class 1): lockout for at least 30 s after 5 failures.
MIN_LOCKOUT_S = 30.0


class VerdictKind(StrEnum):
    """What one frame's reply means. `REJECTED`: not an answer to the request being awaited."""

    MATCH = "match"
    UNKNOWN = "unknown"
    DOUBT = "doubt"
    REJECTED = "rejected"


class DoorEvent(StrEnum):
    """What the door publishes (MQTT event topic, Home Assistant event types, audit log)."""

    RECOGNIZED = "recognized"
    UNKNOWN = "unknown"
    DENIED = "denied"
    # The cloud's answer failed the device's own check (device/integrity.py): an alarm, raised by
    # the agent outside the decision rules; it never carries a distance.
    CLOUD_INTEGRITY = "cloud_integrity"
    # Liveness (device/liveness_watch.py, `[liveness] mode`): a match waits for the face to move like
    # a head; the prompt asks for it (no name: it may be spoken aloud at the door), a failure names
    # the person the picture matched, like a denial.
    LIVENESS_PROMPT = "liveness_prompt"
    LIVENESS_FAILED = "liveness_failed"


def access_verdict(distance: float, threshold: float, doubt_margin: float) -> VerdictKind:
    """The access rule: the best decrypted distance -> MATCH, UNKNOWN or DOUBT.

    MATCH at or under `threshold` (the operating point in force: device/operating_point.py);
    DOUBT within `doubt_margin` above it (the same person in poor light: stay locked, but it is
    no failed attempt); UNKNOWN beyond, and for inf/NaN, which mean nobody is enrolled.
    """
    if not math.isfinite(distance) or distance > threshold + doubt_margin:
        return VerdictKind.UNKNOWN
    if distance > threshold:
        return VerdictKind.DOUBT
    return VerdictKind.MATCH


@dataclass(frozen=True)
class Decision:
    """What one verdict changed: an event to publish (or None) and whether to unlock now."""

    event: DoorEvent | None = None
    subject: str | None = None
    unlock: bool = False
    reason: str = ""
    challenge: bool = False  # a completed run waits for the liveness check before it may open


class DecisionEngine:
    """The door's state over time: agreeing runs, hold-open, cooldown, failed attempts, lockout."""

    def __init__(self, config: DecisionConfig | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or DecisionConfig()
        if self.config.frames_required < 1:
            raise ValueError("decision.frames_required must be at least 1")
        if self.config.lockout_failures < 1:
            raise ValueError("decision.lockout_failures must be at least 1")
        self.clock = clock
        self.lockout_s = max(float(self.config.lockout_s), MIN_LOCKOUT_S)
        self._run_subject: str | None = None  # subject of the current run; "" = unknown-face run
        self._run_times: list[float] = []
        self._open_until: float | None = None
        self._cooldown_until = float("-inf")
        self._failures: list[float] = []
        self._failure_quiet_until = float("-inf")  # one failed attempt per cooldown
        self._lockout_until = float("-inf")
        self._denied_quiet_until = float("-inf")
        self._challenge: tuple[str, float] | None = None  # (subject, deadline) awaiting the liveness check

    # -- state --------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    def locked_out(self, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        return now < self._lockout_until

    @property
    def failures(self) -> int:
        return len(self._failures)

    def tick(self) -> bool:
        """Call regularly: True when the hold-open time is over and the door must lock now."""
        now = self.clock()
        if self._open_until is not None and now >= self._open_until:
            self._open_until = None
            self._cooldown_until = now + self.config.cooldown_s
            self._reset_run()
            return True
        if self._lockout_until != float("-inf") and now >= self._lockout_until:
            self._lockout_until = float("-inf")
            self._failures.clear()
        return False

    def force_locked(self) -> None:
        """The agent could not drive the lock as decided, or is stopping: forget any opening (and any awaited check)."""
        self._open_until = None
        self._challenge = None
        self._reset_run()

    # -- verdicts -----------------------------------------------------------------------------

    @property
    def challenged(self) -> str | None:
        """The subject whose liveness check is awaited, if any."""
        return self._challenge[0] if self._challenge is not None else None

    def observe_match(self, subject: str, refusal: str | None = None, challenge_s: float | None = None) -> Decision:
        """A confirmed match of `subject`; `refusal` is why the access rules refuse them now (device/access_store.py).

        With `challenge_s`, a completed run does not open: it waits up to that long for
        `observe_liveness` (a `challenge` decision with the prompt event).
        """
        now = self.clock()
        if self._busy(now):
            return Decision(reason="ignored: door open or cooling down")
        if not self._extend_run(subject, now):
            return Decision(reason=f"agreeing frames {len(self._run_times)}/{self.config.frames_required}")
        self._reset_run()
        if self.locked_out(now) or refusal:
            reason = "recognized during lockout" if self.locked_out(now) else f"recognized, {refusal}"
            if now < self._denied_quiet_until:
                return Decision(reason=f"denied ({reason}), event already sent")
            self._denied_quiet_until = now + self.config.cooldown_s
            return Decision(event=DoorEvent.DENIED, subject=subject, reason=reason)
        if challenge_s is not None:
            self._challenge = (subject, now + challenge_s)
            reason = "recognized; checking liveness"
            return Decision(event=DoorEvent.LIVENESS_PROMPT, subject=subject, challenge=True, reason=reason)
        return self._open(subject, now)

    def observe_liveness(self, subject: str, live: bool, reason: str) -> Decision:
        """The liveness check's outcome for the awaited `subject`: open, or one failed attempt.

        Only the check the engine is waiting for counts: another subject, a check that ran out of
        time or a lockout meanwhile keep the door locked. Not live (moved like a picture, too
        little movement, too few frames, an error) is a failed attempt toward the lockout.
        """
        now = self.clock()
        awaited, self._challenge = self._challenge, None
        self._reset_run()
        if awaited is None or awaited[0] != subject:
            return Decision(reason="no liveness check was awaited for this subject")
        if live and now <= awaited[1] and not self.locked_out(now):
            return self._open(subject, now)
        return self._failed_attempt(f"liveness check failed: {reason}", now, DoorEvent.LIVENESS_FAILED, subject)

    def _open(self, subject: str, now: float) -> Decision:
        self._open_until = now + self.config.open_seconds
        self._failures.clear()
        return Decision(event=DoorEvent.RECOGNIZED, subject=subject, unlock=True, reason="recognized")

    def observe_unknown(self) -> Decision:
        now = self.clock()
        if self._busy(now):
            return Decision(reason="ignored: door open or cooling down")
        if not self._extend_run("", now):
            return Decision(reason="unknown face, not yet a confident non-match")
        self._reset_run()
        if now < self._failure_quiet_until or self.locked_out(now):
            return Decision(reason="unknown face, attempt already counted")
        self._failure_quiet_until = now + self.config.cooldown_s
        self._failures = [t for t in self._failures if now - t <= FAILURE_MEMORY_S] + [now]
        reason = f"failed attempt {len(self._failures)}/{self.config.lockout_failures}"
        if len(self._failures) >= self.config.lockout_failures:
            self._lockout_until = now + self.lockout_s
            reason += f": locked out for {self.lockout_s:g} s"
        return Decision(event=DoorEvent.UNKNOWN, reason=reason)

    def observe_failed_claim(self, reason: str = "failed claim") -> Decision:
        """An authenticated claim that matched nobody or expired unopened: one failed attempt, each time.

        Unlike a stranger's face (one attempt per cooldown), every wrong badge or PIN counts: each
        is a deliberate try. Unauthenticated claims never get here (a broker attacker must not be
        able to lock the residents out).
        """
        now = self.clock()
        self._reset_run()
        return self._failed_attempt(reason, now, DoorEvent.UNKNOWN)

    def _failed_attempt(self, reason: str, now: float, event: DoorEvent, subject: str | None = None) -> Decision:
        """One deliberate failed try (a wrong claim, a face that was not live): counted each time."""
        if self.locked_out(now):
            return Decision(event=event if subject else None, subject=subject, reason=f"{reason}; already locked out")
        self._failures = [t for t in self._failures if now - t <= FAILURE_MEMORY_S] + [now]
        message = f"{reason}: failed attempt {len(self._failures)}/{self.config.lockout_failures}"
        if len(self._failures) >= self.config.lockout_failures:
            self._lockout_until = now + self.lockout_s
            message += f": locked out for {self.lockout_s:g} s"
        return Decision(event=event, subject=subject, reason=message)

    def observe_doubt(self, reason: str = "doubt") -> Decision:
        """A timeout, error, unauthenticated or stale reply, or a borderline score: stay locked."""
        self._reset_run()
        return Decision(reason=f"stay locked: {reason}")

    # -- internals ----------------------------------------------------------------------------

    def _busy(self, now: float) -> bool:
        if self._challenge is not None and now > self._challenge[1]:
            self._challenge = None  # the check never reported: nothing opens for it any more
        if self._open_until is not None or now < self._cooldown_until or self._challenge is not None:
            self._reset_run()
            return True
        return False

    def _extend_run(self, subject: str, now: float) -> bool:
        """Add a frame to the run; True when it completes `frames_required` within the window."""
        if subject != self._run_subject:
            self._run_subject, self._run_times = subject, []
        self._run_times = [t for t in self._run_times if now - t <= self.config.window_s] + [now]
        return len(self._run_times) >= self.config.frames_required

    def _reset_run(self) -> None:
        self._run_subject, self._run_times = None, []
