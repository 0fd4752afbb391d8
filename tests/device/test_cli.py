"""CLI pieces that need no cloud: state files, clear errors (the enrollment rules: test_enrollment.py)."""

import os
import stat

import pytest

from blindgate.device.cli import main
from blindgate.device.site_state import SiteState


def test_commands_without_init_fail_clearly(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BLINDGATE_STATE_DIR", str(tmp_path / "none"))
    assert main(["list"]) == 1
    assert "blindgate-device init" in capsys.readouterr().err
    assert main(["status"]) == 1


def test_init_creates_private_key_files_even_when_cloud_is_down(tmp_path, monkeypatch, capsys):
    state = tmp_path / "state"
    monkeypatch.setenv("BLINDGATE_STATE_DIR", str(state))
    monkeypatch.setenv("BLINDGATE_CLOUD_URL", "http://127.0.0.1:9")
    assert main(["init"]) == 1
    assert "unreachable" in capsys.readouterr().err
    for name in ("site.keys", "label.key", "template.key", "door.key"):
        assert stat.S_IMODE(os.stat(state / name).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert not (state / "cloud.json").exists()


def test_bad_config_is_exit_2(tmp_path, capsys):
    cfg = tmp_path / "d.toml"
    cfg.write_text("[decision]\nthreshhold = 0.5\n")
    assert main(["--config", str(cfg), "status"]) == 2
    assert "threshhold" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["before", "after"])
def test_config_is_accepted_before_or_after_the_sub_command(tmp_path, capsys, monkeypatch, where):
    # The shipped systemd unit runs `blindgate-device run --config FILE`.
    config = tmp_path / "device.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    argv = ["--config", str(config), "list"] if where == "before" else ["list", "--config", str(config)]
    assert main(argv) == 1  # read the config, then: not provisioned yet
    assert str(tmp_path / "state") in capsys.readouterr().err
    missing = ["run", "--config", str(tmp_path / "missing.toml")]
    assert main(missing) == 2
    assert "missing.toml not found" in capsys.readouterr().err


def test_remove_denies_on_the_device_before_the_cloud_answers(tmp_path, monkeypatch, capsys):
    state = tmp_path / "state"
    monkeypatch.setenv("BLINDGATE_STATE_DIR", str(state))
    monkeypatch.setenv("BLINDGATE_CLOUD_URL", "http://127.0.0.1:9")  # nothing listens: the cloud is down
    main(["init"])
    (state / "cloud.json").write_text(
        '{"site": "home", "key_id": "k", "token": "t", "cloud_public_key": "' + "ab" * 32 + '", "cloud_url": ""}'
    )
    subject = "5e" * 16
    assert main(["remove", subject]) == 1
    assert "unreachable" in capsys.readouterr().err
    assert SiteState(state, "home").is_denied(subject)
    assert not SiteState(state, "home").is_denied("6f" * 16)
    assert stat.S_IMODE(os.stat(state / "site_state.json").st_mode) == 0o600
