"""Assembling a door from its state directory (device/build.py): every part present, nothing skipped."""

from __future__ import annotations

import pytest

from blindgate.device.build import build_agent, face_config
from blindgate.device.integrity import TemplateCheck
from blindgate.device.labels import LabelCipher
from blindgate.device.lock import Lock
from blindgate.device.sealing import SealError, TemplateSealer
from blindgate.device.state import CloudLink, DeviceState, StateError
from blindgate.shared.config import DeviceConfig, FaceSettings
from blindgate.shared.engine import generate_site_keys
from blindgate.shared.protocol import new_signing_key, public_key_to_text


class NoFaces:
    def analyze(self, rgb):  # pragma: no cover - never called here
        raise AssertionError("not used")


@pytest.fixture(scope="module")
def keys():
    return generate_site_keys()


def provision(tmp_path, keys, key_id=None, template_key=True):
    """A state directory as `blindgate-device init` leaves it (without the network)."""
    state = DeviceState(tmp_path / "state")
    state.ensure_dir()
    state.save_keys(keys)
    cloud_key = public_key_to_text(new_signing_key().public_key())
    state.save_cloud(CloudLink("home", key_id or keys.key_id, "token", cloud_key, "http://127.0.0.1:9"))
    LabelCipher.create_key(state.dir)
    if template_key:
        TemplateSealer.create_key(state.dir)
    state.create_door_key()
    return DeviceConfig(state_dir=str(state.dir))


def test_a_provisioned_door_is_built_with_its_integrity_check(tmp_path, keys):
    config = provision(tmp_path, keys)
    agent = build_agent(config, lock=Lock("GPIO17", pin_factory="mock"), analyzer=NoFaces())
    try:
        assert isinstance(agent.integrity, TemplateCheck) and agent.integrity.key_id == keys.key_id
        assert agent.keys.key_id == keys.key_id and agent.lock.is_locked
    finally:
        agent.close()


def test_mismatched_key_ids_are_refused(tmp_path, keys):
    config = provision(tmp_path, keys, key_id="0" * 32)
    with pytest.raises(StateError, match="names key"):
        build_agent(config, lock=Lock("GPIO17", pin_factory="mock"), analyzer=NoFaces())


def test_without_the_template_key_no_door_is_built(tmp_path, keys):
    config = provision(tmp_path, keys, template_key=False)
    with pytest.raises(SealError, match="blindgate-device init"):
        build_agent(config, lock=Lock("GPIO17", pin_factory="mock"), analyzer=NoFaces())


def test_face_config_follows_the_config():
    config = DeviceConfig(face=FaceSettings(model="cnn", upsample=0, min_face_px=80, min_sharpness=10.0, detect_max_width=0))
    face = face_config(config)
    assert (face.model, face.upsample, face.min_face_px, face.min_sharpness, face.detect_max_width) == ("cnn", 0, 80, 10.0, None)


def test_the_door_reads_its_access_rules_and_keeps_snapshots_only_when_asked(tmp_path, keys):
    from dataclasses import replace

    from blindgate.device.access_rules import AccessRuleError
    from blindgate.shared.config import AccessConfig, SnapshotConfig

    config = provision(tmp_path, keys)
    agent = build_agent(config, lock=Lock("GPIO17", pin_factory="mock"), analyzer=NoFaces())
    try:
        assert agent.access is not None and agent.access.file.path == tmp_path / "state" / "access_rules.json"
        assert agent.snapshots is None  # opt-in
    finally:
        agent.close()
    on = replace(config, snapshots=SnapshotConfig(enabled=True, keep=3))
    agent = build_agent(on, lock=Lock("GPIO17", pin_factory="mock"), analyzer=NoFaces())
    try:
        assert agent.snapshots is not None and agent.snapshots.folder == tmp_path / "state" / "snapshots"
    finally:
        agent.close()
    nowhere = replace(config, access=AccessConfig(timezone="Nowhere/Atlantis"))
    with pytest.raises(AccessRuleError, match="time zone"):
        build_agent(nowhere, Lock("GPIO17", pin_factory="mock"), NoFaces())
