"""HTTP connection limits (cloud/http_guard.py, routes.read_body): slow loris, slow bodies, the connection cap.

Real sockets on loopback against the guarded site, with small timeouts; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest
import pytest_asyncio
from aiohttp import web

from blindgate.cloud.http_errors import error_middleware
from blindgate.cloud.http_guard import MAX_HEADER_LINE, start_site
from blindgate.cloud.metrics import Metrics
from blindgate.cloud.resources import CONFIG, METRICS
from blindgate.cloud.routes import read_body

from .conftest import cloud_config

HOLD = web.AppKey("hold", asyncio.Event)

pytestmark = pytest.mark.asyncio


async def ping(request: web.Request) -> web.Response:
    return web.Response(text="pong")


async def upload(request: web.Request) -> web.Response:
    return web.Response(text=str(len(await read_body(request, 1024, "upload"))))


async def hold(request: web.Request) -> web.Response:
    await request.app[HOLD].wait()
    return web.Response(text="released")


@pytest_asyncio.fixture
async def guarded(tmp_path):
    """Start a small app behind the guard; yields a function (config overrides) -> (port, app)."""
    runners: list[web.AppRunner] = []
    apps: list[web.Application] = []

    async def start(**overrides):
        config = cloud_config(tmp_path, http_host="127.0.0.1", http_port=0, **overrides)
        app = web.Application(middlewares=[error_middleware])
        app[CONFIG], app[METRICS], app[HOLD] = config, Metrics(), asyncio.Event()
        app.router.add_get("/ping", ping)
        app.router.add_post("/upload", upload)
        app.router.add_get("/hold", hold)
        runner = await start_site(app, config)
        runners.append(runner)
        apps.append(app)
        return runner.addresses[0][1], app

    yield start
    for app in apps:
        app[HOLD].set()
    for runner in runners:
        await runner.cleanup()


async def connect(port):
    return await asyncio.open_connection("127.0.0.1", port)


async def closed(reader: asyncio.StreamReader, within: float) -> bool:
    """Whether the server closes the connection within `within` s (whatever it sends first is read and skipped)."""
    deadline = time.monotonic() + within
    with contextlib.suppress(TimeoutError, ConnectionError):
        while (left := deadline - time.monotonic()) > 0:
            if not await asyncio.wait_for(reader.read(65536), left):
                return True
        return False
    return isinstance(reader.exception(), ConnectionError) or reader.at_eof()


async def get(port, path="/ping", timeout=5.0) -> bytes:
    """One complete request on a fresh connection; the whole answer."""
    reader, writer = await connect(port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


async def trickle(writer: asyncio.StreamWriter, data: bytes, every: float) -> None:
    """Send `data` one byte at a time, `every` s apart, until the peer closes (bounded by len(data))."""
    with contextlib.suppress(ConnectionError, OSError):
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(every)


SLOW_HEADERS = b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200 + b"\r\n\r\n"


async def test_slow_loris_connections_are_closed_within_the_header_timeout(guarded):
    port, _ = await guarded(http_header_timeout=0.6, http_keepalive_timeout=30.0)
    slow = [await connect(port) for _ in range(8)]
    senders = [asyncio.ensure_future(trickle(w, SLOW_HEADERS, 0.1)) for _, w in slow]
    try:
        started = time.monotonic()
        assert (await get(port)).startswith(b"HTTP/1.1 200")  # positive control while the slow ones hang
        results = await asyncio.gather(*(closed(r, 3.0) for r, _ in slow))
        assert all(results) and time.monotonic() - started < 2.5
    finally:
        for task in senders:
            task.cancel()
        for _, w in slow:
            w.close()


async def test_slow_loris_on_a_kept_alive_connection_is_closed(guarded):
    port, _ = await guarded(http_header_timeout=30.0, http_keepalive_timeout=0.6)
    reader, writer = await connect(port)
    try:
        writer.write(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")  # first request: complete and answered
        head = await asyncio.wait_for(reader.readuntil(b"pong"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        sender = asyncio.ensure_future(trickle(writer, SLOW_HEADERS, 0.1))  # the second one trickles in
        started = time.monotonic()
        assert await closed(reader, 3.0) and time.monotonic() - started < 2.5
        sender.cancel()
    finally:
        writer.close()


async def test_a_slow_body_is_cut_off_with_408(guarded):
    port, _ = await guarded(http_body_timeout=0.5)
    reader, writer = await connect(port)
    try:
        writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        sender = asyncio.ensure_future(trickle(writer, b"b" * 100, 0.1))
        started = time.monotonic()
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 2.0
        assert await closed(reader, 4.0)  # answered, then closed (at most the 2 s lingering read)
        sender.cancel()
    finally:
        writer.close()
    # positive control: a body that arrives at once is read
    reader, writer = await connect(port)
    try:
        writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello")
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"5")
    finally:
        writer.close()


async def test_at_the_connection_cap_idle_connections_make_room_for_a_normal_request(guarded):
    port, _ = await guarded(http_max_connections=4, http_header_timeout=30.0)
    idle = [await connect(port) for _ in range(4)]  # connected, never sending headers: the cap is full
    senders = [asyncio.ensure_future(trickle(w, SLOW_HEADERS, 0.2)) for _, w in idle]
    try:
        await asyncio.sleep(0.1)
        answers = await asyncio.gather(*(get(port) for _ in range(3)))  # three at once: three slots needed
        assert all(a.startswith(b"HTTP/1.1 200") for a in answers)  # every normal request is served
        evicted = await asyncio.gather(*(closed(r, 1.0) for r, _ in idle))
        assert evicted == [True, True, True, False]  # the three oldest slow connections made room
    finally:
        for task in senders:
            task.cancel()
        for _, w in idle:
            w.close()


async def test_beyond_the_cap_of_busy_connections_a_new_one_is_refused(guarded):
    port, app = await guarded(http_max_connections=2, http_header_timeout=30.0)
    busy = [asyncio.ensure_future(get(port, "/hold")) for _ in range(2)]  # both are serving a request
    await asyncio.sleep(0.3)
    assert (await get(port)).startswith(b"HTTP/1.1 503")
    app[HOLD].set()  # positive control: once they are answered, a new request is served
    assert all(answer.endswith(b"released") for answer in await asyncio.gather(*busy))
    assert (await get(port)).startswith(b"HTTP/1.1 200")


async def test_an_overlong_header_line_is_a_400_with_its_reason_and_no_traceback(guarded, caplog):
    port = (await guarded())[0]
    reader, writer = await connect(port)
    try:
        writer.write(b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEADER_LINE + 10) + b"\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0]
    assert b"Got more than" in answer  # the reason, in the body
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert records and all(r.levelno < logging.ERROR and r.exc_info is None for r in records), records
    assert b"pong" in await get(port)  # positive control: a normal request on the same server


async def test_a_header_line_as_long_as_a_sealed_template_is_accepted(guarded):
    port = (await guarded())[0]
    reader, writer = await connect(port)
    try:
        writer.write(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Blob: " + b"a" * 11_000 + b"\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert b" 200 " in answer.split(b"\r\n")[0]
