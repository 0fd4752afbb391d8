"""Configuration: one TOML file per side, any value overridable from the environment.

`BLINDGATE_<SECTION>_<KEY>` overrides `[section] key` (e.g. `BLINDGATE_MQTT_PORT=8883`); a
top-level key is `BLINDGATE_<KEY>`. Unknown keys and wrong types are errors that name the key:
a typo in an access-control config must not silently fall back to a default.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from blindgate.shared.errors import BlindgateError

if TYPE_CHECKING:  # typeshed-only name: "any dataclass"
    from _typeshed import DataclassInstance

ENV_PREFIX = "BLINDGATE"
# `BLINDGATE_*` variables the project reads that are not config keys (add any new one here, or
# every CLI refuses it as a typo): the provision token `blindgate-device init` sends.
# Read elsewhere: the device's provision token, and the admin URL of the PostgreSQL server the
# store tests create their databases on (tests/cloud/conftest.py).
OTHER_ENV_NAMES = frozenset({f"{ENV_PREFIX}_PROVISION_TOKEN", f"{ENV_PREFIX}_TEST_PG_URL"})


class ConfigError(BlindgateError, ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


@dataclass
class MQTTConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str = ""
    password: str = ""
    tls: bool = False
    ca_file: str = ""  # CA bundle that signed the broker's certificate
    cert_file: str = ""  # client certificate, when the broker authenticates by certificate
    key_file: str = ""
    keepalive: int = 30
    topic_prefix: str = "blindgate"


@dataclass
class CloudConfig:
    state_dir: str = "./state/cloud"  # database and reply-signing key live here
    # Gallery store: empty = the SQLite file state_dir/gallery.db; "postgresql://user:pw@host/db" =
    # a PostgreSQL database that several replicas share; a path or "sqlite:///path" = that file.
    store_url: str = ""
    http_host: str = "127.0.0.1"
    http_port: int = 8600
    workers: int = 1  # matcher processes; block i of a site lives on worker i mod workers (a probe fans out)
    queue_size: int = 8  # probes waiting for a matcher; beyond it the answer is "busy"
    site_queue_share: int = 0  # queue slots one site may hold; 0 = half of queue_size (at least 1)
    http_header_timeout: float = 10.0  # s for a new connection to send its request headers
    http_body_timeout: float = 60.0  # s to read one request body (a bundle is up to 32 MiB)
    http_keepalive_timeout: float = 15.0  # s an idle keep-alive connection stays open
    http_max_connections: int = 256  # open HTTP connections; beyond it the oldest unsent one is closed
    reply_ttl: float = 10.0  # seconds a reply stays valid (MQTT expiry and signed expiry)
    share_group: str = "blindgate-cloud"
    # Bearer token required to register a site. Empty: the cloud creates one at first start
    # (state_dir/provision-token, mode 0600) unless open_registration is set.
    provision_token: str = ""
    open_registration: bool = False  # explicit opt-in: anyone who reaches the API may register a site
    max_sites: int = 1000  # registered sites per cloud; registration beyond it is refused (403)
    registrations_per_minute: int = 30  # cloud-wide, token holders included; beyond it 429
    worker_cache_bytes: int = 4 * 1024**3  # per matcher worker: parsed keys + gallery blocks, LRU by bytes
    # Enrollments/removals logged against one block before a worker rebuilds it into a fresh
    # stored snapshot (cloud/store_log.py): bounds the replay a restarted worker does per block.
    snapshot_every: int = 32
    log_level: str = "INFO"
    log_format: str = "json"  # json or text
    mqtt: MQTTConfig = field(default_factory=MQTTConfig)


@dataclass
class CameraConfig:
    source: str = "picamera2"  # picamera2, a device number, a stream URL, a video file or an image folder
    width: int = 640
    height: int = 480
    fps: float = 10.0
    realtime: bool = True  # pace video files and folders at `fps` like a live camera
    loop: bool = False  # a video file or folder starts over at its end (a demo or test camera)


@dataclass
class FaceSettings:
    model: str = "hog"  # or "cnn"
    upsample: int = 0  # the detection copy is scaled from min_face_px either way (device/faces.py)
    min_face_px: int = 60  # in the camera frame's pixels, whatever the detection scale
    min_sharpness: float = 30.0
    detect_max_width: int = 960  # full-frame detection copies at most this wide (0: no limit)
    track_frames: int = 10  # scan around the last face, the whole frame every N frames (0: always whole; device/tracking.py)


@dataclass
class DecisionConfig:
    """When the door opens.

    The access rule's threshold is set by a target, not a fixed distance: `max_false_open` is the
    chance that ONE frame of a person who is not enrolled lies within the threshold of some
    enrolled template (its nearest one), before the multi-frame rule. The door derives the
    largest threshold that keeps that chance under the target from the calibration shipped in
    the package (device/operating_point.py) and the number of templates it actually compared
    against, so the threshold tightens as the gallery grows. An explicit `threshold` (Euclidean
    distance between dlib embeddings) wins over the target; its expected rates are still reported.

    doubt_margin: distances up to `threshold + doubt_margin` are neither a match nor a confident
    non-match; they keep the door locked without counting as a failed attempt (the same person in
    poor light). It is a fixed distance above whatever threshold is in force.

    mode: "identify" (1:N against the site's gallery, the default), "verify" (only a claimed
    identity is checked, 1:1: a badge, PIN or phone claim must come first) or "either".
    """

    threshold: float | None = None  # None: derived from max_false_open (see above)
    max_false_open: float = 0.001  # per-frame chance that a non-enrolled face is matched to someone
    doubt_margin: float = 0.05  # just above the threshold: doubtful, not unknown
    mode: str = "identify"  # identify | verify | either
    frames_required: int = 2  # agreeing frames before the door opens
    window_s: float = 3.0  # the agreeing frames must fall within this window
    reply_timeout: float = 3.0
    open_seconds: float = 5.0
    cooldown_s: float = 3.0
    lockout_failures: int = 5
    lockout_s: float = 30.0
    claim_ttl: float = 10.0  # seconds a badge/PIN claim stays valid (verify/either modes; device/claim_gate.py)


@dataclass
class LockConfig:
    pin: str = "GPIO17"
    active_high: bool = True
    pin_factory: str = ""  # "mock" off the Pi; empty lets gpiozero choose


@dataclass
class EndpointConfig:
    """The door agent's one local HTTP endpoint (/metrics, /healthz; later admin routes): off by default."""

    enabled: bool = False
    host: str = "127.0.0.1"  # loopback: only this machine can scrape it
    port: int = 9610


@dataclass
class LivenessConfig:
    """Liveness by head movement (device/liveness.py, device/liveness_watch.py): off by default."""

    mode: str = "off"  # "off", "motion" (the face must move like a head), "motion+blink" (and blink)
    window_s: float = 2.0  # how long the door watches the face after a match
    timeout_s: float = 5.0  # no outcome by then (e.g. the face left): stays locked, a failed attempt
    prompt: str = "turn your head slightly"  # the liveness_prompt event's text ("and blink" is added for motion+blink)
    max_flat_residual: float = 0.0  # 0: the shipped default; a window at or under it moved like a flat picture


@dataclass
class ConsoleConfig:
    """The door's web console (device/console/), served on the endpoint's address: off by default."""

    enabled: bool = False
    tls_cert: str = ""  # PEM certificate (chain) and key: the endpoint then serves HTTPS only
    tls_key: str = ""
    allow_plain_http: bool = False  # a non-loopback address without TLS is refused unless this is true
    session_hours: float = 12.0  # a login lasts at most this long (30 idle minutes end it sooner)
    live_fps: float = 4.0  # live-view pictures per second a browser asks for
    live_width: int = 480  # live-view picture width in pixels (the camera frame is downscaled)
    enroll_frames: int = 5  # good camera frames averaged into a template, as `enroll --camera --frames`


@dataclass
class AccessConfig:
    """Access rules (device/access_rules.py; managed with `blindgate-device access`)."""

    timezone: str = ""  # IANA name of the door's time zone for access windows, e.g. "Europe/Berlin"; empty = system's


@dataclass
class SnapshotConfig:
    """Unknown-face snapshots, kept on the device only (device/snapshots.py): off by default."""

    enabled: bool = False
    folder: str = ""  # empty = <state_dir>/snapshots
    keep: int = 100  # at most this many files; the oldest go first
    max_age_days: float = 14.0  # and none older than this


@dataclass
class AdminConfig:
    """The running agent's admin socket (device/admin_socket.py): how the CLI administers a door service."""

    socket: str = ""  # empty: $RUNTIME_DIRECTORY/admin.sock under systemd (the CLI: /run/blindgate-device/admin.sock)
    group: str = ""  # group whose members may use it (socket 0660); empty: root and the service only


@dataclass
class DeviceConfig:
    site: str = "home"
    device_id: str = "door1"
    cloud_url: str = "http://127.0.0.1:8600"
    cloud_ca_file: str = ""  # PEM CA bundle for an https:// cloud with a private CA (default: system CAs)
    state_dir: str = "./state/device"  # site keys, label key, cloud public key, token, audit log
    log_level: str = "INFO"
    log_format: str = "json"
    ha_discovery_prefix: str = "homeassistant"
    reply_queue: int = 16  # messages kept from the reply topic; beyond it the oldest is dropped
    mqtt: MQTTConfig = field(default_factory=MQTTConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    face: FaceSettings = field(default_factory=FaceSettings)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    lock: LockConfig = field(default_factory=LockConfig)
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    liveness: LivenessConfig = field(default_factory=LivenessConfig)
    access: AccessConfig = field(default_factory=AccessConfig)
    snapshots: SnapshotConfig = field(default_factory=SnapshotConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)


C = TypeVar("C", bound="DataclassInstance")


def _coerce(value: Any, kind: Any, key: str, from_env: bool = False) -> Any:
    """`value` as `kind`. Only environment values are text to parse: in TOML, `port = "1883"` is an error."""
    if isinstance(kind, str):  # postponed annotations
        kind = {"str": str, "int": int, "float": float, "bool": bool}.get(kind, kind)
    parse = from_env and isinstance(value, str)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if parse and value.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if parse and value.strip().lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if kind is int:
            if isinstance(value, (bool, float)) or (isinstance(value, str) and not parse):
                raise ValueError(value)
            return int(value)
        if kind is float:
            if isinstance(value, bool) or (isinstance(value, str) and not parse):
                raise ValueError(value)
            return float(value)
        if kind is str:
            if not isinstance(value, str):
                raise ValueError(value)
            return value
    except (TypeError, ValueError):
        name = getattr(kind, "__name__", str(kind))
        raise ConfigError(f"config {key}: expected {name}, got {value!r}") from None
    raise ConfigError(f"config {key}: unsupported type {kind!r}")


def _required(kind: Any) -> Any:
    """`X` for an optional `X | None` field: absent means None, a given value must be an X."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if len(args) == 1 and type(None) in typing.get_args(kind):
        return args[0]
    return kind


def _build(cls: type[C], data: Mapping[str, Any], env: Mapping[str, str], path: str) -> C:
    hints = typing.get_type_hints(cls)
    values = {}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        where = f"[{path}]" if path else "top level"
        raise ConfigError(f"config {where}: unknown key(s) {unknown}; known: {sorted(known)}")
    for f in dataclasses.fields(cls):
        key = f"{path}.{f.name}" if path else f.name
        kind = hints[f.name]
        env_name = f"{ENV_PREFIX}_{key.replace('.', '_').upper()}"
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            section = data.get(f.name, {})
            if not isinstance(section, Mapping):
                raise ConfigError(f"config {key}: expected a [{key}] table")
            values[f.name] = _build(kind, section, env, key)
        elif env_name in env:
            values[f.name] = _coerce(env[env_name], _required(kind), f"{key} (from ${env_name})", from_env=True)
        elif f.name in data:
            values[f.name] = _coerce(data[f.name], _required(kind), key)
    return cls(**values)


def load_config(cls: type[C], path: str | Path | None = None, env: Mapping[str, str] | None = None) -> C:
    """Read `cls` from a TOML file (optional) with environment overrides applied on top."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    env = os.environ if env is None else env
    check_environment(env)
    return _build(cls, data, env, "")


def env_names(cls: type[DataclassInstance], path: str = "") -> set[str]:
    """Every `BLINDGATE_*` name that overrides a key of `cls` (as `_build` reads them)."""
    names = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{path}.{f.name}" if path else f.name
        kind = hints[f.name]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            names |= env_names(kind, key)
        else:
            names.add(f"{ENV_PREFIX}_{key.replace('.', '_').upper()}")
    return names


def known_env_names() -> frozenset[str]:
    """The names either side reads: one host may run both, and they share the prefix."""
    return frozenset(env_names(DeviceConfig) | env_names(CloudConfig) | OTHER_ENV_NAMES)


def check_environment(env: Mapping[str, str]) -> None:
    """A `BLINDGATE_*` variable neither side reads is a typo that would silently leave a default in force."""
    known = known_env_names()
    unknown = sorted(name for name in env if name.startswith(f"{ENV_PREFIX}_") and name not in known)
    if not unknown:
        return
    start = len(ENV_PREFIX) + 1  # compare what follows the shared prefix, or everything looks alike
    tails = {name[start:]: name for name in known}
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name[start:], sorted(tails), n=1, cutoff=0.6)
        hints.append(f"${name} (did you mean {tails[close[0]]}?)" if close else f"${name}")
    raise ConfigError(
        f"unknown environment variable(s) {', '.join(hints)}: neither the door nor the cloud reads "
        f"{'them' if len(unknown) > 1 else 'it'}; fix the name or unset it (names: the README's configuration reference)"
    )


def to_toml(config: Any) -> str:
    """Render a config as TOML (for `config show` and sample files)."""
    top, tables = [], []

    def fmt(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return repr(value)

    def walk(obj: Any, prefix: str) -> None:
        lines = []
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}.{f.name}" if prefix else f.name)
            elif value is None:  # an optional key left unset: TOML has no null
                lines.append(f"# {f.name} = (unset)")
            else:
                lines.append(f"{f.name} = {fmt(value)}")
        if prefix:
            tables.append(f"[{prefix}]\n" + "\n".join(lines))
        else:
            top.extend(lines)

    walk(config, "")
    return "\n".join(top) + "\n\n" + "\n\n".join(tables) + "\n"


def config_option() -> argparse.ArgumentParser:
    """A parent parser with `--config FILE`, for a CLI's top level and each of its sub-commands.

    systemd units write `blindgate-device run --config FILE`, people write `--config FILE run`:
    both work. Read the value with `getattr(args, "config", None)`.
    """
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="TOML config file (BLINDGATE_* environment variables override it)",
    )
    return parent
