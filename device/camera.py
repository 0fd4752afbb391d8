"""Camera sources for the door device, all behind one small interface.

The Pi camera module, any OpenCV camera or network stream, a recorded video and a folder of
images all yield the same thing: RGB frames (the channel order face detection expects) with
an index and a timestamp. Recorded sources let tests, demos and benchmarks run the exact
pipeline the door runs, without a camera.

    with open_camera("picamera2", width=640, height=480, fps=15) as camera:
        for frame in camera:
            ...

`CameraSource` is the seam the agent is typed against (`read`, `close`); the sources here share
`FrameStream`, which adds the `with` block and iteration on top of their `read`.
"""

from __future__ import annotations

import math
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self

import numpy as np

from blindgate.device.imaging import grey_to_rgb, load_image, resize
from blindgate.device.optional_imports import import_cv2, import_picamera2

if TYPE_CHECKING:
    import cv2

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
PI_CAMERA_NAMES = frozenset({"picamera2", "picamera", "pi"})
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


@dataclass(frozen=True)
class Frame:
    """One picture from a source.

    ``rgb`` is (H, W, 3) uint8 in RGB order. ``index`` counts frames of the source's stream
    (for a video, the frame number in the file, continuing across loops), so skipped frames
    leave gaps. ``timestamp`` is in seconds on the source's clock: the position in a video,
    or capture time on the monotonic clock (``time.monotonic``) for live cameras.
    """

    rgb: np.ndarray
    index: int
    timestamp: float


class CameraSource(Protocol):
    """A stream of frames. ``read`` returns None once the stream has ended."""

    def read(self) -> Frame | None:
        """The next frame, or None at the end of the stream (or when the device stops)."""
        ...

    def close(self) -> None:
        """Release the device or file; safe to call more than once."""
        ...


class FrameStream(ABC):
    """The `CameraSource` base of this module's sources: ``with`` closes it, iterating reads to the end."""

    @abstractmethod
    def read(self) -> Frame | None:
        """The next frame, or None at the end of the stream (or when the device stops)."""

    @abstractmethod
    def close(self) -> None:
        """Release the device or file; safe to call more than once."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.read()) is not None:
            yield frame


def _resize(rgb: np.ndarray, width: int | None, height: int | None) -> np.ndarray:
    """Fit a frame to the requested size; with only one side given, keep the aspect ratio."""
    h, w = rgb.shape[:2]
    if height is None:
        if width is None:
            return rgb
        height = max(1, round(h * width / w))
    elif width is None:
        width = max(1, round(w * height / h))
    return resize(rgb, width, height)


def _bgr_to_rgb(bgr: np.ndarray) -> np.ndarray:
    if bgr.ndim == 2:
        return grey_to_rgb(bgr)
    # Channels 2, 1, 0 also drops a fourth (padding/alpha) channel; the copy makes the array
    # contiguous, which dlib requires.
    return np.ascontiguousarray(bgr[:, :, 2::-1])


def _boottime_offset() -> float:
    """CLOCK_BOOTTIME minus CLOCK_MONOTONIC in seconds (0 where there is no CLOCK_BOOTTIME)."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return 0.0 if boottime is None else time.clock_gettime(boottime) - time.monotonic()


def _check_positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{name} must be positive, not {value!r}")


class PiCamera2Source(FrameStream):
    """The Raspberry Pi camera module through picamera2 (libcamera).

    picamera2 is imported here, not at module level, so everything else works on machines
    without it; this path needs no OpenCV (device/optional_imports.py).
    """

    def __init__(self, width: int = 640, height: int = 480, fps: float | None = None, camera_num: int = 0) -> None:
        _check_positive("fps", fps)
        Picamera2 = import_picamera2()
        try:
            self._camera = Picamera2(camera_num)
        except Exception as exc:  # libcamera reports a missing camera as e.g. IndexError
            raise RuntimeError(f"no Pi camera {camera_num} available through libcamera: {exc}") from exc
        self.width, self.height = width, height
        controls = {}
        if fps is not None:
            frame_us = round(1_000_000 / fps)
            controls["FrameDurationLimits"] = (frame_us, frame_us)
        # "RGB888" is named after the DRM/libcamera pixel format, whose bytes are stored
        # B, G, R: the arrays come out BGR-ordered (what OpenCV expects), so read() swaps them.
        config = self._camera.create_video_configuration(main={"size": (width, height), "format": "RGB888"}, controls=controls)
        self._camera.configure(config)
        self._camera.start()
        self._index = 0
        self._closed = False

    def read(self) -> Frame | None:
        if self._closed:
            return None
        request = self._camera.capture_request()
        try:
            array = request.make_array("main")
            metadata = request.get_metadata()
        finally:
            request.release()
        # SensorTimestamp is when the frame was exposed, not when it reached us. libcamera
        # documents it as CLOCK_BOOTTIME ns; shift it onto time.monotonic(), the clock the
        # other live sources use (the two differ by the time spent suspended).
        sensor_ns = metadata.get("SensorTimestamp")
        timestamp = sensor_ns / 1e9 - _boottime_offset() if sensor_ns else time.monotonic()
        rgb = _resize(_bgr_to_rgb(array), self.width, self.height)
        frame = Frame(rgb, self._index, timestamp)
        self._index += 1
        return frame

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._camera.stop()
            finally:
                self._camera.close()


class OpenCVSource(FrameStream):
    """A USB/V4L2 camera by index, or a network stream (rtsp://, http://...), via OpenCV.

    Width, height and fps are requested from the backend; frames are resized when the backend
    ignores the size, and surplus frames are dropped (grabbed, not decoded) when it delivers
    faster than ``fps``.
    """

    def __init__(
        self,
        device: int | str,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
    ) -> None:
        _check_positive("fps", fps)
        self.device = device
        opencv = import_cv2(f"camera {device!r}")
        self._cap = opencv.VideoCapture(device)
        if not self._cap.isOpened():
            self._cap.release()
            raise OSError(f"OpenCV cannot open camera {device!r}")
        if width is not None:
            self._cap.set(opencv.CAP_PROP_FRAME_WIDTH, width)
        if height is not None:
            self._cap.set(opencv.CAP_PROP_FRAME_HEIGHT, height)
        if fps is not None:
            self._cap.set(opencv.CAP_PROP_FPS, fps)
        # Keep the driver queue short so the door sees the newest frame, not a stale one.
        self._cap.set(opencv.CAP_PROP_BUFFERSIZE, 1)
        self.width, self.height = width, height
        self._period = 1.0 / fps if fps else 0.0
        self._next_due = 0.0
        self._index = 0

    def read(self) -> Frame | None:
        while True:
            if not self._cap.grab():
                return None
            now = time.monotonic()
            index = self._index
            self._index += 1
            # Allow a quarter period of jitter so a camera running at exactly fps loses nothing.
            if self._period and now < self._next_due - self._period / 4:
                continue
            ok, bgr = self._cap.retrieve()
            if not ok:
                return None
            self._next_due = max(self._next_due, now) + self._period
            return Frame(_resize(_bgr_to_rgb(bgr), self.width, self.height), index, now)

    def close(self) -> None:
        self._cap.release()


class VideoFileSource(FrameStream):
    """A recorded video played as a camera; timestamps are positions in the video.

    ``realtime`` sleeps so frames come at the file's own pace (frames are never dropped for a
    slow consumer); ``loop`` restarts at the end; ``step`` keeps every n-th frame, or ``fps``
    picks the step that gives about that many frames per second of video.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        realtime: bool = False,
        loop: bool = False,
        step: int = 1,
        fps: float | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"video file not found: {self.path}")
        if step < 1:
            raise ValueError(f"step must be at least 1, not {step}")
        _check_positive("fps", fps)
        self._cv2 = import_cv2(f"video file {self.path}")
        self._cap = self._open()
        file_fps = self._cap.get(self._cv2.CAP_PROP_FPS)
        # Some containers report no rate; 30 keeps timestamps plausible.
        self.file_fps = file_fps if math.isfinite(file_fps) and file_fps > 0 else 30.0
        if fps is not None:
            if step != 1:
                raise ValueError("give step or fps, not both")
            step = max(1, round(self.file_fps / fps))
        self.step, self.realtime, self.loop = step, realtime, loop
        self.width, self.height = width, height
        self._position = 0  # frame number in the file of the next frame read
        self._earlier_loops = 0  # frames in the passes already played
        self._clock_offset: float | None = None

    def _open(self) -> cv2.VideoCapture:
        cap = self._cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise ValueError(f"OpenCV cannot read video {self.path}")
        return cap

    def read(self) -> Frame | None:
        ok, bgr = self._cap.read()
        if not ok and self.loop and self._position > 0:
            self._cap.release()
            self._cap = self._open()
            self._earlier_loops += self._position
            self._position = 0
            ok, bgr = self._cap.read()
        if not ok:
            return None
        index = self._earlier_loops + self._position
        self._position += 1
        for _ in range(self.step - 1):
            if not self._cap.grab():
                break
            self._position += 1
        timestamp = index / self.file_fps
        if self.realtime:
            self._pace(timestamp)
        return Frame(_resize(_bgr_to_rgb(bgr), self.width, self.height), index, timestamp)

    def _pace(self, timestamp: float) -> None:
        now = time.monotonic()
        if self._clock_offset is None:
            self._clock_offset = now - timestamp
        delay = self._clock_offset + timestamp - now
        if delay > 0:
            time.sleep(delay)

    def close(self) -> None:
        self._cap.release()


class ImageFolderSource(FrameStream):
    """The images in a folder, in file-name order, as frames (``paths[frame.index]`` is the file).

    With ``fps`` the frames are paced at that rate and timestamped ``index / fps``; without it
    they come as fast as they are read, timestamped with the monotonic clock.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        fps: float | None = None,
        loop: bool = False,
        width: int | None = None,
        height: int | None = None,
    ) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise NotADirectoryError(f"image folder not found: {folder}")
        _check_positive("fps", fps)
        self.paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.paths:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            raise ValueError(f"no images ({suffixes}) in {folder}")
        self.fps, self.loop = fps, loop
        self.width, self.height = width, height
        self._index = 0
        self._clock_offset: float | None = None

    def read(self) -> Frame | None:
        if self._index >= len(self.paths) and not self.loop:
            return None
        index = self._index
        self._index += 1
        rgb = load_image(self.paths[index % len(self.paths)])
        if self.fps is None:
            timestamp = time.monotonic()
        else:
            timestamp = index / self.fps
            now = time.monotonic()
            if self._clock_offset is None:
                self._clock_offset = now - timestamp
            delay = self._clock_offset + timestamp - now
            if delay > 0:
                time.sleep(delay)
        return Frame(_resize(rgb, self.width, self.height), index, timestamp)

    def close(self) -> None:
        self._index = len(self.paths)
        self.loop = False


def open_camera(
    spec: str | int | os.PathLike[str],
    *,
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    realtime: bool = False,
    loop: bool = False,
) -> FrameStream:
    """The source a command-line/config string names (`loop`: a video file or folder starts over at its end).

    - ``picamera2`` or ``pi``: the Pi camera module (640x480 unless width/height say
      otherwise; 4:3 when only one is given);
    - an integer such as ``0``: that OpenCV camera device;
    - a URL (``rtsp://``, ``http://``...): an OpenCV network stream;
    - an existing folder: its images (``fps`` paces them);
    - an existing file: a video (``fps`` keeps about that many frames per second of video,
      ``realtime`` plays it at its own pace).

    Width/height left as None keep the source's own size (one alone keeps the aspect ratio).
    """
    text = str(spec).strip()
    if text.lower() in PI_CAMERA_NAMES:
        # 640x480 by default; the sensor's 4:3 when only one side is given
        if not width:
            width = round(height * 4 / 3) if height else 640
        height = height or round(width * 3 / 4)
        return PiCamera2Source(width, height, fps)
    if text.isdecimal():
        return OpenCVSource(int(text), width, height, fps)
    if _URL.match(text):
        return OpenCVSource(text, width, height, fps)
    path = Path(text).expanduser()
    if text and path.is_dir():
        return ImageFolderSource(path, fps=fps, width=width, height=height, loop=loop)
    if text and path.is_file():
        return VideoFileSource(path, realtime=realtime, fps=fps, width=width, height=height, loop=loop)
    raise ValueError(
        f"camera {spec!r} is not a camera, stream, folder or file: expected 'picamera2' "
        "(or 'pi'), a device index such as '0', a stream URL such as rtsp://host/stream, "
        "an existing image folder or an existing video file"
    )
