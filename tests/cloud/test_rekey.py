"""The rekey routes (cloud/rekey.py) against the real engine, matcher pool and store, without MQTT."""

from __future__ import annotations

import base64

import pytest
import pytest_asyncio

from blindgate.cloud.app import create_app
from blindgate.cloud.match_errors import MatchError, MatchErrorKind
from blindgate.cloud.resources import POOL, STORE
from blindgate.shared.engine import decode_scan, encrypt_enrollment, encrypt_probe

from .conftest import cloud_config, embeddings, enroll_headers

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def client(aiohttp_client, tmp_path):
    return await aiohttp_client(create_app(cloud_config(tmp_path / "state"), mqtt=False))


async def enrolled_site(client, site_keys, faces) -> tuple[str, list[str]]:
    """Register `home` under `site_keys` and enroll `faces`; returns (token, subject ids)."""
    resp = await client.post("/v1/sites/home", data=site_keys.evaluation_bytes)
    assert resp.status == 201, await resp.text()
    token = (await resp.json())["token"]
    subjects = []
    for i, face in enumerate(faces):
        resp = await client.post(
            "/v1/sites/home/subjects",
            data=encrypt_enrollment(site_keys, face),
            headers=enroll_headers(token, site_keys.key_id, b"label-%d" % i),
        )
        assert resp.status == 201, await resp.text()
        subjects.append((await resp.json())["subject"])
    return token, subjects


def subject_headers(token: str, key_id: str, label: bytes, sealed: bytes) -> dict:
    return {
        "Authorization": f"Bearer {token}",
        "X-Blindgate-Key-Id": key_id,
        "X-Blindgate-Label": base64.b64encode(label).decode(),
        "X-Blindgate-Sealed": base64.b64encode(sealed).decode(),
    }


async def decodes(pool, keys, faces, slots) -> None:
    for face, slot in zip(faces, slots):
        _, results = await pool.identify("home", keys.key_id, encrypt_probe(keys, face), 0)
        match = decode_scan(
            keys, face, [r.ciphertext for r in results], [r.occupancy() for r in results], [r.copies for r in results]
        )
        assert match.best is not None and match.best.slot == slot and match.distance < 1e-2


async def test_rekey_switches_the_gallery_and_refuses_the_old_key(client, site_keys, other_keys):
    faces = embeddings(3, seed=7)
    token, subjects = await enrolled_site(client, site_keys, faces)
    auth = {"Authorization": f"Bearer {token}"}
    pool = client.app[POOL]
    await decodes(pool, site_keys, faces, [0, 1, 2])  # positive control before

    stage = await client.post(
        "/v1/sites/home/rekey", data=other_keys.evaluation_bytes, headers={**auth, "X-Blindgate-Gallery-Version": "3"}
    )
    assert stage.status == 201, await stage.text()
    assert (await stage.json()) == {"site": "home", "key_id": other_keys.key_id, "gallery_version": 3}
    new = {"X-Blindgate-Key-Id": other_keys.key_id, **auth}
    for i, (subject, face) in enumerate(zip(subjects[:2], faces)):
        resp = await client.post(
            f"/v1/sites/home/rekey/subjects/{subject}",
            data=encrypt_enrollment(other_keys, face),
            headers=subject_headers(token, other_keys.key_id, b"new-label-%d" % i, b"sealed-%d" % i),
        )
        assert resp.status == 201, await resp.text()
    # one subject not staged yet: the commit is refused and the site is untouched
    early = await client.post("/v1/sites/home/rekey/commit", headers=new)
    assert early.status == 409 and "missing" in (await early.json())["error"]
    await decodes(pool, site_keys, faces, [0, 1, 2])
    resp = await client.post(
        f"/v1/sites/home/rekey/subjects/{subjects[2]}",
        data=encrypt_enrollment(other_keys, faces[2]),
        headers=subject_headers(token, other_keys.key_id, b"new-label-2", b"sealed-2"),
    )
    assert resp.status == 201

    done = await client.post("/v1/sites/home/rekey/commit", headers={**new, "X-Blindgate-Gallery-Version": "3"})
    assert done.status == 200, await done.text()
    assert (await done.json()) == {"site": "home", "key_id": other_keys.key_id, "gallery_version": 4, "subjects": 3, "blocks": 1}

    # the old key id is refused; everyone is found under the new keys, with the same subject ids
    with pytest.raises(MatchError) as refused:
        await pool.identify("home", site_keys.key_id, encrypt_probe(site_keys, faces[0]), 0)
    assert refused.value.kind is MatchErrorKind.WRONG_KEY
    await decodes(pool, other_keys, faces, [0, 1, 2])
    listing = await (await client.get("/v1/sites/home/subjects", headers=auth)).json()
    assert listing["gallery_version"] == 4
    assert [s["subject"] for s in listing["subjects"]] == subjects
    assert listing["subjects"][1]["label"] == base64.b64encode(b"new-label-1").decode()
    stats = await (await client.get("/v1/sites/home/stats", headers=auth)).json()
    assert stats["key_id"] == other_keys.key_id and stats["subjects"] == 3
    assert client.app[STORE].rekey.staged("home") is None
    assert "blindgate_rekeys_total 1" in await (await client.get("/metrics")).text()
    # the new blocks are snapshots at the new version with their layouts and no log rows; enrolling goes on
    store = client.app[STORE]
    assert store.block_layouts("home") == [4] and store.log.pending("home") == {}
    extra = embeddings(1, seed=8)[0]
    resp = await client.post(
        "/v1/sites/home/subjects",
        data=encrypt_enrollment(other_keys, extra),
        headers=enroll_headers(token, other_keys.key_id, b"after-rekey"),
    )
    assert resp.status == 201, await resp.text()
    await decodes(pool, other_keys, [*faces, extra], [0, 1, 2, (await resp.json())["slot"]])


async def test_rekey_refusals(client, site_keys, other_keys):
    faces = embeddings(1, seed=8)
    token, subjects = await enrolled_site(client, site_keys, faces)
    auth = {"Authorization": f"Bearer {token}"}
    wrong = await client.post("/v1/sites/home/rekey", data=other_keys.evaluation_bytes, headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    secret = await client.post("/v1/sites/home/rekey", data=other_keys.to_bytes(), headers=auth)
    assert secret.status == 400 and "SECRET" in (await secret.json())["error"]
    same = await client.post("/v1/sites/home/rekey", data=site_keys.evaluation_bytes, headers=auth)
    assert same.status == 409
    stale = await client.post(
        "/v1/sites/home/rekey", data=other_keys.evaluation_bytes, headers={**auth, "X-Blindgate-Gallery-Version": "0"}
    )
    assert stale.status == 409
    # nothing staged yet: subjects and commit are refused
    headers = subject_headers(token, other_keys.key_id, b"l", b"s")
    early = await client.post(f"/v1/sites/home/rekey/subjects/{subjects[0]}", data=b"x", headers=headers)
    assert early.status == 409
    assert (await client.post("/v1/sites/home/rekey", data=other_keys.evaluation_bytes, headers=auth)).status == 201
    garbage = await client.post(f"/v1/sites/home/rekey/subjects/{subjects[0]}", data=b"not a ciphertext", headers=headers)
    assert garbage.status == 400
    stranger = await client.post(
        "/v1/sites/home/rekey/subjects/" + "ab" * 16, data=encrypt_enrollment(other_keys, faces[0]), headers=headers
    )
    assert stranger.status == 404
    no_sealed = {k: v for k, v in headers.items() if k != "X-Blindgate-Sealed"}
    missing = await client.post(f"/v1/sites/home/rekey/subjects/{subjects[0]}", data=b"x", headers=no_sealed)
    assert missing.status == 400
    other = await client.post("/v1/sites/home/rekey/commit", headers={**auth, "X-Blindgate-Key-Id": "f" * 32})
    assert other.status == 409
    aborted = await client.delete("/v1/sites/home/rekey", headers=auth)
    assert aborted.status == 200 and (await aborted.json())["key_id"] == site_keys.key_id
    assert client.app[STORE].rekey.staged("home") is None
    assert (await client.delete("/v1/sites/home/rekey", headers={"Authorization": "Bearer nope"})).status == 401
    # the site still scans under its old keys (positive control)
    await decodes(client.app[POOL], site_keys, faces, [0])
