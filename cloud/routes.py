"""The HTTP API's routes (shared/protocol.md): sites, subjects, stats, the cloud key, health and metrics.

`add_routes(app)` registers them. Request bodies are read with an explicit limit per route (the
evaluation bundle may be 32 MiB, an enrollment 400 KB, everything else nothing), so an oversized
upload is answered 413 before it is buffered. Site routes need the site's bearer token, except
registration, which needs the provision token when one is configured. The event loop never runs
engine code: bundle parsing, enrollment and removal happen in the matcher's worker processes, store
calls in threads, so `/healthz` answers at once while scans run.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import secrets
import time
from collections.abc import Callable

from aiohttp import web

from blindgate.shared.limits import MAX_BUNDLE_BYTES, MAX_ENROLLMENT_BYTES
from blindgate.shared.protocol import ProtocolError, check_name, public_key_to_text

from . import subject_headers
from .door_keys import door_from_headers, door_key_registered
from .http_errors import json_error, match_error
from .key_rotation import published
from .match_errors import MatchError
from .registration import REGISTRATION
from .resources import (
    BRIDGE,
    CONFIG,
    METRICS,
    POOL,
    SECRETS,
    SIGNING_KEY,
    SITE_LOCKS,
    STARTED,
    STORE,
    SUBJECT_COUNTS,
    in_thread,
    lookup_site,
    refresh_site,
)
from .snapshots import SnapshotScheduler
from .store import SiteRecord, StoreConflict, UnknownSite, UnknownSubject, new_subject_id
from .store_log import Committed
from .subject_headers import requested_subject, sealed_template

log = logging.getLogger("blindgate.cloud.app")

READ_CHUNK = 64 * 1024
COMMIT_ATTEMPTS = 3  # a logged enrollment/removal refused as a conflict is retried this often in all
SNAPSHOTS = web.AppKey("snapshots", SnapshotScheduler)


async def read_body(request: web.Request, limit: int, what: str) -> bytes:
    """The request body, refusing (413) anything over `limit` before buffering more than that.

    The whole body must arrive within `http_body_timeout` (408): a slow upload holds no connection.
    """
    if request.content_length is not None and request.content_length > limit:
        raise json_error(413, f"{what} is {request.content_length} bytes; the limit is {limit}")
    chunks, size = [], 0
    timeout = request.app[CONFIG].http_body_timeout
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_chunked(READ_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise json_error(413, f"{what} is more than the {limit} bytes allowed")
                chunks.append(chunk)
    except TimeoutError:
        late = json_error(408, f"{what} did not arrive within {timeout:g} s")
        late.force_close()  # the rest of the body is not worth waiting for: close after answering
        raise late from None
    return b"".join(chunks)


def site_param(request: web.Request) -> str:
    """The `{site}` of the path, checked as a protocol name (400 otherwise)."""
    try:
        return check_name(request.match_info["site"], "site id")
    except ProtocolError as exc:
        raise json_error(400, str(exc)) from None


def bearer_token(request: web.Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if any."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def authorize_site(request: web.Request, site: str) -> None:
    """401 unless the request carries the site's token (unknown sites look the same: no enumeration)."""
    token = bearer_token(request)
    if token is None:
        raise json_error(401, "missing 'Authorization: Bearer <site token>' header")
    if not await in_thread(request.app[STORE].check_token, site, token):
        raise json_error(401, "wrong site token (or no such site)")


async def current_site(request: web.Request, site: str) -> SiteRecord:
    """The site's record as stored now (not cached): the base version of a gallery change."""
    record = await in_thread(request.app[STORE].site, site)
    if record is None:
        raise json_error(404, f"site {site!r} is not registered")
    return record


def add_routes(app: web.Application) -> None:
    """Register every endpoint of the API on `app`."""
    app[SNAPSHOTS] = SnapshotScheduler(app[CONFIG].snapshot_every)
    app.router.add_post("/v1/sites/{site}", register_site)
    app.router.add_post("/v1/sites/{site}/subjects", enroll_subject)
    app.router.add_get("/v1/sites/{site}/subjects", list_subjects)
    app.router.add_delete("/v1/sites/{site}/subjects/{subject}", remove_subject)
    app.router.add_get("/v1/sites/{site}/subjects/{subject}/sealed", sealed_subject)
    app.router.add_get("/v1/sites/{site}/stats", site_stats)
    app.router.add_get("/v1/cloud-key", cloud_key)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)


async def read_evaluation_bundle(request: web.Request, what: str) -> tuple[str, bytes]:
    """(key id, bundle) from the body: parsed strictly in a worker and re-serialized, which is what is stored."""
    bundle = await read_body(request, MAX_BUNDLE_BYTES, "evaluation bundle")
    if not bundle:
        raise json_error(400, f"empty body: send {what} (application/octet-stream)")
    try:
        return await request.app[POOL].parse_bundle(bundle)
    except MatchError as exc:
        raise match_error(exc) from None


async def register_site(request: web.Request) -> web.Response:
    """POST /v1/sites/{site}: register a site's evaluation bundle; answers its token and the cloud key (once)."""
    app = request.app
    site = site_param(request)
    gate = app[REGISTRATION]  # provision token, rate and site cap, before any bundle is read (cloud/registration.py)
    gate.authorize(bearer_token(request))
    gate.admit()
    gate.check_capacity(len(await in_thread(app[STORE].sites)))
    # Whether the site exists is told only to a request that could have registered it (authorized,
    # well-formed, valid bundle): anything less is answered the same for a new and an existing site.
    door = door_from_headers(request)  # the registering door's request key, if named (cloud/door_keys.py)
    key_id, bundle = await read_evaluation_bundle(request, "the site's evaluation bundle")
    if await lookup_site(app, site) is not None:
        raise json_error(409, f"site {site!r} is already registered; its keys are never replaced")
    token = secrets.token_hex(32)  # site tokens go on command lines and in headers: hex only
    try:
        # with a door: the token is that door's own (removing the door revokes it), stored with the site
        await in_thread(app[STORE].create_site, site, token, key_id, bundle, door)
    except StoreConflict as exc:
        raise json_error(409, str(exc)) from None
    if door is not None:
        door_key_registered(app, site, door[0], True)
    await refresh_site(app, site)
    app[SUBJECT_COUNTS][site] = 0
    app[METRICS].inc("blindgate_sites_registered_total")
    log.info("site registered", extra={"site": site, "key_id": key_id})
    return web.json_response(
        {"site": site, "key_id": key_id, "token": token, "cloud_public_key": public_key_to_text(app[SIGNING_KEY].public_key())},
        status=201,
    )


async def _with_retries(commit: Callable[[], Committed]) -> Committed:
    """Run a logged gallery change in a thread; a StoreConflict (another replica raced us) is retried, then 409."""
    for attempt in range(COMMIT_ATTEMPTS):
        try:
            return await in_thread(commit)
        except StoreConflict as exc:
            if attempt + 1 == COMMIT_ATTEMPTS:
                raise json_error(409, f"{exc}; retry") from None
        except UnknownSite as exc:
            raise json_error(404, str(exc)) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _after_change(app: web.Application, site: str, committed: Committed) -> None:
    """After a logged change: the workers catch up now (not on the next probe); snapshot the block if its log is long."""
    app[POOL].prewarm(site)
    app[SNAPSHOTS].after_commit(app[POOL], app[STORE], site, committed.ref.block, committed.version, committed.pending)


async def enroll_subject(request: web.Request) -> web.Response:
    """POST /v1/sites/{site}/subjects: add one enrollment ciphertext to the gallery, with its encrypted label."""
    app = request.app
    site = site_param(request)
    await authorize_site(request, site)
    record = await lookup_site(app, site)
    if record is None:
        raise json_error(404, f"site {site!r} is not registered")
    key_id = request.headers.get("X-Blindgate-Key-Id")
    if not key_id:
        raise json_error(400, "missing X-Blindgate-Key-Id header (the site's key id)")
    if key_id != record.key_id:
        raise json_error(409, f"key id {key_id!r} is not site {site!r}'s registered key id {record.key_id!r}")
    label, chosen, sealed = subject_headers.label(request), requested_subject(request), sealed_template(request)
    if chosen is not None and await in_thread(app[STORE].subject, site, chosen) is not None:
        raise json_error(409, f"subject id {chosen!r} is already taken at site {site!r}: choose another")
    enrollment = await read_body(request, MAX_ENROLLMENT_BYTES, "enrollment ciphertext")
    if not enrollment:
        raise json_error(400, "empty body: send the enrollment ciphertext (application/octet-stream)")
    started = time.perf_counter()
    async with app[SITE_LOCKS][site]:
        record = await current_site(request, site)
        try:  # parse only: the enrollment is logged, no block is computed or written (cloud/store_log.py)
            check = await app[POOL].check_enrollment(site, enrollment, record.version)
        except MatchError as exc:
            raise match_error(exc) from None
        subject = chosen or new_subject_id()
        enroll = functools.partial(
            app[STORE].log.enroll,
            site,
            subject,
            label,
            enrollment,
            key_id=check.key_id,
            params=check.params,
            empty_blocks=check.empty_blocks,
            sealed=sealed,
        )
        committed = await _with_retries(enroll)
        await refresh_site(app, site)
    _after_change(app, site, committed)
    ref, version = committed.ref, committed.version
    app[SUBJECT_COUNTS][site] = app[SUBJECT_COUNTS].get(site, 0) + 1
    app[METRICS].inc("blindgate_enrollments_total")
    app[METRICS].observe_enroll(time.perf_counter() - started)
    log.info(
        "subject enrolled",
        extra={"site": site, "subject": subject, "block": ref.block, "slot": ref.slot, "gallery_version": version},
    )
    return web.json_response({"subject": subject, "block": ref.block, "slot": ref.slot, "gallery_version": version}, status=201)


async def list_subjects(request: web.Request) -> web.Response:
    """GET /v1/sites/{site}/subjects: the subject directory with the gallery version it belongs to."""
    app = request.app
    site = site_param(request)
    await authorize_site(request, site)
    try:
        version, subjects = await in_thread(app[STORE].directory, site)
    except UnknownSite as exc:
        raise json_error(404, str(exc)) from None
    return web.json_response(
        {
            "gallery_version": version,
            "subjects": [
                {
                    "subject": s.subject_id,
                    "label": base64.b64encode(s.label).decode(),
                    "block": s.block,
                    "slot": s.slot,
                    "created": s.created,
                }
                for s in subjects
            ],
        }
    )


async def remove_subject(request: web.Request) -> web.Response:
    """DELETE /v1/sites/{site}/subjects/{subject}: take a subject's template out of the gallery."""
    app = request.app
    site = site_param(request)
    subject = request.match_info["subject"]
    await authorize_site(request, site)
    async with app[SITE_LOCKS][site]:
        try:  # logged with the subject's enrollment ciphertext; the worker subtracts it when it catches up
            committed = await _with_retries(functools.partial(app[STORE].log.remove, site, subject))
        except UnknownSubject as exc:
            raise json_error(404, str(exc)) from None
        await refresh_site(app, site)
    _after_change(app, site, committed)
    version = committed.version
    app[SUBJECT_COUNTS][site] = max(0, app[SUBJECT_COUNTS].get(site, 1) - 1)
    app[METRICS].inc("blindgate_removals_total")
    log.info("subject removed", extra={"site": site, "subject": subject, "gallery_version": version})
    return web.json_response({"gallery_version": version})


async def sealed_subject(request: web.Request) -> web.Response:
    """GET /v1/sites/{site}/subjects/{subject}/sealed: the device-sealed template, as the device stored it."""
    site = site_param(request)
    await authorize_site(request, site)
    try:
        sealed = await in_thread(request.app[STORE].sealed, site, request.match_info["subject"])
    except (UnknownSite, UnknownSubject) as exc:
        raise json_error(404, str(exc)) from None
    if not sealed:
        raise json_error(404, "this subject was enrolled without a sealed template")
    return web.Response(body=sealed, content_type="application/octet-stream")


async def site_stats(request: web.Request) -> web.Response:
    """GET /v1/sites/{site}/stats: sizes of the site's gallery."""
    app = request.app
    site = site_param(request)
    await authorize_site(request, site)
    try:
        stats = await in_thread(app[STORE].stats, site)
    except UnknownSite as exc:
        raise json_error(404, str(exc)) from None
    record = await current_site(request, site)
    return web.json_response(
        {
            "subjects": stats["subjects"],
            "blocks": stats["blocks"],
            "gallery_version": stats["version"],
            "key_id": record.key_id,
            "bytes": stats["bytes"],
        }
    )


async def cloud_key(request: web.Request) -> web.Response:
    """GET /v1/cloud-key: the public key devices verify replies with, and a rotation's endorsement if any."""
    app = request.app
    return web.json_response(await in_thread(published, app[SECRETS], app[SIGNING_KEY]))


async def healthz(request: web.Request) -> web.Response:
    """Liveness and a few cheap facts; touches neither the store nor the workers; no counts (sites, queue)."""
    app = request.app
    bridge = app.get(BRIDGE)
    return web.json_response(
        {
            "status": "ok",
            "uptime_s": round(time.time() - app[STARTED], 1),
            "workers": app[POOL].workers,
            "mqtt_connected": bool(bridge and bridge.connected.is_set()) if bridge else None,
        }
    )


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: the Prometheus exposition."""
    return web.Response(
        text=request.app[METRICS].render(),
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )
