"""Synthetic presentation attacks: one photo of a face, shown to the door camera as a print or a phone.

The liveness check (device/liveness.py) must tell a head from a picture of one by how the landmarks
move. No printed photos or replay rigs are at hand, so this renders them: the photo becomes a sheet in
3D (a print, a bent print cut into planar strips along a cylinder, or a phone screen with its bezel),
held by a hand that moves it smoothly (yaw and pitch up to ~25 degrees, some roll, a few centimetres
of travel, a little distance change, a hand's tremor), seen through a pinhole camera over an indoor
background, with the camera's blur, noise and JPEG softness. Only ratios matter to a pinhole camera,
so sizes are in face widths: the face is placed ~140-190 px wide, as a visitor 0.5-1 m from a door
camera. Everything comes from one seed; the same seed gives the same motion and background for every
kind, so kinds can be compared frame by frame.

OpenCV (the `device` extra) does the warping; it is imported when frames are made.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from enum import StrEnum
from types import ModuleType

import numpy as np

from blindgate.device.faces import FaceAnalyzer, FaceBox, FaceConfig
from blindgate.device.optional_imports import import_cv2
from blindgate.shared.errors import BlindgateError


class AttackKind(StrEnum):
    """What was in front of the camera; the values are the session folder names (device/liveness_sessions.py)."""

    GENUINE = "genuine"  # a live person: recorded, never generated
    PRINT = "print"
    BENT_PRINT = "bent_print"
    SCREEN_STILL = "screen_still"
    PHONE_VIDEO = "phone_video"  # a video of the person replayed on a phone: recorded, never generated


GENERATED_KINDS = (AttackKind.PRINT, AttackKind.BENT_PRINT, AttackKind.SCREEN_STILL)


class AttackError(BlindgateError, ValueError):
    """Attack frames cannot be made from these arguments."""


# Horizontal field of view of a typical door/USB camera (~60 degrees): f = width / 2 / tan(30 deg).
FOCAL_PER_WIDTH = 0.5 / math.tan(math.radians(30))
# The face box's width in the output at the start pose, in pixels of a 640 px frame (scaled with size).
FACE_PX_RANGE = (140.0, 190.0)
# The printed sheet around the face, in face-box widths / heights (a life-size portrait print).
PRINT_MARGIN = (1.0, 1.4)  # on each side horizontally, on each side vertically
# A phone in portrait: screen width / height, bezel as a fraction of the screen width.
SCREEN_ASPECT = 9 / 16
SCREEN_FACE_FRACTION = 0.62  # the face box's width / the screen's width (zoomed to the face)
BEZEL = 0.06
BENT_STRIPS = 8


@dataclass(frozen=True)
class _Sheet:
    """A flat texture, what it shows, and where the face box's centre is on it (texture pixels)."""

    texture: np.ndarray  # (h, w, 3) uint8
    face_centre: tuple[float, float]
    face_width: float  # texture pixels per face width: the unit of the 3D scene


@dataclass(frozen=True)
class _Motion:
    """Smooth random paths of the sheet's pose: angles in radians, offsets in face widths."""

    yaw: np.ndarray
    pitch: np.ndarray
    roll: np.ndarray
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray  # distance from the camera


def _smooth(rng: np.random.Generator, t: np.ndarray, amplitude: float, tremor: float) -> np.ndarray:
    """A slow random wander reaching about ``amplitude``, plus a hand's fast small tremor."""
    path = np.zeros_like(t)
    for _ in range(3):
        freq, phase = rng.uniform(0.15, 0.9), rng.uniform(0, 2 * math.pi)
        path += rng.uniform(0.5, 1.0) * np.sin(2 * math.pi * freq * t + phase)
    start = rng.uniform(-0.3, 0.3)
    span = np.max(np.abs(path - path[0])) or 1.0
    path = start * amplitude + (path - path[0]) / span * amplitude * rng.uniform(0.7, 1.0)
    path = np.clip(path, -amplitude, amplitude)
    freq, phase = rng.uniform(6.0, 10.0), rng.uniform(0, 2 * math.pi)
    return path + tremor * np.sin(2 * math.pi * freq * t + phase) + tremor * 0.3 * rng.standard_normal(t.shape)


def _motion(rng: np.random.Generator, t: np.ndarray, distance: float, swing: float = 1.0) -> _Motion:
    deg = math.radians
    yaw_max, pitch_max = deg(swing * rng.uniform(15, 25)), deg(swing * rng.uniform(12, 22))
    return _Motion(
        yaw=_smooth(rng, t, yaw_max, deg(0.4)),
        pitch=_smooth(rng, t, pitch_max, deg(0.4)),
        roll=_smooth(rng, t, deg(rng.uniform(3, 8)), deg(0.2)),
        x=_smooth(rng, t, 0.35, 0.004),
        y=_smooth(rng, t, 0.25, 0.004),
        z=distance * (1 + _smooth(rng, t, 0.08, 0.002)),
    )


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch), math.cos(roll), math.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ rx @ ry


def _crop_box(photo: np.ndarray, face: FaceBox, margin_x: float, margin_y: float) -> FaceBox:
    height, width = photo.shape[:2]
    grow_x, grow_y = round(face.width * margin_x), round(face.height * margin_y)
    return FaceBox(face.top - grow_y, face.right + grow_x, face.bottom + grow_y, face.left - grow_x).clipped(height, width)


def _scaled_photo(cv2: ModuleType, photo: np.ndarray, face: FaceBox, face_px: float) -> tuple[np.ndarray, FaceBox]:
    """The photo shrunk so the face is ~1.5x its size on screen (no aliasing in the warp), and its face box."""
    factor = min(1.0, 1.5 * face_px / max(face.width, 1))
    if factor >= 1.0:
        return photo, face
    size = (max(1, round(photo.shape[1] * factor)), max(1, round(photo.shape[0] * factor)))
    return cv2.resize(photo, size, interpolation=cv2.INTER_AREA), face.scaled(factor)


def _print_sheet(cv2: ModuleType, photo: np.ndarray, face: FaceBox, face_px: float, rng: np.random.Generator) -> _Sheet:
    """The photo around the face as printed: a little less contrast and saturation, paper white border."""
    photo, face = _scaled_photo(cv2, photo, face, face_px)
    crop = _crop_box(photo, face, *PRINT_MARGIN)
    ink = photo[crop.top : crop.bottom, crop.left : crop.right].astype(np.float32)
    grey = ink.mean(axis=2, keepdims=True)
    ink = grey + (ink - grey) * rng.uniform(0.75, 0.95)  # inks saturate less than a screen
    ink = 18 + ink * rng.uniform(0.82, 0.92)  # paper is not pure white, ink not pure black
    border = max(2, round(face.width * 0.08))
    paper = np.full((ink.shape[0] + 2 * border, ink.shape[1] + 2 * border, 3), rng.uniform(225, 245), np.float32)
    paper[border:-border, border:-border] = ink
    cx = (face.left + face.right) / 2 - crop.left + border
    cy = (face.top + face.bottom) / 2 - crop.top + border
    return _Sheet(np.clip(paper, 0, 255).astype(np.uint8), (cx, cy), float(face.width))


def _screen_sheet(cv2: ModuleType, photo: np.ndarray, face: FaceBox, face_px: float, rng: np.random.Generator) -> _Sheet:
    """The photo zoomed to the face on a phone in portrait: backlit colours, black bezel, a glare streak."""
    photo, face = _scaled_photo(cv2, photo, face, face_px)
    screen_w = face.width / SCREEN_FACE_FRACTION
    screen_h = screen_w / SCREEN_ASPECT
    cx, cy = (face.left + face.right) / 2, (face.top + face.bottom) / 2 + 0.1 * face.height
    # the part of the photo that fills the screen; outside the photo the viewer shows black
    matrix = np.array([[1, 0, screen_w / 2 - cx], [0, 1, screen_h / 2 - cy]], dtype=np.float64)
    size = (round(screen_w), round(screen_h))
    shown = cv2.warpAffine(photo, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    lit = shown.astype(np.float32) * rng.uniform(1.0, 1.15) + rng.uniform(5, 20)  # backlight lifts the blacks
    lit *= np.array([rng.uniform(0.92, 0.98), 1.0, rng.uniform(1.03, 1.1)], np.float32)  # screens run blue
    h, w = lit.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(-1.0, 1.0)
    band = (xx - w * rng.uniform(0.2, 0.8)) * math.cos(angle) + (yy - h * rng.uniform(0.2, 0.8)) * math.sin(angle)
    lit += rng.uniform(25, 60) * np.exp(-((band / (0.12 * w)) ** 2))[:, :, None]  # a glare streak of the room light
    bezel = round(BEZEL * w)
    phone = np.full((h + 4 * bezel, w + 2 * bezel, 3), rng.uniform(8, 25), np.float32)
    phone[2 * bezel : 2 * bezel + h, bezel : bezel + w] = lit
    centre = (screen_w / 2 + bezel, screen_h / 2 + 2 * bezel)  # the face box's centre sits there on the screen
    return _Sheet(np.clip(phone, 0, 255).astype(np.uint8), centre, float(face.width))


def _background(cv2: ModuleType, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A blurred indoor-like scene (wall, door frame, furniture blocks) or a plain wall with grain."""
    wall = rng.uniform(90, 220, 3)
    image = np.empty((height, width, 3), np.float32)
    image[:] = wall
    if rng.random() < 0.7:
        for _ in range(int(rng.integers(3, 8))):
            x0, y0 = int(rng.integers(-width // 4, width)), int(rng.integers(-height // 4, height))
            w, h = int(rng.integers(width // 10, width // 2)), int(rng.integers(height // 8, height))
            image[max(y0, 0) : max(y0 + h, 0), max(x0, 0) : max(x0 + w, 0)] = rng.uniform(30, 230, 3)
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(4, 10))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 1 + 0.25 * ((xx / width - rng.uniform(0, 1)) * rng.uniform(-1, 1) + (yy / height - 0.5) * rng.uniform(-1, 1))
    image = image * light[:, :, None] + rng.normal(0, 3, image.shape).astype(np.float32)
    return np.clip(image, 0, 255)


def _strips(sheet: _Sheet, count: int, bend: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """The sheet as ``count`` vertical strips on a cylinder: (texture corners, 3D corners in face widths) each.

    ``bend`` is the total angle the sheet's width turns through (0: flat, one strip); its sign says
    whether the middle bulges towards the camera or away. The four corners of a strip are coplanar,
    so each strip is drawn exactly by one homography.
    """
    h, w = sheet.texture.shape[:2]
    cx, cy = sheet.face_centre
    unit = sheet.face_width
    edges = np.linspace(0, w, count + 1)
    out = []
    for x0, x1 in zip(edges[:-1], edges[1:], strict=True):
        tex = np.array([[x0, 0], [x1, 0], [x1, h], [x0, h]], np.float64)
        corners = []
        for u, v in tex:
            s = (u - cx) / unit  # arc length from the face centre, in face widths
            if bend == 0:
                x, z = s, 0.0
            else:
                radius = (w / unit) / bend
                x, z = radius * math.sin(s / radius), -radius * (1 - math.cos(s / radius))
            corners.append((x, (v - cy) / unit, z))
        out.append((tex, np.array(corners)))
    return out


def _render(
    cv2: ModuleType,
    sheet: _Sheet,
    strips: list[tuple[np.ndarray, np.ndarray]],
    rotation: np.ndarray,
    position: np.ndarray,
    camera: np.ndarray,
    canvas: np.ndarray,
    light: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the strips farthest first onto ``canvas`` (float32), each shaded by how it faces the light.

    Returns the frame and the sheet's coverage (H, W, 1) in [0, 1].
    """
    placed = []
    for tex, corners in strips:
        world = corners @ rotation.T + position
        if np.any(world[:, 2] <= 0.05):
            continue  # behind or at the camera: not drawn
        image = world @ camera.T
        image = image[:, :2] / image[:, 2:]
        normal = np.cross(world[1] - world[0], world[3] - world[0])
        normal /= np.linalg.norm(normal) or 1.0
        placed.append((float(world[:, 2].mean()), tex, image, abs(float(normal @ light))))
    height, width = canvas.shape[:2]
    coverage = np.zeros((height, width, 1), np.float32)
    for _, tex, image, shade in sorted(placed, key=lambda p: -p[0]):
        # only the strip's own columns (a pixel of overlap hides seams) into only its bounding box
        x0 = max(int(math.floor(tex[0, 0])) - 1, 0)
        strip = sheet.texture[:, x0 : int(math.ceil(tex[1, 0])) + 1]
        left, top = max(int(image[:, 0].min()) - 1, 0), max(int(image[:, 1].min()) - 1, 0)
        right, bottom = min(int(image[:, 0].max()) + 2, width), min(int(image[:, 1].max()) + 2, height)
        if right <= left or bottom <= top:
            continue
        homography = cv2.getPerspectiveTransform(tex.astype(np.float32), image.astype(np.float32))
        homography = (
            np.array([[1, 0, -left], [0, 1, -top], [0, 0, 1]]) @ homography @ np.array([[1, 0, x0], [0, 1, 0], [0, 0, 1]])
        )
        box = (right - left, bottom - top)
        warped = cv2.warpPerspective(strip, homography, box, flags=cv2.INTER_LINEAR).astype(np.float32)
        ones = np.ones(strip.shape[:2], np.float32)
        mask = cv2.warpPerspective(ones, homography, box, flags=cv2.INTER_LINEAR)[:, :, None]
        area = canvas[top:bottom, left:right]
        canvas[top:bottom, left:right] = area * (1 - mask) + warped * mask * (0.75 + 0.3 * shade)
        coverage[top:bottom, left:right] = np.maximum(coverage[top:bottom, left:right], mask)
    return canvas, coverage


def _camera_effects(cv2: ModuleType, frame: np.ndarray, rng: np.random.Generator, blur: float, jpeg: int | None) -> np.ndarray:
    frame = cv2.GaussianBlur(frame, (0, 0), blur)
    noise = rng.standard_normal(frame.shape, dtype=np.float32)
    noise *= 2.5  # sensor noise, in grey levels
    frame += noise
    frame += 0.5  # rounds on the truncating cast below
    rgb = np.clip(frame, 0, 255, out=frame).astype(np.uint8)
    if jpeg is not None:
        ok, data = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, jpeg])  # channel order does not matter here
        if ok:
            rgb = cv2.imdecode(data, cv2.IMREAD_COLOR)
    return np.ascontiguousarray(rgb)


def _moire(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A faint interference pattern of the screen's pixel grid against the sensor's, in frame pixels."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    fx, fy = rng.uniform(0.05, 0.12), rng.uniform(0.05, 0.12)
    return (1 + 0.035 * np.sin(2 * math.pi * (fx * xx + fy * yy)))[:, :, None].astype(np.float32)


@functools.cache
def _detector() -> FaceAnalyzer:
    return FaceAnalyzer(FaceConfig())


def photo_face(photo_rgb: np.ndarray) -> FaceBox:
    """The largest face in the photo as the door's detector boxes it (loaded once per process).

    A photo where it finds none is taken as a portrait crop: the face fills the middle half of its width.
    """
    boxes = _detector().detect(photo_rgb)
    if boxes:
        return boxes[0]
    height, width = photo_rgb.shape[:2]
    return FaceBox(round(height / 2 - width / 4), round(width * 3 / 4), round(height / 2 + width / 4), round(width / 4))


def attack_frames(
    photo_rgb: np.ndarray,
    kind: AttackKind | str,
    seconds: float = 2.0,
    fps: float = 30.0,
    size: tuple[int, int] = (640, 480),
    seed: int = 0,
    *,
    face: FaceBox | None = None,
    jpeg_quality: int | None = 85,
    swing: float = 1.0,
) -> list[np.ndarray]:
    """Frames (``size`` = (width, height), RGB uint8) of ``photo_rgb`` presented to the camera as ``kind``.

    ``face`` is the face's box in the photo (FaceAnalyzer.detect): the sheet is cut and placed around
    it. Without it the door's detector finds it (`photo_face`).
    The same ``seed`` gives the same frames, and the same motion and background for every kind.
    ``swing`` scales how far the sheet is turned (1: up to 15-25 degrees of yaw and 12-22 of pitch, a
    hand holding it up; 1.8: up to 27-45 and 22-40, an attacker tilting it hard to fake depth).
    """
    if not 0 < swing <= 2.5:
        raise AttackError(f"swing must be in (0, 2.5], not {swing}")
    kind = AttackKind(kind)
    if kind not in GENERATED_KINDS:
        raise AttackError(f"no frames are generated for {kind.value!r}: record a live person instead")
    if not (
        isinstance(photo_rgb, np.ndarray) and photo_rgb.ndim == 3 and photo_rgb.shape[2] == 3 and photo_rgb.dtype == np.uint8
    ):
        raise AttackError(f"expected an (H, W, 3) uint8 RGB photo, got shape {getattr(photo_rgb, 'shape', None)}")
    count = round(seconds * fps)
    width, height = size
    if count < 1 or width < 64 or height < 64:
        raise AttackError(f"need at least one frame of at least 64x64 px, not {count} frames of {width}x{height}")
    face = face or photo_face(photo_rgb)
    cv2 = import_cv2("synthetic presentation attacks")

    rng = np.random.default_rng(seed)  # shared by every kind: motion, background, placement
    kind_rng = np.random.default_rng([seed, GENERATED_KINDS.index(kind)])  # what differs between kinds
    focal = FOCAL_PER_WIDTH * width
    face_px = rng.uniform(*FACE_PX_RANGE) * width / 640
    distance = focal / face_px  # in face widths: the face box spans face_px at the start pose
    t = np.arange(count) / fps
    motion = _motion(rng, t, distance, swing)
    camera = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]])
    centre = np.array([rng.uniform(-0.12, 0.12) * width, rng.uniform(-0.1, 0.1) * height]) / focal * distance
    background = _background(cv2, rng, width, height)
    light = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.8, -0.2), -1.0])
    light /= np.linalg.norm(light)
    blur = rng.uniform(0.5, 1.0)

    if kind is AttackKind.SCREEN_STILL:
        sheet = _screen_sheet(cv2, photo_rgb, face, face_px, kind_rng)
        strips = _strips(sheet, 1, 0.0)
        moire = _moire(kind_rng, width, height)
    else:
        sheet = _print_sheet(cv2, photo_rgb, face, face_px, kind_rng)
        bend = 0.0
        if kind is AttackKind.BENT_PRINT:
            bend = math.radians(kind_rng.uniform(70, 110)) * (1 if kind_rng.random() < 0.6 else -1)
        strips = _strips(sheet, BENT_STRIPS if bend else 1, bend)
        moire = None

    frames = []
    for i in range(count):
        rotation = _rotation(motion.yaw[i], motion.pitch[i], motion.roll[i])
        position = np.array([centre[0] + motion.x[i], centre[1] + motion.y[i], motion.z[i]])
        canvas, coverage = _render(cv2, sheet, strips, rotation, position, camera, background.copy(), light)
        if moire is not None:
            canvas = canvas * (1 + (moire - 1) * coverage)  # the pattern only where the screen is
        frames.append(_camera_effects(cv2, canvas, rng, blur, jpeg_quality))
    return frames


__all__ = ["GENERATED_KINDS", "AttackError", "AttackKind", "attack_frames", "photo_face"]
