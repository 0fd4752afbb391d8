"""config.py: strict TOML plus environment overrides, every mistake an error that names its key."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import pytest

from blindgate.shared.config import CloudConfig, ConfigError, DeviceConfig, config_option, load_config, to_toml


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_without_file_or_environment():
    assert load_config(DeviceConfig, env={}) == DeviceConfig()
    assert load_config(CloudConfig, env={}) == CloudConfig()


def test_file_values_are_read(tmp_path):
    path = write(tmp_path, 'site = "lab"\n[mqtt]\nport = 8883\ntls = true\n[camera]\nfps = 5\n')
    config = load_config(DeviceConfig, path, env={})
    assert (config.site, config.mqtt.port, config.mqtt.tls) == ("lab", 8883, True)
    assert config.camera.fps == 5.0 and isinstance(config.camera.fps, float)  # an integer is a fine float


def test_environment_overrides_the_file(tmp_path):
    path = write(tmp_path, 'site = "lab"\n[mqtt]\nport = 8883\n')
    env = {"BLINDGATE_SITE": "office", "BLINDGATE_MQTT_PORT": "1884", "BLINDGATE_CAMERA_FPS": "2.5"}
    config = load_config(DeviceConfig, path, env=env)
    assert (config.site, config.mqtt.port, config.camera.fps) == ("office", 1884, 2.5)


@pytest.mark.parametrize(
    "text, expected",
    [("1", True), ("true", True), ("Yes", True), ("on", True), ("0", False), ("false", False), ("no", False), ("", False)],
)
def test_booleans_from_the_environment(text, expected):
    assert load_config(DeviceConfig, env={"BLINDGATE_MQTT_TLS": text}).mqtt.tls is expected


@pytest.mark.parametrize(
    "env, key",
    [
        ({"BLINDGATE_MQTT_TLS": "maybe"}, r"mqtt\.tls \(from \$BLINDGATE_MQTT_TLS\)"),
        ({"BLINDGATE_MQTT_PORT": "many"}, r"mqtt\.port \(from \$BLINDGATE_MQTT_PORT\)"),
        ({"BLINDGATE_CAMERA_FPS": "fast"}, r"camera\.fps \(from \$BLINDGATE_CAMERA_FPS\)"),
    ],
)
def test_wrong_type_from_the_environment_names_the_variable(env, key):
    with pytest.raises(ConfigError, match=key):
        load_config(DeviceConfig, env=env)


@pytest.mark.parametrize(
    "text, key",
    [
        ('[mqtt]\nport = "1883"\n', r"mqtt\.port: expected int, got '1883'"),  # strict: no quoted numbers
        ('[camera]\nfps = "10"\n', r"camera\.fps: expected float"),
        ('[mqtt]\ntls = "true"\n', r"mqtt\.tls: expected bool"),
        ("[mqtt]\nport = 1883.0\n", r"mqtt\.port: expected int"),
        ("[mqtt]\nport = true\n", r"mqtt\.port: expected int"),
        ("site = 7\n", r"config site: expected str"),
        ("mqtt = 3\n", r"mqtt: expected a \[mqtt\] table"),
    ],
)
def test_wrong_type_in_the_file_names_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key):
        load_config(DeviceConfig, write(tmp_path, text), env={})


@pytest.mark.parametrize(
    "text, where",
    [
        ("sight = 'lab'\n", r"top level: unknown key\(s\) \['sight'\]"),
        ("[mqtt]\nprot = 1\n", r"\[mqtt\]: unknown key\(s\) \['prot'\]"),
    ],
)
def test_unknown_keys_are_errors(tmp_path, text, where):
    with pytest.raises(ConfigError, match=where):
        load_config(DeviceConfig, write(tmp_path, text), env={})


def test_missing_or_invalid_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(DeviceConfig, tmp_path / "absent.toml", env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(DeviceConfig, write(tmp_path, "site = \n"), env={})


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        load_config(DeviceConfig, env={"BLINDGATE_MQTT_PORT": "x"})


def test_to_toml_reads_back_as_the_same_config(tmp_path):
    config = DeviceConfig(site='with "quotes"')
    config.mqtt.port = 8883
    text = to_toml(config)
    tomllib.loads(text)
    assert load_config(DeviceConfig, write(tmp_path, text), env={}) == config


@pytest.mark.parametrize("argv", [["--config", "x.toml", "run"], ["run", "--config", "x.toml"], ["run"]])
def test_config_option_before_or_after_the_sub_command(argv):
    common = config_option()
    parser = argparse.ArgumentParser(parents=[common])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", parents=[common])
    args = parser.parse_args(argv)
    assert args.command == "run"
    assert getattr(args, "config", None) == ("x.toml" if "--config" in argv else None)
