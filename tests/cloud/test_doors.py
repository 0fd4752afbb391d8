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
