"""Region tracking: scan around the last face first, never lose a face the full frame would find."""

from pathlib import Path

import numpy as np
import pytest

from blindgate.device.faces import Analyzer, FaceAnalyzer, FaceBox, FaceResult, Rejection, face_distance, load_image
from blindgate.device.tracking import FaceTracker, TrackingAnalyzer, track_faces

FACE = FaceBox(top=100, right=300, bottom=200, left=200)  # 100 x 100


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_region_is_the_last_face_grown_by_the_margin():
    tracker = FaceTracker(margin=0.5, clock=Clock())
    assert tracker.region(480, 640) is None  # nothing seen yet: whole frame
    tracker.update(FACE, None)
    assert tracker.region(480, 640) == FaceBox(top=50, right=350, bottom=250, left=150)


def test_region_is_clipped_to_the_frame_and_dropped_when_it_is_the_frame():
    tracker = FaceTracker(margin=1.0, clock=Clock())
    tracker.update(FaceBox(top=0, right=60, bottom=50, left=10), None)
    assert tracker.region(480, 640) == FaceBox(top=0, right=110, bottom=100, left=0)
    tracker.update(FaceBox(top=10, right=600, bottom=470, left=40), None)
    assert tracker.region(480, 640) is None  # grown past every edge: scan the frame itself


def test_whole_frame_every_refresh_frames():
    tracker = FaceTracker(refresh_frames=3, clock=Clock())
    tracker.update(FACE, None)
    scans = []
    for _ in range(8):
        region = tracker.region(480, 640)
        scans.append(region is not None)
        tracker.update(FACE, region)
    assert scans == [True, True, True, False, True, True, True, False]


def test_no_face_or_an_old_face_means_whole_frame():
    clock = Clock()
    tracker = FaceTracker(max_age_s=1.0, clock=clock)
    tracker.update(FACE, None)
    tracker.update(None, tracker.region(480, 640))
    assert tracker.region(480, 640) is None  # the face is gone
    tracker.update(FACE, None)
    clock.now = 1.5  # frames in between were not analysed (verify mode without a claim, a stall)
    assert tracker.region(480, 640) is None


def test_bad_settings_are_refused():
    for kwargs in ({"margin": -0.1}, {"refresh_frames": 0}, {"max_age_s": 0}):
        with pytest.raises(ValueError):
            FaceTracker(**kwargs)  # type: ignore[arg-type]  # the wrong values under test


class RecordingAnalyzer:
    """Stands in for FaceAnalyzer: records the region of each call, returns scripted results."""

    def __init__(self, boxes: list[FaceBox | None]) -> None:
        self.boxes = boxes
        self.regions: list[FaceBox | None] = []

    def analyze(self, rgb: np.ndarray, region: FaceBox | None = None) -> Rejection:
        self.regions.append(region)
        box = self.boxes[len(self.regions) - 1]
        return Rejection("too_small", "scripted", box, None, int(box is not None), None)  # type: ignore[arg-type]


def test_tracking_analyzer_passes_the_region_and_follows_the_result():
    inner = RecordingAnalyzer([FACE, FACE, None, FACE])
    tracking = TrackingAnalyzer(inner, FaceTracker(margin=0.5, clock=Clock()))  # type: ignore[arg-type]
    frame = np.zeros((480, 640, 3), np.uint8)
    for _ in range(4):
        tracking.analyze(frame)
    grown = FaceBox(top=50, right=350, bottom=250, left=150)
    assert inner.regions == [None, grown, grown, None]


def test_track_faces_zero_means_no_tracking():
    sentinel = object()
    assert track_faces(sentinel, 0) is sentinel  # type: ignore[arg-type]
    tracked = track_faces(sentinel, 5)  # type: ignore[arg-type]
    assert isinstance(tracked, TrackingAnalyzer) and tracked.tracker.refresh_frames == 5
    seam: Analyzer = tracked  # mypy checks the protocol here
    assert seam is tracked


# -- with dlib and real photographs ----------------------------------------------------------------


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer()


@pytest.fixture(scope="module")
def photo(faces_dir: Path) -> np.ndarray:
    return load_image(faces_dir / "people" / "obama" / "obama-480p.jpg")


def test_region_scan_finds_the_same_face_as_the_full_frame(analyzer, photo):
    (full,) = analyzer.detect(photo)
    tracker = FaceTracker(margin=0.75)
    tracker.update(full, None)
    area = tracker.region(*photo.shape[:2])
    assert area is not None and area.area < photo.shape[0] * photo.shape[1] / 2
    (found,) = analyzer.detect(photo, area)
    overlap = FaceBox(
        max(full.top, found.top), min(full.right, found.right), min(full.bottom, found.bottom), max(full.left, found.left)
    )
    assert overlap.area / max(full.area, found.area) > 0.7
    a, b = analyzer.analyze(photo), analyzer.analyze(photo, area)
    assert isinstance(a, FaceResult) and isinstance(b, FaceResult)
    assert face_distance(a.embedding, b.embedding) < 0.1


def test_only_the_region_is_scanned_when_it_holds_a_face(faces_dir, analyzer):
    # kit_with_rose.jpg: kit_harington's face is the larger; a region around rose_leslie's sees only hers.
    scene = load_image(faces_dir / "scenes" / "kit_with_rose.jpg")
    kit, rose = analyzer.detect(scene)
    assert kit.area > rose.area
    tracker = FaceTracker(margin=0.5)
    tracker.update(rose, None)
    area = tracker.region(*scene.shape[:2])
    assert area is not None
    (found,) = analyzer.detect(scene, area)
    assert abs(found.left - rose.left) < rose.width / 4 and abs(found.top - rose.top) < rose.height / 4


def test_an_empty_region_falls_back_to_the_whole_frame(analyzer, photo):
    (full,) = analyzer.detect(photo)
    corner = FaceBox(0, 120, 120, 0)  # no face there
    assert analyzer._detect_in(photo, corner, analyzer.detection_scale(120, region=True)) == []
    assert analyzer.detect(photo, corner) == [full]  # recall is never traded for speed


def test_tracker_follows_a_moving_face(analyzer, photo):
    """Shifted copies of a photo as a camera stream: every frame keeps its face, regions are used."""
    height, width = photo.shape[:2]
    canvas = np.zeros((height + 80, width + 160, 3), np.uint8)
    tracked = TrackingAnalyzer(analyzer, FaceTracker(margin=0.75, refresh_frames=10))
    used = []
    for step in range(6):
        frame = canvas.copy()
        frame[40 : 40 + height, step * 25 : step * 25 + width] = photo  # 25 px to the right per frame
        used.append(tracked.tracker.region(*frame.shape[:2]) is not None)
        result = tracked.analyze(frame)
        assert isinstance(result, FaceResult), (step, result)
    assert used == [False, True, True, True, True, True]
