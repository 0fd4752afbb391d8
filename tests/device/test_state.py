"""The device's state directory (device/state.py): owner-only, tightened on every start."""

from __future__ import annotations

import pytest

from blindgate.device.build import build_agent
from blindgate.device.labels import LabelCipher
from blindgate.device.lock import Lock
from blindgate.device.sealing import TemplateSealer
from blindgate.device.state import CloudLink, DeviceState
from blindgate.shared.config import DeviceConfig
from blindgate.shared.engine import generate_site_keys
from blindgate.shared.protocol import new_signing_key, public_key_to_text


class NoFaces:
    def analyze(self, rgb):  # pragma: no cover - never called here
        raise AssertionError("not used")


def test_ensure_dir_creates_0700_and_tightens_an_existing_directory(tmp_path):
    fresh = DeviceState(tmp_path / "fresh")
    fresh.ensure_dir()
    assert fresh.dir.stat().st_mode & 0o777 == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    DeviceState(loose).ensure_dir()
    assert loose.stat().st_mode & 0o777 == 0o700


@pytest.mark.timeout(60)
def test_starting_the_door_tightens_a_looser_state_directory(tmp_path):
    """`blindgate-device run` builds the agent: a 0755 state directory (and audit log) become owner-only."""
    state = DeviceState(tmp_path / "state")
    state.ensure_dir()
    keys = generate_site_keys()
    state.save_keys(keys)
    cloud_key = public_key_to_text(new_signing_key().public_key())
    state.save_cloud(CloudLink("home", keys.key_id, "token", cloud_key, "http://127.0.0.1:9"))
    LabelCipher.create_key(state.dir)
    TemplateSealer.create_key(state.dir)
    state.create_door_key()
    state.audit_path.write_text("")
    state.dir.chmod(0o755)  # loosened by hand, or left so by an older install
    state.audit_path.chmod(0o644)
    agent = build_agent(DeviceConfig(state_dir=str(state.dir)), lock=Lock("GPIO17", pin_factory="mock"), analyzer=NoFaces())
    try:
        assert state.dir.stat().st_mode & 0o777 == 0o700
        assert state.audit_path.stat().st_mode & 0o777 == 0o600
    finally:
        agent.close()
