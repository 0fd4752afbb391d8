"""Whether the door can recognise anyone right now: Home Assistant's availability beyond the Last Will.

The Last Will on `.../availability` says only that the process or its broker connection died. A
door whose cloud no longer answers, or whose camera stopped delivering frames, keeps its broker
connection but cannot open for anyone. It says so on `<prefix>/<site>/<device>/health`, retained
JSON `{"state": "online"|"offline", "problems": ["cloud", "camera"], "since": ISO-8601}`, and
the discovered entities take both topics (`availability_mode: all`, device/discovery.py): they
turn unavailable while a problem lasts and come back when it ends.

- Cloud: `CLOUD_MISSES` consecutive probes without an authenticated answer (no reply in time,
  the broker dropped the request) are a problem; the next authenticated reply (whatever its
  verdict) ends it. A door nobody stands in front of sends no probes and learns nothing new, so
  it keeps the last cloud state.
- Camera: no frame for `FRAME_STALL_S` (counted from `start()`, then from the latest frame) is a
  problem; the next frame ends it.
The health never opens or locks anything: it only reports.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from .audit import now_iso
from .link import OFFLINE, ONLINE, MqttLink

# Without a frame for this long the door cannot recognise anyone (also the systemd watchdog's limit).
FRAME_STALL_S = 10.0
# Consecutive unanswered probes before the cloud counts as unreachable (each waits reply_timeout).
CLOUD_MISSES = 3


class Problem(StrEnum):
    """Why the door cannot recognise anyone now."""

    CLOUD = "cloud"
    CAMERA = "camera"


@dataclass(frozen=True)
class Health:
    """The problems in force and since when (ISO 8601, UTC)."""

    problems: frozenset[Problem]
    since: str

    @property
    def state(self) -> str:
        """`online` without a problem: the payload Home Assistant's availability compares."""
        return OFFLINE if self.problems else ONLINE

    def to_json(self) -> str:
        return json.dumps({"state": self.state, "problems": sorted(self.problems), "since": self.since})


class DoorHealth:
    """Tracks the cloud's answers and the camera's frames; publishes a change retained on the health topic.

    `when_changed(health)` is told after each publication. Thread-safe: frames and probes come
    from the agent's loop, `check()` from its ticker.
    """

    def __init__(
        self,
        link: MqttLink,
        clock: Callable[[], float] = time.monotonic,
        cloud_misses: int = CLOUD_MISSES,
        frame_stall_s: float = FRAME_STALL_S,
    ) -> None:
        self.link = link
        self.clock = clock
        self.cloud_misses = cloud_misses
        self.frame_stall_s = frame_stall_s
        self.when_changed: Callable[[Health], None] | None = None
        self._guard = threading.Lock()
        self._misses = 0
        self._frame_at: float | None = None  # the latest frame, or start(); None: the camera is not watched yet
        self._health = Health(frozenset(), now_iso())

    @property
    def current(self) -> Health:
        return self._health

    def start(self) -> None:
        """The camera is read from now on: its stall is counted from here until the first frame."""
        with self._guard:
            if self._frame_at is None:
                self._frame_at = self.clock()

    def frame_seen(self) -> None:
        with self._guard:
            self._frame_at = self.clock()
            changed = self._set(Problem.CAMERA, False)
        self._tell(changed)

    def cloud_answered(self) -> None:
        """An authenticated reply to this door's current request arrived."""
        with self._guard:
            self._misses = 0
            changed = self._set(Problem.CLOUD, False)
        self._tell(changed)

    def cloud_missed(self) -> None:
        """A probe went unanswered (timeout, or the broker dropped it)."""
        with self._guard:
            self._misses += 1
            changed = self._set(Problem.CLOUD, self._misses >= self.cloud_misses)
        self._tell(changed)

    def check(self) -> None:
        """Call regularly (the agent's ticker): notices a camera that stopped delivering frames."""
        with self._guard:
            stalled = self._frame_at is not None and self.clock() - self._frame_at >= self.frame_stall_s
            changed = self._set(Problem.CAMERA, stalled)
        self._tell(changed)

    def publish(self) -> None:
        """Publish the current health (retained), e.g. on every (re)connect."""
        with self._guard:
            self.link.publish(self.link.topics.health, self._health.to_json(), retain=True)

    def _set(self, problem: Problem, present: bool) -> Health | None:
        """Under the guard: add or clear one problem; a change is published (in order) and returned."""
        if (problem in self._health.problems) == present:
            return None
        problems = self._health.problems | {problem} if present else self._health.problems - {problem}
        self._health = Health(frozenset(problems), now_iso())
        self.link.publish(self.link.topics.health, self._health.to_json(), retain=True)
        return self._health

    def _tell(self, changed: Health | None) -> None:
        if changed is not None and self.when_changed is not None:
            self.when_changed(changed)


__all__ = ["CLOUD_MISSES", "FRAME_STALL_S", "DoorHealth", "Health", "Problem"]
