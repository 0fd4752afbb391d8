"""How the HTTP API says no: every error answer is JSON `{"error": ...}` with the right status.

`json_error` builds the exception a handler raises; `match_error` maps a matcher refusal to its
status; `error_middleware` turns everything else (aiohttp's own 404/405/413, an unreadable store,
an unexpected exception) into the same JSON shape and counts it in the metrics.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from .match_errors import MatchError, MatchErrorKind
from .resources import METRICS
from .store import StoreError

log = logging.getLogger("blindgate.cloud.app")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_EXCEPTIONS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest,
    401: web.HTTPUnauthorized,
    403: web.HTTPForbidden,
    404: web.HTTPNotFound,
    408: web.HTTPRequestTimeout,
    409: web.HTTPConflict,
    429: web.HTTPTooManyRequests,
    503: web.HTTPServiceUnavailable,
}
# What a device did wrong, by matcher refusal; anything else is the cloud's trouble (503).
_MATCH_STATUS = {
    MatchErrorKind.BAD_REQUEST: 400,
    MatchErrorKind.UNKNOWN_SUBJECT: 404,
    MatchErrorKind.UNKNOWN_SITE: 404,
    MatchErrorKind.WRONG_KEY: 409,
}
# aiohttp's own refusals, in words a client can act on.
_AIOHTTP_MESSAGES = {404: "no such endpoint", 405: "method not allowed", 413: "request body too large"}


def json_error(status: int, message: str) -> web.HTTPException:
    """The exception to raise for an error answer with a JSON body (401s also name the Bearer scheme)."""
    body = json.dumps({"error": message})
    if status == 413:
        return web.HTTPRequestEntityTooLarge(0, 0, text=body, content_type="application/json")
    cls = _EXCEPTIONS.get(status, web.HTTPInternalServerError)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return cls(text=body, content_type="application/json", headers=headers)


def match_error(exc: MatchError) -> web.HTTPException:
    """The HTTP answer to a matcher refusal."""
    return json_error(_MATCH_STATUS.get(exc.kind, 503), exc.message)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error answer is JSON, including aiohttp's own (unknown route, wrong method, too large)."""
    metrics = request.app[METRICS]
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400:
            metrics.inc("blindgate_http_errors_total", status=str(exc.status))
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        message = _AIOHTTP_MESSAGES.get(exc.status, exc.reason)
        return web.json_response({"error": message}, status=exc.status)
    except StoreError as exc:  # the store is unreadable, locked or closing: try again later
        log.error("gallery store error", extra={"path": request.path, "error": str(exc)})
        metrics.inc("blindgate_http_errors_total", status="503")
        return web.json_response({"error": f"gallery store unavailable: {exc}"}, status=503)
    except Exception:
        log.exception("request failed", extra={"path": request.path})
        metrics.inc("blindgate_http_errors_total", status="500")
        return web.json_response({"error": "internal error; see the cloud's log"}, status=500)
