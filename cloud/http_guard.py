"""HTTP connection limits aiohttp lacks: a header read timeout and a cap on open connections.

aiohttp's request handler has a keep-alive timeout but nothing that bounds how long a new
connection may take to send its request line and headers, and no connection cap: 200 clients
sending one header byte every few seconds would all stay open (slow loris). `serve()` runs the app
like `web.run_app`, but each connection's protocol is wrapped in a `_Guard` that

- closes the connection unless its first request's headers (up to the blank line) arrive within
  `header_timeout` seconds; later requests on a kept-alive connection are bounded by aiohttp's
  keep-alive timeout, which closes a connection still waiting for a complete request;
- counts open connections; at `max_connections` a new one evicts the oldest connection that has
  not yet sent its headers (an idle or slow client), and is refused (503) only when every open
  connection is serving a request, so slow clients cannot starve a normal one.

Request bodies are bounded by `routes.read_body` (`http_body_timeout`, 408).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from blindgate.shared.config import CloudConfig

log = logging.getLogger("blindgate.cloud.http")

_REFUSAL = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_END_OF_HEADERS = b"\r\n\r\n"


class ConnectionLimits:
    """The limits shared by every connection of one listening socket, and the connections awaiting headers."""

    def __init__(self, header_timeout: float, max_connections: int) -> None:
        self.header_timeout = float(header_timeout)
        self.max_connections = max(1, int(max_connections))
        self.open = 0
        self.waiting: dict[_Guard, None] = {}  # insertion-ordered: the oldest first
        self.evicted = 0
        self.refused = 0
        self.timed_out = 0

    def admit(self) -> bool:
        """Make room for one more connection; False if every open one is serving a request."""
        if self.open < self.max_connections:
            return True
        if self.waiting:
            oldest = next(iter(self.waiting))
            self.evicted += 1
            oldest.close("evicted")
            return True
        self.refused += 1
        return False


class _Guard(asyncio.Protocol):
    """Wraps aiohttp's per-connection protocol: the header timer and the connection count."""

    def __init__(self, inner: asyncio.Protocol, limits: ConnectionLimits) -> None:
        self._inner = inner
        self._limits = limits
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""  # the last bytes seen, to find the blank line split across reads
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if not self._limits.admit():
            transport.write(_REFUSAL)
            transport.close()
            return
        self._counted = True
        self._limits.open += 1
        self._limits.waiting[self] = None
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._limits.header_timeout, self._headers_late)
        self._inner.connection_made(transport)

    def _headers_late(self) -> None:
        self._timer = None
        self._limits.timed_out += 1
        self.close("header_timeout")

    def _headers_done(self) -> None:
        self._limits.waiting.pop(self, None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self, reason: str) -> None:
        """Drop the connection now (aiohttp sees connection_lost)."""
        self._headers_done()
        if self._transport is not None and not self._transport.is_closing():
            log.debug("HTTP connection closed", extra={"reason": reason})
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if not self._counted:
            return
        if self._timer is not None:
            seen = self._tail + data
            if _END_OF_HEADERS in seen:
                self._headers_done()
            else:
                self._tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._counted else None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._counted:
            return
        self._counted = False
        self._headers_done()
        self._limits.open -= 1
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class GuardedSite(web.TCPSite):
    """A TCP site whose connections go through `_Guard` with the given limits."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self.limits = limits

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        factory: Callable[[], asyncio.Protocol] = server
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Guard(factory(), self.limits), self._host, self._port, backlog=self._backlog
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


def limits_from(config: CloudConfig) -> ConnectionLimits:
    """The connection limits a config asks for."""
    return ConnectionLimits(config.http_header_timeout, config.http_max_connections)


# A header line may carry a sealed template (base64 of at most MAX_SEALED_BYTES, ~11 KB): aiohttp's
# default 8190 would refuse an honest one before the route can give its precise 413.
MAX_HEADER_LINE = 16 * 1024


class MalformedHttpIsNotAnError(logging.Filter):
    """aiohttp logs a request it cannot parse (a line too long, a bad method...) at ERROR with a
    traceback, after answering it 400. That is the client's mistake, not the service's: log it
    as one INFO line with the reason instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 500) < 500:
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args, record.exc_info, record.exc_text = (
                "malformed HTTP request refused: %s",
                (exc.message,),
                None,
                None,
            )
        return True


_MALFORMED_FILTER = MalformedHttpIsNotAnError()


def runner_for(app: web.Application, config: CloudConfig, *, handle_signals: bool = False) -> web.AppRunner:
    """An AppRunner with the keep-alive timeout and aiohttp's own header size limits."""
    server_log = logging.getLogger("aiohttp.server")
    if _MALFORMED_FILTER not in server_log.filters:
        server_log.addFilter(_MALFORMED_FILTER)
    return web.AppRunner(
        app,
        handle_signals=handle_signals,
        access_log=None,
        shutdown_timeout=15.0,
        keepalive_timeout=config.http_keepalive_timeout,
        max_line_size=8190,
        max_field_size=MAX_HEADER_LINE,
        lingering_time=2.0,  # after an early answer, read at most 2 s of an unread body, then close
    )


async def start_site(app: web.Application, config: CloudConfig, *, handle_signals: bool = False) -> web.AppRunner:
    """Set up `app` and listen on the configured address behind the guard; the caller cleans the runner up."""
    runner = runner_for(app, config, handle_signals=handle_signals)
    await runner.setup()
    site = GuardedSite(runner, config.http_host, config.http_port, limits_from(config))
    await site.start()
    return runner


async def _serve_forever(app: web.Application, config: CloudConfig) -> None:
    runner = await start_site(app, config, handle_signals=True)
    try:
        while True:
            await asyncio.sleep(3600)
    finally:
        await runner.cleanup()


def serve(app: web.Application, config: CloudConfig) -> None:
    """Run `app` until SIGINT/SIGTERM, like `web.run_app`, with the guard in front of every connection."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve_forever(app, config))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not main.done():
            main.cancel()
            try:
                loop.run_until_complete(main)
            except (asyncio.CancelledError, web.GracefulExit, KeyboardInterrupt):
                pass
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
