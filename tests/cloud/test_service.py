"""The service as deployed: `python -m blindgate.cloud.cli serve` processes on a real broker and one state dir."""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable

import pytest

from blindgate.shared.engine import decode_scan, encrypt_enrollment, encrypt_probe
from blindgate.shared.launch import CloudService
from blindgate.shared.protocol import Reply, new_signing_key, open_reply, public_key_from_text, public_key_to_text

from .conftest import Device, embeddings, enroll_headers

FACES = embeddings(3, seed=21)
DOOR_KEY = new_signing_key()  # door1's request-signing key, registered with the site


def door1(broker) -> Device:
    return Device(broker.mqtt_config("door"), "home", "door1", door_key=DOOR_KEY)


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 30.0):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    """Poll `condition` (a cross-process fact with no event to await) until true; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"condition not met within {timeout} s"
        time.sleep(0.02)


def counter(url: str, name: str) -> float:
    """The sum of a counter's series on a service's /metrics."""
    with urllib.request.urlopen(url + "/metrics") as resp:
        text = resp.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.split("{")[0].split(" ")[0] == name)


def register_and_enroll(service: CloudService, site_keys, faces) -> tuple[dict, list[str]]:
    url = service.url
    door = {"X-Blindgate-Door": "door1", "X-Blindgate-Door-Key": public_key_to_text(DOOR_KEY.public_key())}
    door["Authorization"] = f"Bearer {service.provision_token}"  # the token the cloud created at first start
    status, info = http("POST", f"{url}/v1/sites/home", site_keys.evaluation_bytes, door)
    assert status == 201, info
    subjects = []
    for face in faces:
        status, body = http(
            "POST",
            f"{url}/v1/sites/home/subjects",
            encrypt_enrollment(site_keys, face),
            enroll_headers(info["token"], site_keys.key_id),
        )
        assert status == 201, body
        subjects.append(body["subject"])
    return info, subjects


def assert_matches(device: Device, cloud_key, site_keys, face, slot: int) -> None:
    device.probe(site_keys.key_id, encrypt_probe(site_keys, face))
    reply = open_reply(bytes(device.reply(30).payload), cloud_key)
    assert reply.status == "ok", reply.message
    occupancy = [r.occupancy() for r in reply.results]
    match = decode_scan(site_keys, face, [r.ciphertext for r in reply.results], occupancy, [r.copies for r in reply.results])
    assert match.best is not None and match.best.slot == slot and match.distance < 1e-2


@pytest.fixture
def services(broker, tmp_path):
    started: list[CloudService] = []

    def start(**env) -> CloudService:
        proc = CloudService(tmp_path / "state", broker, tmp_path / f"service{len(started)}.log", env=env)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()


def test_shared_subscription_two_processes(broker, services, site_keys):
    first, second = services(), services()
    info, _ = register_and_enroll(first, site_keys, FACES[:2])
    cloud_key = public_key_from_text(info["cloud_public_key"])
    # both processes share the state dir, hence the key and the gallery
    assert http("GET", f"{second.url}/v1/cloud-key")[1]["cloud_public_key"] == info["cloud_public_key"]
    device = door1(broker)
    try:
        probe = encrypt_probe(site_keys, FACES[1])
        sent = [device.probe(site_keys.key_id, probe).request_id for _ in range(12)]  # within 2 x queue_size 8
        replies: list[Reply] = []
        deadline = time.monotonic() + 60
        while len(replies) < len(sent) and time.monotonic() < deadline:
            replies.append(open_reply(bytes(device.reply(60).payload), cloud_key))
        while True:  # any duplicate would arrive within a second (a negative can only be waited out)
            try:
                replies.append(open_reply(bytes(device.reply(1.0).payload), cloud_key))
            except queue.Empty:
                break
    finally:
        device.close()
    counts = Counter(r.request_id for r in replies)
    assert set(counts) == set(sent) and set(counts.values()) == {1}, counts
    assert all(r.status in ("ok", "busy") for r in replies)
    assert sum(r.status == "ok" for r in replies) >= 8
    answered = [counter(proc.url, "blindgate_probes_answered_total") for proc in (first, second)]
    assert sum(answered) == len(sent) and all(a > 0 for a in answered), answered


def test_restart_keeps_gallery_and_sigterm_is_clean(broker, services, site_keys):
    first = services()
    info, subjects = register_and_enroll(first, site_keys, FACES)
    cloud_key = public_key_from_text(info["cloud_public_key"])
    device = door1(broker)
    try:
        probe = encrypt_probe(site_keys, FACES[0])
        sent = {device.probe(site_keys.key_id, probe).request_id for _ in range(4)}
        wait_for(lambda: counter(first.url, "blindgate_probes_received_total") >= len(sent), 10)  # scans under way
        assert first.stop() == 0  # SIGTERM: graceful, in-flight probes still answered
        replies = [open_reply(bytes(device.reply(10).payload), cloud_key) for _ in sent]
    finally:
        device.close()
    assert {r.request_id for r in replies} == sent and all(r.status in ("ok", "busy") for r in replies)
    log = first.log_path.read_text()
    assert "MQTT bridge stopped" in log and "Traceback" not in log

    second = services()
    status, listing = http("GET", f"{second.url}/v1/sites/home/subjects", headers={"Authorization": f"Bearer {info['token']}"})
    assert status == 200 and [s["subject"] for s in listing["subjects"]] == subjects
    assert http("GET", f"{second.url}/v1/cloud-key")[1]["cloud_public_key"] == info["cloud_public_key"]
    device = door1(broker)
    try:
        assert_matches(device, cloud_key, site_keys, FACES[2], 2)
    finally:
        device.close()


def test_kill_during_enrollment(broker, services, site_keys):
    first = services()
    info, subjects = register_and_enroll(first, site_keys, FACES[:2])
    cloud_key = public_key_from_text(info["cloud_public_key"])
    headers = enroll_headers(info["token"], site_keys.key_id)
    extra = embeddings(6, seed=22)

    results = []

    def enroll_many():
        for face in extra:
            try:
                results.append(
                    http("POST", f"{first.url}/v1/sites/home/subjects", encrypt_enrollment(site_keys, face), headers, timeout=10)
                )
            except (OSError, ValueError):
                results.append(None)
                return

    thread = threading.Thread(target=enroll_many)
    thread.start()
    wait_for(lambda: bool(results), 30)  # one enrollment answered, the next one (~0.4 s) under way
    first.kill()
    thread.join(30)
    committed = [body["subject"] for result in results if result and result[0] == 201 for _, body in [result]]

    second = services()
    status, listing = http("GET", f"{second.url}/v1/sites/home/subjects", headers={"Authorization": f"Bearer {info['token']}"})
    assert status == 200
    listed = [s["subject"] for s in listing["subjects"]]
    # every acknowledged enrollment is there, at most one more (committed, answer lost), none half-done
    assert listed[: len(subjects)] == subjects
    assert set(committed) <= set(listed) and len(listed) - len(subjects) - len(committed) in (0, 1)
    status, stats = http("GET", f"{second.url}/v1/sites/home/stats", headers={"Authorization": f"Bearer {info['token']}"})
    assert stats["subjects"] == len(listed) and stats["gallery_version"] == len(listed)
    device = door1(broker)
    try:
        assert_matches(device, cloud_key, site_keys, FACES[1], 1)
        for index in range(len(listed) - len(subjects)):
            assert_matches(device, cloud_key, site_keys, extra[index], len(subjects) + index)
    finally:
        device.close()
