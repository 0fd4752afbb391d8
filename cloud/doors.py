"""The door endpoint: add or replace one door's request-signing key, with the site token.

    PUT /v1/sites/{site}/doors/{door}   {"public_key": "<64 hex>"}   201 new door, 200 key replaced

Rotating a door's key needs no re-enrollment: the gallery does not depend on it. The bridge
verifies the next probe against the new key (its cache is dropped here, and refreshed on a
failed verification in other processes).
"""

from __future__ import annotations

import json

from aiohttp import web

from .door_keys import door_id, door_public_key, save_door_key
from .http_errors import json_error
from .routes import authorize_site, read_body, site_param
from .store import UnknownSite

MAX_DOOR_BODY = 1024


def add_door_routes(app: web.Application) -> None:
    """Register the door endpoint on `app`."""
    app.router.add_put("/v1/sites/{site}/doors/{door}", put_door)


async def put_door(request: web.Request) -> web.Response:
    """PUT /v1/sites/{site}/doors/{door}: register or replace the door's Ed25519 public key."""
    site = site_param(request)
    await authorize_site(request, site)
    door = door_id(request.match_info["door"])
    body = await read_body(request, MAX_DOOR_BODY, "door key")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: `[[[[…` nested past the parser's stack
        raise json_error(400, 'body must be JSON {"public_key": "<64 hex>"}') from None
    key = door_public_key(document.get("public_key") if isinstance(document, dict) else None)
    try:
        new = await save_door_key(request.app, site, door, key)
    except UnknownSite as exc:
        raise json_error(404, str(exc)) from None
    return web.json_response({"site": site, "door": door, "public_key": key.hex()}, status=201 if new else 200)
