"""Liveness by head movement (device/liveness.py) on a synthetic 3D face seen by a pinhole camera.

A rough 68-point face with depth (nose tip forward, eyes and contour back) is turned in front of the
camera: LIVE. The same landmarks printed on a plane and moved in 3D: FLAT (the attack), and a print bent
around a vertical axis, which the tests measure against the live head. Run with -s to see the numbers.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from blindgate.device.liveness import (
    DEFAULT,
    DEFAULT_MAX_FLAT_RESIDUAL,
    RIGID_POINTS,
    LivenessError,
    LivenessKind,
    LivenessSettings,
    eye_aspect_ratio,
    fit_homography,
    homography_residual,
    judge_window,
    similarity_residual,
    smooth,
)

EYE_MM = 63.0  # a real eye distance: one unit of the synthetic face
FRAMES = 60  # 2 s at 30 fps


def face_layout() -> np.ndarray:
    """A rough frontal 68-point face, (68, 3) in eye distances: x right in the image, y down, z towards the camera.

    Depth as in the brief: nose tip ~0.6 forward, eyes ~0.2 back, the contour back up to ~0.9 near the ears.
    """
    points = np.zeros((68, 3))
    for i in range(17):  # contour: subject's right ear, chin, left ear
        t = math.radians(-95 + i * 190 / 16)
        points[i] = (0.95 * math.sin(t), 0.15 + 1.4 * math.cos(t), -0.1 - 0.8 * abs(math.sin(t)))
    for i in range(5):  # brows
        x = -0.9 + i * 0.18
        y = -0.3 - 0.08 * math.sin(math.pi * i / 4)
        points[17 + i] = (x, y, -0.05 - 0.2 * abs(x))
        points[26 - i] = (-x, y, -0.05 - 0.2 * abs(x))
    for i in range(4):  # nose bridge down to the tip
        points[27 + i] = (0.0, -0.05 + 0.25 * i, 0.1 + 0.5 * i / 3)
    for i, x in enumerate((-0.25, -0.12, 0.0, 0.12, 0.25)):  # nose bottom
        points[31 + i] = (x, 0.8 + 0.05 * (1 - abs(x) / 0.25), 0.3 + 0.15 * (1 - abs(x) / 0.25))
    eye = [(-0.22, 0.0, -0.05), (-0.08, -0.08, 0.0), (0.08, -0.08, 0.0), (0.22, 0.0, 0.05), (0.08, 0.07, 0.0), (-0.08, 0.07, 0.0)]
    for i, (dx, dy, dz) in enumerate(eye):
        points[36 + i] = (-0.5 + dx, dy, -0.2 - dz)
        points[42 + i] = (0.5 + dx, dy, -0.2 + dz)
    for i in range(12):  # outer lip
        t = 2 * math.pi * i / 12
        points[48 + i] = (-0.45 * math.cos(t), 1.15 - 0.15 * math.sin(t), 0.15 - 0.1 * abs(math.cos(t)))
    for i in range(8):  # inner lip
        t = 2 * math.pi * i / 8
        points[60 + i] = (-0.3 * math.cos(t), 1.15 - 0.05 * math.sin(t), 0.15)
    return points


FACE = face_layout()


def printed(face: np.ndarray, bend: float = 0.0) -> np.ndarray:
    """The face's landmarks on a print: depth 0, or bent around a vertical axis (depth -bend * x^2)."""
    flat = face.copy()
    flat[:, 2] = -bend * flat[:, 0] ** 2
    return flat


def rotation(yaw_deg: float, pitch_deg: float, roll_deg: float = 0.0) -> np.ndarray:
    yaw, pitch, roll = (math.radians(angle) for angle in (yaw_deg, pitch_deg, roll_deg))
    about_y = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
    about_x = np.array([[1, 0, 0], [0, math.cos(pitch), -math.sin(pitch)], [0, math.sin(pitch), math.cos(pitch)]])
    about_z = np.array([[math.cos(roll), -math.sin(roll), 0], [math.sin(roll), math.cos(roll), 0], [0, 0, 1]])
    return about_z @ about_x @ about_y


def project(
    cloud: np.ndarray, turn: np.ndarray, shift: np.ndarray, distance_mm: float = 1000.0, eye_px: float = 60.0, pivot: float = 1.5
) -> np.ndarray:
    """Pinhole image (pixels) of the cloud turned about a point `pivot` behind it, then shifted; ~eye_px between the eyes."""
    focal = eye_px * distance_mm / EYE_MM
    distance = distance_mm / EYE_MM
    centre = np.array([0.0, 0.0, -pivot])
    moved = (cloud - centre) @ turn.T + centre + shift
    depth = distance - moved[:, 2]
    return np.stack([320 + focal * moved[:, 0] / depth, 240 + focal * moved[:, 1] / depth], axis=1)


def sweep(
    cloud: np.ndarray,
    start: tuple[float, float, float],
    end: tuple[float, float, float],
    rng: np.random.Generator,
    noise_px: float = 0.0,
    shift: tuple[float, float, float] = (0.0, 0.0, 0.0),
    frames: int = FRAMES,
    pivot: float = 1.5,
) -> list[np.ndarray]:
    """A window of landmarks while the cloud turns from `start` to `end` (yaw, pitch, roll in degrees) and shifts."""
    window = []
    for k in range(frames):
        s = k / (frames - 1)
        angles = [a + s * (b - a) for a, b in zip(start, end, strict=True)]
        image = project(cloud, rotation(*angles), s * np.asarray(shift), pivot=pivot)
        window.append(image + rng.normal(0.0, noise_px, image.shape))
    return window


def head_turn(rng: np.random.Generator, noise_px: float = 0.0, cloud: np.ndarray = FACE) -> list[np.ndarray]:
    """A head turning by 10-20 degrees either way in yaw, or nodding as much in pitch (the other axis a little)."""
    amount = rng.uniform(10, 20) * rng.choice([-1, 1])
    other = rng.uniform(-5, 5)
    if rng.random() < 0.5:
        return sweep(cloud, (-amount, -other, 0), (amount, other, 0), rng, noise_px)
    return sweep(cloud, (-other, -amount, 0), (other, amount, 0), rng, noise_px)


def print_moved(rng: np.random.Generator, noise_px: float = 0.0, bend: float = 0.0) -> list[np.ndarray]:
    """A print turned through 20-35 degrees in 3D (about a random pivot), tilted, rolled and moved, even towards the camera."""
    way = rng.choice([-1, 1])  # turned away from facing the camera: its foreshortening changes
    start = (way * rng.uniform(0, 10), rng.uniform(-10, 10), rng.uniform(-10, 10))
    delta = (way * rng.uniform(20, 35), rng.uniform(-15, 15), rng.uniform(-10, 10))
    end = (start[0] + delta[0], start[1] + delta[1], start[2] + delta[2])
    shift = (rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(-3, 3))
    return sweep(printed(FACE, bend), start, end, rng, noise_px, shift, pivot=rng.uniform(-1, 2))


# --- geometry ---------------------------------------------------------------------------------------


def test_fit_homography_recovers_a_known_map() -> None:
    rng = np.random.default_rng(1)
    truth = np.array([[1.1, 0.05, 12.0], [-0.03, 0.95, -7.0], [2e-4, -1e-4, 1.0]])
    src = rng.uniform(0, 400, (17, 2))
    homogeneous = np.c_[src, np.ones(17)] @ truth.T
    dst = homogeneous[:, :2] / homogeneous[:, 2:]
    fitted = fit_homography(src, dst)
    assert np.allclose(fitted / fitted[2, 2], truth, atol=1e-8)


def test_fit_homography_rejects_bad_points() -> None:
    with pytest.raises(LivenessError):
        fit_homography(np.zeros((3, 2)) + [[0, 0], [1, 0], [0, 1]], np.zeros((3, 2)))
    with pytest.raises(LivenessError):
        fit_homography(np.full((5, 2), np.nan), np.ones((5, 2)))
    with pytest.raises(LivenessError):
        fit_homography(np.ones((5, 2)), np.ones((5, 2)))  # all on one spot


def test_a_plane_moves_by_a_homography_and_a_head_does_not() -> None:
    plane = printed(FACE)
    a = project(plane, rotation(-10, 5), np.zeros(3))
    b = project(plane, rotation(20, -5, 8), np.array([0.5, -0.3, 2.0]))
    assert homography_residual(a, b) < 1e-9
    head_a = project(FACE, rotation(-10, 5), np.zeros(3))
    head_b = project(FACE, rotation(10, -5), np.zeros(3))
    assert homography_residual(head_a, head_b) > 3 * DEFAULT_MAX_FLAT_RESIDUAL  # positive control: parallax


def test_residuals_are_scale_free() -> None:
    a = project(FACE, rotation(-10, 0), np.zeros(3))
    b = project(FACE, rotation(10, 0), np.zeros(3))
    assert homography_residual(a, b) == pytest.approx(homography_residual(3 * a + 50, 3 * b - 20), rel=1e-6)
    assert similarity_residual(a, b) == pytest.approx(similarity_residual(3 * a, 3 * b), rel=1e-6)


def test_similarity_residual_ignores_moving_turning_scaling_in_the_image() -> None:
    a = project(FACE, rotation(0, 0), np.zeros(3))
    angle = math.radians(20)
    spin = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    b = 1.3 * a @ spin.T + [40.0, -25.0]
    assert similarity_residual(a, b) < 1e-9
    turned = project(FACE, rotation(20, 0), np.zeros(3))
    assert similarity_residual(a, turned) > 0.05  # positive control: a head turn is more than a similarity


def test_rigid_points_leave_out_the_mouth_jaw_and_lids() -> None:
    moving = set(range(2, 15)) | set(range(48, 68)) | {37, 38, 40, 41, 43, 44, 46, 47}
    assert not moving & set(RIGID_POINTS)
    assert {30, 36, 39, 42, 45, 0, 16} <= set(RIGID_POINTS)


def test_smooth_is_a_moving_average_without_padding() -> None:
    frames = [np.full((68, 2), float(i)) for i in range(10)]
    smoothed = smooth(frames, 5)
    assert len(smoothed) == 6
    assert [float(frame[0, 0]) for frame in smoothed] == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert len(smooth(frames, 1)) == 10 and np.array_equal(smooth(frames, 1)[3], frames[3])
    assert smooth(frames[:3], 5) == []


def test_eye_aspect_ratio_open_and_closed() -> None:
    open_eyes = project(FACE, rotation(0, 0), np.zeros(3))
    assert 0.25 < eye_aspect_ratio(open_eyes) < 0.4
    closed = close_eyes(open_eyes, 0.1)
    assert eye_aspect_ratio(closed) == pytest.approx(0.1 * eye_aspect_ratio(open_eyes), rel=0.05)


def close_eyes(points: np.ndarray, openness: float) -> np.ndarray:
    """The lids (37, 38, 40, 41 and 43, 44, 46, 47) pulled towards the line between the eye corners."""
    result = points.copy()
    for corner_a, corner_b, lids in ((36, 39, (37, 38, 40, 41)), (42, 45, (43, 44, 46, 47))):
        middle_y = (points[corner_a, 1] + points[corner_b, 1]) / 2
        for lid in lids:
            result[lid, 1] = middle_y + openness * (points[lid, 1] - middle_y)
    return result


# --- judging windows --------------------------------------------------------------------------------


@pytest.mark.parametrize("noise_px", [0.0, 0.5, 1.0])
def test_a_turning_head_is_live(noise_px: float) -> None:
    rng = np.random.default_rng(10 + int(noise_px * 10))
    results = [judge_window(head_turn(rng, noise_px)) for _ in range(15)]
    assert [r.kind for r in results] == [LivenessKind.LIVE] * 15, [(r.kind, r.residual) for r in results]
    assert all(r.frames == FRAMES and r.pairs >= DEFAULT.min_pairs for r in results)


@pytest.mark.parametrize(("noise_px", "min_flat"), [(0.0, 27), (0.5, 27), (1.0, 27), (2.0, 20)])
def test_a_print_moved_in_3d_is_flat(noise_px: float, min_flat: int) -> None:
    """The attack: a photo tilted, turned and moved in front of the camera never passes, even with detector noise.

    Most windows are judged FLAT; the rest moved too little beyond the noise (STILL), which rejects too.
    """
    rng = np.random.default_rng(20 + int(noise_px * 10))
    results = [judge_window(print_moved(rng, noise_px)) for _ in range(30)]
    kinds = [r.kind for r in results]
    assert set(kinds) <= {LivenessKind.FLAT, LivenessKind.STILL}, kinds
    assert kinds.count(LivenessKind.FLAT) >= min_flat, kinds
    # positive control: a head moved just as much, with the same noise, is live
    assert judge_window(sweep(FACE, (-15, 0, 0), (15, 5, 5), rng, noise_px)).kind is LivenessKind.LIVE


def test_a_bent_print_stays_clearly_under_a_live_head() -> None:
    """A print bent around a vertical axis is 3D too; measure it against the live head at the default threshold.

    bend 0.2: 0.2 eye distances (~13 mm for a life-size face) further back at the face's edge than at its middle.
    """
    rng = np.random.default_rng(30)
    live = [judge_window(head_turn(rng, 1.0), LivenessSettings(max_flat_residual=0.0)) for _ in range(30)]
    live_residuals = sorted(r.residual or 0.0 for r in live)
    measured: dict[float, list[float]] = {}
    for bend in (0.2, 0.4, 0.8):
        results = [judge_window(print_moved(rng, 1.0, bend), LivenessSettings(max_flat_residual=0.0)) for _ in range(30)]
        measured[bend] = sorted(r.residual for r in results if r.residual is not None)
    print(f"\nlive head (1 px noise): residual min {live_residuals[0]:.4f} median {np.median(live_residuals):.4f}")
    for bend, values in measured.items():
        print(f"print bent {bend}: residual median {np.median(values):.4f} max {values[-1]:.4f} ({len(values)} judged)")
    assert measured[0.2][-1] < DEFAULT_MAX_FLAT_RESIDUAL < live_residuals[0]
    assert measured[0.2][-1] * 1.5 < live_residuals[0]  # a clear margin, not a hair's breadth


def test_a_still_head_is_too_still_to_tell() -> None:
    rng = np.random.default_rng(40)
    for noise_px in (0.5, 1.0, 2.0):
        result = judge_window(sweep(FACE, (0, 0, 0), (0, 0, 0), rng, noise_px))
        assert result.kind is LivenessKind.STILL, (noise_px, result)
        assert result.residual is None
        assert result.noise is not None and result.noise * 60 == pytest.approx(noise_px, rel=0.25)


def test_noise_correction_keeps_a_noisy_still_print_from_looking_live() -> None:
    """Without taking the detector's jitter out, a still print under 3 px noise shows "motion" and "parallax"."""
    rng = np.random.default_rng(41)
    window = sweep(printed(FACE), (5, 5, 0), (5, 5, 0), rng, 3.0)
    assert judge_window(window, LivenessSettings(correct_noise=False)).kind is LivenessKind.LIVE  # the raw measure fails
    assert judge_window(window).kind is LivenessKind.STILL


def test_too_few_frames() -> None:
    rng = np.random.default_rng(50)
    window: list[np.ndarray | None] = list(head_turn(rng))
    result = judge_window(window[: DEFAULT.min_frames - 1])
    assert result.kind is LivenessKind.FEW_FRAMES and result.frames == DEFAULT.min_frames - 1
    assert result.residual is None and result.blinked is None
    mostly_missing = [frame if i % 4 == 0 else None for i, frame in enumerate(window)]  # 15 faces in 60 frames
    assert judge_window(mostly_missing).kind is LivenessKind.FEW_FRAMES
    with_gaps = [None if i % 10 == 3 else frame for i, frame in enumerate(window)]  # a few frames without a face
    result = judge_window(with_gaps)
    assert result.kind is LivenessKind.LIVE and result.frames == 54


def test_blink_required() -> None:
    rng = np.random.default_rng(60)
    window = head_turn(rng, 0.5)
    blinking = [close_eyes(frame, 0.2) if 30 <= i < 34 else frame for i, frame in enumerate(window)]
    settings = LivenessSettings(blink=True)
    assert judge_window(window, settings).kind is LivenessKind.NO_BLINK
    assert judge_window(window, settings).blinked is False
    result = judge_window(blinking, settings)
    assert result.kind is LivenessKind.LIVE and result.blinked is True
    assert judge_window(window).kind is LivenessKind.LIVE  # blink not required
    one_frame = [close_eyes(frame, 0.2) if i == 30 else frame for i, frame in enumerate(window)]
    assert judge_window(one_frame, settings).kind is LivenessKind.NO_BLINK  # one odd frame is no blink


def test_a_blinking_print_is_still_flat() -> None:
    rng = np.random.default_rng(61)
    window = print_moved(rng, 0.5)
    blinking = [close_eyes(frame, 0.2) if 30 <= i < 34 else frame for i, frame in enumerate(window)]
    assert judge_window(blinking, LivenessSettings(blink=True)).kind is LivenessKind.FLAT


def test_non_finite_or_degenerate_landmarks_are_never_live() -> None:
    rng = np.random.default_rng(70)
    window = head_turn(rng)
    assert judge_window(window).kind is LivenessKind.LIVE  # positive control
    poisoned = [frame.copy() for frame in window]
    poisoned[20][30] = np.nan
    with pytest.raises(LivenessError):
        judge_window(poisoned)
    infinite = [frame.copy() for frame in window]
    infinite[5][0, 0] = np.inf
    with pytest.raises(LivenessError):
        judge_window(infinite)
    with pytest.raises(LivenessError):
        judge_window([np.zeros((68, 2))] * FRAMES)  # every point on one spot
    with pytest.raises(LivenessError):
        judge_window([frame[:67] for frame in window])  # not the 68-point layout
    with pytest.raises(LivenessError):
        eye_aspect_ratio(np.full((68, 2), np.nan))


@pytest.mark.parametrize(
    "changes",
    [
        {"max_flat_residual": math.nan},
        {"min_motion": -1.0},
        {"min_pairs": 0},
        {"smooth_frames": 0},
        {"min_frames": 5, "smooth_frames": 5},
        {"blink_drop": 1.0},
    ],
)
def test_settings_are_checked(changes: dict[str, float]) -> None:
    with pytest.raises(LivenessError):
        LivenessSettings(**changes)


# --- a real face's landmark layout ------------------------------------------------------------------


def real_face(faces_dir: Path) -> np.ndarray:
    """dlib's 68 landmarks of one real photo, in eye distances around the eyes' midpoint, given the synthetic depth."""
    dlib = pytest.importorskip("dlib")
    from blindgate.device.faces import load_image, model_path

    photos = sorted((faces_dir / "people").glob("*/*.jpg"))
    if not photos:
        pytest.skip("no photos under faces/people")
    image = load_image(photos[0])
    boxes = dlib.get_frontal_face_detector()(image, 1)
    if not boxes:
        pytest.skip(f"no face found in {photos[0]}")
    shape = dlib.shape_predictor(str(model_path("shape_predictor_68_face_landmarks.dat")))(image, boxes[0])
    points = np.array([(part.x, part.y) for part in shape.parts()], dtype=np.float64)
    right, left = points[36:42].mean(axis=0), points[42:48].mean(axis=0)
    flat = (points - (right + left) / 2) / np.linalg.norm(left - right)
    return np.c_[flat, FACE[:, 2]]


def test_a_real_face_layout_turning_is_live_and_printed_is_flat(faces_dir: Path) -> None:
    face = real_face(faces_dir)
    rng = np.random.default_rng(80)
    turning = sweep(face, (-15, -3, 0), (15, 3, 0), rng, 1.0)
    assert judge_window(turning).kind is LivenessKind.LIVE
    print_of_it = sweep(printed(face), (-10, 5, 0), (20, -5, 5), rng, 1.0, shift=(0.3, 0.0, 2.0))
    assert judge_window(print_of_it).kind is LivenessKind.FLAT
