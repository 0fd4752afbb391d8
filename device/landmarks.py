"""dlib's 68 face landmarks, and a follower that yields them frame after frame for one face.

The liveness check (device/liveness.py) watches how the landmarks of the matched face move for a
couple of seconds: a real head turns in 3D, a photo moves like a plane. That needs landmarks at the
camera's rate (15-30 fps on a Pi), so `FaceFollower` scans only around the face's last box
(`FaceTracker` from device/tracking.py decides where and when to scan the whole frame) and keeps
to one face: the one nearest to where it was.

The 68-point model (~100 MB in memory) is loaded only when a `LandmarkFinder` is made: the agent
makes one only when liveness is switched on.
"""

from __future__ import annotations

from typing import Protocol

import dlib
import numpy as np

from blindgate.device.faces import FaceBox, model_path
from blindgate.device.tracking import FaceTracker

LANDMARK_COUNT = 68
LANDMARKS_68_FILE = "shape_predictor_68_face_landmarks.dat"

# Index ranges of the 68-point (iBUG 300-W) layout, as seen in the image: "right" is the subject's right.
JAW = slice(0, 17)
RIGHT_BROW = slice(17, 22)
LEFT_BROW = slice(22, 27)
NOSE = slice(27, 36)
RIGHT_EYE = slice(36, 42)
LEFT_EYE = slice(42, 48)
MOUTH = slice(48, 68)


class FaceDetector(Protocol):
    """What the follower needs of face detection (`FaceAnalyzer.detect`): boxes, largest first."""

    def detect(self, rgb: np.ndarray, region: FaceBox | None = None) -> list[FaceBox]: ...


class LandmarkFinder:
    """dlib's 68-point shape predictor, loaded once (a second or so, ~100 MB)."""

    def __init__(self) -> None:
        self._predictor = dlib.shape_predictor(str(model_path(LANDMARKS_68_FILE)))

    def points(self, rgb: np.ndarray, box: FaceBox) -> np.ndarray:
        """The 68 landmarks of the face in ``box`` as a (68, 2) float64 array of (x, y) pixels."""
        if not (isinstance(rgb, np.ndarray) and rgb.ndim in (2, 3) and rgb.dtype == np.uint8):
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {getattr(rgb, 'shape', None)}")
        shape = self._predictor(np.ascontiguousarray(rgb), box.to_dlib())
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


def _centre(box: FaceBox) -> tuple[float, float]:
    return (box.left + box.right) / 2, (box.top + box.bottom) / 2


def nearest_box(boxes: list[FaceBox], last: FaceBox | None) -> FaceBox | None:
    """The box whose centre is nearest ``last``'s (the same face); without ``last``, the first (largest)."""
    if not boxes:
        return None
    if last is None:
        return boxes[0]
    lx, ly = _centre(last)
    return min(boxes, key=lambda b: (_centre(b)[0] - lx) ** 2 + (_centre(b)[1] - ly) ** 2)


class FaceFollower:
    """Landmarks of ONE face across consecutive frames of one camera, cheaply.

    Each frame is scanned around the face's last box; the whole frame every ``full_every`` frames
    and whenever the face was lost (both via `FaceTracker`; `FaceAnalyzer.detect` itself falls back
    to the whole frame when the region holds no face). With several faces, the one nearest the last
    box is followed, so a passer-by does not swap the face mid-check.
    """

    def __init__(
        self, detector: FaceDetector, landmarks: LandmarkFinder, full_every: int = 10, tracker: FaceTracker | None = None
    ) -> None:
        if full_every < 1:
            raise ValueError(f"full_every must be at least 1, not {full_every}")
        self.detector = detector
        self.landmarks = landmarks
        self.tracker = tracker or FaceTracker(refresh_frames=full_every)
        self._box: FaceBox | None = None

    @property
    def box(self) -> FaceBox | None:
        """The followed face's box in the last frame offered (None: no face there)."""
        return self._box

    def reset(self) -> None:
        """Forget the face: the next frame is scanned whole and its largest face followed."""
        self._box = None
        self.tracker.update(None, None)

    def offer(self, rgb: np.ndarray) -> np.ndarray | None:
        """The (68, 2) landmarks of the followed face in this frame, or None when no face is found."""
        height, width = rgb.shape[:2]
        region = self.tracker.region(height, width)
        box = nearest_box(self.detector.detect(rgb, region), self._box)
        self.tracker.update(box, region)
        self._box = box
        if box is None:
            return None
        return self.landmarks.points(rgb, box)


__all__ = [
    "JAW",
    "LANDMARKS_68_FILE",
    "LANDMARK_COUNT",
    "LEFT_BROW",
    "LEFT_EYE",
    "MOUTH",
    "NOSE",
    "RIGHT_BROW",
    "RIGHT_EYE",
    "FaceDetector",
    "FaceFollower",
    "LandmarkFinder",
    "nearest_box",
]
