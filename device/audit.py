"""The door's audit log: append-only JSON lines in the state directory.

Decisions, rejected replies and lock changes, each with a UTC timestamp; never an image, a
distance or a score (those must not leave the agent's memory). It names people, so it is the
owner's only (0600): created so, and an existing looser file is tightened when the log opens.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("blindgate.device.audit")


def now_iso() -> str:
    """UTC now as ISO 8601 with milliseconds and a Z, as events and audit lines carry it."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    """Append-only JSON lines; `path=None` writes nothing (tests, benchmarks)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._guard = threading.Lock()
        if self.path is not None and self.path.exists():
            try:
                os.chmod(self.path, 0o600)
            except OSError as exc:
                log.warning("cannot make %s owner-only: %s", self.path, exc)

    def write(self, **entry: Any) -> None:
        """Append one entry; a failing disk is logged, never raised (the door must keep working)."""
        if self.path is None:
            return
        line = json.dumps({"ts": now_iso(), **entry}, default=str) + "\n"
        with self._guard:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                with open(fd, "a", encoding="utf-8") as fh:
                    fh.write(line)
            except OSError as exc:
                log.warning("audit log write failed: %s", exc)


__all__ = ["AuditLog", "now_iso"]
