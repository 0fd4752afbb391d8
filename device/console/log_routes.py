"""The console's Log page: the door's audit log, newest first, filtered by person, event and day; CSV export.

    GET /log?person=&event=&day=YYYY-MM-DD    the newest matching entries (200 at most on the page)
    GET /log.csv?person=&event=&day=          every matching entry as CSV, streamed
Reading and filtering is device/console/audit_view.py; here only the query and the response.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from blindgate.device.state import DeviceState

from .audit_view import AuditFilter, AuditViewError, door_zone, event_choices, iter_log, read_log, to_csv
from .web import Console, console_of

PAGE_ROWS = 200


def _log_path(console: Console) -> Path:
    """The log the agent writes (an agent without one: where it would be)."""
    return console.agent.audit.path or DeviceState(console.config.state_dir).audit_path


def _filter(request: web.Request) -> AuditFilter:
    try:
        return AuditFilter.parse(request.query)
    except AuditViewError as exc:
        raise web.HTTPBadRequest(text=f"{exc}") from None


async def log_page(request: web.Request) -> web.Response:
    console = console_of(request)
    wanted = _filter(request)
    zone = door_zone(console.config.access.timezone)
    rows, more = await asyncio.get_running_loop().run_in_executor(None, read_log, _log_path(console), wanted, zone, PAGE_ROWS)
    return console.render(
        request,
        "log.html",
        title="Log",
        rows=rows,
        more=more,
        wanted=wanted,
        events=event_choices([wanted.event]),
        query=request.query_string,
    )


async def log_csv(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    wanted = _filter(request)
    zone = door_zone(console.config.access.timezone)
    response = web.StreamResponse(
        headers={"Content-Type": "text/csv; charset=utf-8", "Content-Disposition": 'attachment; filename="door-log.csv"'}
    )
    response.headers["Cache-Control"] = "no-store"
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    chunks = to_csv(iter_log(_log_path(console), wanted, zone))
    while (chunk := await loop.run_in_executor(None, next, chunks, None)) is not None:
        await response.write(chunk.encode())
    await response.write_eof()
    return response


def add_log_routes(app: web.Application) -> None:
    app.router.add_get("/log", log_page)
    app.router.add_get("/log.csv", log_csv)


__all__ = ["add_log_routes"]
