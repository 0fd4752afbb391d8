"""The HTTP side of a site's key renewal (rekey): stage the new keys and subjects, then switch over atomically.

    POST /v1/sites/{site}/rekey                      new evaluation bundle (validated like a registration)
    POST /v1/sites/{site}/rekey/subjects/{subject}   one subject's enrollment ciphertext under the NEW keys
    POST /v1/sites/{site}/rekey/commit               rebuild the gallery under the new keys, switch in one transaction
    DELETE /v1/sites/{site}/rekey                    drop an unfinished rekey (the site stays on its keys)

Until the commit the site scans under its current keys; after it, probes under the old key id get
the usual "wrong key" error reply. The gallery is rebuilt in a matcher worker from the staged
enrollments and committed with `RekeyStore.commit`, which refuses (409, nothing changed) unless
every current subject was staged and the gallery did not change meanwhile. All three steps hold
the site's lock, so no enrollment or removal of this process interleaves with the switch.
"""

from __future__ import annotations

import functools
import logging
import time

from aiohttp import web

from blindgate.shared.limits import MAX_ENROLLMENT_BYTES

from . import subject_headers
from .http_errors import json_error, match_error
from .match_errors import MatchError
from .resources import METRICS, POOL, SITE_LOCKS, STORE, in_thread, refresh_site
from .routes import authorize_site, current_site, read_body, read_evaluation_bundle, site_param
from .store import StoreConflict, UnknownSite, UnknownSubject

log = logging.getLogger("blindgate.cloud.app")


def add_rekey_routes(app: web.Application) -> None:
    """Register the rekey endpoints on `app`."""
    app.router.add_post("/v1/sites/{site}/rekey", stage_rekey)
    app.router.add_post("/v1/sites/{site}/rekey/subjects/{subject}", stage_rekey_subject)
    app.router.add_post("/v1/sites/{site}/rekey/commit", commit_rekey)
    app.router.add_delete("/v1/sites/{site}/rekey", abort_rekey)


def _expected_version(request: web.Request) -> int | None:
    """The optional `X-Blindgate-Gallery-Version` header: the version the device read its directory at."""
    value = request.headers.get("X-Blindgate-Gallery-Version")
    if value is None:
        return None
    try:
        version = int(value)
    except ValueError:
        raise json_error(400, "X-Blindgate-Gallery-Version must be an integer") from None
    if version < 0:
        raise json_error(400, "X-Blindgate-Gallery-Version must not be negative")
    return version


def _new_key_id(request: web.Request) -> str:
    key_id = request.headers.get("X-Blindgate-Key-Id")
    if not key_id:
        raise json_error(400, "missing X-Blindgate-Key-Id header (the NEW key id of the rekey)")
    return key_id


async def stage_rekey(request: web.Request) -> web.Response:
    """POST /v1/sites/{site}/rekey: stage new evaluation keys (replaces an unfinished rekey)."""
    app = request.app
    site = site_param(request)
    await authorize_site(request, site)
    expected = _expected_version(request)
    key_id, bundle = await read_evaluation_bundle(request, "the new evaluation bundle")
    async with app[SITE_LOCKS][site]:
        try:
            version = await in_thread(functools.partial(app[STORE].rekey.stage, site, key_id, bundle, expected_version=expected))
        except StoreConflict as exc:
            raise json_error(409, str(exc)) from None
        except UnknownSite as exc:
            raise json_error(404, str(exc)) from None
    log.info("rekey staged", extra={"site": site, "key_id": key_id, "gallery_version": version})
    return web.json_response({"site": site, "key_id": key_id, "gallery_version": version}, status=201)


async def stage_rekey_subject(request: web.Request) -> web.Response:
    """POST /v1/sites/{site}/rekey/subjects/{subject}: stage one subject's new enrollment, sealed template and label."""
    app = request.app
    site = site_param(request)
    subject = request.match_info["subject"]
    await authorize_site(request, site)
    key_id = _new_key_id(request)
    label, sealed = subject_headers.label(request), subject_headers.sealed_template(request, required=True)
    enrollment = await read_body(request, MAX_ENROLLMENT_BYTES, "enrollment ciphertext")
    if not enrollment:
        raise json_error(400, "empty body: send the enrollment ciphertext under the new keys")
    async with app[SITE_LOCKS][site]:
        try:
            await app[POOL].check_rekey_enrollment(site, key_id, enrollment)
            await in_thread(app[STORE].rekey.stage_subject, site, key_id, subject, label, enrollment, sealed)
        except MatchError as exc:
            raise match_error(exc) from None
        except StoreConflict as exc:
            raise json_error(409, str(exc)) from None
        except (UnknownSite, UnknownSubject) as exc:
            raise json_error(404, str(exc)) from None
    return web.json_response({"subject": subject, "key_id": key_id}, status=201)


async def commit_rekey(request: web.Request) -> web.Response:
    """POST /v1/sites/{site}/rekey/commit: rebuild the gallery under the new keys and switch over atomically."""
    app = request.app
    site = site_param(request)
    await authorize_site(request, site)
    key_id = _new_key_id(request)
    expected = _expected_version(request)
    started = time.perf_counter()
    async with app[SITE_LOCKS][site]:
        record = await current_site(request, site)
        if expected is not None and record.version != expected:
            raise json_error(409, f"site {site!r} gallery is at version {record.version}, not {expected}: run the rekey again")
        try:
            placements, blocks, layouts = await app[POOL].prepare_rekey(site, key_id)
            commit = functools.partial(
                app[STORE].rekey.commit, site, key_id, placements, blocks, expected_version=record.version, layouts=layouts
            )
            version = await in_thread(commit)  # the new blocks are snapshots at this version, with no log rows
        except MatchError as exc:
            raise match_error(exc) from None
        except StoreConflict as exc:
            raise json_error(409, str(exc)) from None
        except UnknownSite as exc:
            raise json_error(404, str(exc)) from None
        await refresh_site(app, site)
    app[POOL].prewarm(site)  # every shard loads its new blocks now, not on the next probe
    app[METRICS].inc("blindgate_rekeys_total")
    seconds = round(time.perf_counter() - started, 3)
    log.info(
        "site rekeyed",
        extra={"site": site, "key_id": key_id, "subjects": len(placements), "gallery_version": version, "seconds": seconds},
    )
    return web.json_response(
        {"site": site, "key_id": key_id, "gallery_version": version, "subjects": len(placements), "blocks": len(blocks)}
    )


async def abort_rekey(request: web.Request) -> web.Response:
    """DELETE /v1/sites/{site}/rekey: drop the staged keys and subjects, if any; the site keeps its keys."""
    app = request.app
    site = site_param(request)
    await authorize_site(request, site)
    async with app[SITE_LOCKS][site]:
        try:
            await in_thread(app[STORE].rekey.abort, site)
        except UnknownSite as exc:
            raise json_error(404, str(exc)) from None
    record = await current_site(request, site)
    return web.json_response({"site": site, "key_id": record.key_id, "gallery_version": record.version})
