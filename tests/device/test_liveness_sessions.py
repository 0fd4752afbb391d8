"""The liveness session folder format (device/liveness_sessions.py): write, read back, refuse what is broken."""

import json
from pathlib import Path

import numpy as np
import pytest

from blindgate.device.liveness_attacks import AttackKind
from blindgate.device.liveness_sessions import (
    SESSION_FILE,
    SessionError,
    frame_name,
    load_session,
    read_sessions,
    write_session,
)


def pictures(count: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth frames (JPEG keeps them within a few grey levels), each different."""
    yy, xx = np.mgrid[0:48, 0:64]
    return [
        np.stack([(xx * 3 + i * 20) % 256, (yy * 4 + seed * 30) % 256, np.full_like(xx, 40 * i % 256)], axis=2).astype(np.uint8)
        for i in range(count)
    ]


def test_round_trip(tmp_path: Path):
    frames = pictures(4)
    path = write_session(
        tmp_path, AttackKind.PRINT, frames, fps=15.0, timestamps=[0.0, 0.07, 0.13, 0.2], source="A4 print, desk lamp"
    )
    assert path.parent == tmp_path / "print"
    assert sorted(p.name for p in path.iterdir()) == [*(frame_name(i) for i in range(4)), SESSION_FILE]
    (session,) = read_sessions(tmp_path)
    assert session.kind is AttackKind.PRINT and session.path == path
    assert session.fps == 15.0 and session.timestamps == (0.0, 0.07, 0.13, 0.2) and len(session) == 4
    assert session.source == "A4 print, desk lamp" and session.created
    back = list(session.frames())
    assert len(back) == 4
    for original, read in zip(frames, back, strict=True):
        assert read.shape == original.shape and read.dtype == np.uint8
        assert np.abs(read.astype(int) - original).mean() < 3  # JPEG quality 95
    assert np.abs(back[0].astype(int) - back[1]).mean() > 5  # and in order


def test_default_timestamps_and_several_sessions_in_order(tmp_path: Path):
    write_session(tmp_path, "genuine", iter(pictures(3)), fps=10)  # a generator, as a live recording gives
    write_session(tmp_path, "screen_still", pictures(2, 1), fps=30)
    write_session(tmp_path, "genuine", pictures(1, 2), fps=10)
    sessions = list(read_sessions(tmp_path))
    assert [s.kind.value for s in sessions] == ["genuine", "genuine", "screen_still"]
    three = next(s for s in sessions if len(s) == 3)
    assert three.timestamps == (0.0, 0.1, 0.2)
    assert json.loads((three.path / SESSION_FILE).read_text())["kind"] == "genuine"


def test_frames_are_read_lazily(tmp_path: Path):
    (session,) = read_sessions(write_session(tmp_path, "print", pictures(3), fps=10).parents[1])
    stream = session.frames()
    next(stream)
    (session.path / frame_name(2)).unlink()  # gone after the session was opened
    next(stream)
    with pytest.raises(SessionError, match=frame_name(2)):
        next(stream)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"kind": "print", "fps": 30}', "missing timestamps"),
        ('{"kind": "print", "fps": 0, "timestamps": [0, 0.1]}', "fps"),
        ('{"kind": "print", "fps": true, "timestamps": [0, 0.1]}', "fps"),
        ('{"kind": "print", "fps": 30, "timestamps": [0, "x"]}', "timestamp 1"),
        ('{"kind": "print", "fps": 30, "timestamps": [0.2, 0.1]}', "back in time"),
        ('{"kind": "print", "fps": 30, "timestamps": []}', "non-empty"),
        ('{"kind": "print", "fps": 30, "timestamps": [0, 0.1], "source": 5}', "strings"),
        ('{"kind": "print", "fps": 30, "timestamps": [0, 0.1], "created": "yesterday"}', "ISO"),
        ('{"kind": "genuine", "fps": 30, "timestamps": [0, 0.1]}', "does not match its folder"),
        ('{"kind": "mask", "fps": 30, "timestamps": [0, 0.1]}', "unknown session kind 'mask'"),
    ],
)
def test_malformed_session_json_names_the_file(tmp_path: Path, text: str, complaint: str):
    path = write_session(tmp_path, "print", pictures(2), fps=30)
    assert load_session(path).kind is AttackKind.PRINT  # control: valid as written
    (path / SESSION_FILE).write_text(text)
    with pytest.raises(SessionError, match=complaint) as caught:
        list(read_sessions(tmp_path))
    assert str(path / SESSION_FILE) in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_unknown_kind_folder_and_kind(tmp_path: Path):
    (tmp_path / "prnt" / "x").mkdir(parents=True)
    with pytest.raises(SessionError, match="unknown session kind 'prnt'"):
        list(read_sessions(tmp_path))
    with pytest.raises(SessionError, match="unknown session kind"):
        write_session(tmp_path / "other", "hologram", pictures(1), fps=30)


def test_phone_video_is_a_recordable_kind(tmp_path: Path):
    write_session(tmp_path, "phone_video", pictures(2), fps=30, source="replayed on a phone")
    assert [s.kind for s in read_sessions(tmp_path)] == [AttackKind.PHONE_VIDEO]


def test_missing_frames_and_missing_json(tmp_path: Path):
    path = write_session(tmp_path, "bent_print", pictures(5), fps=30)
    (path / frame_name(3)).unlink()
    with pytest.raises(SessionError, match=r"1 of 5 frames missing \(frame-00003.jpg\)"):
        list(read_sessions(tmp_path))
    (path / SESSION_FILE).unlink()
    with pytest.raises(SessionError, match="not a session folder"):
        list(read_sessions(tmp_path))
    with pytest.raises(SessionError, match="not found"):
        list(read_sessions(tmp_path / "nowhere"))


def test_bad_input_writes_nothing(tmp_path: Path):
    with pytest.raises(SessionError, match="2 timestamps for 3 frames"):
        write_session(tmp_path, "print", pictures(3), fps=30, timestamps=[0.0, 0.1])
    with pytest.raises(SessionError, match="frame 1"):
        write_session(tmp_path, "print", [pictures(1)[0], np.zeros((4, 4), np.uint8)], fps=30)
    with pytest.raises(SessionError, match="at least one frame"):
        write_session(tmp_path, "print", [], fps=30)
    with pytest.raises(SessionError, match="fps"):
        write_session(tmp_path, "print", pictures(1), fps=float("nan"))
    assert list(read_sessions(tmp_path)) == []  # no half-written session is visible
    assert not any((tmp_path / "print").iterdir())  # nor left behind
