"""This door's request-signing key: created at `init`, rotated without re-enrolling anyone, reloaded when rotated.

The cloud scans only probes signed by the key registered for the door (cloud/request_auth.py),
so a relay can neither forge a request nor swap the probe inside one. Rotation writes the new key
to `door.key.next` first, registers its public half, then renames it over `door.key`
(atomic): an interrupted rotation is finished by running it again, and a running agent picks
the new key up at its next probe (`DoorKeyFile.current`).
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blindgate.shared.protocol import public_key_to_text

from .cloud_client import CloudClient
from .state import DeviceState


def public_text(key: Ed25519PrivateKey) -> str:
    """The key's public half as registered with the cloud: 64 hex characters."""
    return public_key_to_text(key.public_key())


def ensure_door_key(state: DeviceState) -> tuple[Ed25519PrivateKey, bool]:
    """The door key, created if absent; (key, created)."""
    if state.door_key_path.exists():
        return state.load_door_key(), False
    return state.create_door_key(), True


def rotate_door_key(state: DeviceState, client: CloudClient, door: str) -> Ed25519PrivateKey:
    """Replace the door's key: new key file, registered with the cloud, then made current."""
    pending = state.next_door_key_path
    key = state.load_door_key(pending) if pending.exists() else state.create_door_key(pending)
    client.put_door(door, public_text(key))
    os.replace(pending, state.door_key_path)
    dir_fd = os.open(state.dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself is durable
    finally:
        os.close(dir_fd)
    return key


class DoorKeyFile:
    """`door.key`, re-read when the file changes (a rotation by `blindgate-device rotate-door-key`)."""

    def __init__(self, state: DeviceState) -> None:
        self.state = state
        self._stamp: tuple[int, int] | None = None
        self._key: Ed25519PrivateKey | None = None

    def current(self) -> Ed25519PrivateKey:
        st = os.stat(self.state.door_key_path)
        stamp = (st.st_ino, st.st_mtime_ns)
        if self._key is None or stamp != self._stamp:
            self._key, self._stamp = self.state.load_door_key(), stamp
        return self._key
