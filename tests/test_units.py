"""The shipped systemd units start: each unit's own ExecStart, Environment and directories, run here.

PID 1 here is not systemd, so a unit is run the way systemd would run it: its ExecStart command line
(the installed paths mapped to this venv, /etc/blindgate and /var/lib, /run to temporary folders),
its Environment= and EnvironmentFile=, its WorkingDirectory=, STATE_DIRECTORY/RUNTIME_DIRECTORY and,
for Type=notify, a NOTIFY_SOCKET to receive READY=1 on. The cloud (Type=exec) is ready when /healthz
says its MQTT bridge is connected. Both then stop cleanly on SIGTERM within TimeoutStopSec=.

Also: the door keeps the devices and groups it needs, and `systemd-analyze security --offline=yes`
scores each unit's exposure at most 2.0 (cloud) and 2.5 (door).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blindgate.device.cli import main as device_main
from blindgate.shared.launch import CloudService, LaunchError, free_port, write_device_config
from tests.broker import start_broker

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "systemd"
INSTALLED_BIN = "/opt/blindgate/.venv/bin/"
MAX_EXPOSURE = {"blindgate-cloud.service": 2.0, "blindgate-device.service": 2.5}


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value in order (systemd keys repeat), with `\\` line continuations joined."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@dataclass
class Launch:
    """A unit's main process as systemd would start it, with paths mapped for this machine."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    kind: str
    stop_timeout: float
    start_timeout: float


def launch_of(unit: dict[str, dict[str, list[str]]], paths: dict[str, Path]) -> Launch:
    """`paths` maps unit paths (prefixes) to local ones; longest prefix first."""
    service = unit["Service"]

    def mapped(text: str) -> str:
        for prefix in sorted(paths, key=len, reverse=True):
            text = text.replace(prefix, str(paths[prefix]))
        return text

    command = service["ExecStart"][-1].lstrip("-@:+!")
    argv = shlex.split(mapped(command.replace(INSTALLED_BIN, str(Path(sys.executable).parent) + "/")))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": "/"}
    for spec in service.get("EnvironmentFile", []):
        optional, file = spec.startswith("-"), Path(mapped(spec.lstrip("-")))
        if optional and not file.exists():
            continue
        for line in file.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                key, _, value = line.partition("=")
                env[key.strip()] = value.strip().strip('"')
    for spec in service.get("Environment", []):
        for pair in shlex.split(spec):
            key, _, value = pair.partition("=")
            env[key] = mapped(value)
    for key, base in (("StateDirectory", "/var/lib/"), ("RuntimeDirectory", "/run/")):
        names = [mapped(base + name) for spec in service.get(key, []) for name in spec.split()]
        for name in names:
            Path(name).mkdir(parents=True, exist_ok=True)
        if names:
            env[key.upper().replace("DIRECTORY", "_DIRECTORY")] = ":".join(names)
    cwd = mapped(service.get("WorkingDirectory", ["/"])[-1].lstrip("-"))
    seconds = {k: float(service[k][-1].rstrip("s")) for k in ("TimeoutStopSec", "TimeoutStartSec") if k in service}
    if "WatchdogSec" in service:
        env["WATCHDOG_USEC"] = str(int(float(service["WatchdogSec"][-1].rstrip("s")) * 1e6))
    kind = service.get("Type", ["simple"])[-1]
    return Launch(argv, env, cwd, kind, seconds.get("TimeoutStopSec", 90.0), seconds.get("TimeoutStartSec", 90.0))


def stop_cleanly(process: subprocess.Popen, timeout: float) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"no exit within TimeoutStopSec={timeout:.0f} s of SIGTERM")


def tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    running = start_broker(tmp_path_factory.mktemp("mosquitto"))
    yield running
    running.stop()


# -- the units as shipped ----------------------------------------------------------------------


def test_parse_unit_reads_repeated_keys_and_continuations(tmp_path):
    unit = tmp_path / "x.service"
    unit.write_text("[Service]\n# c\nDeviceAllow=a rw\nDeviceAllow=b rw\nExecStart=/bin/x \\\n  --flag\n")
    parsed = parse_unit(unit)["Service"]
    assert parsed["DeviceAllow"] == ["a rw", "b rw"]
    assert shlex.split(parsed["ExecStart"][0]) == ["/bin/x", "--flag"]


def test_device_unit_keeps_its_devices_and_groups():
    service = parse_unit(UNITS / "blindgate-device.service")["Service"]
    allowed = {rule.split()[0] for rule in service["DeviceAllow"]}
    assert {"char-gpiochip", "char-video4linux", "char-media", "char-dma_heap"} <= allowed
    assert service["DevicePolicy"] == ["closed"]
    assert "PrivateDevices" not in service  # it would hide /dev/gpiochip*, /dev/video*, /dev/media*, /dev/dma_heap
    assert {"gpio", "video"} <= set(" ".join(service["SupplementaryGroups"]).split())
    # gpiozero's lgpio backend writes a pipe file in the working directory: the state directory, not /
    assert service["WorkingDirectory"] == ["/var/lib/" + service["StateDirectory"][0]]
    assert service["RuntimeDirectory"] == ["blindgate-device"]  # the admin socket's place (device/admin_socket.py)


def test_cloud_unit_starts_and_stops_on_sigterm(broker, tmp_path):
    unit = parse_unit(UNITS / "blindgate-cloud.service")
    port = free_port()
    mqtt = broker.mqtt_config("cloud")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "cloud.toml").write_text(
        f'http_host = "127.0.0.1"\nhttp_port = {port}\nworkers = 1\nlog_format = "text"\n'
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\nusername = "{mqtt.username}"\n'
    )
    (tmp_path / "etc" / "cloud.env").write_text(f"BLINDGATE_MQTT_PASSWORD={mqtt.password}\n")  # secrets: EnvironmentFile=
    paths = {"/etc/blindgate": tmp_path / "etc", "/var/lib": tmp_path / "var-lib", "/run": tmp_path / "run"}
    launch = launch_of(unit, paths)
    assert launch.kind == "exec"
    log = tmp_path / "cloud.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(launch.argv, env=launch.env, cwd=launch.cwd, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"cloud exited with {process.returncode}:\n{tail(log)}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                    if json.load(resp).get("mqtt_connected"):
                        break
            except (OSError, ValueError):
                pass
            assert time.monotonic() < deadline, f"cloud not ready in 60 s:\n{tail(log)}"
            time.sleep(0.2)
        assert (tmp_path / "var-lib" / "blindgate-cloud" / "provision-token").exists()  # BLINDGATE_STATE_DIR in force
        assert stop_cleanly(process, launch.stop_timeout) == 0, tail(log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _gray_frames(folder: Path, count: int) -> Path:
    folder.mkdir()
    for i in range(count):
        Image.fromarray(np.full((120, 160, 3), 90 + i, dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def test_device_unit_notifies_ready_and_stops_on_sigterm(broker, tmp_path):
    try:
        cloud = CloudService(tmp_path / "cloud-state", broker, tmp_path / "cloud.log").start()
    except LaunchError as exc:
        pytest.fail(str(exc))
    try:
        _run_device_unit(broker, cloud, tmp_path)
    finally:
        cloud.stop(20)


def _run_device_unit(broker, cloud: CloudService, tmp_path: Path) -> None:
    unit = parse_unit(UNITS / "blindgate-device.service")
    paths = {"/etc/blindgate": tmp_path / "etc", "/var/lib": tmp_path / "var-lib", "/run": tmp_path / "run"}
    state = tmp_path / "var-lib" / "blindgate-device"
    (tmp_path / "etc").mkdir()
    config = write_device_config(
        tmp_path / "etc" / "device.toml",
        site="unit",
        cloud_url=cloud.url,
        broker=broker,
        state_dir=state,
        camera=str(_gray_frames(tmp_path / "frames", 60)),
        fps=2.0,
    )
    assert device_main(["--config", str(config), *cloud.init_args()]) == 0  # provisioned as `init` would
    launch = launch_of(unit, paths)
    assert launch.kind == "notify"
    assert Path(launch.cwd) == state  # WorkingDirectory= is the state directory
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(1.0)
    log = tmp_path / "device.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            launch.argv, env=launch.env | {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}, cwd=launch.cwd, stdout=out, stderr=out
        )
    try:
        messages: list[str] = []
        deadline = time.monotonic() + min(launch.start_timeout, 90.0)
        while not any(m.startswith("READY=1") for m in messages):
            assert process.poll() is None, f"door agent exited with {process.returncode}:\n{tail(log)}"
            assert time.monotonic() < deadline, f"no READY=1 within TimeoutStartSec ({messages}):\n{tail(log)}"
            try:
                messages.append(notify.recv(4096).decode())
            except TimeoutError:
                pass
        admin_socket = Path(launch.env["RUNTIME_DIRECTORY"]) / "admin.sock"  # RuntimeDirectory= gives the agent its socket
        assert admin_socket.exists()
        assert stop_cleanly(process, launch.stop_timeout) == 0, tail(log)
        notify.settimeout(0.5)
        try:
            while True:
                messages.append(notify.recv(4096).decode())
        except TimeoutError:
            pass
        assert "STOPPING=1" in messages
        assert not admin_socket.exists()  # removed on the way out
    finally:
        notify.close()
        if process.poll() is None:
            process.kill()
            process.wait()


# -- hardening ---------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", sorted(MAX_EXPOSURE))
def test_unit_exposure_score(unit, tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not available (apt-get install systemd)")
    name = unit.removesuffix(".service")
    here = Path(sys.executable).parent / name  # ExecStart must exist for the offline analysis
    text = (UNITS / unit).read_text().replace(INSTALLED_BIN + name, str(here if here.exists() else sys.executable))
    (tmp_path / unit).write_text(text)
    result = subprocess.run(
        [tool, "security", "--offline=yes", "--no-pager", str(tmp_path / unit)], capture_output=True, text=True, timeout=120
    )
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout + result.stderr)
    if found is None:
        pytest.skip(f"systemd-analyze cannot score units offline here (systemd 250+): {result.stderr.strip()[:200]}")
    score = float(found.group(1))
    assert score <= MAX_EXPOSURE[unit], f"{unit}: exposure {score} > {MAX_EXPOSURE[unit]}\n{result.stdout}"
