"""The door's liveness window: after a match, watch the face for `window_s` and judge how it moved.

With `[liveness] mode = "motion"` (or `"motion+blink"`) the decision rules do not open on a match:
they ask for this check (device/decision.py, a `liveness_prompt` event). The agent then hands
every frame here instead of probing the cloud: the face is followed between full detections
(device/landmarks.py: `FaceFollower`), its 68 landmarks collected, and once `window_s` has passed
`judge_window` (device/liveness.py) says whether they moved like a head or like a flat picture.
Too little movement, too few frames, the time running out or any error: not live, so the door
stays locked and the attempt counts toward the lockout. The residual and the motion stay here:
the outcome the agent publishes and logs is the kind only (`live`, `flat`, ...), never a score.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from blindgate.shared.config import LivenessConfig
from blindgate.shared.errors import BlindgateError

from .liveness import DEFAULT_SETTINGS, LivenessKind, LivenessResult, LivenessSettings, judge_window

log = logging.getLogger("blindgate.device.liveness")

MODES = ("off", "motion", "motion+blink")
MIN_LIVENESS_FPS = 15  # landmark frames per second the check was measured with (15-30)


class LivenessConfigError(BlindgateError, ValueError):
    """`[liveness]` cannot be used as configured."""


def check_liveness_config(config: LivenessConfig) -> None:
    if config.mode not in MODES:
        raise LivenessConfigError(f"liveness.mode {config.mode!r}: use one of {', '.join(MODES)}")
    if not 0.5 <= config.window_s <= 10 or config.timeout_s < config.window_s or config.max_flat_residual < 0:
        raise LivenessConfigError("liveness: window_s must be 0.5..10 s, timeout_s at least window_s, max_flat_residual >= 0")


def liveness_settings(config: LivenessConfig) -> LivenessSettings:
    """The judge's settings for this config (the shipped defaults, the threshold if given, blink if asked)."""
    settings = DEFAULT_SETTINGS
    if config.max_flat_residual:
        settings = replace(settings, max_flat_residual=config.max_flat_residual)
    if config.mode == "motion+blink":
        settings = replace(settings, blink=True)
    return settings


@dataclass(frozen=True)
class Outcome:
    """How a liveness window ended: for the decision rules (live or not) and the log (the kind, never a score)."""

    subject: str
    label: str | None  # the matched name (a failure's event names it)
    live: bool
    kind: str  # a LivenessKind value, or "timeout" / "error"
    frames: int
    seconds: float


class Follower(Protocol):
    """What the watch needs of face following (device/landmarks.py FaceFollower has it)."""

    def offer(self, rgb: np.ndarray) -> np.ndarray | None: ...

    def reset(self) -> None: ...


class LivenessWatch:
    """One window at a time; `offer` from the agent's frame loop, `expire` from its ticker (thread-safe)."""

    def __init__(
        self,
        follower: Follower,
        config: LivenessConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_liveness_config(config)
        self.follower, self.config, self.clock = follower, config, clock
        self.settings = liveness_settings(config)
        self._guard = threading.Lock()
        self._subject: str | None = None
        self._label: str | None = None
        self._started = 0.0
        self._landmarks: list[np.ndarray | None] = []
        self.last_result: LivenessResult | None = None  # for tests and the evaluation; never published

    @property
    def prompt(self) -> str:
        return self.config.prompt + (" and blink" if self.config.mode == "motion+blink" else "")

    @property
    def active(self) -> bool:
        with self._guard:
            return self._subject is not None

    def start(self, subject: str, label: str | None = None) -> None:
        """Begin watching for `subject` (whose run just completed); a window already open is replaced."""
        with self._guard:
            self._subject, self._label, self._started, self._landmarks = subject, label, self.clock(), []
            self.follower.reset()

    def offer(self, rgb: np.ndarray) -> Outcome | None:
        """One frame of the window; the outcome once `window_s` is over (None until then, or when idle)."""
        with self._guard:
            subject = self._subject
            if subject is None:
                return None
            try:
                self._landmarks.append(self.follower.offer(rgb))
            except Exception as exc:  # a failing landmark model keeps the door locked
                log.error("liveness: following the face failed: %s", exc)
                return self._end(subject, False, "error")
            if self.clock() - self._started < self.config.window_s:
                return None
            try:
                result = judge_window(self._landmarks, self.settings)
            except Exception as exc:
                log.error("liveness: judging the window failed: %s", type(exc).__name__)
                return self._end(subject, False, "error")
            self.last_result = result
            return self._end(subject, result.kind is LivenessKind.LIVE, str(result.kind))

    def expire(self) -> Outcome | None:
        """The window's time is over without an outcome (no frames came): not live."""
        with self._guard:
            subject = self._subject
            if subject is None or self.clock() - self._started < self.config.timeout_s:
                return None
            return self._end(subject, False, "timeout")

    def cancel(self) -> None:
        with self._guard:
            self._subject, self._landmarks = None, []

    def _end(self, subject: str, live: bool, kind: str) -> Outcome:
        frames = sum(points is not None for points in self._landmarks)
        outcome = Outcome(subject, self._label, live, kind, frames, self.clock() - self._started)
        self._subject, self._landmarks = None, []
        return outcome


__all__ = [
    "MIN_LIVENESS_FPS",
    "MODES",
    "LivenessConfigError",
    "LivenessWatch",
    "Outcome",
    "check_liveness_config",
    "liveness_settings",
]
