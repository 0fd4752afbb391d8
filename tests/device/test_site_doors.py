"""Several doors per site (device/site_doors.py, site_cli.py) against the REAL cloud and broker.

door1 registers the site; `export-site` adds door2 with its own token and request key; door2
joins with `init --join` and the passphrase. Both open for an enrolled person, an enrollment
through one is seen by the other, and `remove-door door2` from door1 revokes door2 only: its HTTP
calls get 401 and its probes the cloud's not-authentic error, while door1 keeps opening.
A wrong passphrase fails clearly and leaves nothing behind. Skips when the face data or mosquitto
is missing.
"""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest

from blindgate.device import site_export
from blindgate.device.cli import main as device_main
from blindgate.device.cloud_client import CloudError
from blindgate.device.decision import VerdictKind
from blindgate.device.discovery import discovery_configs
from blindgate.device.link import DeviceTopics
from blindgate.device.site_doors import SiteDoorError, join_site
from blindgate.device.site_export import SiteExport, open_export, seal_export
from blindgate.device.state import DeviceState
from blindgate.shared.config import DeviceConfig, load_config
from blindgate.shared.launch import write_device_config
from blindgate.shared.protocol import new_signing_key, public_key_to_text, signing_key_to_pem

from .conftest import provision
from .test_rekey_integration import run_door as run_agent

pytestmark = pytest.mark.timeout(400)

PASSPHRASE = "a long passphrase for door two"
SITE = "multi"


def with_stdin(monkeypatch, text: str) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(text))


def run_door(config_path: Path) -> tuple[dict, list[tuple[VerdictKind, str]], list[int]]:
    """Run the agent over its camera; returns its counters, every verdict (kind, reason) and the sampled pin."""
    agent, verdicts, samples = run_agent(config_path)
    return dict(agent.counters), verdicts, samples


def names(config: Path, capsys) -> list[str]:
    capsys.readouterr()
    assert device_main(["--config", str(config), "list", "--json"]) == 0
    return sorted(s["name"] for s in json.loads(capsys.readouterr().out)["subjects"])


def test_two_doors_share_a_site_and_one_is_revoked_alone(tmp_path, cloud, mqtt_broker, faces_dir, capsys, monkeypatch):
    video = str(faces_dir / "video" / "short_hamilton_clip.mp4")
    people = {"Lin-Manuel Miranda": ["lin_manuel_miranda/lin1.png"]}
    config1 = provision(tmp_path, cloud, mqtt_broker, faces_dir, SITE, people, video)
    config2 = write_device_config(
        tmp_path / "door2.toml",
        site=SITE,
        cloud_url=cloud.url,
        broker=mqtt_broker,
        state_dir=tmp_path / "door2",
        camera=video,
        device_id="door2",
    )
    export = tmp_path / "door2.site"

    # door1 adds door2: the file is private, and its secrets are not readable without the passphrase
    with_stdin(monkeypatch, PASSPHRASE + "\n")
    assert device_main(["--config", str(config1), "export-site", "--door", "door2", "--out", str(export)]) == 0
    assert stat.S_IMODE(export.stat().st_mode) == 0o600
    assert (tmp_path / SITE / "label.key").read_bytes() not in export.read_bytes()

    # a wrong passphrase: a clear refusal, and no state directory at all
    capsys.readouterr()
    with_stdin(monkeypatch, "not the passphrase at all\n")
    assert device_main(["--config", str(config2), "init", "--join", str(export)]) == 1
    assert "wrong passphrase" in capsys.readouterr().err
    assert not (tmp_path / "door2").exists()

    # the right one: door2 joins, and signs with a key door1 never saw
    with_stdin(monkeypatch, PASSPHRASE + "\n")
    assert device_main(["--config", str(config2), "init", "--join", str(export)]) == 0
    door2 = DeviceState(tmp_path / "door2")
    door1 = DeviceState(tmp_path / SITE)
    exported = open_export(export.read_bytes(), PASSPHRASE)
    assert door2.door_key_path.read_bytes() != exported.door_key_pem
    assert door2.load_keys().key_id == door1.load_keys().key_id
    assert door2.load_cloud().token != door1.load_cloud().token
    assert sorted(p.name for p in door2.dir.iterdir()) == sorted(
        ["cloud.json", "door.key", "label.key", "site.keys", "template.key"]
    )  # no door.key.next left, and nothing door-specific of door1 (audit log, claim sources)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in door2.dir.iterdir())

    # an export for a door that exists is refused, and leaves no file
    with_stdin(monkeypatch, PASSPHRASE + "\n")
    assert device_main(["--config", str(config1), "export-site", "--door", "door2", "--out", str(tmp_path / "again")]) == 1
    assert not (tmp_path / "again").exists()

    # one gallery: an enrollment through door2 is seen by door1
    biden = [str(faces_dir / "people" / "biden" / f) for f in ("biden.jpg", "biden2.jpg")]
    assert device_main(["--config", str(config2), "enroll", "Joe Biden", *biden]) == 0
    assert names(config1, capsys) == names(config2, capsys) == ["Joe Biden", "Lin-Manuel Miranda"]
    capsys.readouterr()
    assert device_main(["--config", str(config1), "doors", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["doors"]
    assert [(d["door"], d["own_token"], d["you"]) for d in listed] == [("door1", True, True), ("door2", True, False)]

    # two devices in Home Assistant: distinct identifiers and unique ids
    topics = [DeviceTopics.of(load_config(DeviceConfig, c, env={})) for c in (config1, config2)]
    configs = [discovery_configs(t) for t in topics]
    ids = [{json.dumps(c["device"]["identifiers"]) for c in cs.values()} for cs in configs]
    assert len(ids[0]) == len(ids[1]) == 1 and ids[0] != ids[1]
    assert not {c["unique_id"] for c in configs[0].values()} & {c["unique_id"] for c in configs[1].values()}

    # both doors open for the enrolled person
    for config in (config1, config2):
        counters, verdicts, samples = run_door(config)
        assert 1 in samples, f"{config.name} never opened; counters {counters}, verdicts {verdicts[:5]}"
        assert samples[-1] == 0 and counters.get("cloud_integrity", 0) == 0

    # door1 removes door2: door2's token and key stop working at once
    assert device_main(["--config", str(config1), "remove-door", "door2"]) == 0
    capsys.readouterr()
    assert device_main(["--config", str(config2), "list"]) == 1
    assert "401" in capsys.readouterr().err
    counters, verdicts, samples = run_door(config2)
    assert verdicts and all(s == 0 for s in samples) and counters.get("verdict_match", 0) == 0
    assert all(kind is VerdictKind.DOUBT and "not signed by a door registered" in reason for kind, reason in verdicts), verdicts[
        :3
    ]

    # positive control: door1 still lists and opens
    assert names(config1, capsys) == ["Joe Biden", "Lin-Manuel Miranda"]
    counters, verdicts, samples = run_door(config1)
    assert 1 in samples, f"door1 stopped opening after door2 was removed; counters {counters}, verdicts {verdicts[:5]}"

    # a site keeps at least one door
    capsys.readouterr()
    assert device_main(["--config", str(config1), "remove-door", "door1"]) == 1
    assert "only door" in capsys.readouterr().err
    os.unlink(export)


# -- joins refused before or after writing: nothing is left behind (no cloud needed) -------------------


def local_config(tmp_path: Path, device_id: str = "door2", site: str = SITE) -> DeviceConfig:
    return DeviceConfig(site=site, device_id=device_id, cloud_url="http://127.0.0.1:1", state_dir=str(tmp_path / "door2"))


def sealed_export(monkeypatch) -> bytes:
    monkeypatch.setattr(site_export, "KDF", {"name": "scrypt", "n": 2**10, "r": 8, "p": 1})
    cloud = {"key_id": "k" * 32, "cloud_public_key": public_key_to_text(new_signing_key().public_key()), "next_cloud_keys": []}
    files = {"site.keys": b"keys", "label.key": b"L" * 32, "template.key": b"T" * 32, "site_state.json": b"{}"}
    return seal_export(SiteExport(SITE, "door2", "t" * 64, signing_key_to_pem(new_signing_key()), cloud, files), PASSPHRASE)


@pytest.mark.parametrize(("device_id", "site"), [("door3", SITE), ("door2", "other")])
def test_a_file_for_another_door_or_site_is_refused_before_writing(tmp_path, monkeypatch, device_id, site):
    with pytest.raises(SiteDoorError, match="this file adds door 'door2' to site 'multi'.*nothing was written"):
        join_site(local_config(tmp_path, device_id, site), sealed_export(monkeypatch), PASSPHRASE)
    assert not (tmp_path / "door2").exists()


def test_a_join_into_a_used_state_directory_is_refused(tmp_path, monkeypatch):
    (tmp_path / "door2").mkdir()
    (tmp_path / "door2" / "site.keys").write_bytes(b"another site's keys")
    with pytest.raises(SiteDoorError, match="already holds site.keys"):
        join_site(local_config(tmp_path), sealed_export(monkeypatch), PASSPHRASE)
    assert (tmp_path / "door2" / "site.keys").read_bytes() == b"another site's keys"  # untouched


def test_a_join_the_cloud_refuses_removes_every_file_it_wrote(tmp_path, monkeypatch):
    with pytest.raises(CloudError, match="unreachable"):
        join_site(local_config(tmp_path), sealed_export(monkeypatch), PASSPHRASE)
    assert not (tmp_path / "door2").exists()
    (tmp_path / "door2").mkdir()  # an existing (e.g. systemd's) state directory stays, empty
    with pytest.raises(CloudError):
        join_site(local_config(tmp_path), sealed_export(monkeypatch), PASSPHRASE)
    assert list((tmp_path / "door2").iterdir()) == []


def test_a_pinned_cloud_key_must_be_the_file_s(tmp_path, monkeypatch):
    other = public_key_to_text(new_signing_key().public_key())
    with pytest.raises(ValueError, match="not the pinned --cloud-key"):
        join_site(local_config(tmp_path), sealed_export(monkeypatch), PASSPHRASE, cloud_key=other)
    assert not (tmp_path / "door2").exists()
