"""Face analysis on the door device: find the visitor's face and turn it into a 128-d embedding.

This computes what the ``face_recognition`` package computes (dlib HOG or CNN detector, 5-point
landmarks, dlib's ResNet descriptor), but talks to dlib directly so the device needs neither that
package nor ``pkg_resources``. On top of that it decides whether a frame is good enough to send
to the cloud: only the largest face counts (the person at the door), and faces that are too small
or too blurry are skipped. A poor embedding risks a wrong match; skipping costs only the wait for
the camera's next frame.

`Analyzer` is the seam the agent is typed against; `FaceAnalyzer` is its dlib implementation.
No OpenCV here: images, resizing and the blur measure come from device/imaging.py (numpy and
Pillow), so the Pi camera path works with Raspberry Pi OS's numpy.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Literal, Protocol

import dlib
import numpy as np

from blindgate.device.imaging import laplacian_variance, resize, to_grey
from blindgate.device.imaging import load_image as load_image  # re-exported: callers load images from here

EMBEDDING_SIZE = 128

DetectorModel = Literal["hog", "cnn"]

# The narrowest box each detector reports, in pixels of the image it scans, without upsampling
# (LFW photos shrunk step by step: HOG's 80 px window gives 73 px boxes, dlib's MMOD CNN 80 px);
# each upsampling step halves it. The detection copy is scaled from this (FaceAnalyzer.detection_scale).
SMALLEST_BOX_PX: dict[str, int] = {"hog": 73, "cnn": 80}
# The copy is scaled so that faces down to this fraction of min_face_px are found: box sizes come
# in pyramid steps of 1.2x, so a face just at the limit may be boxed a step smaller, and a face a
# little under it is then reported too small rather than not at all (bench/detection.py: 0.85
# found as many usable faces as the pre-issue-13 setting on the clip, photos and LFW).
FIND_BELOW_MIN = 0.85

log = logging.getLogger(__name__)

_MODEL_FILES = {
    "landmarks": "shape_predictor_5_face_landmarks.dat",
    "encoder": "dlib_face_recognition_resnet_model_v1.dat",
    "cnn": "mmod_human_face_detector.dat",
}


def model_path(filename: str) -> Path:
    """Path of a pretrained dlib file shipped by the ``face-recognition-models`` package.

    The package is located without importing it: its ``__init__`` imports ``pkg_resources``,
    which current setuptools no longer provides.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "dlib model files not found: install face-recognition-models (pip install face-recognition-models)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / filename
    if not path.is_file():
        raise FileNotFoundError(f"dlib model file {path} is missing: reinstall face-recognition-models")
    return path


@dataclass(frozen=True)
class FaceBox:
    """A face rectangle in pixel coordinates, (top, right, bottom, left) like face_recognition.

    ``right`` and ``bottom`` are exclusive, so ``image[top:bottom, left:right]`` is the face.
    """

    top: int
    right: int
    bottom: int
    left: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def area(self) -> int:
        return max(self.width, 0) * max(self.height, 0)

    def scaled(self, factor: float) -> FaceBox:
        """The box in a copy of the image resized by ``factor`` (e.g. the detection copy)."""
        return FaceBox(
            round(self.top * factor),
            round(self.right * factor),
            round(self.bottom * factor),
            round(self.left * factor),
        )

    def clipped(self, height: int, width: int) -> FaceBox:
        """The part of the box inside an image of this size (detectors may overshoot the edge)."""
        return FaceBox(max(self.top, 0), min(self.right, width), min(self.bottom, height), max(self.left, 0))

    def to_dlib(self) -> dlib.rectangle:
        return dlib.rectangle(self.left, self.top, self.right, self.bottom)


@dataclass(frozen=True)
class FaceConfig:
    """How faces are found and which ones are good enough to embed."""

    # Narrower faces carry too little detail: measured on a real photo downscaled step by step,
    # the embedding drifts 0.13 from the full-size one at a 60 px face box, 0.2 at 43 px and
    # 0.3 at 36 px (same-person distances go up to 0.52, the threshold is 0.6).
    min_face_px: int = 60
    # Variance of the Laplacian of the greyscale face, resized to SHARPNESS_SIZE (see
    # face_sharpness). Sharp faces measured 61 (softest photo) to 1700, 93 to 333 in the test
    # video; the video's out-of-focus faces 7 to 8. Below ~30 a blurred face's embedding has
    # drifted 0.15 to 0.35 from the sharp one.
    min_sharpness: float = 30.0
    # The detector scans a copy scaled so that its smallest box is just under min_face_px (in the
    # frame's own pixels, FIND_BELOW_MIN): every face the quality check would accept can be found,
    # and little time goes on smaller ones (HOG: a 1.43x copy). Boxes are mapped back and the
    # embedding is computed at full resolution. A full-frame copy is at most this wide (None: no
    # limit), which bounds the cost on large frames but raises the smallest face found there (the
    # analyzer warns once); regions around a tracked face (device/tracking.py) are always scanned
    # at the min_face_px scale. 960 leaves a 640 px camera frame uncapped (915 px) and keeps every
    # face of the ../shared/faces scenes that the pre-issue-13 setting found (800 lost one).
    detect_max_width: int | None = 960
    # Times dlib doubles the detection copy before detecting (~4x slower per step); the copy is
    # shrunk to match, so the smallest face found stays the same. 0 measured faster than 1 for
    # the same recall (bench/detection.py); face_recognition's default is 1 on an unscaled frame.
    upsample: int = 0
    # "hog" is fast on a CPU; "cnn" (dlib MMOD) is more robust to pose but far slower without CUDA.
    model: DetectorModel = "hog"
    # Re-sampled random crops averaged into the embedding; 1 like face_recognition (each extra
    # jitter adds a full ResNet pass).
    num_jitters: int = 1

    def __post_init__(self) -> None:
        if self.model not in ("hog", "cnn"):
            raise ValueError(f"model must be 'hog' or 'cnn', not {self.model!r}")
        if self.upsample < 0 or self.num_jitters < 1:
            raise ValueError("upsample must be >= 0 and num_jitters >= 1")
        if self.detect_max_width is not None and self.detect_max_width < 80:
            raise ValueError("detect_max_width must be None or at least 80 px")


@dataclass(frozen=True)
class StageTimings:
    """Wall time of each pipeline stage in milliseconds, for the latency breakdown."""

    detect_ms: float = 0.0
    quality_ms: float = 0.0
    embed_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return self.detect_ms + self.quality_ms + self.embed_ms


@dataclass(frozen=True)
class FaceResult:
    """A frame that passed the checks: the largest face's embedding and why it was trusted."""

    embedding: np.ndarray = field(repr=False)
    box: FaceBox
    sharpness: float
    face_count: int
    timings: StageTimings


class RejectionKind(StrEnum):
    """Why a frame was skipped; the values are the log and wire strings."""

    NO_FACE = "no_face"
    TOO_SMALL = "too_small"
    TOO_BLURRY = "too_blurry"


@dataclass(frozen=True)
class Rejection:
    """A frame that was skipped rather than matched, with a reason fit for a log line."""

    kind: RejectionKind
    reason: str
    box: FaceBox | None
    sharpness: float | None
    face_count: int
    timings: StageTimings


# Faces are compared at one size so the Laplacian variance does not depend on how close the
# person stands: up close the same detail spans more pixels, which lowers the Laplacian.
SHARPNESS_SIZE = 128


def face_sharpness(rgb: np.ndarray, box: FaceBox) -> float:
    """Variance of the Laplacian over the face: a cheap focus/motion-blur measure, higher = sharper.

    The greyscale crop is resized to SHARPNESS_SIZE square first, so the value is comparable
    between near and far faces.
    """
    box = box.clipped(*rgb.shape[:2])
    crop = rgb[box.top : box.bottom, box.left : box.right]
    if crop.size == 0:
        return 0.0
    return laplacian_variance(resize(to_grey(crop), SHARPNESS_SIZE, SHARPNESS_SIZE))


def face_distance(a: np.ndarray, b: np.ndarray) -> float | np.ndarray:
    """Euclidean distance between embeddings; ``b`` may be one embedding or a stack of them."""
    difference = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    return np.linalg.norm(difference, axis=-1)


def _as_rgb(rgb: np.ndarray) -> np.ndarray:
    is_rgb = isinstance(rgb, np.ndarray) and rgb.ndim == 3 and rgb.shape[2] == 3
    if not is_rgb or rgb.dtype != np.uint8:
        shape = getattr(rgb, "shape", None)
        dtype = getattr(rgb, "dtype", type(rgb).__name__)
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got shape {shape} dtype {dtype}")
    return np.ascontiguousarray(rgb)  # dlib rejects strided views such as rgb[:, ::-1]


class Analyzer(Protocol):
    """What the agent needs of face analysis: one frame in, an embedding or the reason there is none."""

    def analyze(self, rgb: np.ndarray) -> FaceResult | Rejection: ...


class FaceAnalyzer:
    """The dlib `Analyzer`: the dlib models, loaded once (a few hundred ms), and the per-frame pipeline.

    Not safe to share between threads: give each worker its own analyzer.
    """

    def __init__(self, config: FaceConfig | None = None) -> None:
        self.config = config or FaceConfig()
        self._landmarks = dlib.shape_predictor(str(model_path(_MODEL_FILES["landmarks"])))
        self._encoder = dlib.face_recognition_model_v1(str(model_path(_MODEL_FILES["encoder"])))
        if self.config.model == "cnn":
            self._cnn = dlib.cnn_face_detection_model_v1(str(model_path(_MODEL_FILES["cnn"])))
        else:
            self._hog = dlib.get_frontal_face_detector()
        self._warned_widths: set[int] = set()

    def detection_scale(self, width: int, region: bool = False) -> float:
        """Scale of the copy the detector scans: its smallest box is just under ``min_face_px``.

        A full frame's copy is also kept within ``detect_max_width``; a region's is not (it is small).
        """
        cfg = self.config
        scale = SMALLEST_BOX_PX[cfg.model] / 2**cfg.upsample / (FIND_BELOW_MIN * cfg.min_face_px)
        if not region and cfg.detect_max_width is not None:
            scale = min(scale, cfg.detect_max_width / width)
        return scale

    def smallest_face_px(self, width: int) -> int:
        """The narrowest face (frame pixels) a full-frame pass finds in a frame this wide."""
        cfg = self.config
        return math.ceil(SMALLEST_BOX_PX[cfg.model] / 2**cfg.upsample / self.detection_scale(width) - 1e-9)

    def detect(self, rgb: np.ndarray, region: FaceBox | None = None) -> list[FaceBox]:
        """Every face in the frame, largest first, in the frame's own coordinates.

        With ``region`` (where a face was just seen, device/tracking.py) only that part is
        scanned, and the whole frame only when the region holds no face.
        """
        rgb = _as_rgb(rgb)
        height, width = rgb.shape[:2]
        if region is not None:
            area = region.clipped(height, width)
            if area.width > 0 and area.height > 0:
                boxes = self._detect_in(rgb, area, self.detection_scale(area.width, region=True))
                if boxes:
                    return boxes
        if width not in self._warned_widths and self.smallest_face_px(width) > self.config.min_face_px:
            self._warned_widths.add(width)
            log.warning(
                "faces narrower than %d px are not found in %d px wide frames (detect_max_width %s); "
                "min_face_px is %d: raise detect_max_width or min_face_px, or lower the camera resolution",
                self.smallest_face_px(width),
                width,
                self.config.detect_max_width,
                self.config.min_face_px,
            )
        return self._detect_in(rgb, FaceBox(0, width, height, 0), self.detection_scale(width))

    def _detect_in(self, rgb: np.ndarray, area: FaceBox, scale: float) -> list[FaceBox]:
        """The faces inside ``area``, scanned on a copy resized by ``scale``, in frame coordinates."""
        crop = rgb[area.top : area.bottom, area.left : area.right]
        size = (max(1, round(area.width * scale)), max(1, round(area.height * scale)))
        if size == (area.width, area.height):
            small = np.ascontiguousarray(crop)
        elif scale > 1:  # dlib's bilinear enlargement: 5x faster than numpy's, and only the detector sees it
            small = dlib.resize_image(np.ascontiguousarray(crop), size[1], size[0])
        else:
            small = resize(crop, *size)  # area averaging: shrinking without aliasing
        if self.config.model == "cnn":
            rects = [d.rect for d in self._cnn(small, self.config.upsample)]
        else:
            rects = list(self._hog(small, self.config.upsample))
        fx, fy = area.width / size[0], area.height / size[1]
        height, width = rgb.shape[:2]
        boxes = [
            FaceBox(
                area.top + round(r.top() * fy),
                area.left + round(r.right() * fx),
                area.top + round(r.bottom() * fy),
                area.left + round(r.left() * fx),
            ).clipped(height, width)
            for r in rects
        ]
        boxes = [b for b in boxes if b.width > 0 and b.height > 0]
        return sorted(boxes, key=lambda b: b.area, reverse=True)

    def embed(self, rgb: np.ndarray, box: FaceBox) -> np.ndarray:
        """The 128-d float64 embedding of the face in ``box`` (5-point alignment + ResNet)."""
        rgb = _as_rgb(rgb)
        shape = self._landmarks(rgb, box.to_dlib())
        descriptor = self._encoder.compute_face_descriptor(rgb, shape, self.config.num_jitters)
        return np.array(descriptor, dtype=np.float64)

    def analyze(self, rgb: np.ndarray, region: FaceBox | None = None) -> FaceResult | Rejection:
        """Embed the largest face if it is big and sharp enough; otherwise say why not.

        ``region``: scan there first (see `detect`).
        """
        rgb = _as_rgb(rgb)
        cfg = self.config
        t0 = time.perf_counter()
        boxes = self.detect(rgb, region)
        t1 = time.perf_counter()
        detect_ms = (t1 - t0) * 1000
        if not boxes:
            return Rejection(RejectionKind.NO_FACE, "no face", None, None, 0, StageTimings(detect_ms))

        box = boxes[0]
        sharpness = face_sharpness(rgb, box) if box.width >= cfg.min_face_px else None
        t2 = time.perf_counter()
        quality_ms = (t2 - t1) * 1000
        timings = StageTimings(detect_ms, quality_ms)
        if sharpness is None:
            reason = f"face too small ({box.width} px < {cfg.min_face_px} px)"
            return Rejection(RejectionKind.TOO_SMALL, reason, box, None, len(boxes), timings)
        if sharpness < cfg.min_sharpness:
            reason = f"too blurry (sharpness {sharpness:.1f} < {cfg.min_sharpness:g})"
            return Rejection(RejectionKind.TOO_BLURRY, reason, box, sharpness, len(boxes), timings)

        embedding = self.embed(rgb, box)
        embed_ms = (time.perf_counter() - t2) * 1000
        return FaceResult(embedding, box, sharpness, len(boxes), StageTimings(detect_ms, quality_ms, embed_ms))
