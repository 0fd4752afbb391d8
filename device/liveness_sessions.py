"""Recorded liveness sessions on disk: what `blindgate-device record` writes and `evaluate --liveness` reads.

One session is a couple of seconds of camera frames of one presentation (a live person, a print, a
phone...), kept so the liveness check can be measured on real recordings as well as synthetic ones::

    FOLDER/<kind>/<session id>/frame-00000.jpg, frame-00001.jpg, ...
    FOLDER/<kind>/<session id>/session.json
        {"kind": "print", "fps": 30.0, "timestamps": [0.0, 0.033, ...], "source": "free text",
         "created": "2026-11-26T23:59:00+00:00"}

``timestamps`` (seconds since the first frame) give the true timing when the camera dropped frames.
Frames are JPEG quality 95: close to the camera's own pictures, a tenth of the size of PNG. A session
is written under a hidden name and renamed when complete, so readers never see half of one.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from blindgate.device.imaging import load_image
from blindgate.device.liveness_attacks import AttackKind
from blindgate.shared.errors import BlindgateError

SESSION_FILE = "session.json"
JPEG_QUALITY = 95
_PARTIAL = ".partial-"


class SessionError(BlindgateError, ValueError):
    """A session folder or its session.json is not in the expected format; the message names the file."""


def frame_rate(timestamps: Sequence[float], default: float) -> float:
    """Frames per second that capture times show (`default` when they span no time)."""
    span = timestamps[-1] - timestamps[0] if len(timestamps) > 1 else 0.0
    return (len(timestamps) - 1) / span if span > 0 else default


def frame_name(index: int) -> str:
    """The file name of frame ``index`` in a session folder."""
    return f"frame-{index:05d}.jpg"


@dataclass(frozen=True)
class Session:
    """One recorded session; the frames stay on disk until `frames` reads them."""

    kind: AttackKind
    path: Path
    fps: float
    timestamps: tuple[float, ...] = field(repr=False)
    source: str = ""
    created: str = ""

    def __len__(self) -> int:
        return len(self.timestamps)

    def frame_paths(self) -> list[Path]:
        return [self.path / frame_name(i) for i in range(len(self.timestamps))]

    def frames(self) -> Iterator[np.ndarray]:
        """The frames in order as (H, W, 3) uint8 RGB arrays, read one at a time."""
        for path in self.frame_paths():
            try:
                yield load_image(path)
            except FileNotFoundError:
                raise SessionError(f"session {self.path}: frame {path.name} is missing") from None
            except ValueError as exc:
                raise SessionError(f"session {self.path}: {exc}") from None


def _check_frame(frame: object, index: int) -> np.ndarray:
    if not (isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8):
        raise SessionError(f"frame {index} is not an (H, W, 3) uint8 RGB image: shape {getattr(frame, 'shape', None)}")
    return frame


def _check_timestamps(values: Sequence[float], where: str) -> tuple[float, ...]:
    out: list[float] = []
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise SessionError(f"{where}: timestamp {i} is not a finite number: {value!r}")
        if out and value < out[-1]:
            raise SessionError(f"{where}: timestamps go back in time at frame {i} ({value} < {out[-1]})")
        out.append(float(value))
    return tuple(out)


def _check_fps(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise SessionError(f"{where}: fps must be a positive number, not {value!r}")
    return float(value)


def _check_kind(value: object, where: str) -> AttackKind:
    kinds = {kind.value: kind for kind in AttackKind}
    if not isinstance(value, str) or value not in kinds:
        raise SessionError(f"{where}: unknown session kind {value!r} (known: {', '.join(kinds)})")
    return kinds[value]


def write_session(
    folder: str | Path,
    kind: AttackKind | str,
    frames: Iterable[np.ndarray],
    fps: float,
    timestamps: Sequence[float] | None = None,
    source: str = "",
) -> Path:
    """Write ``frames`` as a new session under ``folder/<kind>/`` and return its folder.

    ``timestamps`` default to ``index / fps``; given, there must be one per frame.
    """
    kind = _check_kind(kind, "write_session")
    fps = _check_fps(fps, "write_session")
    stamps = None if timestamps is None else _check_timestamps(list(timestamps), "write_session")
    now = datetime.now(UTC)
    session_id = f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
    parent = Path(folder) / kind.value
    parent.mkdir(parents=True, exist_ok=True)
    partial = parent / f"{_PARTIAL}{session_id}"
    partial.mkdir()
    try:
        count = 0
        for count, frame in enumerate(frames, 1):
            Image.fromarray(_check_frame(frame, count - 1)).save(partial / frame_name(count - 1), quality=JPEG_QUALITY)
        if count == 0:
            raise SessionError("write_session: a session needs at least one frame")
        if stamps is None:
            stamps = tuple(i / fps for i in range(count))
        elif len(stamps) != count:
            raise SessionError(f"write_session: {len(stamps)} timestamps for {count} frames")
        meta = {"kind": kind.value, "fps": fps, "timestamps": list(stamps), "source": source, "created": now.isoformat()}
        (partial / SESSION_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        final = parent / session_id
        os.replace(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final


def load_session(path: str | Path) -> Session:
    """The session in folder ``path``, its session.json checked and its frame files present."""
    path = Path(path)
    meta_path = path / SESSION_FILE
    try:
        meta: Any = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SessionError(f"{meta_path}: missing: {path} is not a session folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SessionError(f"{meta_path}: not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise SessionError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    missing = [key for key in ("kind", "fps", "timestamps") if key not in meta]
    if missing:
        raise SessionError(f"{meta_path}: missing {', '.join(missing)}")
    kind = _check_kind(meta["kind"], str(meta_path))
    if kind.value != path.parent.name:
        raise SessionError(f"{meta_path}: kind {kind.value!r} does not match its folder {path.parent.name!r}")
    fps = _check_fps(meta["fps"], str(meta_path))
    if not isinstance(meta["timestamps"], list) or not meta["timestamps"]:
        raise SessionError(f"{meta_path}: timestamps must be a non-empty list of seconds")
    stamps = _check_timestamps(meta["timestamps"], str(meta_path))
    source, created = meta.get("source", ""), meta.get("created", "")
    if not isinstance(source, str) or not isinstance(created, str):
        raise SessionError(f"{meta_path}: source and created must be strings")
    if created:
        try:
            datetime.fromisoformat(created)
        except ValueError:
            raise SessionError(f"{meta_path}: created is not an ISO 8601 time: {created!r}") from None
    session = Session(kind, path, fps, stamps, source, created)
    absent = [p.name for p in session.frame_paths() if not p.is_file()]
    if absent:
        shown = ", ".join(absent[:3]) + (" ..." if len(absent) > 3 else "")
        raise SessionError(f"{meta_path}: {len(absent)} of {len(stamps)} frames missing ({shown})")
    return session


def read_sessions(folder: str | Path) -> Iterator[Session]:
    """Every session under ``folder`` (``<kind>/<session id>/``), by kind then id; hidden folders are skipped.

    A folder whose name is no kind, or a malformed session, raises `SessionError` naming it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SessionError(f"session folder not found: {folder}")
    for kind_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        _check_kind(kind_dir.name, str(kind_dir))
        for session_dir in sorted(p for p in kind_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            yield load_session(session_dir)


__all__ = [
    "JPEG_QUALITY",
    "SESSION_FILE",
    "Session",
    "SessionError",
    "frame_name",
    "frame_rate",
    "load_session",
    "read_sessions",
    "write_session",
]
