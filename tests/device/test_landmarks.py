"""68-point landmarks on real faces, and following one face across frames (device/landmarks.py)."""

from pathlib import Path

import numpy as np
import pytest

from blindgate.device.faces import FaceAnalyzer, FaceBox, load_image
from blindgate.device.landmarks import (
    LANDMARK_COUNT,
    LEFT_EYE,
    MOUTH,
    NOSE,
    RIGHT_EYE,
    FaceFollower,
    LandmarkFinder,
    nearest_box,
)


@pytest.fixture(scope="module")
def finder() -> LandmarkFinder:
    return LandmarkFinder()


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer()


def grown(box: FaceBox, fraction: float) -> FaceBox:
    dx, dy = round(box.width * fraction), round(box.height * fraction)
    return FaceBox(box.top - dy, box.right + dx, box.bottom + dy, box.left - dx)


def inside(points: np.ndarray, box: FaceBox) -> np.ndarray:
    x, y = points[:, 0], points[:, 1]
    return (x >= box.left) & (x < box.right) & (y >= box.top) & (y < box.bottom)


@pytest.mark.parametrize("photo", ["obama/obama.jpg", "kit_harington/kit1.jpg", "rose_leslie/rose1.jpg"])
def test_68_points_sit_on_the_face(faces_dir: Path, finder, analyzer, photo):
    rgb = load_image(faces_dir / "people" / photo)
    box = analyzer.detect(rgb)[0]
    points = finder.points(rgb, box)
    assert points.shape == (LANDMARK_COUNT, 2) and points.dtype == np.float64
    # dlib's box is tight: the jaw line may reach a little past it, nothing further
    assert inside(points, grown(box, 0.15)).all()
    right_eye, left_eye = points[RIGHT_EYE].mean(axis=0), points[LEFT_EYE].mean(axis=0)
    nose_tip, mouth = points[NOSE][3], points[MOUTH].mean(axis=0)
    assert right_eye[0] < nose_tip[0] < left_eye[0]  # the subject's right eye is on the image's left
    eye_line = (right_eye[1] + left_eye[1]) / 2
    assert box.top < eye_line < box.top + 0.55 * box.height  # eyes in the upper half
    assert eye_line < nose_tip[1] < mouth[1] < box.bottom + 0.1 * box.height
    assert 0.25 * box.width < left_eye[0] - right_eye[0] < 0.6 * box.width


def test_points_follow_the_box_they_are_given(faces_dir: Path, finder, analyzer):
    """Positive control: the points come from the image inside the box, not from the box alone."""
    rgb = load_image(faces_dir / "people" / "obama" / "obama.jpg")
    box = analyzer.detect(rgb)[0]
    shifted = np.ascontiguousarray(np.roll(rgb, (30, 40), axis=(0, 1)))
    moved = finder.points(shifted, FaceBox(box.top + 30, box.right + 40, box.bottom + 30, box.left + 40))
    assert np.abs(moved - finder.points(rgb, box) - (40, 30)).max() < 2.0
    elsewhere = finder.points(rgb, FaceBox(0, 120, 120, 0))  # a corner without a face
    assert np.abs(elsewhere - finder.points(rgb, box)).mean() > 50


def test_bad_image_is_refused(finder):
    with pytest.raises(ValueError):
        finder.points(np.zeros((10, 10, 3), np.float32), FaceBox(0, 5, 5, 0))


# --- following, with a scripted detector --------------------------------------------------------

A = FaceBox(top=100, right=300, bottom=200, left=200)
B = FaceBox(top=90, right=520, bottom=230, left=380)  # larger, elsewhere


class ScriptedDetector:
    """Returns scripted boxes (largest first, like FaceAnalyzer.detect) and records the regions asked for."""

    def __init__(self, frames: list[list[FaceBox]]) -> None:
        self.frames = frames
        self.regions: list[FaceBox | None] = []

    def detect(self, rgb: np.ndarray, region: FaceBox | None = None) -> list[FaceBox]:
        self.regions.append(region)
        return sorted(self.frames[len(self.regions) - 1], key=lambda b: b.area, reverse=True)


class BoxCorners:
    """Stands in for LandmarkFinder: 68 copies of the box's top-left corner."""

    def points(self, rgb: np.ndarray, box: FaceBox) -> np.ndarray:
        return np.tile([float(box.left), float(box.top)], (LANDMARK_COUNT, 1))


FRAME = np.zeros((480, 640, 3), np.uint8)


def follower(frames: list[list[FaceBox]], full_every: int = 10) -> tuple[FaceFollower, ScriptedDetector]:
    detector = ScriptedDetector(frames)
    return FaceFollower(detector, BoxCorners(), full_every=full_every), detector  # type: ignore[arg-type]


def test_keeps_to_the_face_it_follows_when_a_larger_one_appears():
    follow, _ = follower([[A], [A, B], [B, A], [A, B]])
    tops = [follow.offer(FRAME) for _ in range(4)]
    assert all(t is not None and tuple(t[0]) == (A.left, A.top) for t in tops)
    assert follow.box == A


def test_starts_with_the_largest_face_and_again_after_losing_it():
    follow, _ = follower([[A, B], [], [A, B]])
    assert tuple(follow.offer(FRAME)[0]) == (B.left, B.top)  # type: ignore[index]
    assert follow.offer(FRAME) is None and follow.box is None
    assert tuple(follow.offer(FRAME)[0]) == (B.left, B.top)  # type: ignore[index]


def test_scans_around_the_face_and_the_whole_frame_every_full_every_frames():
    follow, detector = follower([[A]] * 9, full_every=3)
    for _ in range(9):
        follow.offer(FRAME)
    whole = [r is None for r in detector.regions]
    assert whole == [True, False, False, False, True, False, False, False, True]
    region = detector.regions[1]
    assert region is not None and region.left < A.left and region.right > A.right and region.width < 640


def test_whole_frame_after_the_face_is_lost_and_after_reset():
    follow, detector = follower([[A], [], [A], [A], [A]])
    for _ in range(3):
        follow.offer(FRAME)
    follow.reset()
    follow.offer(FRAME)
    assert [r is None for r in detector.regions[:4]] == [True, False, True, True]


def test_nearest_box():
    assert nearest_box([], A) is None
    assert nearest_box([B, A], None) == B
    near_a = FaceBox(A.top + 5, A.right + 5, A.bottom + 5, A.left + 5)
    assert nearest_box([B, near_a], A) == near_a


def test_full_every_must_be_positive():
    with pytest.raises(ValueError):
        FaceFollower(ScriptedDetector([]), BoxCorners(), full_every=0)  # type: ignore[arg-type]


# --- following a real face in the clip ------------------------------------------------------------


class CountingDetector:
    """The real detector, counting region scans."""

    def __init__(self, analyzer: FaceAnalyzer) -> None:
        self.analyzer = analyzer
        self.regions = 0

    def detect(self, rgb: np.ndarray, region: FaceBox | None = None) -> list[FaceBox]:
        self.regions += region is not None
        return self.analyzer.detect(rgb, region)


def test_follows_the_face_in_the_clip(faces_dir: Path, finder, analyzer):
    clip = faces_dir / "video" / "short_hamilton_clip.mp4"
    if not clip.is_file():
        pytest.skip(f"{clip} not found")
    pytest.importorskip("cv2")
    from blindgate.device.camera import open_camera

    frames = []
    with open_camera(clip) as camera:
        for frame in camera:
            if frame.index >= 84:  # the face is in view from about here
                frames.append(frame.rgb)
            if len(frames) == 30:
                break
    assert len(frames) == 30
    detector = CountingDetector(analyzer)
    follow = FaceFollower(detector, finder)  # type: ignore[arg-type]
    tracks = [follow.offer(rgb) for rgb in frames]
    found = [t for t in tracks if t is not None]
    assert len(found) >= 27
    assert detector.regions >= 20  # mostly the cheap region scan
    for points in found:
        assert points.shape == (LANDMARK_COUNT, 2)
        assert (
            (points[:, 0] >= 0).all() and (points[:, 0] < 640).all() and (points[:, 1] >= 0).all() and (points[:, 1] < 360).all()
        )
    centres = np.array([p.mean(axis=0) for p in found])
    assert np.abs(np.diff(centres, axis=0)).max() < 30  # one face, moving smoothly
    assert np.ptp(centres[:, 0]) > 10  # and it does move (the clip pans)
