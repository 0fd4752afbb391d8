"""The door's web console: live view, people and log, served from the agent's own process.

The agent owns the camera and the lock, so the console lives in the agent, on its one local HTTP
endpoint (device/endpoint.py): `[console] enabled = true` adds these routes to that app. It shows
and changes only what is on this device; nothing it does is sent to the cloud except what the
CLI's own operations send (an encrypted template, an encrypted label, a removal).

    web.py           state, templates, login/logout and the guard (session, CSRF, origin, headers)
    auth.py          admin password (scrypt), sessions, login limiting
    live.py          the latest frame drawn and encoded on demand; the door's state
    capture.py       enrolling at the camera: frames diverted from the door, with guidance
    live_routes.py   /, /live/*, /enroll/camera
    people_routes.py /people...
    audit_view.py    reading the audit log backwards, filters, CSV
    log_routes.py    /log, /log.csv
    password_cli.py  `blindgate-device console-password`
"""

from __future__ import annotations

import ssl

from aiohttp import web

from blindgate.device.agent import Agent
from blindgate.device.endpoint import is_loopback
from blindgate.device.people import People
from blindgate.shared.config import DeviceConfig
from blindgate.shared.errors import BlindgateError

from .auth import Sessions
from .live import LiveView
from .live_routes import add_live_routes
from .log_routes import add_log_routes
from .people_routes import MAX_PHOTO_BYTES, MAX_PHOTOS, add_people_routes
from .web import CONSOLE, Console, add_auth_routes, console_guard

# A POST may carry MAX_PHOTOS photos (aiohttp refuses larger bodies with 413 before reading them).
MAX_BODY = MAX_PHOTOS * MAX_PHOTO_BYTES


class ConsoleConfigError(BlindgateError, ValueError):
    """The console cannot be served as configured (TLS files, address)."""


def check_console_config(config: DeviceConfig) -> None:
    """Refuse a console on a non-loopback address without TLS (unless allowed), and half a TLS setup."""
    c = config.console
    if bool(c.tls_cert) != bool(c.tls_key):
        raise ConsoleConfigError("console.tls_cert and console.tls_key go together: give both files, or neither")
    if not c.tls_cert and not is_loopback(config.endpoint.host) and not c.allow_plain_http:
        raise ConsoleConfigError(
            f"the console would serve passwords and faces in plain HTTP on {config.endpoint.host}: set console.tls_cert and "
            'console.tls_key, or endpoint.host = "127.0.0.1" (or console.allow_plain_http = true on a trusted network)'
        )
    if c.live_fps <= 0 or c.live_width < 32 or c.enroll_frames < 1 or c.session_hours <= 0:
        raise ConsoleConfigError("console: live_fps and session_hours must be > 0, live_width >= 32, enroll_frames >= 1")


def tls_context(config: DeviceConfig) -> ssl.SSLContext | None:
    """The server's TLS context from the user's certificate and key; None without TLS."""
    c = config.console
    if not c.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(c.tls_cert, c.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConsoleConfigError(f"console TLS: cannot load {c.tls_cert} / {c.tls_key}: {exc}") from None
    return context


def add_console(app: web.Application, agent: Agent, config: DeviceConfig) -> Console:
    """Put the console's routes and guard on the endpoint's app, following `agent`."""
    check_console_config(config)
    live = LiveView(config.console.live_width)
    live.attach(agent)
    console = Console(
        agent=agent,
        config=config,
        people=People(config),
        live=live,
        sessions=Sessions(lifetime_s=config.console.session_hours * 3600),
    )
    app[CONSOLE] = console
    app.middlewares.append(console_guard)
    add_auth_routes(app)
    add_live_routes(app)
    add_people_routes(app)
    add_log_routes(app)
    return console


__all__ = ["MAX_BODY", "ConsoleConfigError", "add_console", "check_console_config", "tls_context"]
