"""The MQTT bridge (cloud/bridge.py) against a real Mosquitto: signed replies, refusals, drops, busy, reconnects."""

from __future__ import annotations

import asyncio
import queue
import time
from dataclasses import replace

import numpy as np
import pytest
import pytest_asyncio

from blindgate.cloud.app import create_app
from blindgate.cloud.request_auth import NOT_AUTHENTIC
from blindgate.cloud.resources import BRIDGE, METRICS, SITES, STORE
from blindgate.device.requests import PendingRequests
from blindgate.shared.engine import decode_scan, decode_verify, encrypt_enrollment, encrypt_probe
from blindgate.shared.engine.context import LEVEL_PROBE
from blindgate.shared.protocol import (
    MAX_PROBE_BYTES,
    Mode,
    ReplyStatus,
    encode_probe_request,
    new_probe_request,
    new_signing_key,
    open_reply,
    public_key_from_text,
)
from tests.shared.engine import tamper

from .conftest import Device, cloud_config, embeddings, enroll_headers, register_door

pytestmark = pytest.mark.asyncio
FACES = embeddings(4, seed=11)


@pytest_asyncio.fixture
async def service(broker, aiohttp_client, tmp_path, site_keys):
    """A running service (HTTP + MQTT) with site "home" holding FACES, and a device "door1"."""
    client = await aiohttp_client(create_app(cloud_config(tmp_path / "state", broker), mqtt=True))
    device = Device(broker.mqtt_config("door"), "home", "door1")
    resp = await client.post("/v1/sites/home", data=site_keys.evaluation_bytes, headers=device.door_headers())
    info = await resp.json()
    subjects = []
    for face in FACES:
        resp = await client.post(
            "/v1/sites/home/subjects",
            data=encrypt_enrollment(site_keys, face),
            headers=enroll_headers(info["token"], site_keys.key_id),
        )
        subjects.append((await resp.json())["subject"])
    assert await asyncio.to_thread(client.app[BRIDGE].subscribed.wait, 10), "the bridge never subscribed"
    device.token = info["token"]  # the site token, for registering door keys
    yield client, public_key_from_text(info["cloud_public_key"]), device, subjects
    device.close()


async def reply_of(device, timeout=20.0):
    return await asyncio.to_thread(device.reply, timeout)


async def test_identify_round_trip(service, site_keys):
    client, cloud_key, device, _ = service
    pending = PendingRequests("door1")
    face = FACES[2] + np.random.default_rng(1).normal(0, 0.01, 128)
    req = device.probe(site_keys.key_id, encrypt_probe(site_keys, face))
    pending.add(req)
    msg = await reply_of(device)
    assert msg.retain is False
    assert msg.properties.CorrelationData == bytes.fromhex(req.request_id)
    assert 0 < msg.properties.MessageExpiryInterval <= 10
    reply = open_reply(msg.payload, cloud_key)
    assert pending.accept(reply) == req
    assert reply.status == "ok" and reply.gallery_version == 4 and len(reply.results) == 1
    assert (reply.probe_sha256, reply.mode, reply.subject) == (req.probe_sha256, "identify", None)  # signed binding
    occupancy = [r.occupancy() for r in reply.results]
    match = decode_scan(site_keys, face, [r.ciphertext for r in reply.results], occupancy, [r.copies for r in reply.results])
    assert match.best is not None and match.best.slot == 2
    expected = np.linalg.norm(FACES - face, axis=1)
    assert np.allclose(match.distances[0, :4], expected, atol=1e-4)
    assert np.isnan(match.distances[0, 4:]).all()


async def test_verify_mode(service, site_keys):
    client, cloud_key, device, subjects = service
    face = FACES[1]
    req = device.probe(site_keys.key_id, encrypt_probe(site_keys, face), mode=Mode.VERIFY, subject=subjects[1])
    reply = open_reply((await reply_of(device)).payload, cloud_key)
    assert reply.request_id == req.request_id and reply.status == "ok" and len(reply.results) == 1
    assert (reply.probe_sha256, reply.mode, reply.subject) == (req.probe_sha256, "verify", subjects[1])
    occupied = reply.results[0].occupancy()
    assert occupied.sum() == 1 and occupied[1] == 1
    assert decode_verify(site_keys, reply.results[0].ciphertext) < 1e-2
    req = device.probe(site_keys.key_id, encrypt_probe(site_keys, face), mode=Mode.VERIFY, subject="0" * 32)
    reply = open_reply((await reply_of(device)).payload, cloud_key)
    assert reply.status == "error" and reply.request_id == req.request_id


async def test_bad_payloads_refused_then_good_probe_answered(service, site_keys, other_keys):
    client, cloud_key, device, _ = service
    probe = encrypt_probe(site_keys, FACES[0])
    good = new_probe_request("home", "door1", site_keys.key_id, probe)
    encoded = encode_probe_request(good, device.door_key)
    rid = "ab" * 16
    for payload in (b"garbage", encoded[: len(encoded) // 2], b"\x00" * (MAX_PROBE_BYTES + 10), b""):
        device.publish_raw(payload, request_id=rid)
        reply = open_reply((await reply_of(device)).payload, cloud_key)
        assert reply.status == "error" and reply.request_id == rid and reply.results == ()
    # a well-framed request whose ciphertext is garbage
    bad_ct = new_probe_request("home", "door1", site_keys.key_id, b"\x00" * 5000)
    device.publish_raw(encode_probe_request(bad_ct, device.door_key), request_id=bad_ct.request_id)
    reply = open_reply((await reply_of(device)).payload, cloud_key)
    assert reply.status == "error" and reply.request_id == bad_ct.request_id
    # unknown site (topic and header agree) and a wrong key id
    stranger = Device(device.mqtt_config, "nosuch", "door9")
    try:
        req = stranger.probe(site_keys.key_id, probe)
        reply = open_reply((await reply_of(stranger)).payload, cloud_key)
        assert reply.status == "error" and reply.message == NOT_AUTHENTIC and reply.request_id == req.request_id
    finally:
        stranger.close()
    req = device.probe(other_keys.key_id, encrypt_probe(other_keys, FACES[0]))
    reply = open_reply((await reply_of(device)).payload, cloud_key)
    assert reply.status == "error" and reply.message == NOT_AUTHENTIC  # the same text: no key id oracle
    # header says another device than the topic
    other = new_probe_request("home", "door2", site_keys.key_id, probe)
    device.publish_raw(encode_probe_request(other, device.door_key), request_id=other.request_id)
    reply = open_reply((await reply_of(device)).payload, cloud_key)
    assert reply.status == "error"
    # without a response topic: dropped and counted, no reply
    device.publish_raw(b"garbage", response=False)
    # expired: an error reply (the device refuses it as stale anyway), counted
    expired = device.probe(site_keys.key_id, probe, ttl=-1.0)
    reply = open_reply((await reply_of(device)).payload, cloud_key)
    assert reply.status == "error" and "expired" in reply.message and reply.request_id == expired.request_id
    # still answers a good probe, and only that one arrives
    req = device.probe(site_keys.key_id, probe)
    reply = open_reply((await reply_of(device)).payload, cloud_key)
    assert reply.status == "ok" and reply.request_id == req.request_id
    with pytest.raises(queue.Empty):  # nothing else arrives (a negative: it can only be waited out)
        await asyncio.to_thread(device.replies.get, timeout=0.5)
    metrics = client.app[METRICS]
    assert metrics.get("blindgate_probes_refused_total", reason="expired") == 1
    assert metrics.get("blindgate_probes_dropped_total", reason="malformed") == 1
    text = await (await client.get("/metrics")).text()
    assert 'blindgate_probes_refused_total{reason="expired"} 1' in text
    assert 'blindgate_probes_answered_total{status="ok"} 1' in text


async def test_busy_when_queue_full(service, site_keys):
    client, cloud_key, device, _ = service
    probe = encrypt_probe(site_keys, FACES[0])
    requests = [device.probe(site_keys.key_id, probe) for _ in range(14)]  # queue_size is 8
    replies = [open_reply((await reply_of(device)).payload, cloud_key) for _ in requests]
    statuses = {r.request_id: r.status for r in replies}
    assert set(statuses) == {r.request_id for r in requests}
    assert "busy" in statuses.values() and "ok" in statuses.values()
    assert client.app[METRICS].get("blindgate_probes_busy_total") == list(statuses.values()).count(ReplyStatus.BUSY)


async def test_resubscribes_after_broker_restart(service, broker, site_keys):
    client, cloud_key, device, _ = service
    bridge = client.app[BRIDGE]
    await asyncio.to_thread(broker.restart)
    # paho reconnects within its 1-10 s back-off; both sides subscribe again by themselves.
    await asyncio.to_thread(device.wait_subscribed, 30)
    assert await asyncio.to_thread(bridge.subscribed.wait, 30), "the bridge did not subscribe again"
    req = device.probe(site_keys.key_id, encrypt_probe(site_keys, FACES[3]))
    reply = open_reply((await reply_of(device)).payload, cloud_key)
    assert reply.status == "ok" and reply.request_id == req.request_id


# --- authenticated requests (cloud/request_auth.py) ------------------------------------------------


async def ok_probe(device, cloud_key, site_keys, face=FACES[0]):
    """The positive control: an honest, signed probe of a registered door is scanned."""
    req = device.probe(site_keys.key_id, encrypt_probe(site_keys, face))
    reply = open_reply((await reply_of(device)).payload, cloud_key)
    assert reply.status == "ok" and reply.request_id == req.request_id and reply.probe_sha256 == req.probe_sha256
    return reply


async def test_request_signed_by_an_unregistered_key_is_not_scanned(service, site_keys):
    client, cloud_key, device, _ = service
    metrics = client.app[METRICS]
    impostor = Device(device.mqtt_config, "home", "door1", tag="-impostor")  # same door, an unregistered key
    try:
        req = impostor.probe(site_keys.key_id, encrypt_probe(site_keys, FACES[0]))
        replies = [open_reply((await reply_of(d)).payload, cloud_key) for d in (impostor, device)]
    finally:
        impostor.close()
    for reply in replies:  # both subscribers of the reply topic get the one error reply
        assert reply.status == "error" and reply.message == NOT_AUTHENTIC and reply.results == ()
        assert reply.request_id == req.request_id
    assert metrics.get("blindgate_probes_refused_total", reason="not_authentic") == 1
    assert metrics.get("blindgate_probes_answered_total", status="ok") == 0  # no scan
    await ok_probe(device, cloud_key, site_keys)


async def test_unknown_door_and_bad_signature_look_the_same(service, site_keys):
    client, cloud_key, device, _ = service
    unknown = Device(device.mqtt_config, "home", "door7")  # a door that was never registered
    try:
        unknown.probe(site_keys.key_id, encrypt_probe(site_keys, FACES[0]))
        reply = open_reply((await reply_of(unknown)).payload, cloud_key)
    finally:
        unknown.close()
    assert reply.status == "error" and reply.message == NOT_AUTHENTIC


async def test_unknown_site_unknown_door_and_wrong_key_id_get_one_error_text(service, site_keys, other_keys):
    """No oracle of which sites, doors or key ids exist: the three refusals read exactly the same."""
    client, cloud_key, device, _ = service
    probe = encrypt_probe(site_keys, FACES[0])
    messages = []
    for site, door in (("nosuch", "door1"), ("home", "door7")):
        stranger = Device(device.mqtt_config, site, door)
        try:
            stranger.probe(site_keys.key_id, probe)
            messages.append(open_reply((await reply_of(stranger)).payload, cloud_key).message)
        finally:
            stranger.close()
    device.probe(other_keys.key_id, encrypt_probe(other_keys, FACES[0]))  # registered door, wrong key id
    messages.append(open_reply((await reply_of(device)).payload, cloud_key).message)
    assert messages == [NOT_AUTHENTIC] * 3
    await ok_probe(device, cloud_key, site_keys)  # positive control


async def test_replayed_request_gets_no_second_scan(service, site_keys):
    client, cloud_key, device, _ = service
    req = new_probe_request("home", "door1", site_keys.key_id, encrypt_probe(site_keys, FACES[1]))
    payload = encode_probe_request(req, device.door_key)
    device.publish_raw(payload, request_id=req.request_id)
    assert open_reply((await reply_of(device)).payload, cloud_key).status == "ok"  # positive control
    device.publish_raw(payload, request_id=req.request_id)  # what a relay recorded, sent again
    await ok_probe(device, cloud_key, site_keys)  # the next honest probe's reply is the next to arrive
    metrics = client.app[METRICS]
    assert metrics.get("blindgate_probes_dropped_total", reason="replayed") == 1
    assert metrics.get("blindgate_probes_answered_total", status="ok") == 2


async def test_substituted_probe_is_not_scanned(service, site_keys):
    """A relay swaps a recorded probe into a fresh signed request: hash or signature fails, no scan."""
    client, cloud_key, device, _ = service
    recorded = encrypt_probe(site_keys, FACES[2])
    fresh = new_probe_request("home", "door1", site_keys.key_id, encrypt_probe(site_keys, FACES[3]))
    signed = encode_probe_request(fresh, device.door_key)
    forged = encode_probe_request(replace(fresh, probe=recorded), device.door_key)  # re-hashed header...
    swapped = forged[:-64] + signed[-64:]  # ...with the door's real signature of the fresh request
    naive = signed[: signed.index(fresh.probe)] + recorded + signed[-64:]  # blob swapped, header kept
    for payload in (swapped, naive):
        device.publish_raw(payload, request_id=fresh.request_id)
        reply = open_reply((await reply_of(device)).payload, cloud_key)
        assert reply.status == "error" and reply.results == () and reply.request_id == fresh.request_id
    assert client.app[METRICS].get("blindgate_probes_answered_total", status="ok") == 0
    await ok_probe(device, cloud_key, site_keys)


async def test_signed_topic_and_freshness_are_checked(service, site_keys):
    client, cloud_key, device, _ = service
    probe = encrypt_probe(site_keys, FACES[0])
    now = time.time()
    cases = [
        (dict(topic="elsewhere/home/door1/probe"), "signed topic differs"),
        (dict(now=now + 60), "issued in the future"),
        (dict(ttl=3600), "valid for longer than"),
    ]
    for change, message in cases:
        req = new_probe_request("home", "door1", site_keys.key_id, probe, **change)
        device.publish_raw(encode_probe_request(req, device.door_key), request_id=req.request_id)
        reply = open_reply((await reply_of(device)).payload, cloud_key)
        assert reply.status == "error" and message in reply.message
    await ok_probe(device, cloud_key, site_keys)


async def test_rotated_door_key_is_used_without_re_enrollment(service, site_keys):
    client, cloud_key, device, _ = service
    await ok_probe(device, cloud_key, site_keys)  # caches door1's key in the bridge
    old_key = device.door_key
    device.door_key = new_signing_key()
    await register_door(client, device.token, device)  # PUT /v1/sites/home/doors/door1
    await ok_probe(device, cloud_key, site_keys)
    device.door_key = old_key
    device.probe(site_keys.key_id, encrypt_probe(site_keys, FACES[0]))
    assert open_reply((await reply_of(device)).payload, cloud_key).message == NOT_AUTHENTIC
    # another process (here: the store directly) rotates it: a failed verification re-reads the key
    device.door_key = new_signing_key()
    await asyncio.to_thread(client.app[STORE].doors.put, "home", "door1", device.door_key.public_key().public_bytes_raw())
    await ok_probe(device, cloud_key, site_keys)


async def test_transparent_or_nan_scale_probe_gets_an_error_reply(service, site_keys):
    """Hostile probe ciphertexts are refused before any arithmetic: a signed error, no result."""
    client, cloud_key, device, _ = service
    ctx, honest = site_keys.context, encrypt_probe(site_keys, FACES[1])
    for name, bad in (
        ("transparent", tamper.transparent(ctx, honest, LEVEL_PROBE)),
        ("nan scale", tamper.nan_scale(ctx, honest, LEVEL_PROBE)),
    ):
        req = device.probe(site_keys.key_id, bad)
        reply = open_reply((await reply_of(device)).payload, cloud_key)
        assert (reply.status, reply.request_id, reply.results) == ("error", req.request_id, ()), name
        assert ("transparent" if name == "transparent" else "scale nan") in reply.message
    # positive control: the honest probe is answered with a result
    req = device.probe(site_keys.key_id, honest)
    reply = open_reply((await reply_of(device)).payload, cloud_key)
    assert reply.status == "ok" and reply.request_id == req.request_id and len(reply.results) == 1


async def test_a_flooded_site_gets_busy_while_a_quiet_site_is_answered_in_time(service, site_keys, other_keys):
    """Per-site queue share (queue 8, share 4): site home floods, site away's one probe still gets its scan."""
    client, cloud_key, device, _ = service
    quiet = Device(device.mqtt_config, "away", "door2")
    try:
        resp = await client.post("/v1/sites/away", data=other_keys.evaluation_bytes, headers=quiet.door_headers())
        assert resp.status == 201, await resp.text()
        probe = encrypt_probe(site_keys, FACES[0])
        flood = [device.probe(site_keys.key_id, probe).request_id for _ in range(16)]
        started = time.monotonic()
        req = quiet.probe(other_keys.key_id, encrypt_probe(other_keys, FACES[1]))
        reply = open_reply((await reply_of(quiet, timeout=10.0)).payload, cloud_key)
        assert reply.request_id == req.request_id and reply.status == "ok"
        assert time.monotonic() - started < 3.0  # within the door's default reply timeout
        statuses = [open_reply((await reply_of(device)).payload, cloud_key) for _ in flood]
    finally:
        quiet.close()
    assert {r.request_id for r in statuses} == set(flood)
    assert sum(r.status == "busy" for r in statuses) >= 1 and sum(r.status == "ok" for r in statuses) >= 4


async def test_a_stale_cached_key_id_is_re_read_before_refusing(service, site_keys):
    """Another replica committed a rekey this process has not heard of yet: the store decides, not the cache."""
    client, cloud_key, device, _ = service
    client.app[SITES]["home"] = replace(client.app[SITES]["home"], key_id="stale-key-id")
    await ok_probe(device, cloud_key, site_keys)
    assert client.app[SITES]["home"].key_id == site_keys.key_id
