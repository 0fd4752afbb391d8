"""The admin socket: who may use it, what travels over it, and a real door agent run through it.

Attack tests: a caller without access is refused by the socket's mode (connect fails, with one
line saying what to do) and, were the mode loosened, by the server's own uid check; a stale socket
is replaced, a live one or a non-socket is not; oversized and malformed messages are refused.
Positive controls: root, a member of `[admin] group`, and the honest CLI path (`--via-agent`).
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path

import pytest

from blindgate.device.admin_cli import AGENT_COMMANDS, answer, build_request, wants_agent
from blindgate.device.admin_socket import (
    AdminError,
    AdminServer,
    Peer,
    call,
    client_path,
    may_administer,
    recv_message,
    server_path,
)
from blindgate.device.cli import main as device_main
from blindgate.shared.config import DeviceConfig
from blindgate.shared.launch import write_device_config

NOBODY = 65534


def echo(request, peer):
    return {"code": 0, "stdout": json.dumps({"argv": request.get("argv"), "uid": peer.uid}), "stderr": ""}


@pytest.fixture
def open_dir():
    """A folder others may enter (pytest's tmp_path is 0700: that alone would stop every other user)."""
    folder = Path(tempfile.mkdtemp(prefix="blindgate-admin-test-"))
    folder.chmod(0o755)
    yield folder
    for child in folder.iterdir():
        child.unlink()
    folder.rmdir()


@pytest.fixture
def server(open_dir):
    running = AdminServer(open_dir / "admin.sock", echo)
    running.start()
    yield running
    running.stop()


def as_user(uid: int, gid: int, action) -> str:
    """Run `action()` in a child process with only that uid/gid; its result (or error) as text."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            try:
                text = str(action())
            except Exception as exc:
                text = f"{type(exc).__name__}: {exc}"
            os.write(write, text.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        out = pipe.read().decode()
    os.waitpid(pid, 0)
    return out


# -- who may connect --------------------------------------------------------------------------


def test_socket_is_0660_and_root_gets_answers(server):
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o660
    reply = call(server.path, {"argv": ["list"]})
    assert reply["code"] == 0 and json.loads(reply["stdout"]) == {"argv": ["list"], "uid": os.geteuid()}


def test_caller_without_access_is_refused_with_one_clear_line(server):
    result = as_user(NOBODY, NOBODY, lambda: call(server.path, {"argv": ["list"]}))
    assert result.startswith("AdminError: no permission to use the door agent's admin socket")
    assert "[admin] group" in result and "Traceback" not in result


def test_loosened_socket_still_refuses_strangers_by_uid(server):
    os.chmod(server.path, 0o666)  # someone loosened the mode: the server's own check still holds
    result = as_user(NOBODY, NOBODY, lambda: call(server.path, {"argv": ["list"]}))
    assert "'code': 1" in result and f"permission denied: uid {NOBODY}" in result


def test_member_of_the_admin_group_is_let_in(open_dir):
    group = grp.getgrgid(NOBODY).gr_name if _has_gid(NOBODY) else pytest.skip("no group with gid 65534")
    running = AdminServer(open_dir / "admin.sock", echo, group=group)
    running.start()
    try:
        assert os.stat(running.path).st_gid == NOBODY  # handed to the admin group, 0660
        result = as_user(NOBODY, NOBODY, lambda: call(running.path, {"argv": ["status"]}))
        assert "'code': 0" in result and f'"uid": {NOBODY}' in result  # the group member's own uid
    finally:
        running.stop()


def _has_gid(gid: int) -> bool:
    try:
        grp.getgrgid(gid)
        return True
    except KeyError:
        return False


def test_may_administer_rules():
    assert may_administer(Peer(1, 0, 0), own_uid=999, admin_gid=None)  # root
    assert may_administer(Peer(1, 999, 999), own_uid=999, admin_gid=None)  # the service itself
    assert not may_administer(Peer(1, 1234, 1234), own_uid=999, admin_gid=None)
    assert may_administer(Peer(1, 1234, 4321), own_uid=999, admin_gid=4321)  # primary group
    assert not may_administer(Peer(1, 1234, 1234), own_uid=999, admin_gid=4321)


def test_unknown_group_is_an_error_naming_it(open_dir):
    with pytest.raises(AdminError, match="group 'no-such-group-xyz' does not exist"):
        AdminServer(open_dir / "admin.sock", echo, group="no-such-group-xyz")


# -- the socket file ----------------------------------------------------------------------------


def test_stale_socket_is_replaced_live_one_and_other_files_are_not(open_dir):
    path = open_dir / "admin.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a killed agent's leftover: nobody listens
    first = AdminServer(path, echo)
    first.start()
    try:
        with pytest.raises(AdminError, match="another agent is serving it"):
            AdminServer(path, echo).start()
        assert call(path, {"argv": []})["code"] == 0  # the first one is untouched
    finally:
        first.stop()
    assert not path.exists()
    path.write_text("not a socket")
    with pytest.raises(AdminError, match="not a socket"):
        AdminServer(path, echo).start()
    assert path.read_text() == "not a socket"


def test_no_agent_is_one_clear_line(open_dir):
    with pytest.raises(AdminError, match="no door agent answers on .*is the service running"):
        call(open_dir / "admin.sock", {"argv": ["list"]})


def test_oversized_and_malformed_messages_are_refused(server):
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(server.path))
        conn.sendall(struct.pack(">I", 1 << 30))  # 1 GiB announced
        with pytest.raises(AdminError):  # the server drops it without an answer
            recv_message(conn)
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(server.path))
        conn.sendall(struct.pack(">I", 5) + b"[1,2]")
        with pytest.raises(AdminError):
            recv_message(conn)
    assert call(server.path, {"argv": ["list"]})["code"] == 0  # and keeps serving


def test_a_failing_handler_answers_and_keeps_serving(open_dir):
    def broken(request, peer):
        raise RuntimeError("boom")

    running = AdminServer(open_dir / "admin.sock", broken)
    running.start()
    try:
        for _ in range(2):
            reply = call(running.path, {"argv": []})
            assert reply["code"] == 1 and "internal error in the agent: RuntimeError: boom" in reply["stderr"]
    finally:
        running.stop()


def test_socket_places():
    config = DeviceConfig()
    assert server_path(config, env={}) is None  # outside systemd and unconfigured: no socket
    assert server_path(config, env={"RUNTIME_DIRECTORY": "/run/x"}) == Path("/run/x/admin.sock")
    assert client_path(config) == Path("/run/blindgate-device/admin.sock")  # the shipped unit's runtime directory
    config.admin.socket = "/srv/door.sock"
    assert server_path(config, env={"RUNTIME_DIRECTORY": "/run/x"}) == client_path(config) == Path("/srv/door.sock")


# -- the commands it carries (device/admin_cli.py) ----------------------------------------------


def test_same_command_function_runs_in_the_agent(tmp_path):
    config = DeviceConfig(state_dir=str(tmp_path / "state"), log_format="text")
    reply = answer(config, {"argv": ["status"]}, Peer(1, 0, 0))
    assert reply["code"] == 1  # not registered: what `status` says locally
    assert json.loads(reply["stdout"])["registered"] is False


def test_commands_that_cannot_run_in_the_agent_are_refused(tmp_path):
    config = DeviceConfig(state_dir=str(tmp_path / "state"))
    for argv in (["run"], ["init"], ["rekey"], ["enroll", "Ada", "--camera"]):
        reply = answer(config, {"argv": argv}, Peer(1, 0, 0))
        assert reply["code"] != 0 and "agent" in reply["stderr"], argv
    assert not (tmp_path / "state").exists()  # nothing was started or created
    reply = answer(config, {"argv": ["list", "--bogus"]}, Peer(1, 0, 0))
    assert reply["code"] == 2 and "unrecognized arguments" in reply["stderr"]
    reply = answer(config, {"argv": "list"}, Peer(1, 0, 0))
    assert reply["code"] == 1 and "argv must be a list" in reply["stderr"]


def test_enroll_request_carries_photo_bytes_and_the_pin(tmp_path, monkeypatch):
    photo = tmp_path / "ada.jpg"
    photo.write_bytes(b"\xff\xd8 not really a jpeg")
    monkeypatch.setattr(sys, "stdin", _FakeStdin("4711\n"))
    args = Namespace(command="enroll", images=[str(photo)], camera=False, pin="-")
    request = build_request(args, ["enroll", "Ada", str(photo), "--pin", "-"])
    assert request["files"][0]["name"] == "ada.jpg" and request["stdin"] == "4711\n"
    with pytest.raises(AdminError, match="holds the camera"):
        build_request(Namespace(command="enroll", images=[], camera=True), ["enroll", "Ada", "--camera"])
    with pytest.raises(AdminError, match="does not run through the agent"):
        build_request(Namespace(command="init"), ["init"])


class _FakeStdin:
    def __init__(self, text: str) -> None:
        self.text = text

    def isatty(self) -> bool:
        return False

    def readline(self) -> str:
        return self.text


def test_wants_agent_when_the_state_directory_is_not_the_callers(tmp_path, open_dir):
    state = tmp_path / "state"
    state.mkdir()
    config = DeviceConfig(state_dir=str(state))
    config.admin.socket = str(open_dir / "admin.sock")
    args = Namespace(command="list")
    assert not wants_agent(config, args)  # no agent listening
    running = AdminServer(config.admin.socket, echo)
    running.start()
    try:
        assert not wants_agent(config, args)  # the caller's own directory: run it here
        assert wants_agent(config, Namespace(command="list", via_agent=True))
        os.chown(state, NOBODY, NOBODY)  # the service's (dynamic) user owns it
        assert wants_agent(config, args)
        assert not wants_agent(config, Namespace(command="run"))
    finally:
        running.stop()


# -- a real door agent, administered through its socket ----------------------------------------


def test_real_agent_enrolls_and_removes_through_the_socket(tmp_path, cloud, mqtt_broker, faces_dir):
    """`blindgate-device run` in a process; `--via-agent` enroll, list, remove; the running door follows."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(120):  # Biden in front of the door for a minute (2 frames/s)
        (frames / f"{i:03d}.jpg").symlink_to(faces_dir / "people" / "biden" / "biden.jpg")
    config = write_device_config(
        tmp_path / "door.toml",
        site="admin",
        cloud_url=cloud.url,
        broker=mqtt_broker,
        state_dir=tmp_path / "state",
        camera=str(frames),
        fps=2.0,
    )
    sock = tmp_path / "admin.sock"
    with open(config, "a") as fh:
        fh.write(f'[admin]\nsocket = "{sock}"\n')
    assert device_main(["--config", str(config), *cloud.init_args()]) == 0
    audit = tmp_path / "state" / "audit.jsonl"
    log = tmp_path / "agent.log"
    with open(log, "wb") as out:
        agent = subprocess.Popen(
            [sys.executable, "-m", "blindgate.device.cli", "--config", str(config), "run"], stdout=out, stderr=out
        )
    try:
        _wait(lambda: sock.exists(), 60, log, agent)
        cli = [sys.executable, "-m", "blindgate.device.cli", "--config", str(config), "--via-agent"]
        enrolled = _cli(cli + ["enroll", "Joe Biden", str(faces_dir / "people" / "biden" / "biden2.jpg")])
        subject = json.loads(enrolled.stdout)["subject"]
        listed = _cli(cli + ["list", "--json"])
        assert [r["name"] for r in json.loads(listed.stdout)["subjects"]] == ["Joe Biden"]
        # the agent follows the new gallery without a restart: the person now opens the door
        _wait(lambda: "recognized" in _events(audit), 60, log, agent)
        removed = _cli(cli + ["remove", subject])
        assert f"denied {subject}" in removed.stdout
        site_state = tmp_path / "state" / "site_state.json"
        assert subject in site_state.read_text()  # written by the agent, in its state directory
        assert "admin command 'remove' from uid" in log.read_text()  # run by the agent, not here
        seen = len(_events(audit))
        time.sleep(5)  # ten more frames of the removed person
        assert "recognized" not in _events(audit)[seen:]
    finally:
        agent.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            agent.wait(20)
        if agent.poll() is None:
            agent.kill()
    assert not sock.exists()


def _cli(argv: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def _events(audit: Path) -> list[str]:
    if not audit.exists():
        return []
    lines = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]
    return [e.get("event") for e in lines if e.get("kind") == "event"]


def _wait(condition, timeout: float, log: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"agent exited {process.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def test_admin_commands_listed_exist():
    from blindgate.device.cli import COMMANDS, build_parser

    build_parser()  # registers the sub-command modules' commands
    assert AGENT_COMMANDS <= set(COMMANDS)
    assert pwd.getpwuid(os.geteuid())  # sanity: the uid check's user database is readable
