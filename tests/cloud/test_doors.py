"""cloud/doors.py and cloud/door_keys.py: registering and rotating a door's request key over HTTP."""

from __future__ import annotations

import pytest
import pytest_asyncio

from blindgate.cloud.app import create_app
from blindgate.cloud.resources import STORE
from blindgate.shared.protocol import new_signing_key, public_key_to_text

from .conftest import cloud_config

PROVISION = "provision-secret"
pytestmark = pytest.mark.asyncio


def a_key() -> str:
    return public_key_to_text(new_signing_key().public_key())


@pytest_asyncio.fixture
async def client(aiohttp_client, tmp_path):
    return await aiohttp_client(create_app(cloud_config(tmp_path / "state", provision_token=PROVISION), mqtt=False))


async def register(client, site_keys, headers=None, site="home"):
    headers = {"Authorization": f"Bearer {PROVISION}"} | (headers or {})
    return await client.post(f"/v1/sites/{site}", data=site_keys.evaluation_bytes, headers=headers)


def stored(client, door="door1", site="home"):
    raw = client.app[STORE].doors.key(site, door)
    return raw.hex() if raw else None


async def test_registration_names_the_registering_door(client, site_keys):
    key = a_key()
    resp = await register(client, site_keys, {"X-Blindgate-Door": "door1", "X-Blindgate-Door-Key": key})
    assert resp.status == 201, await resp.text()
    assert stored(client) == key
    assert client.app[STORE].doors.doors("home") == ["door1"]


async def test_registration_without_a_door_registers_none(client, site_keys):
    assert (await register(client, site_keys)).status == 201
    assert client.app[STORE].doors.doors("home") == []


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Blindgate-Door": "door1"},
        {"X-Blindgate-Door-Key": "00" * 32},
        {"X-Blindgate-Door": "door1", "X-Blindgate-Door-Key": "00" * 31},
        {"X-Blindgate-Door": "door1", "X-Blindgate-Door-Key": "zz" * 32},
        {"X-Blindgate-Door": "a/b", "X-Blindgate-Door-Key": "00" * 32},
    ],
)
async def test_malformed_door_headers_refuse_the_registration(client, site_keys, headers):
    resp = await register(client, site_keys, headers)
    assert resp.status == 400, await resp.text()
    assert client.app[STORE].site("home") is None  # refused before anything was stored


async def test_put_adds_then_replaces_a_door_key(client, site_keys):
    token = (await (await register(client, site_keys)).json())["token"]
    auth = {"Authorization": f"Bearer {token}"}
    first, second = a_key(), a_key()
    resp = await client.put("/v1/sites/home/doors/door2", json={"public_key": first}, headers=auth)
    assert resp.status == 201 and (await resp.json()) == {"site": "home", "door": "door2", "public_key": first}
    resp = await client.put("/v1/sites/home/doors/door2", json={"public_key": second}, headers=auth)
    assert resp.status == 200 and stored(client, "door2") == second  # rotated in place


async def test_put_needs_the_site_token_and_a_valid_key(client, site_keys):
    token = (await (await register(client, site_keys)).json())["token"]
    path = "/v1/sites/home/doors/door1"
    assert (await client.put(path, json={"public_key": a_key()})).status == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert (await client.put(path, json={"public_key": a_key()}, headers=wrong)).status == 401
    assert (await client.put("/v1/sites/nosuch/doors/door1", json={"public_key": a_key()}, headers=wrong)).status == 401
    auth = {"Authorization": f"Bearer {token}"}
    for body in ({"public_key": "00" * 31}, {"key": a_key()}, ["x"]):
        assert (await client.put(path, json=body, headers=auth)).status == 400
    assert (await client.put(path, data=b"not json", headers=auth)).status == 400
    assert (await client.put(path, data=b"x" * 5000, headers=auth)).status == 413
    assert (await client.put("/v1/sites/home/doors/a.b!", json={"public_key": a_key()}, headers=auth)).status == 400
    assert stored(client) is None


# -- several doors per site: each with its own token (POST), removed alone (DELETE) -------------------


async def two_doors(client, site_keys) -> tuple[str, str]:
    """A site registered by door1, then door2 added by door1: (door1's token, door2's token)."""
    resp = await register(client, site_keys, {"X-Blindgate-Door": "door1", "X-Blindgate-Door-Key": a_key()})
    token1 = (await resp.json())["token"]
    key2 = a_key()
    resp = await client.post("/v1/sites/home/doors/door2", json={"public_key": key2}, headers=bearer(token1))
    assert resp.status == 201, await resp.text()
    answer = await resp.json()
    assert answer["door"] == "door2" and answer["public_key"] == key2 and answer["token"] != token1
    return token1, answer["token"]


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def test_an_added_door_has_its_own_token_for_every_site_route(client, site_keys):
    token1, token2 = await two_doors(client, site_keys)
    for token in (token1, token2):
        assert (await client.get("/v1/sites/home/stats", headers=bearer(token))).status == 200
    listing = await (await client.get("/v1/sites/home/doors", headers=bearer(token2))).json()
    assert [(d["door"], d["own_token"], d["you"]) for d in listing["doors"]] == [("door1", True, False), ("door2", True, True)]


async def test_removing_a_door_revokes_only_its_token_and_key(client, site_keys):
    token1, token2 = await two_doors(client, site_keys)
    resp = await client.delete("/v1/sites/home/doors/door2", headers=bearer(token1))
    assert resp.status == 200 and (await resp.json())["doors"] == ["door1"]
    assert stored(client, "door2") is None  # the bridge finds no key: its probes are not authentic
    for path in ("/stats", "/subjects", "/doors"):
        assert (await client.get(f"/v1/sites/home{path}", headers=bearer(token2))).status == 401, path
        assert (await client.get(f"/v1/sites/home{path}", headers=bearer(token1))).status == 200, path  # positive control
    assert (await client.post("/v1/sites/home/doors/door3", json={"public_key": a_key()}, headers=bearer(token2))).status == 401


async def test_a_door_removes_itself_but_never_the_last_one(client, site_keys):
    token1, token2 = await two_doors(client, site_keys)
    assert (await client.delete("/v1/sites/home/doors/door1", headers=bearer(token1))).status == 200
    assert (await client.get("/v1/sites/home/stats", headers=bearer(token1))).status == 401
    resp = await client.delete("/v1/sites/home/doors/door2", headers=bearer(token2))
    assert resp.status == 409 and "only door" in (await resp.json())["error"]
    assert (await client.delete("/v1/sites/home/doors/nosuch", headers=bearer(token2))).status == 404
    assert (await client.get("/v1/sites/home/stats", headers=bearer(token2))).status == 200


async def test_adding_a_door_refuses_a_taken_id_and_needs_a_site_token(client, site_keys):
    token1, token2 = await two_doors(client, site_keys)
    for door in ("door1", "door2"):
        resp = await client.post(f"/v1/sites/home/doors/{door}", json={"public_key": a_key()}, headers=bearer(token2))
        assert resp.status == 409, door
    assert (await client.post("/v1/sites/home/doors/door3", json={"public_key": a_key()})).status == 401
    wrong = bearer("not-a-token")
    assert (await client.post("/v1/sites/home/doors/door3", json={"public_key": a_key()}, headers=wrong)).status == 401
    assert client.app[STORE].doors.doors("home") == ["door1", "door2"]


async def test_a_door_token_replaces_only_its_own_key(client, site_keys):
    """door2 cannot take over door1's identity (its key); rotating its own works (positive control)."""
    token1, token2 = await two_doors(client, site_keys)
    before = stored(client, "door1")
    resp = await client.put("/v1/sites/home/doors/door1", json={"public_key": a_key()}, headers=bearer(token2))
    assert resp.status == 403 and stored(client, "door1") == before
    assert (await client.put("/v1/sites/home/doors/door9", json={"public_key": a_key()}, headers=bearer(token2))).status == 403
    key = a_key()
    assert (await client.put("/v1/sites/home/doors/door2", json={"public_key": key}, headers=bearer(token2))).status == 200
    assert stored(client, "door2") == key
