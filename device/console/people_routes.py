"""The console's People page: the CLI's operations (device/people.py) behind forms.

    GET  /people                          everyone enrolled (names decrypted here) with their access rules
    POST /people/enroll                   enroll NAME from uploaded photos (name, photos, optional face)
    POST /people/{subject}/photos         add uploaded photos to a person
    POST /people/{subject}/enable|disable allow or refuse them at any time (they stay enrolled)
    POST /people/{subject}/hours          their own access hours, one 'DAYS HH:MM-HH:MM' per line (empty: none)
    POST /people/{subject}/remove         deny here, then remove from the cloud (needs the confirm box)

Uploads are decoded in memory and never written anywhere; each POST ends in a redirect back to
the page with what happened (or what was wrong and that nothing changed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web
from multidict import MultiDictProxy

from blindgate.device.access_rules import AccessRuleError
from blindgate.device.build import face_config
from blindgate.device.enrollment import EnrollFace, faces_from_photos, parse_face_choice
from blindgate.device.faces import FaceAnalyzer
from blindgate.device.imaging import decode_image
from blindgate.device.people import SUBJECT_ID, PersonError
from blindgate.shared.errors import BlindgateError

from .web import Console, console_of

MAX_PHOTOS = 20
MAX_PHOTO_BYTES = 15 * 2**20
T = TypeVar("T")


async def people_page(request: web.Request) -> web.Response:
    console = console_of(request)
    problem = ""
    try:
        version, people = await _off_loop(console.people.listing)
    except (BlindgateError, OSError) as exc:  # the cloud is away: say so, the rest of the console works
        version, people, problem = 0, [], f"the cloud's list is not available: {exc}"
    return console.render(
        request,
        "people.html",
        title="People",
        people=sorted(people, key=lambda p: ((p.name or "").casefold(), p.subject)),
        version=version,
        problem=problem,
        frames=console.config.console.enroll_frames,
    )


def _photos(form: MultiDictProxy[Any]) -> list[tuple[str, bytes]]:
    files = [f for f in form.getall("photos", []) if isinstance(f, web.FileField)]
    files = [f for f in files if f.filename]
    if not files:
        raise PersonError("choose one or more photos")
    if len(files) > MAX_PHOTOS:
        raise PersonError(f"at most {MAX_PHOTOS} photos at a time")
    photos = []
    for f in files:
        data = f.file.read(MAX_PHOTO_BYTES + 1)
        if len(data) > MAX_PHOTO_BYTES:
            raise PersonError(f"{f.filename}: larger than {MAX_PHOTO_BYTES // 2**20} MB")
        photos.append((f.filename, data))
    return photos


def faces_in_uploads(
    console: Console, photos: list[tuple[str, bytes]], choice: int | str | None, notes: list[str]
) -> list[EnrollFace]:
    """The chosen face of each uploaded photo, by the CLI's rules (a photo without a good face is skipped, said)."""
    decoded = [(name, decode_image(data, name)) for name, data in photos]
    with console.photo_lock:  # dlib's models are not shared between threads: one upload analysed at a time
        if console.photo_analyzer is None:  # its own models: the agent's loop keeps using its analyzer meanwhile
            console.photo_analyzer = FaceAnalyzer(face_config(console.config))
        return faces_from_photos(console.photo_analyzer, decoded, choice, say=notes.append)


async def enroll_photos(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    form = await request.post()
    add_to = request.match_info.get("subject")
    name = str(form.get("name", ""))
    notes: list[str] = []

    def work() -> dict:
        photos = _photos(form)
        faces = faces_in_uploads(console, photos, parse_face_choice(str(form.get("face") or "") or None), notes)
        if add_to is not None:
            target = next((p for p in console.people.listing()[1] if p.subject == add_to), None)
            if target is None or target.name is None:
                raise PersonError(f"no enrolled subject {add_to}")
            return console.people.enroll(target.name, faces, add_to=add_to, say=notes.append)
        return console.people.enroll(name, faces, say=notes.append)

    try:
        result = await _off_loop(work)
    except (BlindgateError, ValueError, OSError) as exc:
        skipped = " ".join(n for n in notes if n.startswith("skipped"))
        console.flash(request, f"Nothing was enrolled: {exc} {skipped}".strip(), "error")
    else:
        action = "add_photos" if add_to else "enroll"
        console.audit(request, action, source="photos", subject=result["subject"], label=result["name"], photos=result["faces"])
        warnings = [n for n in notes if n.startswith(("warning", "skipped"))]
        done = f"Added {result['faces']} photo(s) to {result['name']}." if add_to else f"Enrolled {result['name']}."
        console.flash(request, " ".join([done, *warnings]))
    raise web.HTTPSeeOther("/people")


async def set_enabled(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    subject = _subject(request)
    enabled = request.match_info["action"] == "enable"
    if await _change(request, lambda: console.people.set_enabled(subject, enabled), "enabled" if enabled else "disabled"):
        console.audit(request, "enable" if enabled else "disable", subject=subject)
    raise web.HTTPSeeOther("/people")


async def set_hours(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    subject = _subject(request)
    form = await request.post()
    windows = [line.strip() for line in str(form.get("hours", "")).splitlines() if line.strip()]
    if await _change(request, lambda: console.people.set_windows(subject, windows), "access hours set"):
        console.audit(request, "hours", subject=subject, windows=windows)
    raise web.HTTPSeeOther("/people")


async def remove(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    subject = _subject(request)
    form = await request.post()
    if form.get("confirm") != "yes":
        console.flash(request, "Tick the box to confirm the removal: nothing was removed.", "error")
        raise web.HTTPSeeOther("/people")
    if await _change(request, lambda: console.people.remove(subject, say=lambda _: None), "removed"):
        console.audit(request, "remove", subject=subject)
    raise web.HTTPSeeOther("/people")


async def _change(request: web.Request, change: Callable[[], object], done: str) -> bool:
    console = console_of(request)
    try:
        await _off_loop(change)
    except (BlindgateError, AccessRuleError, ValueError, OSError) as exc:
        console.flash(request, f"Nothing changed: {exc}", "error")
        return False
    form = await request.post()
    who = str(form.get("name") or request.match_info["subject"])[:200]  # the name the page showed (display only)
    console.flash(request, f"{who}: {done}.")
    return True


def _subject(request: web.Request) -> str:
    subject = request.match_info["subject"]
    if not SUBJECT_ID.fullmatch(subject):
        raise web.HTTPNotFound(text="no such person")
    return subject


async def _off_loop(work: Callable[[], T]) -> T:
    """Cloud calls, decoding and dlib run on a worker thread: the live view keeps moving meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(None, work)


def add_people_routes(app: web.Application) -> None:
    app.router.add_get("/people", people_page)
    app.router.add_post("/people/enroll", enroll_photos)
    app.router.add_post("/people/{subject}/photos", enroll_photos)
    app.router.add_post("/people/{subject}/{action:enable|disable}", set_enabled)
    app.router.add_post("/people/{subject}/hours", set_hours)
    app.router.add_post("/people/{subject}/remove", remove)


__all__ = ["add_people_routes", "faces_in_uploads"]
