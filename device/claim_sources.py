"""The claim sources registered on this door, each with its own AES-256 key (`claim_sources.json`, 0600).

A source is whatever may tell the door who is in front of it: a keypad, a badge reader, Home
Assistant. Each gets its own random key, so one can be removed (a lost keypad, a compromised
HA) without touching the others, and the door knows which one a claim came from. The key is
shown once when the source is added (`blindgate-device claim-source add NAME`) and is otherwise
kept only here. The file is re-read when it changes, so a running door follows add/remove.
"""

from __future__ import annotations

import base64
import threading
from datetime import UTC, datetime
from pathlib import Path

from blindgate.shared.errors import BlindgateError

from .claims import KEY_BYTES, ClaimError, check_source_name, new_source_key
from .registry import read_registry, write_registry

SOURCES_FILE = "claim_sources.json"
FORMAT = 1


class ClaimSourceError(BlindgateError, ValueError):
    """The registry is unreadable, or a source to add exists already / to remove does not."""


class ClaimSources:
    """Read and change the registry; `key(name)` serves the door (cached, re-read when the file changes)."""

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / SOURCES_FILE
        self._guard = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._keys: dict[str, bytes] = {}

    def _read(self) -> dict[str, dict]:
        return read_registry(self.path, "sources", FORMAT, ClaimSourceError, "claim-source registry")

    def _write(self, sources: dict[str, dict]) -> None:
        write_registry(self.path, "sources", FORMAT, sources)

    def add(self, name: str) -> bytes:
        """Register `name` with a new random key and return the key (shown once to the installer)."""
        try:
            check_source_name(name)
        except ClaimError as exc:
            raise ClaimSourceError(str(exc)) from None
        with self._guard:
            sources = self._read()
            if name in sources:
                raise ClaimSourceError(f"claim source {name!r} exists already: remove it first to give it a new key")
            key = new_source_key()
            sources[name] = {"key": base64.b64encode(key).decode(), "created": datetime.now(UTC).isoformat(timespec="seconds")}
            self._write(sources)
        return key

    def remove(self, name: str) -> None:
        """Forget `name`: claims sealed with its key are refused from now on."""
        with self._guard:
            sources = self._read()
            if name not in sources:
                raise ClaimSourceError(f"no claim source {name!r}")
            del sources[name]
            self._write(sources)

    def list(self) -> list[dict[str, str]]:
        """Names and creation times, never keys."""
        return [{"name": n, "created": str(s.get("created", ""))} for n, s in sorted(self._read().items())]

    def key(self, name: str) -> bytes | None:
        """The key of a registered source, None if unknown (or the registry is unreadable: fail secure)."""
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)  # a replaced file has a new inode
        except FileNotFoundError:
            return None
        with self._guard:
            if stamp != self._stamp:
                try:
                    sources = self._read()
                    keys = {n: base64.b64decode(s["key"], validate=True) for n, s in sources.items()}
                except (ClaimSourceError, KeyError, TypeError, ValueError):
                    keys = {}
                self._keys = {n: k for n, k in keys.items() if len(k) == KEY_BYTES}
                self._stamp = stamp
            return self._keys.get(name)


def read_key_file(path: str | Path) -> bytes:
    """A source key as `claim-source add` printed it (base64 text) from a file."""
    try:
        key = base64.b64decode(Path(path).read_text().strip(), validate=True)
    except ValueError:
        raise ClaimSourceError(f"{path} does not hold a base64 claim-source key") from None
    if len(key) != KEY_BYTES:
        raise ClaimSourceError(f"{path} holds a {len(key)}-byte key, not {KEY_BYTES}")
    return key


__all__ = ["SOURCES_FILE", "ClaimSourceError", "ClaimSources", "read_key_file"]
