"""Fixtures of the device's integration tests: a real broker, the real cloud service, a provisioned door."""

from __future__ import annotations

from pathlib import Path

import pytest

from blindgate.device.cli import main as device_main
from blindgate.shared.launch import CloudService, LaunchError, write_device_config
from tests.broker import start_broker


@pytest.fixture(scope="module")
def mqtt_broker(tmp_path_factory):
    running = start_broker(tmp_path_factory.mktemp("mosquitto"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def cloud(mqtt_broker, tmp_path_factory):
    """The real cloud service (`python -m blindgate.cloud.cli serve`, blindgate.shared.launch) on a fresh state dir."""
    state = tmp_path_factory.mktemp("cloud")
    service = CloudService(state / "state", mqtt_broker, state / "cloud.log")
    try:
        service.start()
    except LaunchError as exc:
        pytest.fail(str(exc))
    yield service
    service.stop(20)


def provision(
    tmp_path: Path,
    cloud: CloudService,
    broker,
    faces: Path,
    site: str,
    people: dict[str, list[str]],
    camera: str,
    **options,
) -> Path:
    """Write a device config (`options`: more of write_device_config's), `init`, and `enroll` each person; the config path."""
    config = write_device_config(
        tmp_path / f"{site}.toml",
        site=site,
        cloud_url=cloud.url,
        broker=broker,
        state_dir=tmp_path / site,
        camera=camera,
        **options,
    )
    assert device_main(["--config", str(config), *cloud.init_args()]) == 0  # the cloud's generated provision token
    for name, files in people.items():
        images = [str(faces / "people" / f) for f in files]
        assert device_main(["--config", str(config), "enroll", name, *images]) == 0
    return config
