"""Door request keys on the HTTP side: parsing them and registering them (no route of its own).

Used by site registration (`X-Blindgate-Door` / `X-Blindgate-Door-Key` headers, so a fresh
`blindgate-device init` is still one call) and by `PUT /v1/sites/{site}/doors/{door}` (cloud/doors.py).
"""

from __future__ import annotations

import logging

from aiohttp import web

from blindgate.shared.protocol import ProtocolError, check_name

from .http_errors import json_error
from .resources import BRIDGE, METRICS, REPLICA_SYNC, STORE, in_thread
from .store_doors import PUBLIC_KEY_BYTES

log = logging.getLogger("blindgate.cloud.app")

DOOR_HEADER = "X-Blindgate-Door"
DOOR_KEY_HEADER = "X-Blindgate-Door-Key"


def door_id(text: str) -> str:
    """A door id is a device id: 400 unless it is a protocol name."""
    try:
        return check_name(text, "door id")
    except ProtocolError as exc:
        raise json_error(400, str(exc)) from None


def door_public_key(text: object) -> bytes:
    """A door's Ed25519 public key from its 64 hex characters; 400 otherwise."""
    try:
        if not isinstance(text, str):
            raise ValueError("not a string")
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raw = b""
    if len(raw) != PUBLIC_KEY_BYTES:
        raise json_error(400, f"a door public key is {2 * PUBLIC_KEY_BYTES} hex characters (Ed25519)")
    return raw


def door_from_headers(request: web.Request) -> tuple[str, bytes] | None:
    """The (door id, public key) a registration names in its headers; None if it names none, 400 if half."""
    door, key = request.headers.get(DOOR_HEADER), request.headers.get(DOOR_KEY_HEADER)
    if door is None and key is None:
        return None
    if door is None or key is None:
        raise json_error(400, f"send both {DOOR_HEADER} and {DOOR_KEY_HEADER}, or neither")
    return door_id(door), door_public_key(key)


async def save_door_key(app: web.Application, site: str, door: str, public_key: bytes) -> bool:
    """Store a door's key (new or replacing); the bridge of this process forgets its cached one. True if new."""
    new = await in_thread(app[STORE].doors.put, site, door, public_key)
    door_key_registered(app, site, door, new)
    return new


def door_key_registered(app: web.Application, site: str, door: str, new: bool) -> None:
    """After a door's key was stored: the bridge of this process forgets its cached one; counted and logged."""
    forget_door(app, site, door)
    app[METRICS].inc("blindgate_door_keys_registered_total")
    log.info("door key registered", extra={"site": site, "door": door, "new": new})


def forget_door(app: web.Application, site: str, door: str) -> None:
    """This process' bridge drops its cached key of the door, and every other replica's (cloud/replica_sync.py).

    The next probe from that door is checked against the store.
    """
    if BRIDGE in app:
        app[BRIDGE].doors.forget(site, door)
    if REPLICA_SYNC in app:
        app[REPLICA_SYNC].door_changed(site, door)
