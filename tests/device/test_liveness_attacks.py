"""Synthetic presentation attacks (device/liveness_attacks.py): real photos rendered as moving prints and phones."""

from pathlib import Path

import numpy as np
import pytest

from blindgate.device.faces import FaceAnalyzer, FaceBox, load_image
from blindgate.device.liveness_attacks import GENERATED_KINDS, AttackError, AttackKind, attack_frames, photo_face

pytest.importorskip("cv2")

PHOTOS = ["obama/obama.jpg", "kit_harington/kit1.jpg", "rose_leslie/rose1.jpg", "biden/biden.jpg"]
# 1 s at 12 fps keeps the detector's share of the test short; the motion spans the sequence either way
SHORT = {"seconds": 1.0, "fps": 12.0}


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer()


@pytest.fixture(scope="module")
def photos(faces_dir: Path, analyzer: FaceAnalyzer) -> dict[str, tuple[np.ndarray, FaceBox]]:
    out = {}
    for name in PHOTOS:
        rgb = load_image(faces_dir / "people" / name)
        out[name] = (rgb, analyzer.detect(rgb)[0])
    return out


def test_shapes_and_determinism(photos):
    rgb, face = photos["obama/obama.jpg"]
    frames = attack_frames(rgb, AttackKind.PRINT, seconds=0.5, fps=10, size=(320, 240), seed=3, face=face)
    assert len(frames) == 5
    assert all(f.shape == (240, 320, 3) and f.dtype == np.uint8 for f in frames)
    again = attack_frames(rgb, "print", seconds=0.5, fps=10, size=(320, 240), seed=3, face=face)
    assert all(np.array_equal(a, b) for a, b in zip(frames, again, strict=True))
    other = attack_frames(rgb, "print", seconds=0.5, fps=10, size=(320, 240), seed=4, face=face)
    assert np.abs(frames[0].astype(int) - other[0]).mean() > 5  # another seed, another scene


@pytest.mark.parametrize("kind", GENERATED_KINDS)
def test_the_face_is_found_and_moves(photos, analyzer, kind):
    found = total = 0
    for seed, (rgb, face) in enumerate(photos.values()):
        frames = attack_frames(rgb, kind, seed=seed, face=face, **SHORT)
        boxes = [analyzer.detect(f) for f in frames]
        hits = [b[0] for b in boxes if b]
        found, total = found + len(hits), total + len(frames)
        assert hits, f"no face in any frame of {kind} seed {seed}"
        widths = [b.width for b in hits]
        assert 100 <= np.median(widths) <= 240  # a visitor 0.5-1 m from a door camera
        centres = np.array([((b.left + b.right) / 2, (b.top + b.bottom) / 2) for b in hits])
        assert np.ptp(centres, axis=0).max() > 8, "the sheet should move over the sequence"
    assert found / total >= 0.85, f"{kind}: face found in {found} of {total} frames"


def test_control_no_face_no_detections(analyzer):
    """Positive control: the detection rate above comes from the face, not from the rendering."""
    rng = np.random.default_rng(0)
    noise = (rng.random((400, 300, 3)) * 255).astype(np.uint8)
    frames = attack_frames(noise, "print", face=FaceBox(100, 200, 200, 100), **SHORT)
    assert sum(bool(analyzer.detect(f)) for f in frames) <= 1


def test_bent_differs_from_flat_under_the_same_motion(photos):
    rgb, face = photos["kit_harington/kit1.jpg"]
    flat = attack_frames(rgb, "print", seconds=0.5, fps=10, seed=7, face=face)
    bent = attack_frames(rgb, "bent_print", seconds=0.5, fps=10, seed=7, face=face)
    twin = attack_frames(rgb, "print", seconds=0.5, fps=10, seed=7, face=face)
    for f, b, t in zip(flat, bent, twin, strict=True):
        assert np.array_equal(f, t)
        assert np.abs(f.astype(int) - b).mean() > 8  # the sheet's shape changed...
        agree = (np.abs(f.astype(int) - b).max(axis=2) < 12).mean()
        assert agree > 0.3  # ...not the scene: background, placement and motion are the seed's


def test_screen_has_a_dark_bezel(photos):
    rgb, face = photos["obama/obama.jpg"]
    screen = attack_frames(rgb, "screen_still", seconds=0.2, fps=10, seed=1, face=face)[0]
    printed = attack_frames(rgb, "print", seconds=0.2, fps=10, seed=1, face=face)[0]
    dark = lambda frame: (frame.max(axis=2) < 40).mean()  # noqa: E731
    assert dark(screen) > dark(printed) + 0.02


def test_without_a_face_box_the_door_detector_finds_it(photos):
    rgb, face = photos["obama/obama.jpg"]  # a wide photo: the face is a fifth of its width
    assert photo_face(rgb) == face
    given = attack_frames(rgb, "print", seconds=0.2, fps=10, face=face)
    found = attack_frames(rgb, "print", seconds=0.2, fps=10)
    assert all(np.array_equal(a, b) for a, b in zip(given, found, strict=True))


def test_a_photo_without_a_face_is_taken_as_a_portrait():
    blank = np.full((400, 300, 3), 128, np.uint8)
    assert photo_face(blank) == FaceBox(top=125, right=225, bottom=275, left=75)


def test_bad_arguments_are_refused(photos):
    rgb, face = photos["obama/obama.jpg"]
    with pytest.raises(AttackError):
        attack_frames(rgb, AttackKind.GENUINE)
    with pytest.raises(ValueError):
        attack_frames(rgb, "hologram")
    with pytest.raises(AttackError):
        attack_frames(rgb.astype(np.float32), "print")
    with pytest.raises(AttackError):
        attack_frames(rgb, "print", seconds=0.0)
