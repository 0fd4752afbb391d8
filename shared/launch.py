"""Start the system's processes locally: a Mosquitto broker and the cloud service.

Used by the full-system demo (`python -m blindgate.device.demo`) and by the tests that run every real
part; both need the same thing: a broker on a free loopback port from a temporary config, and
`python -m blindgate.cloud.cli serve` configured through BLINDGATE_* variables, that can be stopped,
killed and started again on the same port and state directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from blindgate.shared.errors import BlindgateError

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


class LaunchError(BlindgateError, RuntimeError):
    """A process did not start or did not become ready."""


class MosquittoMissing(LaunchError):
    """No mosquitto binary in PATH nor in the usual sbin directories."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next((p for p in MOSQUITTO_PATHS if Path(p).exists()), None)


def _stop(process: subprocess.Popen | None, timeout: float) -> int | None:
    if process is None:
        return None
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@dataclass
class Broker:
    """A running Mosquitto; `restart()` stops and starts it on the same port (persistence off)."""

    host: str
    port: int
    workdir: Path
    process: subprocess.Popen | None = None

    def start(self) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise MosquittoMissing("mosquitto not installed: apt-get install mosquitto")
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_packet_size 67108864\n"
            f"log_dest file {self.workdir / 'mosquitto.log'}\n"
        )
        self.process = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LaunchError(f"mosquitto exited with {self.process.returncode}; see {self.workdir}/mosquitto.log")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise LaunchError(f"mosquitto did not listen on {self.host}:{self.port} within 10 s")

    def stop(self) -> None:
        _stop(self.process, 5)
        self.process = None

    def restart(self, pause: float = 0.5) -> None:
        self.stop()
        time.sleep(pause)
        self.start()


def start_broker(workdir: Path) -> Broker:
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Broker("127.0.0.1", free_port(), workdir)
    broker.start()
    return broker


@dataclass
class CloudService:
    """`python -m blindgate.cloud.cli serve` as a subprocess on `state_dir`, logging to `log_path`.

    `start()` waits until /healthz reports the MQTT bridge connected; `start()` after `stop()`
    or `kill()` runs a new process on the same HTTP port and state directory.
    """

    state_dir: Path
    broker: Broker
    log_path: Path
    port: int = field(default_factory=free_port)
    env: dict = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> CloudService:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        environ = dict(os.environ)
        environ.update(
            BLINDGATE_STATE_DIR=str(self.state_dir),
            BLINDGATE_HTTP_HOST="127.0.0.1",
            BLINDGATE_HTTP_PORT=str(self.port),
            BLINDGATE_MQTT_HOST=self.broker.host,
            BLINDGATE_MQTT_PORT=str(self.broker.port),
            BLINDGATE_WORKERS="1",
            BLINDGATE_LOG_FORMAT="text",
        )
        environ.update({k: str(v) for k, v in self.env.items()})
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "blindgate.cloud.cli", "serve"], cwd=self.state_dir, env=environ, stdout=log, stderr=log
            )
        self.wait_ready(timeout)
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=1) as resp:
                return bool(json.load(resp).get("mqtt_connected"))
        except (OSError, ValueError):
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise LaunchError(f"cloud service exited with {code}:\n{self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.2)
        raise LaunchError(f"cloud service not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful: in-flight probes answered), SIGKILL after `timeout`."""
        code = _stop(self.process, timeout)
        self.process = None
        return code

    def kill(self) -> None:
        """SIGKILL: the service dies mid-whatever, as on a power cut."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None


def write_device_config(
    path: Path,
    *,
    site: str,
    cloud_url: str,
    broker: Broker,
    state_dir: Path,
    camera: str,
    fps: float = 5.0,
    realtime: bool = False,
    device_id: str = "door1",
    decision: dict | None = None,
    log_level: str = "INFO",
) -> Path:
    """A door device's TOML for a local run: mock GPIO pin, text logs, the given camera."""
    rules = {"frames_required": 2, "open_seconds": 1.0, "cooldown_s": 1.0, "reply_timeout": 5.0, **(decision or {})}
    path.write_text(
        f"site = {json.dumps(site)}\ndevice_id = {json.dumps(device_id)}\ncloud_url = {json.dumps(cloud_url)}\n"
        f'state_dir = {json.dumps(str(state_dir))}\nlog_format = "text"\nlog_level = {json.dumps(log_level)}\n'
        f"[mqtt]\nhost = {json.dumps(broker.host)}\nport = {broker.port}\n"
        f"[camera]\nsource = {json.dumps(camera)}\nwidth = 640\nheight = 0\nfps = {float(fps)}\n"
        f"realtime = {'true' if realtime else 'false'}\n"
        "[decision]\n"
        + "".join(f"{k} = {float(v) if isinstance(v, float) else v}\n" for k, v in rules.items())
        + '[lock]\npin_factory = "mock"\n'
    )
    return path


__all__ = [
    "Broker",
    "CloudService",
    "LaunchError",
    "MosquittoMissing",
    "free_port",
    "mosquitto_binary",
    "start_broker",
    "write_device_config",
]
