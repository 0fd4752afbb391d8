"""device/door_key.py (and the door-key helpers of device/state.py): create, rotate, reload."""

from __future__ import annotations

import os
import stat

import pytest

from blindgate.device.cloud_client import CloudError
from blindgate.device.door_key import DoorKeyFile, ensure_door_key, public_text, rotate_door_key
from blindgate.device.state import DeviceState, StateError


class FakeCloud:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.doors: dict[str, str] = {}

    def put_door(self, door: str, public_key: str) -> dict:
        if self.fail:
            raise CloudError(0, "unreachable")
        self.doors[door] = public_key
        return {"door": door, "public_key": public_key}


@pytest.fixture
def state(tmp_path):
    s = DeviceState(tmp_path / "state")
    s.ensure_dir()
    return s


def test_created_once_owner_only(state):
    key, created = ensure_door_key(state)
    assert created and stat.S_IMODE(os.stat(state.door_key_path).st_mode) == 0o600
    again, created = ensure_door_key(state)
    assert not created and public_text(again) == public_text(key) and len(public_text(key)) == 64


def test_missing_or_corrupt_key_is_a_state_error(state):
    with pytest.raises(StateError, match="blindgate-device init"):
        state.load_door_key()
    state.door_key_path.write_bytes(b"not a pem")
    with pytest.raises(StateError, match="corrupted"):
        state.load_door_key()


def test_rotation_registers_then_switches(state):
    old, _ = ensure_door_key(state)
    cloud = FakeCloud()
    new = rotate_door_key(state, cloud, "door1")
    assert cloud.doors == {"door1": public_text(new)} and public_text(new) != public_text(old)
    assert public_text(state.load_door_key()) == public_text(new)
    assert not state.next_door_key_path.exists()
    assert stat.S_IMODE(os.stat(state.door_key_path).st_mode) == 0o600


def test_failed_registration_keeps_the_old_key_and_a_retry_finishes(state):
    old, _ = ensure_door_key(state)
    with pytest.raises(CloudError):
        rotate_door_key(state, FakeCloud(fail=True), "door1")
    assert public_text(state.load_door_key()) == public_text(old)  # the door still works with the cloud's key
    pending = public_text(state.load_door_key(state.next_door_key_path))
    cloud = FakeCloud()
    assert public_text(rotate_door_key(state, cloud, "door1")) == pending  # the same new key, registered now
    assert cloud.doors["door1"] == pending and public_text(state.load_door_key()) == pending


def test_a_running_agent_picks_up_a_rotated_key(state):
    ensure_door_key(state)
    current = DoorKeyFile(state).current
    before = current()
    assert current() is before  # cached while the file is unchanged
    rotated = rotate_door_key(state, FakeCloud(), "door1")
    assert public_text(current()) == public_text(rotated)
