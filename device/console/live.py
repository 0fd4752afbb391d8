"""The console's live view: the latest camera frame with what the door made of it, and the door's state.

The agent's frame loop only hands over references (`frame_seen`, `show`): nothing is copied,
drawn or encoded there. A browser asking for the picture gets the latest frame downscaled to
`live_width`, the face box and the quality gate drawn on it, as a JPEG encoded once per frame
however many browsers ask; with no browser open the console costs the loop nothing but a
reference swap. Nothing is stored: the picture lives in memory until the next frame replaces it.

What `LiveView.state()` reports is what the door's owner may see at the door: the lock, the
broker and cloud, the face gate, the latest decisions (a name or "unknown", never a distance or
score) and the expected false-open chance of the operating point in force.
"""

from __future__ import annotations

import io
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from PIL import Image, ImageDraw

from blindgate.device.agent import Agent
from blindgate.device.audit import now_iso
from blindgate.device.decision import Decision, DoorEvent
from blindgate.device.faces import FaceBox, FaceResult, Rejection, RejectionKind
from blindgate.device.health import Problem
from blindgate.device.judge import Verdict
from blindgate.device.metrics import chain


class Gate(StrEnum):
    """What the door made of the face in a frame (the colour and caption drawn on the picture)."""

    NO_FACE = "no_face"
    TOO_SMALL = "too_small"
    TOO_BLURRY = "too_blurry"
    SEVERAL_FACES = "several_faces"
    GOOD = "good"
    NOT_CHECKED = "not_checked"  # verify mode without a claim: frames are not analysed


CAPTION = {
    Gate.NO_FACE: "no face",
    Gate.TOO_SMALL: "too small: step closer",
    Gate.TOO_BLURRY: "too blurry: hold still",
    Gate.SEVERAL_FACES: "several faces",
    Gate.GOOD: "face ok",
    Gate.NOT_CHECKED: "waiting for a badge or PIN",
}
GOOD_RGB, BAD_RGB = (40, 200, 90), (240, 170, 30)
DECISIONS_KEPT = 20


@dataclass(frozen=True)
class Shown:
    """One frame as the live view will draw it."""

    seq: int
    rgb: np.ndarray
    boxes: tuple[FaceBox, ...]
    gate: Gate
    caption: str


def gate_of(result: FaceResult | Rejection | None) -> tuple[Gate, tuple[FaceBox, ...]]:
    """The gate and boxes of the door's analysis of a frame."""
    if result is None:
        return Gate.NOT_CHECKED, ()
    if isinstance(result, FaceResult):
        return Gate.GOOD, (result.box,)
    kind = {RejectionKind.TOO_SMALL: Gate.TOO_SMALL, RejectionKind.TOO_BLURRY: Gate.TOO_BLURRY}.get(result.kind, Gate.NO_FACE)
    return kind, (result.box,) if result.box is not None else ()


class LiveView:
    """Follows one agent; thread-safe (the agent's loop writes, the console's loop reads)."""

    def __init__(self, width: int = 480, quality: int = 70, clock: Callable[[], float] = time.monotonic) -> None:
        if width < 32:
            raise ValueError("live_width must be at least 32 pixels")
        self.width, self.quality, self.clock = width, quality, clock
        self._guard = threading.Lock()
        self._shown: Shown | None = None
        self._seq = 0
        self._encoded: tuple[int, bytes] | None = None
        self._decisions: deque[dict[str, str | None]] = deque(maxlen=DECISIONS_KEPT)
        self.frames_encoded = 0

    def attach(self, agent: Agent) -> None:
        """Follow `agent`'s frames and decisions (keeping observers already attached)."""
        agent.when_frame = chain(agent.when_frame, self.frame_seen)
        agent.when_decided = chain(agent.when_decided, self.decided)

    # -- written from the agent's loop: references only ---------------------------------------

    def frame_seen(self, rgb: np.ndarray, result: FaceResult | Rejection | None) -> None:
        gate, boxes = gate_of(result)
        if isinstance(result, FaceResult) and result.face_count > 1:
            caption = f"face ok (largest of {result.face_count})"
        else:
            caption = CAPTION[gate]
        self.show(rgb, boxes, gate, caption)

    def show(self, rgb: np.ndarray, boxes: Sequence[FaceBox], gate: Gate, caption: str) -> None:
        """Make `rgb` the live picture (the caller must not change the array afterwards)."""
        with self._guard:
            self._seq += 1
            self._shown = Shown(self._seq, rgb, tuple(boxes), gate, caption)

    def decided(self, verdict: Verdict, decision: Decision) -> None:
        """Keep the door events: the event, and a name only where the event names someone."""
        if not decision.event:
            return
        named = decision.event in (DoorEvent.RECOGNIZED, DoorEvent.DENIED, DoorEvent.LIVENESS_FAILED)
        entry = {"time": now_iso(), "event": str(decision.event), "label": verdict.label if named else None}
        if decision.event in (DoorEvent.DENIED, DoorEvent.LIVENESS_FAILED):
            entry["reason"] = decision.reason
        with self._guard:
            self._decisions.appendleft(entry)

    # -- read from the console ---------------------------------------------------------------

    @property
    def seq(self) -> int:
        """The number of the latest frame (0: none yet)."""
        with self._guard:
            return self._seq

    def current(self) -> Shown | None:
        with self._guard:
            return self._shown

    def decisions(self) -> list[dict[str, str | None]]:
        with self._guard:
            return list(self._decisions)

    def jpeg(self) -> tuple[int, bytes] | None:
        """The latest frame as a captioned JPEG and its number; None before the first frame."""
        shown = self.current()
        if shown is None:
            return None
        cached = self._encoded
        if cached is not None and cached[0] == shown.seq:
            return cached
        encoded = (shown.seq, render_jpeg(shown, self.width, self.quality))
        self._encoded = encoded
        self.frames_encoded += 1
        return encoded


def render_jpeg(shown: Shown, width: int, quality: int = 70) -> bytes:
    """`shown` downscaled to at most `width` pixels wide, boxes and caption drawn, as JPEG bytes."""
    image = Image.fromarray(shown.rgb)
    scale = min(1.0, width / image.width)
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    colour = GOOD_RGB if shown.gate is Gate.GOOD else BAD_RGB
    for box in shown.boxes:
        corners = [box.left * scale, box.top * scale, box.right * scale, box.bottom * scale]
        draw.rectangle(corners, outline=colour, width=3)
    draw.rectangle([0, image.height - 22, image.width, image.height], fill=(0, 0, 0))
    draw.text((6, image.height - 18), shown.caption, fill=colour)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def door_state(agent: Agent, live: LiveView) -> dict:
    """What the live page shows besides the picture: lock, broker, cloud, camera, decisions, false-open chance."""
    health = agent.health.current
    point = agent.current_point
    shown = live.current()
    return {
        "lock": "locked" if agent.lock.is_locked else "unlocked",
        "broker": "connected" if agent.link.is_connected else "disconnected",
        "cloud": "unreachable" if Problem.CLOUD in health.problems else "reachable",
        "camera": "stalled" if Problem.CAMERA in health.problems else "ok",
        "frame": live.seq,
        "face": shown.caption if shown is not None else "no picture yet",
        "gate": str(shown.gate) if shown is not None else None,
        "decisions": live.decisions(),
        "false_open": describe_chance(point.expected_false_open) if point is not None else None,
        "enrolled": point.enrolled if point is not None else None,
        "mode": agent.config.decision.mode,
    }


def describe_chance(chance: float) -> str:
    """A per-frame chance as people read it: "about 1 in 1,000 per frame"."""
    if chance <= 0:
        return "below 1 in a million per frame"
    if chance >= 0.5:
        return f"{chance:.0%} per frame"
    odds = float(f"{1 / chance:.2g}")  # two significant digits: 1,001 is "1,000"
    return f"about 1 in {odds:,.0f} per frame"


__all__ = ["CAPTION", "Gate", "LiveView", "Shown", "describe_chance", "door_state", "gate_of", "render_jpeg"]
