"""Unknown-face snapshots: a JPEG of the frame, kept in a local folder when an `unknown` event fires.

Opt-in (`[snapshots] enabled`), for the owner to see who tried the door. The image never leaves
the device: nothing publishes or uploads it; the `unknown` event (MQTT, audit log) carries only
its file name. Files are 0600 in a folder created 0700; retention is enforced on every save and
at start: at most `keep` files, none older than `max_age_days`. Only this module's own files
(`unknown-<UTC time>.jpg`) are ever deleted, so a folder shared with other files loses nothing else.

Encoding: Pillow first (picamera2 depends on it on Raspberry Pi OS, so the picamera2 path needs no
OpenCV), then OpenCV, else no snapshots and one warning. Saving never breaks the door: a
failure is logged and the event goes out without a file name.
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from blindgate.shared.config import DeviceConfig
from blindgate.shared.errors import BlindgateError

from .keyfiles import write_private

log = logging.getLogger("blindgate.device.snapshots")
SNAPSHOT_NAME = re.compile(r"unknown-\d{8}T\d{6}\.\d{3}Z(-\d+)?\.jpg")
DEFAULT_FOLDER = "snapshots"  # inside the state directory
JPEG_QUALITY = 85

Encoder = Callable[[np.ndarray], bytes]


class SnapshotError(BlindgateError, ValueError):
    """The `[snapshots]` settings cannot work (no retention limit)."""


def _pil_encoder() -> Encoder:
    from PIL import Image

    def encode(rgb: np.ndarray) -> bytes:
        out = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB").save(out, "JPEG", quality=JPEG_QUALITY)
        return out.getvalue()

    return encode


def _cv2_encoder() -> Encoder:
    import cv2

    def encode(rgb: np.ndarray) -> bytes:
        ok, data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise ValueError("OpenCV could not encode the frame")
        return data.tobytes()

    return encode


def jpeg_encoder() -> Encoder | None:
    """Pillow's or OpenCV's JPEG encoder, whichever imports (None: neither is installed)."""
    for make in (_pil_encoder, _cv2_encoder):
        try:
            return make()
        except Exception:  # ImportError, or a wheel built against another numpy (ValueError on import)
            continue
    return None


class SnapshotStore:
    """Writes snapshots to `folder` and keeps at most `keep` of them, none older than `max_age_s`."""

    def __init__(
        self,
        folder: str | Path,
        keep: int,
        max_age_s: float,
        encode: Encoder | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if keep < 1 or max_age_s <= 0:
            raise SnapshotError("snapshots need a retention limit: [snapshots] keep >= 1 and max_age_days > 0")
        self.folder = Path(folder)
        self.keep, self.max_age_s = keep, max_age_s
        self.encode = encode
        self.clock = clock
        if encode is None:
            log.warning("snapshots enabled, but neither Pillow nor OpenCV is installed: no snapshots (apt install python3-pil)")
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.prune()

    def save(self, rgb: np.ndarray) -> str | None:
        """Write the frame as a JPEG; its file name, or None when it could not be written."""
        if self.encode is None:
            return None
        try:
            data = self.encode(rgb)
            path = self._new_path()
            write_private(path, data)
        except Exception as exc:  # a full disk or a bad frame must not break the door
            log.warning("snapshot not written: %s", exc)
            return None
        self.prune()
        return path.name

    def _new_path(self) -> Path:
        stamp = datetime.fromtimestamp(self.clock(), UTC).strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"
        path, n = self.folder / f"unknown-{stamp}.jpg", 1
        while path.exists():
            path, n = self.folder / f"unknown-{stamp}-{n}.jpg", n + 1
        return path

    def files(self) -> list[Path]:
        """This store's snapshots, oldest first (names sort by their UTC time)."""
        try:
            return sorted(p for p in self.folder.iterdir() if SNAPSHOT_NAME.fullmatch(p.name))
        except OSError:
            return []

    def prune(self) -> int:
        """Delete snapshots beyond `keep` or older than `max_age_s`; how many were deleted."""
        files, now, removed = self.files(), self.clock(), 0
        for i, path in enumerate(files):
            try:
                if i < len(files) - self.keep or now - path.stat().st_mtime > self.max_age_s:
                    path.unlink()
                    removed += 1
            except OSError as exc:
                log.warning("cannot delete old snapshot %s: %s", path, exc)
        return removed


def open_snapshots(config: DeviceConfig, encode: Encoder | None = None) -> SnapshotStore | None:
    """The configured store (None when snapshots are off); the folder defaults to <state_dir>/snapshots."""
    s = config.snapshots
    if not s.enabled:
        return None
    folder = Path(s.folder) if s.folder else Path(config.state_dir) / DEFAULT_FOLDER
    return SnapshotStore(folder, s.keep, s.max_age_days * 86400.0, encode or jpeg_encoder())


__all__ = ["SNAPSHOT_NAME", "SnapshotError", "SnapshotStore", "jpeg_encoder", "open_snapshots"]
