"""The cloud service's aiohttp application factory: `create_app(config)`.

It wires the parts together: the resources and their lifecycle (resources.py: store, matcher
pool, MQTT bridge, reply-signing key, opened in that order and closed in reverse), the JSON error
answers (http_errors.py), the routes (routes.py) and the gauges of /metrics.
"""

from __future__ import annotations

from aiohttp import web

from blindgate.shared.config import CloudConfig
from blindgate.shared.limits import MAX_BUNDLE_BYTES

from .doors import add_door_routes
from .http_errors import error_middleware
from .rekey import add_rekey_routes
from .resources import (
    BRIDGE,
    DB_NAME,
    METRICS,
    POOL,
    SUBJECT_COUNTS,
    bridge_ctx,
    init_state,
    load_or_create_signing_key,
    pool_ctx,
    state_ctx,
)
from .routes import add_routes

__all__ = ["CLIENT_MAX_SIZE", "DB_NAME", "create_app", "load_or_create_signing_key"]

# aiohttp's own cap: the bundle route's limit plus slack; each route reads with its own limit.
CLIENT_MAX_SIZE = MAX_BUNDLE_BYTES + 64 * 1024


def create_app(config: CloudConfig, *, mqtt: bool = True) -> web.Application:
    """The cloud service; `mqtt=False` serves HTTP only (tests of the API)."""
    app = web.Application(client_max_size=CLIENT_MAX_SIZE, middlewares=[error_middleware])
    init_state(app, config)
    app.cleanup_ctx.append(state_ctx)
    app.cleanup_ctx.append(pool_ctx)
    if mqtt:
        app.cleanup_ctx.append(bridge_ctx)
    add_gauges(app)
    add_routes(app)
    add_rekey_routes(app)
    add_door_routes(app)
    return app


def add_gauges(app: web.Application) -> None:
    """The gauges of /metrics, read from the app's slots at scrape time."""
    m = app[METRICS]
    m.gauge("blindgate_queue_depth", "Probes waiting for or in a matcher worker.", lambda: app[POOL].inflight)
    m.gauge("blindgate_sites", "Registered sites.", lambda: len(app[SUBJECT_COUNTS]))
    m.gauge("blindgate_subjects", "Enrolled subjects, all sites.", lambda: sum(app[SUBJECT_COUNTS].values()))
    m.gauge("blindgate_workers", "Matcher worker processes.", lambda: app[POOL].workers)
    m.gauge(
        "blindgate_mqtt_connected",
        "1 while connected to the MQTT broker.",
        lambda: float(app[BRIDGE].connected.is_set()) if BRIDGE in app else 0.0,
    )
