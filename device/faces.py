"""Face analysis on the door device: find the visitor's face and turn it into a 128-d embedding.

This computes what the ``face_recognition`` package computes (dlib HOG or CNN detector, 5-point
landmarks, dlib's ResNet descriptor), but talks to dlib directly so the device needs neither that
package nor ``pkg_resources``. On top of that it decides whether a frame is good enough to send
to the cloud: only the largest face counts (the person at the door), and faces that are too small
or too blurry are skipped. A poor embedding risks a wrong match; skipping costs only the wait for
the camera's next frame.

`Analyzer` is the seam the agent is typed against; `FaceAnalyzer` is its dlib implementation.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Literal, Protocol

import cv2
import dlib
import numpy as np

EMBEDDING_SIZE = 128

DetectorModel = Literal["hog", "cnn"]

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


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as an (H, W, 3) uint8 RGB array, the layout dlib expects.

    Greyscale, 16-bit and RGBA files (alpha dropped) are converted, so callers never see
    anything but 3-channel 8-bit RGB.
    """
    path = Path(path)
    data = np.fromfile(path, dtype=np.uint8)  # bytes first: cv2.imread fails on non-ASCII paths
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ValueError(f"cannot decode image {path}: not an image format OpenCV can read")
    if image.dtype == np.uint16:
        image = (image // 256).astype(np.uint8)  # the high byte
    elif image.dtype != np.uint8:
        raise ValueError(f"unsupported pixel type {image.dtype} in {path}")
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


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
    # Detect on a copy downscaled to at most this width (None: full size). HOG time grows with
    # pixel count, and a door camera's face is large; boxes are mapped back and the embedding
    # is computed at full resolution. With upsample=1 HOG finds faces down to about 40 px (36 px
    # measured) in the detection frame: 40 * (frame width / detect_max_width) px in the original.
    detect_max_width: int | None = 640
    # Times the detection frame is doubled before detecting (finds smaller faces, ~4x slower
    # per step). 1 is face_recognition's default.
    upsample: int = 1
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
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    grey = cv2.resize(grey, (SHARPNESS_SIZE, SHARPNESS_SIZE), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


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

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        """Every face in the frame, largest first, in the frame's own coordinates."""
        rgb = _as_rgb(rgb)
        height, width = rgb.shape[:2]
        limit = self.config.detect_max_width
        scale = 1.0
        small = rgb
        if limit is not None and width > limit:
            scale = limit / width
            size = (limit, max(1, round(height * scale)))
            small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        if self.config.model == "cnn":
            rects = [d.rect for d in self._cnn(small, self.config.upsample)]
        else:
            rects = list(self._hog(small, self.config.upsample))
        found = (FaceBox(r.top(), r.right(), r.bottom(), r.left()) for r in rects)
        boxes = [b.scaled(1 / scale).clipped(height, width) for b in found]
        boxes = [b for b in boxes if b.area > 0]
        return sorted(boxes, key=lambda b: b.area, reverse=True)

    def embed(self, rgb: np.ndarray, box: FaceBox) -> np.ndarray:
        """The 128-d float64 embedding of the face in ``box`` (5-point alignment + ResNet)."""
        rgb = _as_rgb(rgb)
        shape = self._landmarks(rgb, box.to_dlib())
        descriptor = self._encoder.compute_face_descriptor(rgb, shape, self.config.num_jitters)
        return np.array(descriptor, dtype=np.float64)

    def analyze(self, rgb: np.ndarray) -> FaceResult | Rejection:
        """Embed the largest face if it is big and sharp enough; otherwise say why not."""
        rgb = _as_rgb(rgb)
        cfg = self.config
        t0 = time.perf_counter()
        boxes = self.detect(rgb)
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
