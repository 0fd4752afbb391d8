"""`blindgate-device record`: labelled sessions from the configured camera, readable by `evaluate --liveness`."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from blindgate.device.camera import Frame
from blindgate.device.liveness_attacks import AttackKind
from blindgate.device.liveness_sessions import read_sessions
from blindgate.device.record_cli import RecordError, cmd_record
from blindgate.shared.config import DeviceConfig


class Camera:
    """`count` frames at `fps`, then the end of the stream."""

    def __init__(self, count: int, fps: float = 20.0) -> None:
        self.frames = [Frame(np.full((48, 64, 3), i, np.uint8), i, i / fps) for i in range(count)]

    def read(self) -> Frame | None:
        return self.frames.pop(0) if self.frames else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def args(folder, **kw) -> argparse.Namespace:
    return argparse.Namespace(
        folder=folder, kind=kw.get("kind", "print"), sessions=kw.get("sessions", 2), seconds=1.0, countdown=0
    )


def test_sessions_are_written_with_their_kind_capture_times_and_frames(tmp_path):
    said: list[str] = []
    assert cmd_record(DeviceConfig(), args(tmp_path), camera=Camera(60), say=said.append) == 0
    sessions = sorted(read_sessions(tmp_path), key=lambda s: s.created)  # ids sort by second, then at random
    assert [s.kind for s in sessions] == [AttackKind.PRINT, AttackKind.PRINT]
    first = sessions[0]
    assert len(first) == 21 and first.timestamps[0] == 0.0 and abs(first.timestamps[-1] - 1.0) < 1e-9
    assert abs(first.fps - 20.0) < 1e-6
    assert [int(f[0, 0, 0]) for f in first.frames()][:3] == [0, 1, 2]  # the camera's own frames, in order
    assert not any("fewer than 15 frames per second" in s for s in said)  # 20 fps is enough: no note
    assert any("printed photo" in s for s in said)


def test_a_camera_that_stops_keeps_no_partial_session(tmp_path):
    with pytest.raises(RecordError, match="camera stopped"):
        cmd_record(DeviceConfig(), args(tmp_path, sessions=1), camera=Camera(5), say=lambda _: None)
    assert not (tmp_path / "print").exists()


def test_bad_arguments_are_refused_before_the_camera_opens(tmp_path):
    bad = args(tmp_path)
    bad.seconds = 0.0
    with pytest.raises(RecordError, match="--seconds"):
        cmd_record(DeviceConfig(), bad, camera=Camera(10), say=lambda _: None)
