"""device/rekey.py against a scripted cloud: what the device does when the cloud refuses, fails, or answers late."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from blindgate.device.cloud_client import CloudError
from blindgate.device.labels import LabelCipher
from blindgate.device.rekey import NEXT_KEYS, RekeyError, rekey
from blindgate.device.sealing import TemplateSealer
from blindgate.device.state import CloudLink, DeviceState
from blindgate.shared.engine import generate_site_keys

SITE = "home"


class ScriptedCloud:
    """The cloud's side of a rekey, in memory: what was staged, and what the commit does."""

    timeout = 30.0

    def __init__(self, key_id: str, sealed: dict[str, bytes], labels: dict[str, bytes]) -> None:
        self.key_id = key_id
        self.sealed_blobs = sealed
        self.labels = labels
        self.staged: dict[str, tuple[bytes, bytes, bytes]] = {}
        self.bundle: bytes | None = None
        self.commit: str = "ok"  # "ok", "refuse", "lost" (switched, answer lost), "down" (lost, then unreachable)
        self.reachable = True
        self.aborted = False

    def subjects(self) -> dict:
        rows = [
            {"subject": s, "label": base64.b64encode(self.labels[s]).decode(), "block": 0, "slot": i}
            for i, s in enumerate(self.labels)
        ]
        return {"gallery_version": 5, "subjects": rows}

    def sealed(self, subject: str) -> bytes:
        return self.sealed_blobs[subject]

    def stage_rekey(self, bundle: bytes, gallery_version: int) -> dict:
        assert gallery_version == 5
        self.bundle, self.staged = bundle, {}
        return {}

    def stage_rekey_subject(self, subject: str, key_id: str, enrollment: bytes, label: bytes, sealed: bytes) -> dict:
        self.staged[subject] = (enrollment, label, sealed)
        return {}

    def abort_rekey(self) -> dict:
        self.bundle, self.staged, self.aborted = None, {}, True
        return {}

    def commit_rekey(self, key_id: str, gallery_version: int) -> dict:
        if self.commit == "refuse":
            raise CloudError(409, "gallery changed")
        self.key_id = key_id
        for subject, (_, label, sealed) in self.staged.items():  # the switch: staged copies become current
            self.sealed_blobs[subject], self.labels[subject] = sealed, label
        if self.commit in ("lost", "down"):
            self.reachable = self.commit == "lost"
            raise CloudError(0, "connection reset")
        return {"gallery_version": 6}

    def stats(self) -> dict:
        if not self.reachable:
            raise CloudError(0, "unreachable")
        return {"key_id": self.key_id}


@pytest.fixture(scope="module")
def keys():
    return generate_site_keys()


@pytest.fixture
def world(tmp_path, keys):
    state = DeviceState(tmp_path / "state")
    state.ensure_dir()
    state.save_keys(keys)
    state.save_cloud(CloudLink(SITE, keys.key_id, "token", "ab" * 32))
    LabelCipher.create_key(state.dir)
    TemplateSealer.create_key(state.dir)
    sealer, labels = TemplateSealer.load(state.dir, SITE), LabelCipher.load(state.dir, SITE)
    templates = {f"{i:032x}": np.random.default_rng(i).normal(0, 0.09, 128) for i in range(2)}
    names = dict(zip(templates, ("Ada", "Bo")))
    cloud = ScriptedCloud(
        keys.key_id,
        {s: sealer.seal(s, keys.key_id, t, names[s], version=3) for s, t in templates.items()},
        {s: labels.encrypt(names[s]) for s in templates},
    )
    return state, cloud, sealer, templates, names


def run(state, cloud):
    return rekey(state, cloud, SITE, say=lambda line: None)  # type: ignore[arg-type]


def test_rekey_reseals_every_template_under_the_new_key_id(world, keys):
    state, cloud, sealer, templates, names = world
    result = run(state, cloud)
    assert result.old_key_id == keys.key_id and result.key_id != keys.key_id and result.subjects == 2
    assert state.load_keys().key_id == result.key_id == state.load_cloud().key_id
    assert not (state.dir / NEXT_KEYS).exists() and not (state.dir / "site.keys.old").exists()
    for subject, (enrollment, label, sealed) in cloud.staged.items():
        opened = sealer.open(sealed, subject, result.key_id)  # same subject id and version, new key id
        assert opened.version == 3 and opened.label == names[subject]
        assert np.array_equal(opened.template, templates[subject])
        assert LabelCipher.load(state.dir, SITE).decrypt(label) == names[subject]
        assert enrollment


def test_a_template_that_does_not_open_stops_the_rekey_before_any_change(world, keys):
    state, cloud, *_ = world
    first, second = list(cloud.sealed_blobs)
    cloud.sealed_blobs[second] = cloud.sealed_blobs[first]  # moved to another subject: does not open
    with pytest.raises(RekeyError, match=second):
        run(state, cloud)
    assert cloud.bundle is None and cloud.staged == {}
    assert state.load_keys().key_id == keys.key_id and not (state.dir / NEXT_KEYS).exists()


def test_a_refused_commit_keeps_the_old_keys(world, keys):
    state, cloud, *_ = world
    cloud.commit = "refuse"
    with pytest.raises(RekeyError, match="keeps its gallery"):
        run(state, cloud)
    assert cloud.aborted and cloud.bundle is None  # the cloud's staging is dropped
    assert state.load_keys().key_id == keys.key_id == state.load_cloud().key_id
    assert not (state.dir / NEXT_KEYS).exists()
    cloud.commit = "ok"  # positive control: the next try works
    assert run(state, cloud).key_id == state.load_keys().key_id != keys.key_id


def test_a_lost_commit_answer_is_resolved_by_asking_the_cloud(world, keys):
    state, cloud, *_ = world
    cloud.commit = "lost"  # switched, answer lost, the cloud says which keys it is on
    result = run(state, cloud)
    assert state.load_keys().key_id == result.key_id == cloud.key_id


def test_an_unconfirmed_commit_is_finished_by_the_next_rekey(world, keys):
    state, cloud, *_ = world
    cloud.commit = "down"
    with pytest.raises(RekeyError, match="may or may not"):
        run(state, cloud)
    assert (state.dir / NEXT_KEYS).exists() and state.load_keys().key_id == keys.key_id
    switched_to = cloud.key_id
    cloud.reachable, cloud.commit = True, "ok"
    result = run(state, cloud)  # first finishes the interrupted switch, then renews once more
    assert result.old_key_id == switched_to and state.load_keys().key_id == result.key_id
