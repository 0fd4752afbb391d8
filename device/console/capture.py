"""Enrolling a person at the door's own camera, from the console, with guidance.

The agent owns the camera, so the console does not open it: while a capture runs, the agent's
loop diverts its frames here (`Agent.divert`; nothing is probed, the door stays as it is) and
each frame goes through the same `FrameCollector` as `blindgate-device enroll --camera` (one
face, large and sharp enough), on the agent's thread with the agent's face analyzer. The live
picture shows the advice ("step closer", "hold still") and the progress. Once enough good frames
are in, the frames go back to the door and the template is enrolled on a thread of its own
through `People.enroll`, the CLI's code, so the door keeps working while the cloud is asked.

At most one capture runs at a time. It ends by itself after `timeout_s` without enough good
frames (the camera may have stopped, or nobody stood there); nothing is enrolled then.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from enum import StrEnum

import numpy as np

from blindgate.device.agent import Agent
from blindgate.device.enrollment import FrameAdvice, FrameCollector
from blindgate.device.people import People
from blindgate.device.tracking import face_finder
from blindgate.shared.errors import BlindgateError

from .live import Gate, LiveView

log = logging.getLogger("blindgate.device.console")

CAPTURE_TIMEOUT_S = 60.0
GATE_OF_ADVICE = {
    FrameAdvice.NO_FACE: Gate.NO_FACE,
    FrameAdvice.SEVERAL_FACES: Gate.SEVERAL_FACES,
    FrameAdvice.TOO_SMALL: Gate.TOO_SMALL,
    FrameAdvice.TOO_BLURRY: Gate.TOO_BLURRY,
    FrameAdvice.GOOD: Gate.GOOD,
}


class CaptureState(StrEnum):
    COLLECTING = "collecting"  # frames diverted from the door, advice shown
    ENROLLING = "enrolling"  # enough good frames: checking and uploading the template
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class CaptureBusy(BlindgateError, RuntimeError):
    """Another enrollment at the camera is running."""


class CameraEnrollment:
    """One enrollment at the camera; `status()` is what the console polls."""

    def __init__(
        self,
        agent: Agent,
        people: People,
        name: str,
        frames: int,
        live: LiveView,
        add_to: str | None = None,
        timeout_s: float = CAPTURE_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        when_enrolled: Callable[[dict], None] | None = None,
    ) -> None:
        finder = face_finder(agent.analyzer)
        if finder is None:
            raise BlindgateError("this door has no face analyzer to enroll with")
        self.agent, self.people, self.name, self.add_to, self.live = agent, people, name, add_to, live
        self.collector = FrameCollector(finder, frames, patience=10**9)  # the time limit ends it, not a frame count
        self.timeout_s, self.clock = timeout_s, clock
        self.when_enrolled = when_enrolled
        self.state = CaptureState.COLLECTING
        self.advice = "look at the camera"
        self.message = ""
        self.result: dict | None = None
        self._guard = threading.Lock()
        self._started = clock()

    def start(self) -> None:
        if self.agent.divert is not None:
            raise CaptureBusy("another enrollment at the camera is running: wait for it or cancel it")
        self.agent.divert = self.offer

    def offer(self, rgb: np.ndarray) -> None:
        """One diverted frame (the agent's thread): check it, show the advice, finish when enough are good."""
        with self._guard:
            if self.state is not CaptureState.COLLECTING:
                self._release()
                return
            check = self.collector.offer(rgb)
            self.advice = check.text
            caption = f"{check.text} ({check.good} of {check.wanted})"
            self.live.show(rgb, check.boxes, GATE_OF_ADVICE[check.advice], caption)
            if self.collector.complete:
                self.state = CaptureState.ENROLLING
                self._release()
                threading.Thread(target=self._enroll, name="blindgate-console-enroll", daemon=True).start()
            elif self.clock() - self._started > self.timeout_s:
                self._fail(f"only {check.good} of {check.wanted} good frames in {self.timeout_s:.0f} s: nothing was enrolled")

    def _enroll(self) -> None:
        notes: list[str] = []
        try:
            result = self.people.enroll(self.name, self.collector.result(), add_to=self.add_to, say=notes.append)
        except (BlindgateError, OSError) as exc:
            with self._guard:
                self.state, self.message = CaptureState.FAILED, str(exc)
            log.warning("console enrollment failed: %s", exc)
            return
        except Exception as exc:  # reported on the page; the door itself is not affected
            with self._guard:
                self.state, self.message = CaptureState.FAILED, f"internal error: {type(exc).__name__}"
            log.exception("console enrollment failed")
            return
        warnings = [n for n in notes if n.startswith("warning")]
        with self._guard:
            self.state, self.result = CaptureState.DONE, result
            self.message = " ".join([f"enrolled {self.name}.", *warnings])
        if self.when_enrolled is not None:
            self.when_enrolled(result)

    def cancel(self) -> None:
        with self._guard:
            if self.state is CaptureState.COLLECTING:
                self.state, self.message = CaptureState.CANCELLED, "cancelled: nothing was enrolled"
                self._release()

    def status(self) -> dict:
        """The state the page shows; a capture past its time limit fails here too (no frames may arrive)."""
        with self._guard:
            if self.state is CaptureState.COLLECTING and self.clock() - self._started > self.timeout_s + 2:
                self._fail(f"no camera frames for {self.timeout_s:.0f} s: nothing was enrolled")
            return {
                "state": str(self.state),
                "name": self.name,
                "good": len(self.collector.faces),
                "wanted": self.collector.wanted,
                "advice": self.advice if self.state is CaptureState.COLLECTING else "",
                "message": self.message,
                "subject": self.result.get("subject") if self.result else None,
            }

    @property
    def active(self) -> bool:
        return self.state in (CaptureState.COLLECTING, CaptureState.ENROLLING)

    def _fail(self, message: str) -> None:
        self.state, self.message = CaptureState.FAILED, message
        self._release()

    def _release(self) -> None:
        if self.agent.divert == self.offer:
            self.agent.divert = None


__all__ = ["CAPTURE_TIMEOUT_S", "CameraEnrollment", "CaptureBusy", "CaptureState"]
