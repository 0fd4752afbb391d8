"""Image files, resizing and greyscale in numpy and Pillow, so the Pi camera path needs no OpenCV.

On Raspberry Pi OS, picamera2 comes from apt, built against Debian's numpy 1.24; OpenCV wheels
from 4.12 on require numpy 2 and would replace it, breaking picamera2. So the door's own path
(picamera2 frames, image files, detection, the blur check) uses numpy, Pillow (which picamera2
itself depends on) and dlib only; OpenCV stays the `device` extra for USB/RTSP cameras and video
files (device/camera.py, imported there through device/optional_imports.py).

The arithmetic follows OpenCV's, so measured thresholds keep their meaning: `to_grey` is
OpenCV's fixed-point RGB->grey exactly, `resize` is its INTER_AREA when shrinking and bilinear
when enlarging (to within rounding), and `laplacian_variance` its 3x3 Laplacian with reflected
borders exactly.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

# Pillow modes holding more than 8 bits per sample (16-bit PNG/TIFF greyscale): kept as their
# high byte, like OpenCV's 16-bit images divided by 256.
_WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as an (H, W, 3) uint8 RGB array, the layout dlib expects.

    Greyscale, 16-bit, palette and RGBA files (alpha dropped, not blended) are converted, so
    callers never see anything but 3-channel 8-bit RGB. Pillow decodes JPEG pixel for pixel as
    OpenCV does (both use libjpeg-turbo), so embeddings do not depend on the decoder.
    """
    path = Path(path)
    return _read(path, path)


def decode_image(data: bytes, name: str) -> np.ndarray:
    """An uploaded image file's bytes as `load_image` would read the file (`name` only for the errors)."""
    return _read(io.BytesIO(data), name)


def _read(source: Path | io.BytesIO, path: object) -> np.ndarray:
    try:
        with Image.open(source) as image:
            image.load()
            if image.mode in _WIDE_MODES:
                wide = np.asarray(image).astype(np.int64)
                grey = (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
                return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
            if image.mode == "F":
                raise ValueError(f"unsupported pixel type (32-bit float) in {path}")
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Image.DecompressionBombError as exc:
        raise ValueError(f"cannot decode image {path}: {exc}") from None
    except OSError as exc:  # UnidentifiedImageError, a truncated file: no errno; a missing file has one
        if exc.errno is not None:
            raise
        detail = str(exc).replace(repr(source), str(path))  # an upload's BytesIO is no name anyone knows
        raise ValueError(f"cannot decode image {path}: not an image format Pillow can read ({detail})") from None
    return np.ascontiguousarray(rgb)


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """Luma of an (H, W, 3) uint8 RGB image as (H, W) uint8, with OpenCV's fixed-point weights."""
    wide = rgb.astype(np.uint32)
    # 0.299, 0.587, 0.114 in 15-bit fixed point, rounded: exactly cv2.COLOR_RGB2GRAY
    return ((wide[..., 0] * 9798 + wide[..., 1] * 19235 + wide[..., 2] * 3735 + 16384) >> 15).astype(np.uint8)


def grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    """An (H, W) image as (H, W, 3), the grey value in every channel."""
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


def _shrink_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights (dst, taps) of an area average from ``src`` down to ``dst`` samples.

    Output i averages the span [i * src/dst, (i+1) * src/dst): every source sample it touches,
    weighted by the overlap (OpenCV's INTER_AREA).
    """
    scale = src / dst
    starts = np.arange(dst) * scale
    first = np.floor(starts).astype(np.intp)
    taps = int(np.ceil(scale)) + 1
    index = first[:, None] + np.arange(taps)[None, :]
    left = np.maximum(index, starts[:, None])
    right = np.minimum(index + 1, starts[:, None] + scale)
    weight = np.clip(right - left, 0, None) / scale
    used = weight.any(axis=0)  # an exact integer factor never reaches its last tap
    return np.minimum(index, src - 1)[:, used], weight[:, used]


def _stretch_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-tap weights that enlarge ``src`` to ``dst`` samples as OpenCV's INTER_AREA does.

    Each output copies its source pixel except across a pixel boundary, where it blends the
    two by the fraction on each side (sharper than plain bilinear, which the blur threshold
    was measured with).
    """
    out = np.arange(dst)
    first = np.floor(out * (src / dst)).astype(np.intp)
    fraction = (out + 1) - (first + 1) * (dst / src)
    fraction = np.where(fraction <= 0, 0.0, fraction - np.floor(fraction))
    fraction = np.where(first >= src - 1, 0.0, fraction)
    first = np.minimum(first, src - 1)
    index = np.stack([first, np.minimum(first + 1, src - 1)], axis=1)
    return index, np.stack([1 - fraction, fraction], axis=1)


def _apply_taps(values: np.ndarray, taps: tuple[np.ndarray, np.ndarray], axis: int) -> np.ndarray:
    index, weight = taps
    shape = [1] * values.ndim
    shape[axis] = index.shape[0]
    out = np.zeros(values.shape[:axis] + (index.shape[0],) + values.shape[axis + 1 :], np.float32)
    for k in range(index.shape[1]):
        out += np.take(values, index[:, k], axis=axis) * weight[:, k].astype(np.float32).reshape(shape)
    return out


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` (H, W) or (H, W, C) resized to ``height`` x ``width``, same dtype (OpenCV's INTER_AREA).

    Shrinking averages each output pixel's area (no aliasing, which matters for detection on a
    downscaled frame); enlarging blends neighbours only across pixel boundaries. (Enlarging one
    side while shrinking the other, OpenCV interpolates both; here the shrunk side is still averaged.)
    """
    if width < 1 or height < 1:
        raise ValueError(f"cannot resize to {width}x{height}")
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    out = image
    for axis, src, dst in ((0, h, height), (1, w, width)):
        if src != dst:
            taps = _shrink_taps(src, dst) if dst < src else _stretch_taps(src, dst)
            out = _apply_taps(out, taps, axis)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        out = np.clip(np.floor(out + 0.5), info.min, info.max)  # half up, as OpenCV's integer paths
    return np.ascontiguousarray(out.astype(image.dtype))


def laplacian_variance(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian (cv2.Laplacian, ksize 1, reflected borders) of an (H, W) image."""
    padded = np.pad(grey.astype(np.float64), 1, mode="reflect")
    centre = padded[1:-1, 1:-1]
    laplacian = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:] - 4 * centre
    return float(laplacian.var())


__all__ = ["grey_to_rgb", "laplacian_variance", "load_image", "resize", "to_grey"]
