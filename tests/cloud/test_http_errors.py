"""JSON error answers (cloud/http_errors.py): statuses, matcher refusals, the middleware's catch-alls."""

from __future__ import annotations

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpClient
from aiohttp.test_utils import TestClient

from blindgate.cloud.http_errors import error_middleware, json_error, match_error
from blindgate.cloud.match_errors import MatchError, MatchErrorKind
from blindgate.cloud.metrics import Metrics
from blindgate.cloud.resources import METRICS
from blindgate.cloud.store import StoreError


def test_json_error_statuses_and_bearer_challenge() -> None:
    for status in (400, 401, 404, 409, 413, 503, 418):
        exc = json_error(status, "why")
        assert exc.status == (500 if status == 418 else status)
        assert exc.content_type == "application/json" and exc.text == '{"error": "why"}'
    assert json_error(401, "who").headers["WWW-Authenticate"] == "Bearer"


def test_matcher_refusals_map_to_statuses() -> None:
    expected = {
        MatchErrorKind.BAD_REQUEST: 400,
        MatchErrorKind.UNKNOWN_SUBJECT: 404,
        MatchErrorKind.UNKNOWN_SITE: 404,
        MatchErrorKind.WRONG_KEY: 409,
        MatchErrorKind.BUSY: 503,
        MatchErrorKind.UNAVAILABLE: 503,
    }
    assert set(expected) == set(MatchErrorKind)
    for kind, status in expected.items():
        answer = match_error(MatchError(kind, "because"))
        assert answer.status == status and answer.text == '{"error": "because"}'


@pytest_asyncio.fixture
async def client(aiohttp_client: AiohttpClient) -> TestClient[web.Request, web.Application]:
    async def refuse(request: web.Request) -> web.Response:
        raise json_error(409, "taken")

    async def store_down(request: web.Request) -> web.Response:
        raise StoreError("disk gone")

    async def bug(request: web.Request) -> web.Response:
        raise RuntimeError("secret detail")

    app = web.Application(middlewares=[error_middleware])
    app[METRICS] = Metrics()
    app.router.add_get("/refuse", refuse)
    app.router.add_get("/store", store_down)
    app.router.add_get("/bug", bug)
    return await aiohttp_client(app)


@pytest.mark.asyncio
async def test_every_error_answer_is_json_and_counted(client: TestClient[web.Request, web.Application]) -> None:
    answers = {
        "/refuse": (409, "taken"),
        "/store": (503, "gallery store unavailable: disk gone"),
        "/bug": (500, "internal error; see the cloud's log"),
        "/nowhere": (404, "no such endpoint"),
    }
    for path, (status, message) in answers.items():
        resp = await client.get(path)
        assert resp.status == status and await resp.json() == {"error": message}
    resp = await client.post("/refuse")
    assert resp.status == 405 and await resp.json() == {"error": "method not allowed"}
    metrics = client.app[METRICS]
    assert [metrics.get("blindgate_http_errors_total", status=s) for s in ("409", "503", "500", "404", "405")] == [1] * 5
