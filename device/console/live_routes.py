"""The console's Live page: the camera picture, the door's state, and enrolling someone at the camera.

GET  /                        the page (the picture and state are fetched by console.js)
GET  /live/frame.jpg          the latest frame, drawn and downscaled (header X-Frame: its number)
GET  /live/state.json         lock, broker, cloud, camera, face gate, decisions, false-open chance, capture
POST /enroll/camera           start enrolling NAME from the camera (name, optional add_to)
POST /enroll/camera/cancel    stop it; nothing is enrolled
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from blindgate.device.people import check_name
from blindgate.shared.errors import BlindgateError

from .capture import CameraEnrollment, CaptureBusy
from .live import door_state
from .web import console_of


async def live_page(request: web.Request) -> web.Response:
    console = console_of(request)
    return console.render(
        request,
        "live.html",
        title="Live",
        fps=console.config.console.live_fps,
        frames=console.config.console.enroll_frames,
    )


async def frame_jpg(request: web.Request) -> web.Response:
    console = console_of(request)
    encoded = await asyncio.get_running_loop().run_in_executor(None, console.live.jpeg)
    if encoded is None:
        return web.Response(status=404, text="no camera frame yet")
    seq, body = encoded
    return web.Response(body=body, content_type="image/jpeg", headers={"X-Frame": str(seq)})


async def state_json(request: web.Request) -> web.Response:
    console = console_of(request)
    state = door_state(console.agent, console.live)
    state["capture"] = console.capture.status() if console.capture is not None else None
    return web.json_response(state)


async def start_capture(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    form = await request.post()
    try:
        name = check_name(str(form.get("name", "")))
        add_to = str(form.get("add_to") or "") or None
        if console.capture is not None and console.capture.active:
            raise CaptureBusy("another enrollment at the camera is running: wait for it or cancel it")
        capture = CameraEnrollment(
            console.agent,
            console.people,
            name,
            console.config.console.enroll_frames,
            console.live,
            add_to=add_to,
            when_enrolled=lambda result: console.agent.audit.write(
                kind="console", action="enroll", source="camera", subject=result["subject"], label=result["name"]
            ),
        )
        capture.start()
    except BlindgateError as exc:
        console.flash(request, str(exc), "error")
    else:
        console.capture = capture
        console.audit(request, "enroll_camera_started", label=name)
    raise web.HTTPSeeOther("/")


async def cancel_capture(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    if console.capture is not None:
        console.capture.cancel()
    raise web.HTTPSeeOther("/")


def add_live_routes(app: web.Application) -> None:
    app.router.add_get("/", live_page)
    app.router.add_get("/live/frame.jpg", frame_jpg)
    app.router.add_get("/live/state.json", state_json)
    app.router.add_post("/enroll/camera", start_capture)
    app.router.add_post("/enroll/camera/cancel", cancel_capture)


__all__ = ["add_live_routes"]
