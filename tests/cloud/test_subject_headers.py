"""The device-chosen subject id and sealed template at enrollment, and the sealed-template route."""

from __future__ import annotations

import secrets

import pytest

from blindgate.shared.engine import encrypt_enrollment
from blindgate.shared.limits import MAX_SEALED_BYTES

from .conftest import embeddings, enroll_headers
from .test_routes import client, enroll, register  # noqa: F401  (client is a fixture)

pytestmark = pytest.mark.asyncio


async def test_chosen_subject_and_sealed_blob_round_trip(client, site_keys):  # noqa: F811
    token = (await register(client, site_keys))["token"]
    subject = secrets.token_hex(16)
    await enroll(client, site_keys, token, embeddings(1)[0], subject=subject, sealed=b"\x01sealed\x00blob")
    auth = {"Authorization": f"Bearer {token}"}
    resp = await client.get(f"/v1/sites/home/subjects/{subject}/sealed", headers=auth)
    assert resp.status == 200 and resp.content_type == "application/octet-stream"
    assert await resp.read() == b"\x01sealed\x00blob"
    listing = await (await client.get("/v1/sites/home/subjects", headers=auth)).json()
    assert [s["subject"] for s in listing["subjects"]] == [subject]
    # the site token is required; unknown subjects are 404
    assert (await client.get(f"/v1/sites/home/subjects/{subject}/sealed")).status == 401
    wrong = {"Authorization": "Bearer nope"}
    assert (await client.get(f"/v1/sites/home/subjects/{subject}/sealed", headers=wrong)).status == 401
    assert (await client.get(f"/v1/sites/home/subjects/{'0' * 32}/sealed", headers=auth)).status == 404
    # after removal the cloud has no blob to hand out
    assert (await client.delete(f"/v1/sites/home/subjects/{subject}", headers=auth)).status == 200
    assert (await client.get(f"/v1/sites/home/subjects/{subject}/sealed", headers=auth)).status == 404


async def test_taken_or_malformed_subject_id_and_oversized_blob_are_refused(client, site_keys):  # noqa: F811
    token = (await register(client, site_keys))["token"]
    subject = secrets.token_hex(16)
    await enroll(client, site_keys, token, embeddings(1)[0], subject=subject)
    body = encrypt_enrollment(site_keys, embeddings(1, seed=5)[0])

    async def post(headers):
        resp = await client.post("/v1/sites/home/subjects", data=body, headers=headers)
        return resp.status, (await resp.json()).get("error", "")

    status, error = await post(enroll_headers(token, site_keys.key_id, subject=subject, sealed=b"x"))
    assert status == 409 and "taken" in error
    for bad in ("ABCDEF" * 6, "12" * 15, "g" * 32, "../" + "a" * 29):
        status, error = await post(enroll_headers(token, site_keys.key_id, subject=bad, sealed=b"x"))
        assert status == 400 and "X-Blindgate-Subject" in error
    fresh = secrets.token_hex(16)
    big = enroll_headers(token, site_keys.key_id, subject=fresh, sealed=b"x" * (MAX_SEALED_BYTES + 1))
    resp = await client.post("/v1/sites/home/subjects", data=body, headers=big)
    assert resp.status in (400, 413)  # 400 from aiohttp's 8190-byte header line limit, 413 from the route
    headers = enroll_headers(token, site_keys.key_id, subject=fresh)
    headers["X-Blindgate-Sealed"] = "not base64!"
    assert (await post(headers))[0] == 400
    # nothing was enrolled by the refused requests; the honest request still works
    auth = {"Authorization": f"Bearer {token}"}
    listing = await (await client.get("/v1/sites/home/subjects", headers=auth)).json()
    assert [s["subject"] for s in listing["subjects"]] == [subject] and listing["gallery_version"] == 1
    ok = await client.post("/v1/sites/home/subjects", data=body, headers=enroll_headers(token, site_keys.key_id, subject=fresh))
    assert ok.status == 201 and (await ok.json())["subject"] == fresh
    sealed = await client.get(f"/v1/sites/home/subjects/{fresh}/sealed", headers=auth)
    assert sealed.status == 404  # enrolled without a blob: a checking door never opens for it
