"""os_errors.py: an OS refusal is one line naming the path and the fix, on both CLIs (exit 1, no traceback).

The unit tests raise the errors by hand. The end-to-end tests deny access for real: as root they
run the CLIs as `nobody` against a root-owned 0700 state directory (like a DynamicUser= service's),
otherwise they take the permissions away from the directory itself.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from blindgate.cloud import cli as cloud_cli
from blindgate.device import cli as device_cli
from blindgate.device.state import DeviceState
from blindgate.shared.os_errors import SERVICE_USER_HINT, blocker, explain

NOBODY = 65534


def denied(path: Path) -> PermissionError:
    return PermissionError(errno.EACCES, "Permission denied", str(path))


def test_permission_denied_names_the_path_the_owner_and_the_service_user(tmp_path):
    key = tmp_path / "state" / "site.keys"
    key.parent.mkdir()
    key.write_bytes(b"k")
    line = explain(denied(key), "blindgate-device")
    assert f"cannot use {key}: permission denied" in line
    assert f"{key} is owned by" in line and f"uid {os.stat(key).st_uid}" in line and "mode 0" in line
    assert "StateDirectory=blindgate-device" in line and "blindgate-device --config" in line
    assert "StateDirectory=blindgate-cloud" in explain(denied(key), "blindgate-cloud")
    assert "\n" not in line


def test_an_unreadable_config_file_is_fixed_by_its_mode_not_another_user(tmp_path):
    config = tmp_path / "device.toml"
    config.write_text("")
    line = explain(denied(config), "blindgate-device", config=str(config))
    assert f"sudo chmod 0644 {config}" in line and "systemd-run" not in line
    other = explain(denied(tmp_path / "site.keys"), "blindgate-device", config=str(config))  # not the config file
    assert "systemd-run" in other


def test_other_os_errors_say_what_to_do(tmp_path):
    rofs = explain(OSError(errno.EROFS, "Read-only file system", "/var/lib/x"), "blindgate-device")
    assert "/var/lib/x" in rofs and "StateDirectory=" in rofs
    assert "free some space" in explain(OSError(errno.ENOSPC, "No space left on device", "/x"), "blindgate-cloud")
    assert "check the path" in explain(FileNotFoundError(errno.ENOENT, "No such file or directory", "p.jpg"), "x")
    assert explain(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "x") == "connection refused"
    assert explain(FileNotFoundError("install face-recognition-models"), "x") == "install face-recognition-models"


def test_blocker_is_the_first_directory_that_cannot_be_entered(tmp_path, monkeypatch):
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    assert blocker(inner / "missing.json") == inner  # the deepest part that exists
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path / "a")
    assert blocker(inner / "missing.json") == tmp_path / "a"


def test_device_cli_turns_an_os_error_into_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BLINDGATE_STATE_DIR", str(tmp_path))
    path = tmp_path / "site.keys"

    def refuse(self):
        raise denied(path)

    monkeypatch.setattr(DeviceState, "load_keys", refuse)
    assert device_cli.main(["enroll", "Ann", "x.jpg"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"blindgate-device enroll: cannot use {path}: permission denied") and len(err.splitlines()) == 1


def test_cloud_cli_turns_an_os_error_into_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    config = tmp_path / "cloud.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n')

    def refuse(state_dir):
        raise denied(state_dir / "reply-signing-key.pem")

    monkeypatch.setattr(cloud_cli, "load_or_create_signing_key", refuse)
    assert cloud_cli.main(["public-key", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("blindgate-cloud: cannot use") and SERVICE_USER_HINT["blindgate-cloud"] in err
    assert len(err.splitlines()) == 1


# -- for real: another user's 0700 state directory -----------------------------------------------


def _run(argv: list[str], env: dict[str, str], as_nobody: bool) -> subprocess.CompletedProcess[str]:
    if as_nobody:  # util-linux's setpriv: drops every capability with root's uid
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd="/", check=False)


@pytest.fixture
def locked_state() -> Iterator[tuple[Path, bool]]:
    """A 0700 state directory this test's CLIs may not enter; True when they must run as nobody to be refused."""
    top = Path(tempfile.mkdtemp(prefix="blindgate-perm-"))  # pytest's own tmp_path is root-only when run as root
    top.chmod(0o755)
    state = top / "state"
    state.mkdir(mode=0o700)
    try:
        if os.geteuid() != 0:
            state.chmod(0o000)
            yield state, False
            return
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv (util-linux): cannot act as another user")
        probe = _run([sys.executable, "-c", "import blindgate.device.cli, blindgate.cloud.cli"], dict(os.environ), True)
        if probe.returncode != 0:
            pytest.skip(f"the checkout or its venv is not readable by uid {NOBODY}: {probe.stderr.strip()[-200:]}")
        yield state, True
    finally:
        state.chmod(0o700)
        shutil.rmtree(top)


@pytest.mark.parametrize(
    ("program", "command"),
    [("blindgate.device.cli", ["list"]), ("blindgate.cloud.cli", ["public-key"])],
)
def test_another_users_state_directory_is_one_line_naming_it(locked_state, program, command):
    state, as_nobody = locked_state
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLINDGATE_")} | {"BLINDGATE_STATE_DIR": str(state)}
    argv = [sys.executable, "-m", program, *command]
    refused = _run(argv, env, as_nobody)
    assert refused.returncode == 1, refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert str(state) in refused.stderr and "permission denied" in refused.stderr
    assert "systemd-run" in refused.stderr and "mode 0" in refused.stderr
    # Positive control: the directory's owner is not refused (list: not registered yet; public-key: works).
    if as_nobody:
        owner = _run(argv, env, False)
        assert "permission denied" not in owner.stderr and "Traceback" not in owner.stderr
