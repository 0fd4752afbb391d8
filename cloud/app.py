"""The cloud service's HTTP API (aiohttp) and the wiring of its resources.

`create_app(config)` builds the application: the gallery store, the matcher pool, the MQTT
bridge and the reply-signing key are resources of its `cleanup_ctx` (opened in that order,
closed in reverse), kept in `web.AppKey` slots. Endpoints are those of shared/protocol.md.

Request bodies are read with an explicit limit per route (the evaluation bundle may be 32 MiB,
an enrollment 400 KB, everything else nothing), so an oversized upload is answered 413 before
it is buffered. Errors are JSON `{"error": ...}`. The event loop never runs engine code: bundle
parsing, enrollment and scans happen in the matcher's worker processes, store calls in threads,
so `/healthz` answers at once while scans run.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hmac
import json
import logging
import os
import secrets
import time
from collections import defaultdict
from pathlib import Path

from aiohttp import web

from blindgate.shared.config import CloudConfig
from blindgate.shared.engine.keys import MAX_BUNDLE_BYTES
from blindgate.shared.protocol import (
    ProtocolError,
    check_name,
    new_signing_key,
    public_key_to_text,
    signing_key_from_pem,
    signing_key_to_pem,
)

from .bridge import MQTTBridge
from .matcher import BAD_REQUEST, UNKNOWN_SUBJECT, MatcherPool, MatchError
from .metrics import Metrics
from .store import GalleryStore, StoreConflict, StoreError, UnknownSite, UnknownSubject, new_subject_id

log = logging.getLogger("blindgate.cloud.app")

DB_NAME = "gallery.db"
SIGNING_KEY_NAME = "reply-signing-key.pem"
MAX_ENROLLMENT_BYTES = 400 * 1024
MAX_LABEL_BYTES = 1024
# aiohttp's own cap: the bundle route's limit plus slack; each route reads with its own limit.
CLIENT_MAX_SIZE = MAX_BUNDLE_BYTES + 64 * 1024

CONFIG = web.AppKey("config", CloudConfig)
METRICS = web.AppKey("metrics", Metrics)
STORE = web.AppKey("store", GalleryStore)
POOL = web.AppKey("pool", MatcherPool)
BRIDGE = web.AppKey("bridge", MQTTBridge)
SIGNING_KEY = web.AppKey("signing_key", object)
SITES = web.AppKey("sites", dict)  # site id -> SiteRecord, as last seen by this process
SUBJECT_COUNTS = web.AppKey("subject_counts", dict)  # site id -> subjects (for /metrics)
SITE_LOCKS = web.AppKey("site_locks", defaultdict)  # site id -> asyncio.Lock for gallery changes
STARTED = web.AppKey("started", float)


# --- helpers -------------------------------------------------------------------------------------


def json_error(status: int, message: str) -> web.HTTPException:
    kinds = {
        400: web.HTTPBadRequest,
        401: web.HTTPUnauthorized,
        404: web.HTTPNotFound,
        409: web.HTTPConflict,
        413: web.HTTPRequestEntityTooLarge,
        503: web.HTTPServiceUnavailable,
    }
    body = json.dumps({"error": message})
    if status == 413:
        return web.HTTPRequestEntityTooLarge(0, 0, text=body, content_type="application/json")
    cls = kinds.get(status, web.HTTPInternalServerError)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return cls(text=body, content_type="application/json", headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler):
    """Every error answer is JSON, including aiohttp's own (unknown route, wrong method, too large)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400:
            request.app[METRICS].inc("blindgate_http_errors_total", status=str(exc.status))
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        message = {404: "no such endpoint", 405: "method not allowed", 413: "request body too large"}.get(
            exc.status, exc.reason
        )
        return web.json_response({"error": message}, status=exc.status)
    except StoreError as exc:  # the store is unreadable, locked or closing: try again later
        log.error("gallery store error", extra={"path": request.path, "error": str(exc)})
        request.app[METRICS].inc("blindgate_http_errors_total", status="503")
        return web.json_response({"error": f"gallery store unavailable: {exc}"}, status=503)
    except Exception:
        log.exception("request failed", extra={"path": request.path})
        request.app[METRICS].inc("blindgate_http_errors_total", status="500")
        return web.json_response({"error": "internal error; see the cloud's log"}, status=500)


async def read_body(request: web.Request, limit: int, what: str) -> bytes:
    """The request body, refusing (413) anything over `limit` before buffering more than that."""
    if request.content_length is not None and request.content_length > limit:
        raise json_error(413, f"{what} is {request.content_length} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise json_error(413, f"{what} is more than the {limit} bytes allowed")
        chunks.append(chunk)
    return b"".join(chunks)


def _site_param(request: web.Request) -> str:
    try:
        return check_name(request.match_info["site"], "site id")
    except ProtocolError as exc:
        raise json_error(400, str(exc)) from None


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def in_thread(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def authorize_site(request: web.Request, site: str) -> None:
    """401 unless the request carries the site's token (unknown sites look the same: no enumeration)."""
    token = _bearer(request)
    if token is None:
        raise json_error(401, "missing 'Authorization: Bearer <site token>' header")
    if not await in_thread(request.app[STORE].check_token, site, token):
        raise json_error(401, "wrong site token (or no such site)")


async def lookup_site(app: web.Application, site: str):
    """The site's record (key id, gallery version), from this process' cache or the store."""
    return app[SITES].get(site) or await _refresh_site(app, site)


async def _refresh_site(app: web.Application, site: str):
    """Re-read the site's record from the store into this process' cache."""
    record = await in_thread(app[STORE].site, site)
    if record is not None:
        app[SITES][site] = record
    return record


def _match_error(exc: MatchError) -> web.HTTPException:
    status = {BAD_REQUEST: 400, UNKNOWN_SUBJECT: 404, "unknown_site": 404, "wrong_key": 409}.get(exc.kind, 503)
    return json_error(status, exc.message)


# --- handlers ------------------------------------------------------------------------------------


async def register_site(request: web.Request) -> web.Response:
    app = request.app
    site = _site_param(request)
    provision = app[CONFIG].provision_token
    if provision:
        offered = _bearer(request) or ""
        if not hmac.compare_digest(offered.encode(), provision.encode()):
            raise json_error(401, "registering a site needs 'Authorization: Bearer <provision token>'")
    if await lookup_site(app, site) is not None:
        raise json_error(409, f"site {site!r} is already registered; its keys are never replaced")
    bundle = await read_body(request, MAX_BUNDLE_BYTES, "evaluation bundle")
    if not bundle:
        raise json_error(400, "empty body: send the site's evaluation bundle (application/octet-stream)")
    try:
        key_id = await app[POOL].validate_bundle(bundle)
    except MatchError as exc:
        raise _match_error(exc) from None
    token = secrets.token_urlsafe(32)
    try:
        await in_thread(app[STORE].create_site, site, token, key_id, bundle)
    except StoreConflict as exc:
        raise json_error(409, str(exc)) from None
    await _refresh_site(app, site)
    app[SUBJECT_COUNTS][site] = 0
    app[METRICS].inc("blindgate_sites_registered_total")
    log.info("site registered", extra={"site": site, "key_id": key_id})
    return web.json_response(
        {"site": site, "key_id": key_id, "token": token, "cloud_public_key": public_key_to_text(app[SIGNING_KEY].public_key())},
        status=201,
    )


async def enroll_subject(request: web.Request) -> web.Response:
    app = request.app
    site = _site_param(request)
    await authorize_site(request, site)
    record = await lookup_site(app, site)
    if record is None:
        raise json_error(404, f"site {site!r} is not registered")
    key_id = request.headers.get("X-Blindgate-Key-Id")
    if not key_id:
        raise json_error(400, "missing X-Blindgate-Key-Id header (the site's key id)")
    if key_id != record.key_id:
        raise json_error(409, f"key id {key_id!r} is not site {site!r}'s registered key id {record.key_id!r}")
    label_b64 = request.headers.get("X-Blindgate-Label")
    if label_b64 is None:
        raise json_error(400, "missing X-Blindgate-Label header (base64 of the device-encrypted label)")
    try:
        label = base64.b64decode(label_b64, validate=True)
    except (binascii.Error, ValueError):
        raise json_error(400, "X-Blindgate-Label is not valid base64") from None
    if len(label) > MAX_LABEL_BYTES:
        raise json_error(413, f"label is {len(label)} bytes; the limit is {MAX_LABEL_BYTES}")
    enrollment = await read_body(request, MAX_ENROLLMENT_BYTES, "enrollment ciphertext")
    if not enrollment:
        raise json_error(400, "empty body: send the enrollment ciphertext (application/octet-stream)")
    started = time.perf_counter()
    async with app[SITE_LOCKS][site]:
        record = await in_thread(app[STORE].site, site)
        try:
            base, ref, block = await app[POOL].prepare_enrollment(site, enrollment, record.version)
        except MatchError as exc:
            raise _match_error(exc) from None
        subject = new_subject_id()
        try:
            version = await in_thread(
                functools.partial(
                    app[STORE].commit_enrollment, site, subject, label, ref, enrollment, ref.block, block,
                    expected_version=base,
                )
            )
        except StoreConflict as exc:
            raise json_error(409, f"{exc}; retry") from None
        except UnknownSite as exc:
            raise json_error(404, str(exc)) from None
        await _refresh_site(app, site)
    app[SUBJECT_COUNTS][site] = app[SUBJECT_COUNTS].get(site, 0) + 1
    app[METRICS].inc("blindgate_enrollments_total")
    app[METRICS].observe_enroll(time.perf_counter() - started)
    log.info("subject enrolled", extra={"site": site, "subject": subject, "block": ref.block, "slot": ref.slot, "gallery_version": version})
    return web.json_response(
        {"subject": subject, "block": ref.block, "slot": ref.slot, "gallery_version": version}, status=201
    )


async def list_subjects(request: web.Request) -> web.Response:
    app = request.app
    site = _site_param(request)
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
    app = request.app
    site = _site_param(request)
    subject = request.match_info["subject"]
    await authorize_site(request, site)
    async with app[SITE_LOCKS][site]:
        record = await in_thread(app[STORE].site, site)
        if record is None:
            raise json_error(404, f"site {site!r} is not registered")
        try:
            base, index, block = await app[POOL].prepare_removal(site, subject, record.version)
            version = await in_thread(
                functools.partial(app[STORE].commit_removal, site, subject, index, block, expected_version=base)
            )
        except MatchError as exc:
            raise _match_error(exc) from None
        except UnknownSubject as exc:
            raise json_error(404, str(exc)) from None
        except StoreConflict as exc:
            raise json_error(409, f"{exc}; retry") from None
        await _refresh_site(app, site)
    app[SUBJECT_COUNTS][site] = max(0, app[SUBJECT_COUNTS].get(site, 1) - 1)
    app[METRICS].inc("blindgate_removals_total")
    log.info("subject removed", extra={"site": site, "subject": subject, "gallery_version": version})
    return web.json_response({"gallery_version": version})


async def site_stats(request: web.Request) -> web.Response:
    app = request.app
    site = _site_param(request)
    await authorize_site(request, site)
    try:
        stats = await in_thread(app[STORE].stats, site)
        record = await in_thread(app[STORE].site, site)
    except UnknownSite as exc:
        raise json_error(404, str(exc)) from None
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
    return web.json_response({"cloud_public_key": public_key_to_text(request.app[SIGNING_KEY].public_key())})


async def healthz(request: web.Request) -> web.Response:
    """Liveness and a few cheap facts; touches neither the store nor the workers."""
    app = request.app
    bridge = app.get(BRIDGE)
    return web.json_response(
        {
            "status": "ok",
            "uptime_s": round(time.time() - app[STARTED], 1),
            "sites": len(app[SUBJECT_COUNTS]),
            "workers": app[POOL].workers,
            "queue": app[POOL].inflight,
            "mqtt_connected": bool(bridge and bridge.connected.is_set()) if bridge else None,
        }
    )


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        text=request.app[METRICS].render(), content_type="text/plain", charset="utf-8", headers={"X-Content-Type-Options": "nosniff"}
    )


# --- resources -------------------------------------------------------------------------------------


def load_or_create_signing_key(state_dir: Path):
    """The cloud's Ed25519 reply-signing key, created (mode 0600) on first start."""
    path = state_dir / SIGNING_KEY_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return signing_key_from_pem(path.read_bytes())
    key = new_signing_key()
    with os.fdopen(fd, "wb") as fh:
        fh.write(signing_key_to_pem(key))
        fh.flush()
        os.fsync(fh.fileno())
    log.info("created the reply-signing key", extra={"path": str(path)})
    return key


def _state_ctx(app: web.Application):
    async def ctx(app: web.Application):
        config = app[CONFIG]
        state_dir = Path(config.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        app[SIGNING_KEY] = load_or_create_signing_key(state_dir)
        store = await in_thread(GalleryStore, state_dir / DB_NAME)
        app[STORE] = store
        for record in await in_thread(store.sites):
            app[SITES][record.site_id] = record
            app[SUBJECT_COUNTS][record.site_id] = (await in_thread(store.stats, record.site_id))["subjects"]
        if not config.provision_token:
            log.warning("no provision_token configured: anyone who reaches the API can register a site")
        yield
        await in_thread(store.close)

    return ctx


async def _pool_ctx(app: web.Application):
    config = app[CONFIG]
    pool = MatcherPool(
        Path(config.state_dir) / DB_NAME,
        config.workers,
        config.queue_size,
        app[METRICS],
        log_level=config.log_level if logging.getLogger().handlers else None,
        log_format=config.log_format,
    )
    app[POOL] = pool
    await pool.start()
    yield
    await pool.drain(timeout=10.0)
    await pool.close()


async def _bridge_ctx(app: web.Application):
    bridge = MQTTBridge(app[CONFIG], app[POOL], app[SIGNING_KEY], lambda site: lookup_site(app, site), app[METRICS])
    app[BRIDGE] = bridge
    await bridge.start()
    yield
    await bridge.stop()


def create_app(config: CloudConfig, *, mqtt: bool = True) -> web.Application:
    """The cloud service; `mqtt=False` serves HTTP only (tests of the API)."""
    app = web.Application(client_max_size=CLIENT_MAX_SIZE, middlewares=[error_middleware])
    app[CONFIG] = config
    app[METRICS] = Metrics()
    app[SITES] = {}
    app[SUBJECT_COUNTS] = {}
    app[SITE_LOCKS] = defaultdict(asyncio.Lock)
    app[STARTED] = time.time()
    app.cleanup_ctx.append(_state_ctx(app))
    app.cleanup_ctx.append(_pool_ctx)
    if mqtt:
        app.cleanup_ctx.append(_bridge_ctx)

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

    app.router.add_post("/v1/sites/{site}", register_site)
    app.router.add_post("/v1/sites/{site}/subjects", enroll_subject)
    app.router.add_get("/v1/sites/{site}/subjects", list_subjects)
    app.router.add_delete("/v1/sites/{site}/subjects/{subject}", remove_subject)
    app.router.add_get("/v1/sites/{site}/stats", site_stats)
    app.router.add_get("/v1/cloud-key", cloud_key)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app
