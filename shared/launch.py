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

import paho.mqtt.client as mqtt

from blindgate.shared.broker_auth import new_password, write_password_file
from blindgate.shared.config import MQTTConfig
from blindgate.shared.errors import BlindgateError
from blindgate.shared.mqtt import make_client

PROVISION_TOKEN_FILE = "provision-token"  # cloud/registration.py PROVISION_TOKEN_NAME
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


BROKER_USERS = ("cloud", "door", "observer")


@dataclass(frozen=True)
class BrokerTLS:
    """PEM files for a TLS listener: the CA clients verify against, the broker's certificate and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass
class Broker:
    """A running Mosquitto; `restart()` stops and starts it on the same port (persistence off).

    No anonymous access: every client logs in as one of `users` (name -> password, generated;
    `cloud`, `door` and `observer`, which models whoever relays traffic and so has no ACL), over
    TLS when `tls` is given. `mqtt_config(user)` and `client(user)` carry the credentials.
    """

    host: str
    port: int
    workdir: Path
    process: subprocess.Popen | None = None
    users: dict[str, str] = field(default_factory=lambda: {name: new_password() for name in BROKER_USERS})
    tls: BrokerTLS | None = None

    def mqtt_config(self, user: str = "observer", **overrides: object) -> MQTTConfig:
        """How a client of this broker connects as `user` (KeyError for an unknown user)."""
        config = MQTTConfig(host=self.host, port=self.port, username=user, password=self.users[user])
        if self.tls is not None:
            config.tls, config.ca_file = True, str(self.tls.ca_file)
        for key, value in overrides.items():
            setattr(config, key, value)
        return config

    def client(self, user: str = "observer", client_id: str = "") -> mqtt.Client:
        """An unconnected MQTT v5 paho client logged in as `user`; callers connect to host, port."""
        return make_client(self.mqtt_config(user), client_id)

    def start(self) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise MosquittoMissing("mosquitto not installed: apt-get install mosquitto")
        conf = self.workdir / "mosquitto.conf"
        passwd = write_password_file(self.workdir / "passwd", self.users)
        tls = ""
        if self.tls is not None:
            tls = f"cafile {self.tls.ca_file}\ncertfile {self.tls.cert_file}\nkeyfile {self.tls.key_file}\ntls_version tlsv1.2\n"
        conf.write_text(
            f"listener {self.port} {self.host}\n" + tls + "allow_anonymous false\n"
            f"password_file {passwd}\n"
            "persistence false\n"
            "max_packet_size 67108864\n"
            f"log_dest file {self.workdir / 'mosquitto.log'}\n"
            # Started as root, mosquitto becomes user "mosquitto", who cannot read this private directory.
             + ("user root\n" if os.geteuid() == 0 else "")
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


def start_broker(workdir: Path, tls: BrokerTLS | None = None) -> Broker:
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Broker("127.0.0.1", free_port(), workdir, tls=tls)
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

    @property
    def provision_token(self) -> str:
        """What `blindgate-device init --provision-token` needs: the configured token, else the one
        the cloud created at first start in its state directory, or in its PostgreSQL store (cloud/registration.py)."""
        configured = self.env.get("BLINDGATE_PROVISION_TOKEN") or os.environ.get("BLINDGATE_PROVISION_TOKEN")
        if configured:
            return str(configured)
        store_url = str(self.env.get("BLINDGATE_STORE_URL") or "")
        if store_url.startswith(("postgresql://", "postgres://")):  # replicas: the token is in the shared store
            from blindgate.cloud.store import GalleryStore
            from blindgate.cloud.store_settings import PROVISION_TOKEN, CloudSettings

            with GalleryStore(store_url) as store:
                return (CloudSettings(store.database).get(PROVISION_TOKEN) or b"").decode().strip()
        return (self.state_dir / PROVISION_TOKEN_FILE).read_text().strip()

    def init_args(self) -> list[str]:
        """The device CLI's `init` command with this cloud's provision token."""
        return ["init", f"--provision-token={self.provision_token}"]

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
        mqtt_config = self.broker.mqtt_config("cloud")  # the broker takes no anonymous clients
        environ.update(
            BLINDGATE_MQTT_USERNAME=mqtt_config.username,
            BLINDGATE_MQTT_PASSWORD=mqtt_config.password,
            BLINDGATE_MQTT_TLS="true" if mqtt_config.tls else "false",
            BLINDGATE_MQTT_CA_FILE=mqtt_config.ca_file,
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


def _mqtt_auth_toml(config: MQTTConfig) -> str:
    """`[mqtt]` credential and TLS lines for a device TOML."""
    lines = f"username = {json.dumps(config.username)}\npassword = {json.dumps(config.password)}\n"
    if config.tls:
        lines += f"tls = true\nca_file = {json.dumps(config.ca_file)}\n"
    return lines


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
    loop: bool = False,
    extra: str = "",
) -> Path:
    """A door device's TOML for a local run: mock GPIO pin, text logs, the given camera.

    `loop` starts a video or folder camera over at its end; `extra` is more TOML appended (other sections).
    """
    rules = {"frames_required": 2, "open_seconds": 1.0, "cooldown_s": 1.0, "reply_timeout": 5.0, **(decision or {})}
    path.write_text(
        f"site = {json.dumps(site)}\ndevice_id = {json.dumps(device_id)}\ncloud_url = {json.dumps(cloud_url)}\n"
        f'state_dir = {json.dumps(str(state_dir))}\nlog_format = "text"\nlog_level = {json.dumps(log_level)}\n'
        f"[mqtt]\nhost = {json.dumps(broker.host)}\nport = {broker.port}\n{_mqtt_auth_toml(broker.mqtt_config('door'))}"
        f"[camera]\nsource = {json.dumps(camera)}\nwidth = 640\nheight = 0\nfps = {float(fps)}\n"
        f"realtime = {'true' if realtime else 'false'}\nloop = {'true' if loop else 'false'}\n"
        "[decision]\n"
        + "".join(f"{k} = {float(v) if isinstance(v, float) else v}\n" for k, v in rules.items())
        + '[lock]\npin_factory = "mock"\n'
        + extra
    )
    return path


__all__ = [
    "BROKER_USERS",
    "Broker",
    "BrokerTLS",
    "CloudService",
    "LaunchError",
    "MosquittoMissing",
    "free_port",
    "mosquitto_binary",
    "start_broker",
    "write_device_config",
]
