"""The liveness check on real landmarks: synthetic attacks from ../shared/faces photos, the clip as genuine.

Every frame goes through the door's own parts: the face followed with the door's detector,
dlib's 68 landmarks, `judge_window` over 2 s windows. Attacks: each person's photo as a print,
a bent print and a phone still (device/liveness_attacks.py), moved as a hand would. Genuine: the
Hamilton clip, windows every 0.5 s where the head moved enough to judge.

- A threshold fitted on the attacks made from half of the people stops every print and bent
  print of the other half (and the genuine windows stay live under it);
- the shipped default accepts no print or bent print of anyone and rejects no moving genuine window;
- the fit cannot be fooled into a threshold above the genuine windows (the margin is checked).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from blindgate.device.evaluation.liveness_run import fit_max_flat_residual
from blindgate.device.liveness import DEFAULT_SETTINGS, LivenessKind, judge_window
from blindgate.device.liveness_attacks import AttackKind, attack_frames

WINDOW_S, FPS = 2.0, 30.0
# (kind, seed, swing) per person's photo: held up normally (swing 1) and tilted hard to fake depth (1.8).
ATTACKS = [
    (AttackKind.PRINT, 0, 1.0),
    (AttackKind.PRINT, 1, 1.8),
    (AttackKind.BENT_PRINT, 0, 1.0),
    (AttackKind.BENT_PRINT, 1, 1.8),
    (AttackKind.SCREEN_STILL, 0, 1.8),
]
MEASURE = replace(DEFAULT_SETTINGS, max_flat_residual=0.0)  # every moving window gets its residual
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def follower():
    from blindgate.device.faces import FaceAnalyzer, FaceConfig
    from blindgate.device.landmarks import FaceFollower, LandmarkFinder

    return FaceFollower(FaceAnalyzer(FaceConfig()), LandmarkFinder())


def landmarks(follower, frames):
    follower.reset()
    return [follower.offer(rgb) for rgb in frames]


@pytest.fixture(scope="module")
def people(faces_dir) -> dict[str, list]:
    """Per person: (attack kind, frames) for each attack made from their first photo."""
    from blindgate.device.imaging import load_image

    out: dict[str, list] = {}
    for person in sorted(p for p in (faces_dir / "people").iterdir() if p.is_dir()):
        photo = sorted(p for p in person.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png") and "partial" not in p.name)[
            0
        ]
        rgb = load_image(photo)
        out[person.name] = [
            (kind, attack_frames(rgb, kind, seconds=WINDOW_S, fps=FPS, seed=seed, swing=swing)) for kind, seed, swing in ATTACKS
        ]
    return out


@pytest.fixture(scope="module")
def attack_points(people, follower) -> dict[str, list]:
    return {name: [(kind, landmarks(follower, frames)) for kind, frames in items] for name, items in people.items()}


@pytest.fixture(scope="module")
def genuine_points(faces_dir, follower) -> list[list]:
    """The clip's 2 s windows, every 0.5 s from the first face."""
    from blindgate.device.camera import open_camera

    with open_camera(faces_dir / "video" / "short_hamilton_clip.mp4") as camera:
        frames = list(iter(camera.read, None))
    points = landmarks(follower, [f.rgb for f in frames])
    stamps = [f.timestamp for f in frames]
    first = next(i for i, p in enumerate(points) if p is not None)
    windows, start = [], stamps[first]
    while start + WINDOW_S <= stamps[-1]:
        windows.append([p for p, t in zip(points, stamps) if start <= t < start + WINDOW_S])
        start += 0.5
    return windows


def moving(results):
    """The judgeable windows: enough frames and movement to tell (the others never open: tested elsewhere)."""
    return [r for r in results if r.kind not in (LivenessKind.STILL, LivenessKind.FEW_FRAMES)]


def test_a_threshold_fitted_on_some_peoples_attacks_stops_the_others(attack_points, genuine_points):
    names = sorted(attack_points)
    train, held_out = names[::2], names[1::2]
    fitted = fit_max_flat_residual([judge_window(p, MEASURE) for n in train for _, p in attack_points[n]])
    settings = replace(DEFAULT_SETTINGS, max_flat_residual=fitted)
    accepted = [
        (name, kind)
        for name in held_out
        for kind, points in attack_points[name]
        if kind in (AttackKind.PRINT, AttackKind.BENT_PRINT) and judge_window(points, settings).kind is LivenessKind.LIVE
    ]
    assert accepted == [], f"threshold {fitted:.4f} fitted on {train} accepted {accepted}"
    genuine = moving([judge_window(p, settings) for p in genuine_points])
    assert len(genuine) >= 5 and all(r.kind is LivenessKind.LIVE for r in genuine), [r.kind for r in genuine]


def test_the_default_accepts_no_print_and_rejects_no_moving_genuine_window(attack_points, genuine_points):
    outcomes: dict[AttackKind, list] = {kind: [] for kind, _, _ in ATTACKS}
    for items in attack_points.values():
        for kind, points in items:
            outcomes[kind].append(judge_window(points, DEFAULT_SETTINGS).kind)
    for kind in (AttackKind.PRINT, AttackKind.BENT_PRINT):
        assert LivenessKind.LIVE not in outcomes[kind], (kind, outcomes[kind])
    genuine = moving([judge_window(p, DEFAULT_SETTINGS) for p in genuine_points])
    assert len(genuine) >= 5, "positive control: the clip must give judgeable windows"
    assert all(r.kind is LivenessKind.LIVE for r in genuine), [r.kind for r in genuine]


def test_the_fit_keeps_a_margin_and_refuses_nonsense():
    from blindgate.device.liveness import LivenessResult

    results = [LivenessResult(LivenessKind.LIVE, r, 0.05, 12, 60, None) for r in (0.010, 0.020)]
    results.append(LivenessResult(LivenessKind.STILL, None, 0.0, 0, 60, None))  # not judgeable: ignored
    assert fit_max_flat_residual(results) == pytest.approx(0.020 * 1.4)
    with pytest.raises(ValueError, match="no attack window"):
        fit_max_flat_residual([results[-1]])
