"""Liveness by head movement: a real head is 3D, a photo moved in front of the camera is a plane.

The landmarks of a flat picture in two frames are related by a homography (a projective map of
the plane), however the picture is tilted, turned or moved. A turning head is not a plane: the
nose tip moves relative to the eye corners and the face contour (parallax), which no homography
explains. So for pairs of frames of a short window (2 s at 30 fps) this module fits a homography
on the landmarks that move rigidly with the skull and measures what is left, in eye distances.

Pure numpy on dlib's 68-point layout: no camera, no dlib, no I/O. The agent passes one window of
landmark arrays ((68, 2) pixel coordinates, `None` where no face was found) to `judge_window`.

Fail secure: malformed or degenerate input (wrong shape, NaN/inf, all points on one spot, a zero
eye distance) raises `LivenessError`; the caller treats that as "not live". Only a window whose
residual is finite and above the threshold can come out LIVE.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from blindgate.shared.errors import BlindgateError

# The landmarks used for the fit: those fixed to the skull.
# - eye corners 36, 39, 42, 45 (the canthi are tied to the orbit; the lids 37/38/40/41/43/44/46/47 blink);
# - nose bridge 27-30 and bottom 31-35 (bone and cartilage; the nose tip carries the strongest parallax);
# - the contour beside the ears/temples 0, 1, 15, 16 (above the jaw angle: with the nose tip they span
#   the face's depth).
# Left out: the jaw 2-14 and the mouth 48-67 (they move when speaking) and the brows 17-26 (raised or
# knitted with expression). Such motion is not parallax: it would only add noise to a real face's residual
# and give a video of a talking face on a screen non-planar motion to pass on.
RIGID_POINTS: tuple[int, ...] = (0, 1, 15, 16, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45)

RIGHT_EYE = slice(36, 42)  # the subject's right eye: image left
LEFT_EYE = slice(42, 48)

# The threshold, in eye distances net of jitter: at or under it a window moved like a plane. Measured
# with the door's own parts (FaceFollower, dlib's 68 landmarks, 2 s at 30 frames/s) on the synthetic
# attacks of device/liveness_attacks.py made from ../shared/faces (6 people, 2 photos each, prints,
# bent prints and phone stills, 2 seeds, held up normally and tilted hard: 132 windows) and on the
# Hamilton clip as genuine (windows every 0.5 s: 11 judgeable):
#   attacks: largest residual 0.0253 (a bent print tilted hard); prints 0.0203; phone stills 0.0215;
#   genuine: smallest 0.0309, median 0.061.
# Fitted on the attacks alone (largest residual x FIT_MARGIN 1.4, evaluation/liveness_run.py) it would
# be 0.035, above the clip's weakest genuine window; so the default sits 10% under that window, 0.028,
# which leaves the worst synthetic attack 10% under it. Thin margins both ways on a small synthetic
# set: measure a real door with `blindgate-device record` and `evaluate --liveness` (README).
DEFAULT_MAX_FLAT_RESIDUAL = 0.028
DEFAULT_MIN_MOTION = 0.02  # eye distances of change beyond a similarity: less is too still to tell
DEFAULT_MIN_PAIRS = 10
DEFAULT_MIN_FRAMES = 20
DEFAULT_SMOOTH_FRAMES = 5
DEFAULT_BLINK_DROP = 0.75
# A blink must keep the EAR low for this many consecutive frames: one noisy frame is no blink.
BLINK_MIN_FRAMES = 2
# At most this many frames enter the pair search (evenly subsampled): ~190 pairs, a few ms.
MAX_PAIR_FRAMES = 20
# Pairs are at least this fraction of the (smoothed) window apart: enough time to have moved.
PAIR_GAP_FRACTION = 0.2

# The jitter's expected share is taken out with this margin: its estimate and the RMS both wobble, and
# erring high only costs a real head a little of its (much larger) residual.
NOISE_MARGIN = 1.3

_TINY = 1e-9


class LivenessError(BlindgateError, ValueError):
    """Landmarks that cannot be judged (wrong shape, NaN/inf, degenerate) or invalid settings: not live."""


class LivenessKind(StrEnum):
    """The outcome of one window; only LIVE lets the face through."""

    LIVE = "live"
    FLAT = "flat"  # moved like a plane: a photo or a screen
    STILL = "too_little_movement"
    FEW_FRAMES = "too_few_frames"
    NO_BLINK = "no_blink"


@dataclass(frozen=True)
class LivenessSettings:
    """Thresholds of `judge_window`; residuals and motion are in eye distances."""

    max_flat_residual: float = DEFAULT_MAX_FLAT_RESIDUAL
    min_motion: float = DEFAULT_MIN_MOTION
    min_pairs: int = DEFAULT_MIN_PAIRS
    min_frames: int = DEFAULT_MIN_FRAMES
    smooth_frames: int = DEFAULT_SMOOTH_FRAMES
    blink: bool = False
    blink_drop: float = DEFAULT_BLINK_DROP
    correct_noise: bool = True  # take the expected share of landmark jitter out of residual and motion

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_flat_residual) and self.max_flat_residual >= 0):
            raise LivenessError(f"max_flat_residual must be a finite number >= 0, not {self.max_flat_residual}")
        if not (math.isfinite(self.min_motion) and self.min_motion >= 0):
            raise LivenessError(f"min_motion must be a finite number >= 0, not {self.min_motion}")
        if self.min_pairs < 1:
            raise LivenessError(f"min_pairs must be at least 1, not {self.min_pairs}")
        if self.smooth_frames < 1:
            raise LivenessError(f"smooth_frames must be at least 1, not {self.smooth_frames}")
        if self.min_frames < self.smooth_frames + 1:
            raise LivenessError(f"min_frames ({self.min_frames}) must exceed smooth_frames ({self.smooth_frames})")
        if not 0 < self.blink_drop < 1:
            raise LivenessError(f"blink_drop must be between 0 and 1, not {self.blink_drop}")


DEFAULT_SETTINGS = LivenessSettings()
DEFAULT = DEFAULT_SETTINGS  # the short name the brief used


@dataclass(frozen=True)
class LivenessResult:
    """The verdict and what it rests on (for logs and for fitting the thresholds)."""

    kind: LivenessKind
    residual: float | None  # median homography residual over the moving pairs (eye distances)
    motion: float | None  # median similarity residual over all pairs considered (eye distances)
    pairs: int  # moving pairs used
    frames: int  # frames with a face
    blinked: bool | None  # None when not measured (too few frames)
    noise: float | None = None  # estimated per-frame landmark jitter (eye distances), None if not measured


def _as_landmarks(points: np.ndarray, what: str = "landmarks") -> np.ndarray:
    """A finite float (68, 2) array, or LivenessError."""
    array = np.asarray(points, dtype=np.float64)
    if array.shape != (68, 2):
        raise LivenessError(f"{what} must have shape (68, 2), not {array.shape}")
    if not np.all(np.isfinite(array)):
        raise LivenessError(f"{what} contain NaN or inf")
    return array


def _eye_distances(frames: np.ndarray) -> np.ndarray:
    """Distance between the eye centres of each frame of (F, 68, 2): the scale of the face."""
    right = frames[:, RIGHT_EYE].mean(axis=1)
    left = frames[:, LEFT_EYE].mean(axis=1)
    distances: np.ndarray = np.linalg.norm(left - right, axis=1)
    if np.any(distances <= _TINY):
        raise LivenessError("eye distance is zero: degenerate landmarks")
    return distances


def _normalizers(points: np.ndarray) -> np.ndarray:
    """Hartley normalization of (B, N, 2): (B, 3, 3) maps moving the centroid to 0 and the mean distance to sqrt 2."""
    centre = points.mean(axis=1)
    spread = np.linalg.norm(points - centre[:, None, :], axis=2).mean(axis=1)
    if np.any(spread <= _TINY):
        raise LivenessError("all landmarks on one spot: degenerate")
    scale = math.sqrt(2.0) / spread
    transforms = np.zeros((points.shape[0], 3, 3))
    transforms[:, 0, 0] = scale
    transforms[:, 1, 1] = scale
    transforms[:, 0, 2] = -scale * centre[:, 0]
    transforms[:, 1, 2] = -scale * centre[:, 1]
    transforms[:, 2, 2] = 1.0
    return transforms


def _apply(transforms: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(B, 3, 3) projective maps applied to (B, N, 2) points; a point sent to infinity becomes inf/NaN."""
    homogeneous = np.concatenate([points, np.ones(points.shape[:2] + (1,))], axis=2)
    mapped = homogeneous @ np.swapaxes(transforms, 1, 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        result: np.ndarray = mapped[..., :2] / mapped[..., 2:3]
    return result


def _fit_homographies(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Normalized DLT for a batch: (B, N, 2) -> (B, 3, 3) with H(src) ~ dst, scaled so H[2, 2] = 1 when possible."""
    if src.shape[1] < 4:
        raise LivenessError(f"a homography needs at least 4 points, not {src.shape[1]}")
    t_src, t_dst = _normalizers(src), _normalizers(dst)
    a = _apply(t_src, src)
    b = _apply(t_dst, dst)
    x, y = a[..., 0], a[..., 1]
    u, v = b[..., 0], b[..., 1]
    zero, one = np.zeros_like(x), np.ones_like(x)
    rows_u = np.stack([-x, -y, -one, zero, zero, zero, u * x, u * y, u], axis=2)
    rows_v = np.stack([zero, zero, zero, -x, -y, -one, v * x, v * y, v], axis=2)
    system = np.concatenate([rows_u, rows_v], axis=1)  # (B, 2N, 9)
    _, _, vh = np.linalg.svd(system, full_matrices=False)
    normalized = vh[:, -1, :].reshape(-1, 3, 3)
    homographies: np.ndarray = np.linalg.inv(t_dst) @ normalized @ t_src
    corner = homographies[:, 2:3, 2:3]
    safe = np.where(np.abs(corner) > _TINY, corner, 1.0)
    return homographies / safe


def _homography_rms(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """RMS distance (pixels) between H(src) and dst per batch item, H the best homography."""
    mapped = _apply(_fit_homographies(src, dst), src)
    rms: np.ndarray = np.sqrt(np.mean(np.sum((mapped - dst) ** 2, axis=2), axis=1))
    return rms


def _similarity_rms(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """RMS distance (pixels) left after the least-squares similarity src -> dst (Procrustes, as complex numbers)."""
    a = src[..., 0] + 1j * src[..., 1]
    b = dst[..., 0] + 1j * dst[..., 1]
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    power = np.sum(np.abs(a) ** 2, axis=1)
    if np.any(power <= _TINY):
        raise LivenessError("all landmarks on one spot: degenerate")
    factor = np.sum(np.conj(a) * b, axis=1) / power  # rotation and scale in one complex number
    rms: np.ndarray = np.sqrt(np.mean(np.abs(b - factor[:, None] * a) ** 2, axis=1))
    return rms


def _pair_scale(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean eye distance of the two frames of each pair: the unit that makes residuals scale-free."""
    return (_eye_distances(a) + _eye_distances(b)) / 2.0


def fit_homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 homography H with H(src) ~ dst (normalized DLT, least squares by SVD); points (N, 2), N >= 4."""
    source = np.asarray(src, dtype=np.float64)
    target = np.asarray(dst, dtype=np.float64)
    if source.ndim != 2 or source.shape[1] != 2 or source.shape != target.shape:
        raise LivenessError(f"points must be two (N, 2) arrays of one shape, not {source.shape} and {target.shape}")
    if not (np.all(np.isfinite(source)) and np.all(np.isfinite(target))):
        raise LivenessError("points contain NaN or inf")
    homography: np.ndarray = _fit_homographies(source[None], target[None])[0]
    return homography


def homography_residual(a: np.ndarray, b: np.ndarray, points: Sequence[int] = RIGID_POINTS) -> float:
    """RMS distance between H(a) and b on `points`, H the best homography, in eye distances (mean of a and b).

    Near zero when the face moved like a plane (a photo); parallax of a real head leaves more.
    """
    first, second = _as_landmarks(a, "a")[None], _as_landmarks(b, "b")[None]
    index = list(points)
    residual = float(_homography_rms(first[:, index], second[:, index])[0] / _pair_scale(first, second)[0])
    if not math.isfinite(residual):
        raise LivenessError("the homography sends a landmark to infinity: degenerate")
    return residual


def similarity_residual(a: np.ndarray, b: np.ndarray, points: Sequence[int] = RIGID_POINTS) -> float:
    """RMS distance left on `points` after the best similarity a -> b, in eye distances (mean of a and b).

    What changed beyond moving, turning and scaling in the image plane: the motion that could reveal depth.
    """
    first, second = _as_landmarks(a, "a")[None], _as_landmarks(b, "b")[None]
    index = list(points)
    return float(_similarity_rms(first[:, index], second[:, index])[0] / _pair_scale(first, second)[0])


def smooth(landmarks: Sequence[np.ndarray], k: int) -> list[np.ndarray]:
    """Moving average of each landmark over `k` consecutive frames ("valid": len - k + 1 frames, none if fewer).

    Centred in effect: output i is the mean of frames i..i+k-1, no padding, so the ends are not biased
    towards the first or last frame. It lowers the per-frame landmark jitter by about sqrt(k).
    """
    if k < 1:
        raise LivenessError(f"smoothing needs k >= 1, not {k}")
    if len(landmarks) < k:
        return []
    stack = np.stack([np.asarray(frame, dtype=np.float64) for frame in landmarks])
    sums = np.cumsum(stack, axis=0)
    sums = np.concatenate([np.zeros((1,) + stack.shape[1:]), sums], axis=0)
    averaged = (sums[k:] - sums[:-k]) / k
    return list(averaged)


def _eye_aspect_ratios(frames: np.ndarray) -> np.ndarray:
    """EAR per frame of (F, 68, 2), mean of both eyes: lid opening over eye width (Soukupova & Cech 2016)."""

    def ratio(eye: np.ndarray) -> np.ndarray:
        opening = np.linalg.norm(eye[:, 1] - eye[:, 5], axis=1) + np.linalg.norm(eye[:, 2] - eye[:, 4], axis=1)
        width = np.linalg.norm(eye[:, 0] - eye[:, 3], axis=1)
        if np.any(width <= _TINY):
            raise LivenessError("eye width is zero: degenerate landmarks")
        result: np.ndarray = opening / (2.0 * width)
        return result

    return (ratio(frames[:, RIGHT_EYE]) + ratio(frames[:, LEFT_EYE])) / 2.0


def eye_aspect_ratio(points68: np.ndarray) -> float:
    """Eye aspect ratio of one frame, mean of both eyes: ~0.3 open, near 0 closed."""
    return float(_eye_aspect_ratios(_as_landmarks(points68, "points68")[None])[0])


def _blinked(frames: np.ndarray, drop: float) -> bool:
    """Whether the EAR falls below `drop` x its window median for BLINK_MIN_FRAMES consecutive frames."""
    ratios = _eye_aspect_ratios(frames)
    low = ratios < drop * float(np.median(ratios))
    run = 0
    for is_low in low:
        run = run + 1 if is_low else 0
        if run >= BLINK_MIN_FRAMES:
            return True
    return False


def _jitter(frames: np.ndarray, points: list[int]) -> float:
    """Per-frame landmark jitter (std per coordinate, eye distances) of raw (F, 68, 2) frames.

    From second differences x[t-1] - 2 x[t] + x[t+1] (variance 6 sigma^2 for white noise; a head's smooth
    motion adds little at 30 fps), robustly via the median absolute value.
    """
    if len(frames) < 3:
        return 0.0
    second = frames[:-2, points] - 2.0 * frames[1:-1, points] + frames[2:, points]
    sigma_px = 1.4826 * float(np.median(np.abs(second))) / math.sqrt(6.0)
    return sigma_px / float(np.median(_eye_distances(frames)))


def _noise_floor(jitter: float, smooth_frames: int, points: int, parameters: int) -> float:
    """Expected RMS residual (eye distances) of a pair of smoothed frames from jitter alone.

    Each smoothed coordinate keeps jitter^2 / k, a pair difference twice that, and a least-squares
    fit with `parameters` unknowns absorbs that many of the 2N coordinates.
    """
    dof = max(2 * points - parameters, 0)
    return NOISE_MARGIN * jitter * math.sqrt(2.0 * dof / (smooth_frames * points))


def _above_floor(values: np.ndarray, floor: float) -> np.ndarray:
    """sqrt(v^2 - floor^2), 0 where v is under the floor: what is left once the jitter's share is removed."""
    result: np.ndarray = np.sqrt(np.maximum(values**2 - floor**2, 0.0))
    return result


def _pairs(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame pairs (i, j): among up to MAX_PAIR_FRAMES evenly spaced frames, all at least a fifth of the window apart.

    Every pair of well separated frames rather than one fixed lag: a head that turns and comes back
    still yields wide pairs, and the median over ~190 pairs shrugs off a few bad frames.
    """
    chosen = np.unique(np.linspace(0, count - 1, min(count, MAX_PAIR_FRAMES)).round().astype(int))
    gap = max(1, round(PAIR_GAP_FRACTION * count))
    first, second = np.triu_indices(len(chosen), k=1)
    keep = chosen[second] - chosen[first] >= gap
    return chosen[first[keep]], chosen[second[keep]]


def judge_window(landmarks: Sequence[np.ndarray | None], settings: LivenessSettings = DEFAULT_SETTINGS) -> LivenessResult:
    """Judge one window of (68, 2) landmark arrays (`None`: no face in that frame) by how the face moved.

    FEW_FRAMES under `min_frames` faces; STILL if under `min_pairs` frame pairs moved by at least
    `min_motion`; FLAT if their median homography residual is at or under `max_flat_residual`;
    NO_BLINK if a blink is required and the EAR never dipped; else LIVE. Raises LivenessError
    on NaN/inf or degenerate landmarks (the caller must treat that as not live).

    With `correct_noise` (the default) motion and residual are taken net of the share that landmark
    jitter alone would give (estimated from the window itself): without it a still or flat picture
    under a noisy detector would show "motion" and "parallax" that grow with the noise, up to LIVE.
    The correction can only lower both, so it never turns an attack into LIVE.
    """
    present = [_as_landmarks(frame, f"landmarks of frame {index}") for index, frame in enumerate(landmarks) if frame is not None]
    if len(present) < settings.min_frames:
        return LivenessResult(LivenessKind.FEW_FRAMES, None, None, 0, len(present), None)
    raw = np.stack(present)
    blinked = _blinked(raw, settings.blink_drop)
    frames = np.stack(smooth(present, settings.smooth_frames))
    first, second = _pairs(len(frames))
    rigid = list(RIGID_POINTS)
    noise = _jitter(raw, rigid)
    jitter = noise if settings.correct_noise else 0.0
    a, b = frames[first], frames[second]
    scale = _pair_scale(a, b)
    motion_floor = _noise_floor(jitter, settings.smooth_frames, len(rigid), parameters=4)
    motion = _above_floor(_similarity_rms(a[:, rigid], b[:, rigid]) / scale, motion_floor)
    median_motion = float(np.median(motion)) if len(motion) else None
    moving = motion >= settings.min_motion
    used = int(np.count_nonzero(moving))
    if used < settings.min_pairs:
        return LivenessResult(LivenessKind.STILL, None, median_motion, used, len(present), blinked, noise)
    residuals = _homography_rms(a[moving][:, rigid], b[moving][:, rigid]) / scale[moving]
    if not np.all(np.isfinite(residuals)):
        raise LivenessError("a homography sends a landmark to infinity: degenerate landmarks")
    residual_floor = _noise_floor(jitter, settings.smooth_frames, len(rigid), parameters=8)
    residual = float(np.median(_above_floor(residuals, residual_floor)))
    if residual <= settings.max_flat_residual:
        kind = LivenessKind.FLAT
    elif settings.blink and not blinked:
        kind = LivenessKind.NO_BLINK
    else:
        kind = LivenessKind.LIVE
    return LivenessResult(kind, residual, median_motion, used, len(present), blinked, noise)
