"""The HTTP routes (cloud/routes.py, shared/protocol.md) against the real engine and store, without MQTT."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest
import pytest_asyncio

from blindgate.cloud.app import create_app
from blindgate.cloud.resources import POOL, STORE
from blindgate.cloud.routes import SNAPSHOTS
from blindgate.shared.engine import decode_scan, encrypt_enrollment, encrypt_probe
from blindgate.shared.engine.context import LEVEL_ENROLL
from blindgate.shared.limits import MAX_BUNDLE_BYTES, MAX_ENROLLMENT_BYTES
from blindgate.shared.protocol import public_key_from_text
from tests.shared.engine import tamper

from .conftest import cloud_config, embeddings, enroll_headers

PROVISION = "provision-secret"

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def client(aiohttp_client, tmp_path):
    app = create_app(cloud_config(tmp_path / "state", provision_token=PROVISION), mqtt=False)
    return await aiohttp_client(app)


async def register(client, site_keys, site="home"):
    resp = await client.post(
        f"/v1/sites/{site}", data=site_keys.evaluation_bytes, headers={"Authorization": f"Bearer {PROVISION}"}
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def enroll(client, site_keys, token, embedding, site="home", label=b"label", subject=None, sealed=b"sealed-blob"):
    """Enroll as a device does: its own subject id and an (opaque, here fake) sealed template."""
    subject = subject or secrets.token_hex(16)
    resp = await client.post(
        f"/v1/sites/{site}/subjects",
        data=encrypt_enrollment(site_keys, embedding),
        headers=enroll_headers(token, site_keys.key_id, label, subject=subject, sealed=sealed),
    )
    assert resp.status == 201, await resp.text()
    answer = await resp.json()
    assert answer["subject"] == subject
    return answer


async def scan_decodes(client, site_keys, faces, expect_slots):
    """Scan in the app's own matcher pool; the device side decodes each face to its slot."""
    pool = client.app[POOL]
    for face, slot in zip(faces, expect_slots):
        version, results = await pool.identify("home", site_keys.key_id, encrypt_probe(site_keys, face), 0)
        occupancy = [r.occupancy() for r in results]
        match = decode_scan(site_keys, face, [r.ciphertext for r in results], occupancy, [r.copies for r in results])
        assert match.best is not None and match.best.slot == slot and match.distance < 1e-2


async def test_register_enroll_list_stats_remove(client, site_keys):
    info = await register(client, site_keys)
    assert info["site"] == "home" and info["key_id"] == site_keys.key_id
    assert len(info["token"]) >= 40
    public_key_from_text(info["cloud_public_key"])
    key = await client.get("/v1/cloud-key")
    assert (await key.json())["cloud_public_key"] == info["cloud_public_key"]

    again = await client.post("/v1/sites/home", data=site_keys.evaluation_bytes, headers={"Authorization": f"Bearer {PROVISION}"})
    assert again.status == 409 and "error" in await again.json()

    token = info["token"]
    faces = embeddings(3, seed=1)
    enrolled = [await enroll(client, site_keys, token, face, label=f"l{i}".encode()) for i, face in enumerate(faces)]
    assert [e["slot"] for e in enrolled] == [0, 1, 2]
    assert [e["gallery_version"] for e in enrolled] == [1, 2, 3]

    auth = {"Authorization": f"Bearer {token}"}
    listing = await (await client.get("/v1/sites/home/subjects", headers=auth)).json()
    assert listing["gallery_version"] == 3
    assert [s["subject"] for s in listing["subjects"]] == [e["subject"] for e in enrolled]
    assert listing["subjects"][1]["label"] == "bDE="  # base64 of b"l1"

    stats = await (await client.get("/v1/sites/home/stats", headers=auth)).json()
    assert stats["subjects"] == 3 and stats["blocks"] == 1 and stats["gallery_version"] == 3
    assert stats["key_id"] == site_keys.key_id and stats["bytes"] > 1_000_000

    await scan_decodes(client, site_keys, faces, [0, 1, 2])

    removed = await client.delete(f"/v1/sites/home/subjects/{enrolled[1]['subject']}", headers=auth)
    assert removed.status == 200 and (await removed.json())["gallery_version"] == 4
    missing = await client.delete(f"/v1/sites/home/subjects/{enrolled[1]['subject']}", headers=auth)
    assert missing.status == 404 and "error" in await missing.json()
    listing = await (await client.get("/v1/sites/home/subjects", headers=auth)).json()
    assert len(listing["subjects"]) == 2
    await scan_decodes(client, site_keys, [faces[0], faces[2]], [0, 2])

    metrics = await (await client.get("/metrics")).text()
    assert "blindgate_enrollments_total 3" in metrics and "blindgate_subjects 2" in metrics


async def test_auth(client, site_keys):
    no_provision = await client.post("/v1/sites/home", data=site_keys.evaluation_bytes)
    assert no_provision.status == 401 and "error" in await no_provision.json()
    info = await register(client, site_keys)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {info['token']}"}):
        resp = await client.get("/v1/sites/home/subjects", headers=headers)
        assert resp.status == 401 and "error" in await resp.json()
    # another site's token (or a site that does not exist) is no key to this one
    resp = await client.get("/v1/sites/nosuch/stats", headers={"Authorization": f"Bearer {info['token']}"})
    assert resp.status == 401
    resp = await client.post("/v1/sites/home/subjects", data=b"x", headers=enroll_headers("wrong", site_keys.key_id))
    assert resp.status == 401


async def test_bad_requests(client, site_keys):
    bad_name = await client.post("/v1/sites/bad%20name", data=b"x", headers={"Authorization": f"Bearer {PROVISION}"})
    assert bad_name.status == 400
    # the device's secret key file must never be accepted
    secret = await client.post("/v1/sites/home", data=site_keys.to_bytes(), headers={"Authorization": f"Bearer {PROVISION}"})
    assert secret.status == 400 and "SECRET" in (await secret.json())["error"]
    garbage = await client.post("/v1/sites/home", data=b"\x00" * 1000, headers={"Authorization": f"Bearer {PROVISION}"})
    assert garbage.status == 400
    info = await register(client, site_keys)
    token = info["token"]
    unknown = await client.delete("/v1/sites/home/subjects/" + "0" * 32, headers={"Authorization": f"Bearer {token}"})
    assert unknown.status == 404
    wrong_key = await client.post(
        "/v1/sites/home/subjects", data=encrypt_enrollment(site_keys, embeddings(1)[0]), headers=enroll_headers(token, "f" * 32)
    )
    assert wrong_key.status == 409
    no_label = enroll_headers(token, site_keys.key_id)
    del no_label["X-Blindgate-Label"]
    resp = await client.post("/v1/sites/home/subjects", data=b"x", headers=no_label)
    assert resp.status == 400
    big_label = enroll_headers(token, site_keys.key_id, label=b"x" * 2000)
    resp = await client.post("/v1/sites/home/subjects", data=b"x", headers=big_label)
    assert resp.status == 413
    assert (await client.get("/nope")).status == 404
    assert "error" in await (await client.get("/nope")).json()


async def test_oversized_and_garbage_enrollment_keep_gallery(client, site_keys):
    info = await register(client, site_keys)
    token = info["token"]
    faces = embeddings(2, seed=2)
    first = [await enroll(client, site_keys, token, face) for face in faces]
    headers = enroll_headers(token, site_keys.key_id)

    too_big = await client.post("/v1/sites/home/subjects", data=b"\x00" * (MAX_ENROLLMENT_BYTES + 1), headers=headers)
    assert too_big.status == 413 and "error" in await too_big.json()

    good = encrypt_enrollment(site_keys, embeddings(1, seed=3)[0])
    for body in (good[: len(good) // 2], good[:100], b"garbage" * 100, encrypt_probe(site_keys, faces[0])):
        resp = await client.post("/v1/sites/home/subjects", data=body, headers=headers)
        assert resp.status == 400, await resp.text()
        assert "error" in await resp.json()

    listing = await (await client.get("/v1/sites/home/subjects", headers={"Authorization": f"Bearer {token}"})).json()
    assert [s["subject"] for s in listing["subjects"]] == [e["subject"] for e in first]
    assert listing["gallery_version"] == 2
    await scan_decodes(client, site_keys, faces, [0, 1])

    # a bundle bigger than 32 MiB is refused before it is read
    huge = await client.post(
        "/v1/sites/other", data=b"\x00" * (MAX_BUNDLE_BYTES + 1), headers={"Authorization": f"Bearer {PROVISION}"}
    )
    assert huge.status == 413 and "error" in await huge.json()


async def test_healthz_fast_while_scanning(client, site_keys):
    info = await register(client, site_keys)
    await enroll(client, site_keys, info["token"], embeddings(1, seed=4)[0])
    pool = client.app[POOL]
    probe = encrypt_probe(site_keys, embeddings(1, seed=5)[0])
    scans = [asyncio.ensure_future(pool.identify("home", site_keys.key_id, probe, 0)) for _ in range(4)]
    await asyncio.sleep(0)  # one loop turn: all four are in flight
    assert pool.inflight == 4
    worst = 0.0
    while not all(s.done() for s in scans):
        started = time.perf_counter()
        resp = await client.get("/healthz")
        assert resp.status == 200 and (await resp.json())["status"] == "ok"
        worst = max(worst, time.perf_counter() - started)
        await asyncio.sleep(0.02)
    await asyncio.gather(*scans)
    assert worst < 0.1, worst


async def test_transparent_or_nan_scale_enrollment_is_400_and_nothing_is_stored(client, site_keys):
    info = await register(client, site_keys)
    token, auth = info["token"], {"Authorization": f"Bearer {info['token']}"}
    first = await enroll(client, site_keys, token, embeddings(1, seed=6)[0])  # positive control
    before = await (await client.get("/v1/sites/home/stats", headers=auth)).json()
    ctx, honest = site_keys.context, encrypt_enrollment(site_keys, embeddings(1, seed=7)[0])
    for name, bad in (
        ("transparent", tamper.transparent(ctx, honest, LEVEL_ENROLL)),
        ("scale nan", tamper.nan_scale(ctx, honest, LEVEL_ENROLL)),
    ):
        headers = enroll_headers(token, site_keys.key_id, subject=secrets.token_hex(16), sealed=b"sealed-blob")
        resp = await client.post("/v1/sites/home/subjects", data=bad, headers=headers)
        assert resp.status == 400, await resp.text()
        assert name in (await resp.json())["error"]
    after = await (await client.get("/v1/sites/home/stats", headers=auth)).json()
    assert (after["subjects"], after["gallery_version"]) == (before["subjects"], before["gallery_version"]) == (1, 1)
    listing = await (await client.get("/v1/sites/home/subjects", headers=auth)).json()
    assert [s["subject"] for s in listing["subjects"]] == [first["subject"]]
    second = await enroll(client, site_keys, token, embeddings(1, seed=7)[0])  # the honest one still enrolls
    assert second["gallery_version"] == 2


async def answer(resp) -> tuple[int, str]:
    return resp.status, await resp.text()


async def test_registration_tells_no_one_unauthorized_whether_a_site_exists(client, site_keys):
    """An unauthenticated POST to an existing and to a new site: the same status and body."""
    await register(client, site_keys)  # positive control: the provisioned registration works
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        for body in (site_keys.evaluation_bytes, b"", b"garbage"):
            existing = await answer(await client.post("/v1/sites/home", data=body, headers=headers))
            new = await answer(await client.post("/v1/sites/fresh", data=body, headers=headers))
            assert existing == new and existing[0] == 401


async def test_open_registration_tells_existence_only_to_a_valid_registration(aiohttp_client, tmp_path, site_keys):
    """Open registration: an empty or invalid bundle is answered alike for existing and new sites."""
    client = await aiohttp_client(create_app(cloud_config(tmp_path / "state", open_registration=True), mqtt=False))
    first = await client.post("/v1/sites/home", data=site_keys.evaluation_bytes)
    assert first.status == 201  # positive control
    for body in (b"", b"garbage"):
        existing = await answer(await client.post("/v1/sites/home", data=body))
        new = await answer(await client.post("/v1/sites/fresh", data=body))
        assert existing == new and existing[0] == 400


async def test_every_site_route_answers_unknown_site_and_wrong_token_alike(client, site_keys):
    await register(client, site_keys)
    routes = [
        ("GET", "/subjects"),
        ("POST", "/subjects"),
        ("DELETE", "/subjects/abc"),
        ("GET", "/subjects/abc/sealed"),
        ("GET", "/stats"),
        ("PUT", "/doors/door1"),
        ("POST", "/rekey"),
        ("POST", "/rekey/subjects/abc"),
        ("POST", "/rekey/commit"),
        ("DELETE", "/rekey"),
    ]
    wrong = {"Authorization": "Bearer wrong-token"}
    for method, tail in routes:
        existing = await answer(await client.request(method, f"/v1/sites/home{tail}", data=b"x", headers=wrong))
        unknown = await answer(await client.request(method, f"/v1/sites/nosuch{tail}", data=b"x", headers=wrong))
        assert existing == unknown and existing[0] == 401, (method, tail)


async def test_healthz_reveals_no_counts(client, site_keys):
    await register(client, site_keys)
    health = await (await client.get("/healthz")).json()
    assert health["status"] == "ok"  # positive control: it still answers
    assert set(health) == {"status", "uptime_s", "workers", "mqtt_connected"}


@pytest.mark.parametrize("site", ["h%D0%BEme", "%EF%BD%88ome", "home%C2%B2", ".hidden", "..", "caf%C3%A9"])
async def test_non_ascii_and_dot_leading_site_ids_are_refused(client, site_keys, site):
    resp = await client.post(
        f"/v1/sites/{site}", data=site_keys.evaluation_bytes, headers={"Authorization": f"Bearer {PROVISION}"}
    )
    assert resp.status in (400, 404) and "error" in await resp.json()
    assert resp.status == 400 or site == ".."  # ".." is normalized away by the URL parser: no route


async def test_enrollments_are_logged_then_snapshotted_in_the_background(aiohttp_client, tmp_path, site_keys):
    """With snapshot_every=2 and two workers, the block's log is folded into a snapshot that decodes the same."""
    config = cloud_config(tmp_path / "state", provision_token=PROVISION, snapshot_every=2, workers=2)
    client = await aiohttp_client(create_app(config, mqtt=False))
    token = (await register(client, site_keys))["token"]
    store = client.app[STORE]
    faces = embeddings(3, seed=5)
    enrolled = [await enroll(client, site_keys, token, face) for face in faces]
    await client.app[SNAPSHOTS].wait()
    # one snapshot at version >= 2 covered the first rows; the third may still be logged, nothing else is
    assert sum(store.log.pending("home").values()) <= 1
    update = store.log.shard_update("home", None, {})
    assert update.snapshots[0].version >= 2 and len(update.entries) <= 1
    removed = await client.delete(
        f"/v1/sites/home/subjects/{enrolled[0]['subject']}", headers={"Authorization": f"Bearer {token}"}
    )
    assert removed.status == 200
    await client.app[SNAPSHOTS].wait()
    await scan_decodes(client, site_keys, faces[1:], [e["slot"] for e in enrolled[1:]])
