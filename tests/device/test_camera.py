"""Camera sources: the recorded clip and image folders as cameras, a fake picamera2, dispatch."""

import sys
import time
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from blindgate.device import camera
from blindgate.device.camera import (
    CameraSource,
    Frame,
    FrameStream,
    ImageFolderSource,
    OpenCVSource,
    PiCamera2Source,
    VideoFileSource,
    open_camera,
)
from blindgate.device.faces import FaceAnalyzer, FaceResult, Rejection, face_distance, load_image

CLIP_FRAMES, CLIP_FPS = 275, 29.97

# face_recognition's reference distance: what these photos test is the face model's own separation
# (the door's operating point is stricter and depends on the gallery: tests/device/test_operating_point.py)
THRESHOLD = 0.6


def next_frame(source: CameraSource) -> Frame:
    """The next frame of a stream that must not have ended."""
    frame = source.read()
    assert frame is not None, "the stream ended early"
    return frame


@pytest.fixture(scope="module")
def clip(faces_dir: Path) -> Path:
    return faces_dir / "video" / "short_hamilton_clip.mp4"


@pytest.fixture(scope="module")
def clip_frames(clip: Path) -> list[Frame]:
    with VideoFileSource(clip) as source:
        return list(source)


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer()


def test_video_file_yields_every_frame_as_rgb(clip, clip_frames):
    assert len(clip_frames) == CLIP_FRAMES
    assert [f.index for f in clip_frames] == list(range(CLIP_FRAMES))
    assert clip_frames[-1].timestamp == pytest.approx((CLIP_FRAMES - 1) / CLIP_FPS, abs=1e-3)
    for frame in clip_frames[::25]:
        assert frame.rgb.shape == (360, 640, 3) and frame.rgb.dtype == np.uint8
        assert frame.rgb.flags.c_contiguous
    ok, bgr = cv2.VideoCapture(str(clip)).read()
    assert ok and np.array_equal(clip_frames[0].rgb, bgr[:, :, ::-1])


def test_video_file_step_fps_resize_and_loop(clip):
    with VideoFileSource(clip, step=25) as source:
        assert [f.index for f in source] == list(range(0, CLIP_FRAMES, 25))
    with VideoFileSource(clip, fps=10) as source:  # 29.97 fps -> every 3rd frame
        assert source.step == 3
    with VideoFileSource(clip, step=100, width=320) as source:
        assert next_frame(source).rgb.shape == (180, 320, 3)
    with VideoFileSource(clip, step=100, loop=True) as source:
        indices = [next_frame(source).index for _ in range(5)]
    # Indices keep counting across the restart so they stay unique.
    assert indices == [0, 100, 200, CLIP_FRAMES, CLIP_FRAMES + 100]


def test_video_file_realtime_paces_at_the_file_rate(clip):
    with VideoFileSource(clip, realtime=True, step=3) as source:
        start = time.monotonic()
        frames = [next_frame(source) for _ in range(4)]
        elapsed = time.monotonic() - start
    # Frames 0, 3, 6, 9: the last is due 9 / 29.97 = 0.30 s after the first.
    assert frames[-1].index == 9
    assert elapsed >= 0.29


def test_lin_manuel_miranda_is_recognised_in_the_clip(faces_dir, clip_frames, analyzer):
    lin1 = faces_dir / "people" / "lin_manuel_miranda" / "lin1.png"
    reference = analyzer.analyze(load_image(lin1))
    assert isinstance(reference, FaceResult)
    distances = []
    for frame in clip_frames[100:201:25]:
        result = analyzer.analyze(frame.rgb)
        assert isinstance(result, FaceResult), f"frame {frame.index}: {result.reason}"
        distances.append(float(face_distance(reference.embedding, result.embedding)))
    # README: 0.35-0.70 against lin1.png; measured 0.31-0.57 in frames 85-210.
    assert max(distances) < 0.7
    assert min(distances) < THRESHOLD


def test_out_of_focus_audience_frames_are_skipped(clip_frames, analyzer):
    # Around frames 225-245 the camera shows the audience out of focus; dlib still finds a
    # face there, whose embedding is unreliable (0.69-0.87 from lin1.png).
    result = analyzer.analyze(clip_frames[240].rgb)
    assert isinstance(result, Rejection) and result.kind == "too_blurry", result


def _write(path: Path, bgr_colour: tuple[int, int, int], size=(48, 64)) -> None:
    cv2.imwrite(str(path), np.full((*size, 3), bgr_colour, np.uint8))


def test_image_folder_reads_images_in_name_order(tmp_path):
    _write(tmp_path / "b.png", (0, 255, 0))
    _write(tmp_path / "a.jpg", (255, 0, 0), size=(30, 40))
    cv2.imwrite(str(tmp_path / "c.png"), np.full((48, 64), 200, np.uint8))  # greyscale
    (tmp_path / "notes.txt").write_text("ignored")
    with ImageFolderSource(tmp_path) as source:
        assert [p.name for p in source.paths] == ["a.jpg", "b.png", "c.png"]
        frames = list(source)
    assert [f.index for f in frames] == [0, 1, 2]
    assert [f.rgb.shape for f in frames] == [(30, 40, 3), (48, 64, 3), (48, 64, 3)]
    assert frames[0].rgb[5, 5].tolist() == pytest.approx([0, 0, 255], abs=2)  # JPEG blue
    assert frames[1].rgb[5, 5].tolist() == [0, 255, 0]
    assert frames[2].rgb[5, 5].tolist() == [200, 200, 200]
    assert frames[0].timestamp <= frames[1].timestamp <= frames[2].timestamp


def test_image_folder_fps_paces_loops_and_resizes(tmp_path):
    _write(tmp_path / "1.png", (0, 0, 0))
    _write(tmp_path / "2.png", (255, 255, 255))
    with ImageFolderSource(tmp_path, fps=20, loop=True, width=32, height=32) as source:
        start = time.monotonic()
        frames = [next_frame(source) for _ in range(5)]
        elapsed = time.monotonic() - start
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert [f.timestamp for f in frames] == pytest.approx([0, 0.05, 0.1, 0.15, 0.2])
    assert elapsed >= 0.19
    assert all(f.rgb.shape == (32, 32, 3) for f in frames)
    assert frames[2].rgb.max() == 0 and frames[3].rgb.min() == 255


def test_sources_are_camera_sources(tmp_path):
    _write(tmp_path / "1.png", (10, 20, 30))
    source: CameraSource = ImageFolderSource(tmp_path)  # mypy checks the protocol here
    frame = next_frame(source)
    assert frame is not None and frame.rgb[0, 0].tolist() == [30, 20, 10]  # written as BGR
    source.close()
    assert source.read() is None


def test_image_folder_of_real_photos(faces_dir):
    folder = faces_dir / "people" / "kit_harington"
    with open_camera(str(folder), width=320) as source:
        assert isinstance(source, ImageFolderSource)
        frames = list(source)
    assert len(frames) == 3
    assert all(f.rgb.shape[1] == 320 and f.rgb.shape[2] == 3 for f in frames)


def test_image_folder_without_images_is_refused(tmp_path):
    (tmp_path / "readme.txt").write_text("no pictures here")
    with pytest.raises(ValueError, match="no images"):
        ImageFolderSource(tmp_path)


def test_opencv_source_reads_rgb_and_drops_frames_above_fps(monkeypatch, clip, clip_frames):
    with OpenCVSource(str(clip)) as source:
        first, second = next_frame(source), next_frame(source)
    assert np.array_equal(first.rgb, clip_frames[0].rgb) and second.index == 1
    # A clock that advances 10 ms per reading stands in for a camera delivering 100 fps.
    ticks = iter(range(1, 10_000))
    monkeypatch.setattr(camera, "time", types.SimpleNamespace(monotonic=lambda: next(ticks) / 100))
    with OpenCVSource(str(clip), fps=10) as source:
        frames = [next_frame(source) for _ in range(3)]
    # Kept: the first frame, then one per 100 ms (a quarter period of jitter allowed).
    assert [f.index for f in frames] == [0, 8, 18]
    assert [f.timestamp for f in frames] == pytest.approx([0.01, 0.09, 0.19])
    assert np.array_equal(frames[1].rgb, clip_frames[8].rgb)
    with pytest.raises(OSError, match="cannot open"):
        OpenCVSource("/nonexistent/camera.mp4")


class _FakeRequest:
    def __init__(self, array: np.ndarray, sensor_ns: int) -> None:
        self.array, self.sensor_ns, self.released = array, sensor_ns, False

    def make_array(self, stream: str) -> np.ndarray:
        assert stream == "main"
        return self.array

    def get_metadata(self) -> dict:
        return {"SensorTimestamp": self.sensor_ns}

    def release(self) -> None:
        self.released = True


class _FakePicamera2:
    """Stands in for picamera2.Picamera2: RGB888 buffers hold bytes in B, G, R order."""

    instances: list["_FakePicamera2"] = []

    def __init__(self, camera_num: int = 0) -> None:
        self.camera_num = camera_num
        self.calls: list[tuple] = []
        self.requests: list[_FakeRequest] = []
        _FakePicamera2.instances.append(self)

    def create_video_configuration(self, main, controls):
        self.calls.append(("config", main, controls))
        return {"main": main, "controls": controls}

    def configure(self, config):
        self.calls.append(("configure",))

    def start(self):
        self.calls.append(("start",))

    def capture_request(self) -> _FakeRequest:
        width, height = self.calls[0][1]["size"]
        bgr = np.zeros((height, width, 3), np.uint8)
        bgr[:] = (10, 20, 30)
        request = _FakeRequest(bgr, sensor_ns=5_000_000_000 + len(self.requests) * 66_666_667)
        self.requests.append(request)
        return request

    def stop(self):
        self.calls.append(("stop",))

    def close(self):
        self.calls.append(("close",))


def test_picamera2_source_configures_rgb888_and_swaps_to_rgb(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=_FakePicamera2))
    _FakePicamera2.instances.clear()
    with open_camera("picamera2", width=320, height=240, fps=15) as source:
        assert isinstance(source, PiCamera2Source)
        frames = [next_frame(source), next_frame(source)]
    fake = _FakePicamera2.instances[0]
    assert fake.calls[0] == ("config", {"size": (320, 240), "format": "RGB888"}, {"FrameDurationLimits": (66667, 66667)})
    assert fake.calls[-2:] == [("stop",), ("close",)]
    assert all(r.released for r in fake.requests)
    assert frames[0].rgb.shape == (240, 320, 3) and frames[0].rgb[0, 0].tolist() == [30, 20, 10]
    assert [f.index for f in frames] == [0, 1]
    # The fake's SensorTimestamp is 5 s on CLOCK_BOOTTIME; frames carry time.monotonic() time.
    boot_offset = time.clock_gettime(time.CLOCK_BOOTTIME) - time.monotonic()
    assert frames[0].timestamp == pytest.approx(5.0 - boot_offset, abs=1e-3)
    assert frames[1].timestamp - frames[0].timestamp == pytest.approx(1 / 15, abs=1e-4)  # two clock readings
    assert source.read() is None  # closed


def test_picamera2_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # makes `import picamera2` fail
    expected = "sudo apt install python3-picamera2.*--system-site-packages"
    with pytest.raises(ImportError, match=expected):
        PiCamera2Source()


def test_open_camera_dispatch(monkeypatch, clip, tmp_path):
    opened = []

    class Recorder(FrameStream):
        def __init__(self, *args):
            opened.append(args)

        def read(self):
            return None

        def close(self):
            pass

    monkeypatch.setattr(camera, "OpenCVSource", Recorder)
    monkeypatch.setattr(camera, "PiCamera2Source", Recorder)
    open_camera("0", width=640, height=480, fps=15)
    open_camera(" 2 ")
    open_camera("rtsp://door.local:8554/stream")
    open_camera("http://10.0.0.5/video.mjpg")
    open_camera("pi")
    open_camera("PiCamera2", width=1280)
    assert opened == [
        (0, 640, 480, 15),
        (2, None, None, None),
        ("rtsp://door.local:8554/stream", None, None, None),
        ("http://10.0.0.5/video.mjpg", None, None, None),
        (640, 480, None),
        (1280, 960, None),
    ]
    with open_camera(str(clip), fps=10) as source:
        assert isinstance(source, VideoFileSource) and source.step == 3
    _write(tmp_path / "frame.png", (0, 0, 0))
    with open_camera(tmp_path) as source:
        assert isinstance(source, ImageFolderSource)


@pytest.mark.parametrize("spec", ["webcam", "/no/such/file.mp4", ""])
def test_open_camera_explains_what_it_expected(spec):
    expected = r"expected 'picamera2' .*device index.*URL.*folder.*video file"
    with pytest.raises(ValueError, match=expected):
        open_camera(spec)
