"""The Pi camera path imports no OpenCV (issue 13): picamera2 frames, Pillow, dlib and the engine only.

A child Python refuses every `cv2` import (a meta-path finder that raises), then imports the
agent, its builder and the CLI, reads frames from picamera2 (a stand-in module yielding a real
photo), analyzes them with the dlib analyzer and loads an image file. The control: the same
child cannot open a video file, and says the device extra is what is missing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

CHILD = textwrap.dedent(
    """
    import importlib.abc, json, sys, types

    class RefuseOpenCV(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "cv2" or name.startswith("cv2."):
                raise ImportError("cv2 refused by test_no_opencv")
            return None

    sys.meta_path.insert(0, RefuseOpenCV())
    import numpy as np
    from PIL import Image

    photo_path, video_path = sys.argv[1], sys.argv[2]
    bgr = np.ascontiguousarray(np.asarray(Image.open(photo_path).convert("RGB"))[:, :, ::-1])

    class Request:
        def make_array(self, stream): return bgr
        def get_metadata(self): return {"SensorTimestamp": 1_000_000_000}
        def release(self): pass

    class Picamera2:  # the stand-in for apt's picamera2: RGB888 frames are BGR-ordered
        def __init__(self, num): pass
        def create_video_configuration(self, main, controls): return {"main": main}
        def configure(self, config): pass
        def start(self): pass
        def capture_request(self): return Request()
        def stop(self): pass
        def close(self): pass

    sys.modules["picamera2"] = types.SimpleNamespace(Picamera2=Picamera2)
    import blindgate.device.agent, blindgate.device.build, blindgate.device.cli  # noqa: F401
    from blindgate.device.camera import open_camera
    from blindgate.device.faces import FaceAnalyzer, FaceConfig, FaceResult, load_image
    from blindgate.device.optional_imports import MissingDependency

    analyzer = FaceAnalyzer(FaceConfig(detect_max_width=320))  # the numpy resize path too
    results = []
    with open_camera("picamera2", width=512, height=512) as camera:
        for _ in range(2):
            results.append(analyzer.analyze(camera.read().rgb))
    results.append(analyzer.analyze(load_image(photo_path)))
    try:
        open_camera(video_path)
        video = "opened"
    except MissingDependency as exc:
        video = str(exc)
    print(json.dumps({
        "faces": [isinstance(r, FaceResult) for r in results],
        "cv2_loaded": "cv2" in sys.modules,
        "video": video,
    }))
    """
)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """What the child saw, run once for the module."""
    tmp_path: Path = tmp_path_factory.mktemp("no-opencv")
    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\0" * 64)  # never decoded: opening it must ask for OpenCV first
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(photo), str(video)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_picamera2_frames_and_photos_are_analyzed_without_opencv(report):
    assert report["faces"] == [True, True, True]
    assert report["cv2_loaded"] is False


def test_without_opencv_a_video_source_asks_for_the_device_extra(report):
    # The control: cv2 really was unavailable in the child, and the one source that needs it says so.
    video = report["video"]
    assert "needs OpenCV" in video and "[device]" in video and "picamera2" in video


def test_the_photo_is_a_face_with_opencv_too():
    # Positive control for the child's photo: the parent (OpenCV importable) finds the same face.
    from blindgate.device.faces import FaceAnalyzer, FaceResult

    assert isinstance(FaceAnalyzer().analyze(np.ascontiguousarray(data.astronaut())), FaceResult)
