"""Cloud replicas on one PostgreSQL store and one broker: shared secrets, shared gallery, surviving a SIGKILL.

Each replica is a real `blindgate-cloud serve` process with its own (empty) state directory, so
anything they agree on came through the database. Skips when no PostgreSQL server is reachable.
"""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path

import pytest

from blindgate.cloud.store import GalleryStore
from blindgate.cloud.store_settings import PROVISION_TOKEN, CloudSettings
from blindgate.shared.engine import decode_scan, encrypt_enrollment, encrypt_probe
from blindgate.shared.launch import CloudService
from blindgate.shared.protocol import (
    Reply,
    encode_probe_request,
    new_probe_request,
    new_signing_key,
    open_reply,
    public_key_from_text,
    public_key_to_text,
)

from .conftest import Device, embeddings, enroll_headers
from .test_service import counter, http, wait_for

FACES = embeddings(2, seed=33)


@pytest.fixture
def replicas(broker, pg_url, tmp_path):
    """Start replica i (own state dir, the shared store); every one started is stopped after the test."""
    started: list[CloudService] = []

    def start(index: int, **overrides: str) -> CloudService:
        env = {"BLINDGATE_STORE_URL": pg_url, "BLINDGATE_QUEUE_SIZE": "8", "BLINDGATE_LOG_LEVEL": "INFO", **overrides}
        service = CloudService(tmp_path / f"state{index}", broker, tmp_path / f"replica{index}.log", env=env)
        started.append(service)
        return service.start()

    yield start
    for service in started:
        service.stop()


def shared_token(pg_url: str) -> str:
    """The provision token the first replica stored in the database (no replica has it as a file)."""
    with GalleryStore(pg_url) as store:
        value = CloudSettings(store.database).get(PROVISION_TOKEN)
    assert value, "no provision token in the store"
    return value.decode()


def register(url: str, provision_token: str, site_keys, door_key) -> dict:
    """Register site "home" with its first door, "door1" (own key), through the replica at `url`."""
    headers = {
        "Authorization": f"Bearer {provision_token}",
        "X-Blindgate-Door": "door1",
        "X-Blindgate-Door-Key": public_key_to_text(door_key.public_key()),
    }
    status, info = http("POST", f"{url}/v1/sites/home", site_keys.evaluation_bytes, headers)
    assert status == 201, info
    return info


def enroll(url: str, token: str, site_keys, face) -> dict:
    body_bytes = encrypt_enrollment(site_keys, face)
    status, body = http("POST", f"{url}/v1/sites/home/subjects", body_bytes, enroll_headers(token, site_keys.key_id))
    assert status == 201, body
    return body


def decoded_slot(reply: Reply, site_keys, face) -> int | None:
    """The slot the reply's scores put `face` at (None: no match)."""
    occupancy = [r.occupancy() for r in reply.results]
    match = decode_scan(site_keys, face, [r.ciphertext for r in reply.results], occupancy, [r.copies for r in reply.results])
    return None if match.best is None else match.best.block * site_keys.params.slots + match.best.slot


def collect(device: Device, cloud_key, wanted: set[str], timeout: float) -> dict[str, Reply]:
    """Replies to `wanted` request ids until all came or `timeout` s passed without one; duplicates fail."""
    replies: dict[str, Reply] = {}
    while len(replies) < len(wanted):
        try:
            reply = open_reply(bytes(device.reply(timeout).payload), cloud_key)
        except queue.Empty:
            break
        assert reply.request_id not in replies, "a probe was answered twice"
        replies[reply.request_id] = reply
    return replies


def test_replicas_share_secrets_gallery_and_survive_a_sigkill(broker, replicas, pg_url, site_keys, tmp_path: Path):
    first, second = replicas(1), replicas(2)
    assert not (tmp_path / "state1" / "reply-signing-key.pem").exists()  # the key is in the database
    keys = {http("GET", f"{service.url}/v1/cloud-key")[1]["cloud_public_key"] for service in (first, second)}
    assert len(keys) == 1
    cloud_key = public_key_from_text(keys.pop())

    # Register through replica 2 with the token replica 1 may have created, enroll face 0 through replica 1.
    door_key = new_signing_key()
    info = register(second.url, first.provision_token, site_keys, door_key)  # launch.py reads the token from the store
    assert enroll(first.url, info["token"], site_keys, FACES[0])["gallery_version"] == 1

    device = Device(broker.mqtt_config("door"), "home", "door1", door_key=door_key)
    try:
        # Both replicas answer; every answer decodes to the face it was made from.
        probe = encrypt_probe(site_keys, FACES[0])
        sent = {device.probe(site_keys.key_id, probe).request_id for _ in range(8)}
        replies = collect(device, cloud_key, sent, 60)
        assert set(replies) == sent and all(r.status in ("ok", "busy") for r in replies.values())
        assert all(decoded_slot(r, site_keys, FACES[0]) == 0 for r in replies.values() if r.status == "ok")

        # Replica 1 enrolls face 1, then dies (SIGKILL) with probes in flight.
        assert enroll(first.url, info["token"], site_keys, FACES[1])["gallery_version"] == 2
        received = counter(first.url, "blindgate_probes_received_total")
        in_flight = {device.probe(site_keys.key_id, probe, ttl=4).request_id for _ in range(6)}
        wait_for(lambda: counter(first.url, "blindgate_probes_received_total") > received, 20)
        first.kill()
        answered = collect(device, cloud_key, in_flight, 8)  # the dead replica's never come: they time out
        assert all(r.status in ("ok", "busy") for r in answered.values())
        assert all(decoded_slot(r, site_keys, FACES[0]) == 0 for r in answered.values() if r.status == "ok")

        # The survivor learned of replica 1's enrollment (notification) and carries every probe now.
        wait_for(lambda: counter(second.url, "blindgate_subjects") == 2, 20)
        before = counter(second.url, "blindgate_probes_answered_total")
        probe1 = encrypt_probe(site_keys, FACES[1])
        after_kill = {device.probe(site_keys.key_id, probe1).request_id for _ in range(4)}
        replies = collect(device, cloud_key, after_kill, 60)
        assert set(replies) == after_kill, "a probe sent after the kill went unanswered"
        ok = [r for r in replies.values() if r.status == "ok"]
        assert ok and all(r.gallery_version >= 2 for r in ok)
        assert all(decoded_slot(r, site_keys, FACES[1]) == 1 for r in ok)  # the new subject, found by replica 2
        assert counter(second.url, "blindgate_probes_answered_total") - before == len(after_kill)
    finally:
        device.close()
    assert "Traceback" not in second.log_path.read_text()


def test_registration_caps_are_cloud_wide(replicas, pg_url, site_keys, other_keys):
    """max_sites counts the sites every replica registered (here: 1, so the second is refused by the other replica)."""
    first, second = replicas(1, BLINDGATE_MAX_SITES="1"), replicas(2, BLINDGATE_MAX_SITES="1")
    token = shared_token(pg_url)
    assert http("GET", f"{first.url}/v1/cloud-key")[1] == http("GET", f"{second.url}/v1/cloud-key")[1]
    status, body = http("POST", f"{second.url}/v1/sites/one", site_keys.evaluation_bytes, {"Authorization": f"Bearer {token}"})
    assert status == 201, body
    status, body = http("POST", f"{first.url}/v1/sites/two", other_keys.evaluation_bytes, {"Authorization": f"Bearer {token}"})
    assert status == 403 and "max_sites" in body["error"], body


def test_a_door_removed_through_one_replica_is_refused_by_every_replica(broker, replicas, pg_url, site_keys):
    """The bridge caches door keys: removing (revoking) a door must reach the other replica's cache too."""
    first, second = replicas(1), replicas(2)
    cloud_key = public_key_from_text(http("GET", f"{first.url}/v1/cloud-key")[1]["cloud_public_key"])
    door1 = Device(broker.mqtt_config("door"), "home", "door1")
    try:
        headers = {"Authorization": f"Bearer {shared_token(pg_url)}", **door1.door_headers()}
        status, info = http("POST", f"{first.url}/v1/sites/home", site_keys.evaluation_bytes, headers)
        assert status == 201, info
        enroll(first.url, info["token"], site_keys, FACES[0])
        probe = encrypt_probe(site_keys, FACES[0])
        sent = {door1.probe(site_keys.key_id, probe).request_id for _ in range(8)}
        assert all(r.status in ("ok", "busy") for r in collect(door1, cloud_key, sent, 60).values())
        # both replicas answered door1, so both cache its key
        assert all(counter(s.url, "blindgate_probes_answered_total") > 0 for s in (first, second))

        door2_key = public_key_to_text(new_signing_key().public_key())
        body = json.dumps({"public_key": door2_key}).encode()
        auth = {"Authorization": f"Bearer {info['token']}", "Content-Type": "application/json"}
        status, added = http("POST", f"{second.url}/v1/sites/home/doors/door2", body, auth)
        assert status == 201, added
        revoke = {"Authorization": f"Bearer {added['token']}"}
        status, removed = http("DELETE", f"{second.url}/v1/sites/home/doors/door1", None, revoke)
        assert status == 200 and removed["removed"], removed

        # The news reaches replica 1 within moments (with a stale cache it would answer door1 forever) ...
        refused_before = [counter(s.url, "blindgate_probes_refused_total") for s in (first, second)]

        def both_refused() -> bool:
            door1.probe(site_keys.key_id, probe, ttl=2)
            now = [counter(s.url, "blindgate_probes_refused_total") for s in (first, second)]
            return all(n > b for n, b in zip(now, refused_before, strict=True))

        wait_for(both_refused, 20)
        while True:  # drop the replies to those
            try:
                door1.reply(1.0)
            except queue.Empty:
                break
        # ... and from then on no replica answers door1 at all.
        sent = {door1.probe(site_keys.key_id, probe).request_id for _ in range(8)}
        replies = collect(door1, cloud_key, sent, 30)
        assert set(replies) == sent and {r.status for r in replies.values()} == {"error"}
    finally:
        door1.close()


def test_concurrent_enrollments_and_a_removal_through_two_replicas_stay_consistent(replicas, pg_url, site_keys):
    """Each gallery change through either replica gets its own version and slot; both replicas end up agreeing."""
    first, second = replicas(1), replicas(2)
    token = shared_token(pg_url)
    status, info = http("POST", f"{first.url}/v1/sites/home", site_keys.evaluation_bytes, {"Authorization": f"Bearer {token}"})
    assert status == 201, info
    faces = embeddings(6, seed=44)
    bodies = [encrypt_enrollment(site_keys, face) for face in faces]
    headers = enroll_headers(info["token"], site_keys.key_id)
    results: list[tuple[int, dict]] = []

    def enroll_through(url: str, body: bytes) -> None:
        results.append(http("POST", f"{url}/v1/sites/home/subjects", body, headers))

    threads = [threading.Thread(target=enroll_through, args=((first, second)[i % 2].url, b)) for i, b in enumerate(bodies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [status for status, _ in results] == [201] * 6, results
    assert sorted(body["gallery_version"] for _, body in results) == [1, 2, 3, 4, 5, 6]  # one version per change
    assert len({(body["block"], body["slot"]) for _, body in results}) == 6  # no slot given twice

    removed = results[0][1]["subject"]
    auth = {"Authorization": f"Bearer {info['token']}"}
    assert http("DELETE", f"{second.url}/v1/sites/home/subjects/{removed}", None, auth)[0] == 200
    listings = [http("GET", f"{s.url}/v1/sites/home/subjects", None, auth)[1] for s in (first, second)]
    assert listings[0] == listings[1] and listings[0]["gallery_version"] == 7
    assert {s["subject"] for s in listings[0]["subjects"]} == {body["subject"] for _, body in results[1:]}
    wait_for(lambda: [counter(s.url, "blindgate_subjects") for s in (first, second)] == [5, 5], 20)


def test_a_probe_replayed_across_replicas_is_scanned_once(broker, replicas, pg_url, site_keys):
    """A captured probe re-published 6 times: the broker spreads the copies over both replicas, one scan in all."""
    first, second = replicas(1), replicas(2)
    cloud_key = public_key_from_text(http("GET", f"{first.url}/v1/cloud-key")[1]["cloud_public_key"])
    door_key = new_signing_key()
    info = register(first.url, first.provision_token, site_keys, door_key)
    enroll(first.url, info["token"], site_keys, FACES[0])
    device = Device(broker.mqtt_config("door"), "home", "door1", door_key=door_key)
    try:
        req = new_probe_request("home", "door1", site_keys.key_id, encrypt_probe(site_keys, FACES[0]), ttl=30)
        payload = encode_probe_request(req, door_key)
        for _ in range(6):
            device.publish_raw(payload, request_id=req.request_id, ttl=30)
        received = lambda s: counter(s.url, "blindgate_probes_received_total")  # noqa: E731
        wait_for(lambda: received(first) + received(second) == 6, 30)
        assert received(first) > 0 and received(second) > 0, "the broker sent every copy to one replica"
        replies = collect(device, cloud_key, {req.request_id}, 10)
        assert replies[req.request_id].status == "ok"
        with pytest.raises(queue.Empty):  # no second answer from either replica
            device.reply(3)
        dropped = sum(counter(s.url, "blindgate_probes_dropped_total") for s in (first, second))
        assert dropped == 5  # all as replays (nothing else is dropped here)
        # positive control: a fresh probe from the same door is answered
        fresh = device.probe(site_keys.key_id, encrypt_probe(site_keys, FACES[0]))
        assert set(collect(device, cloud_key, {fresh.request_id}, 30)) == {fresh.request_id}
    finally:
        device.close()
