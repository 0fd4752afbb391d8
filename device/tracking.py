"""Look for the visitor's face where it just was: detection on a small region instead of the frame.

Detection dominates the door's time per frame, and it grows with the pixels scanned. A person at
the door stays in view for many frames and moves little between two of them, so after a frame
with a face the next one is scanned only around that face (its box grown by a margin on every
side). Recall is not traded for it: when the region holds no face the same call scans the whole
frame (FaceAnalyzer.detect), and every `refresh_frames` frames the whole frame is scanned anyway,
so a larger face that walks in (the person at the door is the largest face) is picked up within
that many frames. A face last seen more than `max_age_s` ago is not tracked: the frames in between
were not analysed (verify mode without a claim, a paused camera), so its place means nothing.

The region is scanned at the scale that makes `min_face_px` the smallest face found, like a full
frame; only which pixels are scanned changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .faces import FaceAnalyzer, FaceBox, FaceResult, Rejection

if TYPE_CHECKING:
    from .enrollment import FaceFinder


class FaceTracker:
    """Where to scan first in the next frame; fed the box of each analysed frame's largest face."""

    def __init__(
        self,
        margin: float = 0.75,
        refresh_frames: int = 10,
        max_age_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if margin < 0 or refresh_frames < 1 or max_age_s <= 0:
            raise ValueError("margin must be >= 0, refresh_frames >= 1 and max_age_s > 0")
        self.margin = margin
        self.refresh_frames = refresh_frames
        self.max_age_s = max_age_s
        self._clock = clock
        self._box: FaceBox | None = None
        self._seen_at = 0.0
        self._since_full = 0  # frames scanned by region since the last full-frame scan

    def region(self, height: int, width: int) -> FaceBox | None:
        """The part of a ``height`` x ``width`` frame to scan first; None: scan the whole frame."""
        box = self._box
        if box is None or self._since_full >= self.refresh_frames:
            return None
        if self._clock() - self._seen_at > self.max_age_s:
            return None
        grow_x, grow_y = round(box.width * self.margin), round(box.height * self.margin)
        grown = FaceBox(box.top - grow_y, box.right + grow_x, box.bottom + grow_y, box.left - grow_x)
        area = grown.clipped(height, width)
        if area.width >= width and area.height >= height:
            return None  # the region is the frame
        return area

    def update(self, box: FaceBox | None, scanned: FaceBox | None) -> None:
        """Record the frame just analysed: its largest face (None: none) and the region used (None: full)."""
        self._since_full = 0 if scanned is None else self._since_full + 1
        self._box = box
        if box is not None:
            self._seen_at = self._clock()


class TrackingAnalyzer:
    """An `Analyzer` for a camera stream: the dlib analyzer plus a `FaceTracker`.

    Only for consecutive frames of one camera; still photos (enrollment) use FaceAnalyzer itself.
    """

    def __init__(self, analyzer: FaceAnalyzer, tracker: FaceTracker | None = None) -> None:
        self.analyzer = analyzer
        self.tracker = tracker or FaceTracker()

    def analyze(self, rgb: np.ndarray) -> FaceResult | Rejection:
        height, width = rgb.shape[:2]
        region = self.tracker.region(height, width)
        result = self.analyzer.analyze(rgb, region)
        self.tracker.update(result.box, region)
        return result


def face_finder(analyzer: object) -> FaceFinder | None:
    """The whole-frame face finder behind the agent's analyzer (a TrackingAnalyzer wraps one), None if there is none.

    Enrollment at the camera and the liveness window use it on the agent's own thread.
    """
    for candidate in (analyzer, getattr(analyzer, "analyzer", None)):
        if candidate is not None and hasattr(candidate, "detect") and hasattr(candidate, "embed"):
            return candidate  # type: ignore[return-value]
    return None


def track_faces(analyzer: FaceAnalyzer, refresh_frames: int) -> FaceAnalyzer | TrackingAnalyzer:
    """The door's analyzer: tracked unless ``refresh_frames`` is 0 (every frame scanned in full)."""
    if refresh_frames <= 0:
        return analyzer
    return TrackingAnalyzer(analyzer, FaceTracker(refresh_frames=refresh_frames))


__all__ = ["FaceTracker", "TrackingAnalyzer", "track_faces"]
