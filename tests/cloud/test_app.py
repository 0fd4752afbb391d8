"""The application factory (cloud/app.py): what `create_app` wires together, without starting it."""

from __future__ import annotations

from pathlib import Path

from blindgate.cloud.app import CLIENT_MAX_SIZE, create_app
from blindgate.cloud.resources import CONFIG, METRICS, SITES, bridge_ctx, pool_ctx, state_ctx
from blindgate.shared.limits import MAX_BUNDLE_BYTES

from .conftest import cloud_config


def test_routes_of_the_protocol_are_registered(tmp_path: Path) -> None:
    app = create_app(cloud_config(tmp_path), mqtt=False)
    routes = {(route.method, route.resource.canonical) for route in app.router.routes() if route.resource is not None}
    assert routes >= {
        ("POST", "/v1/sites/{site}"),
        ("POST", "/v1/sites/{site}/subjects"),
        ("GET", "/v1/sites/{site}/subjects"),
        ("DELETE", "/v1/sites/{site}/subjects/{subject}"),
        ("GET", "/v1/sites/{site}/stats"),
        ("GET", "/v1/cloud-key"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
    }
    assert CLIENT_MAX_SIZE > MAX_BUNDLE_BYTES


def test_resources_open_in_order_and_mqtt_is_optional(tmp_path: Path) -> None:
    config = cloud_config(tmp_path)
    assert list(create_app(config).cleanup_ctx) == [state_ctx, pool_ctx, bridge_ctx]
    http_only = create_app(config, mqtt=False)
    assert list(http_only.cleanup_ctx) == [state_ctx, pool_ctx]
    assert http_only[CONFIG] is config and http_only[SITES] == {}


def test_gauges_read_the_app_and_survive_missing_resources(tmp_path: Path) -> None:
    app = create_app(cloud_config(tmp_path), mqtt=False)
    assert set(app[METRICS].gauges) == {
        "blindgate_queue_depth",
        "blindgate_sites",
        "blindgate_subjects",
        "blindgate_workers",
        "blindgate_mqtt_connected",
    }
    text = app[METRICS].render()  # before startup: no pool yet, its gauges are skipped
    assert "blindgate_sites 0" in text and "blindgate_mqtt_connected 0" in text
    assert "blindgate_queue_depth" not in text
