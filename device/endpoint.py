"""The door agent's one local HTTP endpoint: `/metrics` and `/healthz`, in the agent's own process.

Off unless `[endpoint] enabled = true` (or `[console] enabled = true`: the web console, device/console/,
adds its pages to this same app); it binds loopback (127.0.0.1:9610) unless told otherwise.
It runs an aiohttp app on its own event loop in a background thread, so the agent's frame loop
never waits on a scraper. Later routes (service administration, the web console) go on the same
app through `app.router` before `start()`: one server, not one per feature.

What it serves is counts, durations and states only (device/metrics.py): never a distance, a score
or a name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import threading

from aiohttp import web

from blindgate.shared.config import DeviceConfig, EndpointConfig
from blindgate.shared.errors import BlindgateError

from .agent import Agent
from .metrics import DoorMetrics

log = logging.getLogger("blindgate.device.endpoint")

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
AGENT = web.AppKey("agent", Agent)
METRICS = web.AppKey("metrics", DoorMetrics)


class EndpointError(BlindgateError, RuntimeError):
    """The endpoint could not start (port taken, bad address)."""


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": PROMETHEUS_TEXT})


async def _healthz(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    healthy = agent.healthy()
    return web.json_response({"healthy": healthy}, status=200 if healthy else 503)


def make_app(agent: Agent, metrics: DoorMetrics, client_max_size: int = 1024**2) -> web.Application:
    """The endpoint's routes; add more to `app.router` before the endpoint starts."""
    app = web.Application(client_max_size=client_max_size)
    app[AGENT] = agent
    app[METRICS] = metrics
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    return app


class DoorEndpoint:
    """The aiohttp app on its own loop in a daemon thread; `start()` returns once it listens."""

    def __init__(self, config: EndpointConfig, app: web.Application, ssl_context: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.app = app
        self.ssl_context = ssl_context
        self.port: int | None = None  # the bound port (config.port, or the one picked for port 0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> None:
        if not is_loopback(self.config.host):
            log.warning("door endpoint listens on %s: reachable beyond this machine", self.config.host)
        self._thread = threading.Thread(target=self._serve, name="blindgate-endpoint", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout) or self._error is not None:
            self.stop()
            raise EndpointError(f"endpoint {self.config.host}:{self.config.port} did not start: {self._error}")
        log.info("door endpoint on %s/metrics", self.url)

    @property
    def url(self) -> str:
        """The endpoint's base address, e.g. http://127.0.0.1:9610 (https with the console's TLS)."""
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"{'https' if self.ssl_context else 'http'}://{host}:{self.port}"

    def _serve(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._listen())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
            loop.close()

    async def _listen(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port, ssl_context=self.ssl_context)
        await site.start()
        server = site._server  # the bound socket: the real port when config.port is 0
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.config.port

    def stop(self) -> None:
        """Stop serving and join the thread. Safe to call more than once."""
        loop, thread = self._loop, self._thread
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(5)
        self._thread = None


def start_endpoint(config: DeviceConfig, agent: Agent) -> DoorEndpoint | None:
    """The door's endpoint if `[endpoint]` or `[console]` is enabled, started and following `agent`; None when off."""
    if not (config.endpoint.enabled or config.console.enabled):
        return None
    metrics = DoorMetrics()
    metrics.attach(agent)
    if not config.console.enabled:
        endpoint = DoorEndpoint(config.endpoint, make_app(agent, metrics))
        endpoint.start()
        return endpoint
    from .console import MAX_BODY, add_console, tls_context  # late: the console builds on this module

    app = make_app(agent, metrics, client_max_size=MAX_BODY)
    add_console(app, agent, config)
    endpoint = DoorEndpoint(config.endpoint, app, tls_context(config))
    endpoint.start()
    log.info("door console on %s/", endpoint.url)
    return endpoint


__all__ = ["DoorEndpoint", "EndpointError", "is_loopback", "make_app", "start_endpoint"]
