"""config.py: strict TOML plus environment overrides, every mistake an error that names its key."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import pytest

from blindgate.shared.config import (
    CloudConfig,
    ConfigError,
    DeviceConfig,
    config_option,
    env_names,
    known_env_names,
    load_config,
    to_toml,
)


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


# -- BLINDGATE_* names neither side knows -------------------------------------------------------


@pytest.mark.parametrize(
    "name, suggestion",
    [
        ("BLINDGATE_MQTT_PROT", "BLINDGATE_MQTT_PORT"),
        ("BLINDGATE_STATEDIR", "BLINDGATE_STATE_DIR"),
        ("BLINDGATE_DECISION_THRESHHOLD", "BLINDGATE_DECISION_THRESHOLD"),
        ("BLINDGATE_PROVISON_TOKEN", "BLINDGATE_PROVISION_TOKEN"),
    ],
)
def test_a_misspelt_variable_is_an_error_suggesting_the_closest_name(name, suggestion):
    for cls in (DeviceConfig, CloudConfig):
        with pytest.raises(ConfigError, match=rf"\${name} \(did you mean {suggestion}\?\)"):
            load_config(cls, env={name: "1"})


def test_a_variable_of_either_side_or_a_non_config_one_is_not_an_error():
    # One host may run both: the door's variables must not break the cloud, and the other way round.
    both = {"BLINDGATE_LOCK_PIN": "GPIO4", "BLINDGATE_HTTP_PORT": "8700", "BLINDGATE_PROVISION_TOKEN": "t"}
    assert load_config(CloudConfig, env=both).http_port == 8700
    assert load_config(DeviceConfig, env=both).lock.pin == "GPIO4"
    assert "BLINDGATE_MQTT_CA_FILE" in known_env_names() and "BLINDGATE_CAMERA_SOURCE" in known_env_names()
    assert load_config(DeviceConfig, env={"OTHER_PREFIX_X": "1", "BLINDGATEWAY": "1"}) == DeviceConfig()  # not ours


def test_every_config_key_has_its_variable_and_nothing_else_does():
    names = env_names(DeviceConfig)
    assert {"BLINDGATE_SITE", "BLINDGATE_MQTT_PORT", "BLINDGATE_DECISION_MAX_FALSE_OPEN"} <= names
    assert "BLINDGATE_MQTT" not in names and "BLINDGATE_HTTP_PORT" not in names  # a table; the cloud's key
    unrelated = "BLINDGATE_ZQXJ"
    with pytest.raises(ConfigError) as refused:
        load_config(DeviceConfig, env={unrelated: "1"})
    assert f"${unrelated}:" in str(refused.value) and "did you mean" not in str(refused.value)


def test_both_clis_refuse_a_misspelt_variable_with_exit_2(tmp_path, monkeypatch, capsys):
    from blindgate.cloud.cli import main as cloud_main
    from blindgate.device.cli import main as device_main

    monkeypatch.setenv("BLINDGATE_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("BLINDGATE_MQTT_HOTS", "broker")
    assert device_main(["status"]) == 2
    assert "did you mean BLINDGATE_MQTT_HOST?" in capsys.readouterr().err
    assert cloud_main(["public-key"]) == 2
    err = capsys.readouterr().err
    assert "did you mean BLINDGATE_MQTT_HOST?" in err and len(err.splitlines()) == 1
    monkeypatch.delenv("BLINDGATE_MQTT_HOTS")  # positive control
    assert cloud_main(["public-key"]) == 0
