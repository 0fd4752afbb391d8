"""The site's versioned state on the device: today the deny list of removed subjects.

Removing a person must stick even against a cloud that keeps or restores their template: the
cloud's gallery is only a hint, the device's deny list is the truth. `blindgate-device remove`
records the subject here BEFORE asking the cloud, and the agent refuses a match on any denied
subject (fail secure), re-reading the file when its mtime changes, so no restart is needed.

One file per site (`site_state.json`, 0600, in the state directory), written atomically (temp
file, fsync, rename, fsync of the directory) so a crash leaves the old or the new state, never a
torn one. It is versioned (`version` +1 per change) and site-level by design: when several doors
share a site, they share this state (copied or synchronised as a whole, newest version wins) as
they share the template and label keys. Layout:

    {"format": 1, "site": "home", "version": 3, "denied": ["<subject id>", ...]}
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from blindgate.shared.errors import BlindgateError

STATE_FILE = "site_state.json"
FORMAT = 1


class SiteStateError(BlindgateError, ValueError):
    """The site state file is unreadable, for another site, or malformed: trust nothing in it."""


@dataclass(frozen=True)
class SiteStateData:
    """One version of the site state."""

    site: str
    version: int = 0
    denied: frozenset[str] = field(default_factory=frozenset)

    def to_bytes(self) -> bytes:
        body = {"format": FORMAT, "site": self.site, "version": self.version, "denied": sorted(self.denied)}
        return json.dumps(body, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes, site: str) -> SiteStateData:
        try:
            body = json.loads(data)
            version, denied = body["version"], body["denied"]
            if body.get("format") != FORMAT or body.get("site") != site:
                raise SiteStateError(f"site state is format {body.get('format')!r} of site {body.get('site')!r}")
            if not isinstance(version, int) or version < 0 or not all(isinstance(s, str) for s in denied):
                raise SiteStateError("site state has a bad version or deny list")
        except SiteStateError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise SiteStateError(f"site state is malformed: {exc}") from None
        return cls(site=site, version=version, denied=frozenset(denied))


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` (0600) so readers see the old or the new bytes, never a mix."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class SiteState:
    """The site state file of one state directory: read (cached by mtime) and changed atomically."""

    def __init__(self, state_dir: str | Path, site: str) -> None:
        self.path = Path(state_dir) / STATE_FILE
        self.site = site
        self._guard = threading.Lock()
        self._seen: tuple[int, int, int] | None = None  # (inode, mtime_ns, size) of the cached read
        self._data = SiteStateData(site)

    def current(self) -> SiteStateData:
        """The state as on disk now; one stat() when unchanged. A missing file is the empty state."""
        with self._guard:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                self._seen, self._data = None, SiteStateData(self.site)
                return self._data
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)  # a rename gives a new inode
            if stamp != self._seen:
                self._data = SiteStateData.from_bytes(self.path.read_bytes(), self.site)
                self._seen = stamp
            return self._data

    def is_denied(self, subject: str) -> bool:
        """True if `subject` was removed at this site; an unreadable state denies everyone (fail secure)."""
        try:
            return subject in self.current().denied
        except (SiteStateError, OSError):
            return True

    def deny(self, subjects: Iterable[str]) -> SiteStateData:
        """Add subjects to the deny list (a new version, durably written); returns the new state."""
        old = self.current()
        new = SiteStateData(self.site, old.version + 1, old.denied | frozenset(subjects))
        write_atomic(self.path, new.to_bytes())
        return new


__all__ = ["STATE_FILE", "SiteState", "SiteStateData", "SiteStateError", "write_atomic"]
