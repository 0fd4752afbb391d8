"""The door endpoints: a site's doors, each with its own request-signing key and bearer token.

    GET    /v1/sites/{site}/doors                                       the site's doors
    POST   /v1/sites/{site}/doors/{door}  {"public_key": "<64 hex>"}   201 a NEW door, with its own token
    PUT    /v1/sites/{site}/doors/{door}  {"public_key": "<64 hex>"}   201 new door, 200 key replaced
    DELETE /v1/sites/{site}/doors/{door}                                200 the door's key and token revoked

Any door of the site may list, add and remove doors (a door joins through one already there:
`blindgate-device export-site`); a door's own token replaces only that door's key (rotation), so
one door cannot take over another's identity. Removing a door revokes its token and its key at
once: this process' bridge forgets the cached key, the next probe is checked against the store.
Rotating a door's key needs no re-enrollment: the gallery does not depend on it.
"""

from __future__ import annotations

import json
import logging
import secrets

from aiohttp import web

from .door_keys import door_id, door_key_registered, door_public_key, forget_door, save_door_key
from .http_errors import json_error
from .resources import METRICS, STORE, in_thread
from .routes import authorize_site, bearer_token, read_body, site_param
from .store import StoreConflict, UnknownSite

log = logging.getLogger("blindgate.cloud.app")

MAX_DOOR_BODY = 1024


def add_door_routes(app: web.Application) -> None:
    """Register the door endpoints on `app`."""
    app.router.add_get("/v1/sites/{site}/doors", list_doors)
    app.router.add_post("/v1/sites/{site}/doors/{door}", add_door)
    app.router.add_put("/v1/sites/{site}/doors/{door}", put_door)
    app.router.add_delete("/v1/sites/{site}/doors/{door}", remove_door)


async def _door_key(request: web.Request) -> bytes:
    body = await read_body(request, MAX_DOOR_BODY, "door key")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: `[[[[…` nested past the parser's stack
        raise json_error(400, 'body must be JSON {"public_key": "<64 hex>"}') from None
    return door_public_key(document.get("public_key") if isinstance(document, dict) else None)


async def _callers(request: web.Request, site: str) -> list[str]:
    """The doors whose own token the request carries ([] for a site token from before per-door tokens)."""
    return await in_thread(request.app[STORE].doors.token_doors, site, bearer_token(request) or "")


async def list_doors(request: web.Request) -> web.Response:
    """GET /v1/sites/{site}/doors: the site's doors, oldest first, and which one is asking."""
    site = site_param(request)
    await authorize_site(request, site)
    records = await in_thread(request.app[STORE].doors.records, site)
    callers = await _callers(request, site)
    return web.json_response(
        {
            "site": site,
            "doors": [
                {"door": r.door_id, "created": r.created, "own_token": r.own_token, "you": r.door_id in callers} for r in records
            ],
        }
    )


async def add_door(request: web.Request) -> web.Response:
    """POST /v1/sites/{site}/doors/{door}: a new door of the site, with its key; answers its own token (once)."""
    app = request.app
    site = site_param(request)
    await authorize_site(request, site)
    door = door_id(request.match_info["door"])
    key = await _door_key(request)
    token = secrets.token_hex(32)  # hex: tokens go in headers and on command lines
    try:
        await in_thread(app[STORE].doors.add, site, door, key, token)
    except UnknownSite as exc:
        raise json_error(404, str(exc)) from None
    except StoreConflict as exc:
        raise json_error(409, str(exc)) from None
    door_key_registered(app, site, door, True)
    app[METRICS].inc("blindgate_doors_added_total")
    log.info("door added", extra={"site": site, "door": door, "by": ",".join(await _callers(request, site))})
    return web.json_response({"site": site, "door": door, "public_key": key.hex(), "token": token}, status=201)


async def put_door(request: web.Request) -> web.Response:
    """PUT /v1/sites/{site}/doors/{door}: register or replace the door's Ed25519 public key."""
    site = site_param(request)
    await authorize_site(request, site)
    door = door_id(request.match_info["door"])
    callers = await _callers(request, site)
    if callers and door not in callers:
        raise json_error(403, f"a door's token replaces only that door's key, not {door!r}'s; add a door with POST (export-site)")
    key = await _door_key(request)
    try:
        new = await save_door_key(request.app, site, door, key)
    except UnknownSite as exc:
        raise json_error(404, str(exc)) from None
    return web.json_response({"site": site, "door": door, "public_key": key.hex()}, status=201 if new else 200)


async def remove_door(request: web.Request) -> web.Response:
    """DELETE /v1/sites/{site}/doors/{door}: the door's key and token stop working now; the others keep theirs."""
    app = request.app
    site = site_param(request)
    await authorize_site(request, site)
    door = door_id(request.match_info["door"])
    by = await _callers(request, site)
    try:
        await in_thread(app[STORE].doors.remove, site, door)
    except UnknownSite as exc:  # UnknownDoor too
        raise json_error(404, str(exc)) from None
    except StoreConflict as exc:
        raise json_error(409, str(exc)) from None
    forget_door(app, site, door)
    app[METRICS].inc("blindgate_doors_removed_total")
    log.warning("door removed", extra={"site": site, "door": door, "by": ",".join(by)})
    return web.json_response(
        {"site": site, "door": door, "removed": True, "doors": await in_thread(app[STORE].doors.doors, site)}
    )
