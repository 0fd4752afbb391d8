"""Benchmark: the cloud service under load from simulated door devices, end to end over MQTT.

Starts its own Mosquitto and `python -m blindgate.cloud.cli serve` on loopback, fills a site's gallery
with G subjects, then K devices each publish real encrypted probes at `--rate` per second for
`--duration` seconds. Prints one JSON object on stdout (progress on stderr):

    python bench/cloud_load.py                                   # G=1000, 20 devices x 1/s, 60 s
    python bench/cloud_load.py --devices 5 --rate 2 --duration 20 --gallery 100 --workers 2

Latency is publish -> signed reply received (broker, queueing, scan, signing, both hops).
A reply counts as lost if none arrived within `--reply-timeout` after the last probe.
One probe in `--check-every` is decrypted and must decode to the subject it was made from.

Gallery creation uses the bulk-import path rather than 1000 HTTP enrollments (~0.3 s each):
the device side encrypts whole blocks with `engine.encrypt_block` plus each subject's
enrollment ciphertext (kept so the subject can be removed later), and `GalleryStore.import_block`
stores them in one transaction before the service starts. The resulting blocks have exactly the
layout enrollment builds. (There is no HTTP route for bulk import yet: see shared/protocol.md.)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from blindgate.cloud.app import DB_NAME, load_or_create_signing_key  # noqa: E402
from blindgate.cloud.store import GalleryStore, new_subject_id  # noqa: E402
from blindgate.shared.engine import (  # noqa: E402
    base_slots,
    decode_scan,
    encrypt_block,
    encrypt_enrollment,
    encrypt_probe,
    generate_site_keys,
    plan_blocks,
)
from blindgate.shared.launch import Broker, CloudService, start_broker  # noqa: E402
from blindgate.shared.protocol import (  # noqa: E402
    encode_probe_request,
    new_probe_request,
    new_signing_key,
    open_reply,
    probe_topic,
    reply_topic,
)

SITE = "bench"


def progress(message: str) -> None:
    print(f"[cloud_load] {message}", file=sys.stderr, flush=True)


def face_of(params, plan: list[tuple[int, int, int]], ref) -> int:
    """The index in `faces` of the template `build_gallery` put at `ref` (block, base slot)."""
    start, _, copies = plan[ref.block]
    return start + int(np.flatnonzero(base_slots(params, copies) == ref.slot)[0])


def build_gallery(location: str | Path, keys, faces: np.ndarray, doors: dict | None = None, enrollments: bool = True) -> None:
    """Register the site (and `doors`: name -> request-signing key), bulk-import `faces` per `plan_blocks`.

    `location`: the store (SQLite path or PostgreSQL URL). Without `enrollments` each subject row
    holds a placeholder instead of its enrollment ciphertext (scans never read it; 65,536 real
    ones would take minutes and 10 GB).
    """
    with GalleryStore(location) as store:
        store.create_site(SITE, secrets.token_urlsafe(32), keys.key_id, keys.evaluation_bytes)
        for name, door_key in (doors or {}).items():
            store.doors.put(SITE, name, door_key.public_key().public_bytes_raw())
        for index, (start, end, copies) in enumerate(plan_blocks(keys.params, len(faces))):
            progress(f"bulk-importing block {index} ({end - start} templates, {copies} copies)")
            chunk = faces[start:end]
            slots = base_slots(keys.params, copies)
            subjects = [
                (
                    new_subject_id(),
                    b"bench-label",
                    int(slots[k]),
                    encrypt_enrollment(keys, face) if enrollments else b"placeholder",
                )
                for k, face in enumerate(chunk)
            ]
            store.import_block(SITE, index, encrypt_block(keys, chunk, copies=copies), subjects, copies=copies)


class Device:
    def __init__(self, name: str, broker: Broker, results: queue.Queue, door_key) -> None:
        self.name = name
        self.door_key = door_key  # registered by build_gallery
        self.client = broker.client("door", f"bench-{name}-{os.getpid()}")
        ready = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(reply_topic(SITE, name), qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: ready.set()
        self.client.on_message = lambda c, u, m: results.put((time.perf_counter(), m.payload))
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if not ready.wait(10):
            raise RuntimeError(f"device {name} could not subscribe")

    def publish(self, key_id: str, probe: bytes, ttl: float):
        req = new_probe_request(SITE, self.name, key_id, probe, ttl=ttl)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = reply_topic(SITE, self.name)
        props.CorrelationData = bytes.fromhex(req.request_id)
        props.MessageExpiryInterval = math.ceil(ttl)
        self.client.publish(probe_topic(SITE, self.name), encode_probe_request(req, self.door_key), qos=1, properties=props)
        return req

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--rate", type=float, default=1.0, help="probes per second per device")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--gallery", type=int, default=1000, help="subjects enrolled (G)")
    parser.add_argument("--workers", type=int, default=2, help="matcher processes of the service")
    parser.add_argument("--queue-size", type=int, default=32)
    parser.add_argument("--ttl", type=float, default=5.0, help="probe request lifetime (s)")
    parser.add_argument("--reply-timeout", type=float, default=10.0)
    parser.add_argument("--check-every", type=int, default=10, help="decode one reply in N (0: none)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (gallery, logs)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="blindgate-cloud-load-"))
    state_dir = workdir / "state"
    state_dir.mkdir()
    rng = np.random.default_rng(7)
    keys = generate_site_keys()
    faces = rng.normal(0, 0.09, (args.gallery, 128))
    started = time.perf_counter()
    door_keys = {f"door{i}": new_signing_key() for i in range(args.devices)}  # each door's request-signing key
    build_gallery(state_dir / DB_NAME, keys, faces, door_keys)
    load_or_create_signing_key(state_dir)
    plan = plan_blocks(keys.params, args.gallery)
    import_seconds = time.perf_counter() - started
    progress(f"gallery of {args.gallery} imported in {import_seconds:.1f} s")

    # Probes: a few per device, near enrolled faces; the request ids are fresh for every send.
    probe_faces = [int(i) for i in rng.integers(0, args.gallery, 16)]
    probes = [(i, encrypt_probe(keys, faces[i] + rng.normal(0, 0.01, 128))) for i in probe_faces]

    broker = start_broker(workdir / "mosquitto")
    service = CloudService(
        state_dir,
        broker,
        workdir / "service.log",
        env={
            "BLINDGATE_WORKERS": args.workers,
            "BLINDGATE_QUEUE_SIZE": args.queue_size,
            "BLINDGATE_LOG_LEVEL": "WARNING",
        },
    )
    devices: list[Device] = []
    result: dict = {}
    try:
        service.start()
        with urllib.request.urlopen(f"{service.url}/v1/cloud-key") as resp:
            from blindgate.shared.protocol import public_key_from_text

            cloud_key = public_key_from_text(json.load(resp)["cloud_public_key"])

        replies: queue.Queue = queue.Queue()
        devices = [Device(name, broker, replies, door_key) for name, door_key in door_keys.items()]

        # Warm-up: one probe loads the gallery into every worker (not counted).
        for _ in range(args.workers):
            devices[0].publish(keys.key_id, probes[0][1], args.ttl)
        for _ in range(args.workers):
            replies.get(timeout=60)
        progress(f"service ready ({args.workers} workers); loading for {args.duration:.0f} s")

        sent: dict[str, tuple[float, int, int]] = {}  # request id -> (send time, face index, probe number)
        interval = 1.0 / args.rate
        total = int(args.duration * args.rate) * args.devices
        t0 = time.perf_counter()
        schedule = sorted(
            (t0 + k * interval + d * interval / args.devices, d, k)
            for d in range(args.devices)
            for k in range(int(args.duration * args.rate))
        )
        counter = 0
        for when, d, _ in schedule:
            delay = when - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            face_index, probe = probes[counter % len(probes)]
            req = devices[d].publish(keys.key_id, probe, args.ttl)
            sent[req.request_id] = (time.perf_counter(), face_index, counter)
            counter += 1
        load_seconds = time.perf_counter() - t0

        answered: dict[str, tuple[str, float]] = {}
        duplicates = bad = wrong_match = checked = 0
        end = time.perf_counter() + args.reply_timeout
        while len(answered) < total and time.perf_counter() < end or not replies.empty():
            try:
                received, payload = replies.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                reply = open_reply(payload, cloud_key)
            except Exception:
                bad += 1
                continue
            if reply.request_id not in sent:
                continue  # warm-up
            if reply.request_id in answered:
                duplicates += 1
                continue
            sent_at, face_index, number = sent[reply.request_id]
            answered[reply.request_id] = (reply.status, received - sent_at)
            if reply.status == "ok" and args.check_every and number % args.check_every == 0:
                checked += 1
                occupancy = [r.occupancy() for r in reply.results]
                layouts = [r.copies for r in reply.results]
                match = decode_scan(keys, faces[face_index], [r.ciphertext for r in reply.results], occupancy, layouts)
                if match.best is None or face_of(keys.params, plan, match.best) != face_index:
                    wrong_match += 1

        ok = [lat for status, lat in answered.values() if status == "ok"]
        statuses = [status for status, _ in answered.values()]
        with urllib.request.urlopen(f"{service.url}/metrics") as resp:
            metrics_text = resp.read().decode()
        result = {
            "gallery": args.gallery,
            "blocks": len(plan),
            "copies": [copies for _, _, copies in plan],
            "devices": args.devices,
            "rate_per_device": args.rate,
            "duration_s": args.duration,
            "workers": args.workers,
            "queue_size": args.queue_size,
            "cores": os.cpu_count(),
            "sent": total,
            "replies": len(answered),
            "ok": statuses.count("ok"),
            "busy": statuses.count("busy"),
            "error": statuses.count("error"),
            "lost": total - len(answered),
            "duplicates": duplicates,
            "bad_signature": bad,
            "decoded_checked": checked,
            "decoded_wrong": wrong_match,
            "latency_ok_s": {
                "p50": percentile(ok, 0.50),
                "p90": percentile(ok, 0.90),
                "p99": percentile(ok, 0.99),
                "max": max(ok) if ok else None,
                "mean": statistics.fmean(ok) if ok else None,
            },
            "throughput_ok_per_s": round(len(ok) / load_seconds, 2),
            "offered_per_s": round(total / load_seconds, 2),
            "gallery_import_s": round(import_seconds, 2),
            "service_scan_histogram": [line for line in metrics_text.splitlines() if line.startswith("blindgate_scan_seconds_")],
            "target_met": bool(total == len(answered) and not statuses.count("busy") and ok and percentile(ok, 0.99) <= 1.0),
        }
        for key in ("p50", "p90", "p99", "max", "mean"):
            if result["latency_ok_s"][key] is not None:
                result["latency_ok_s"][key] = round(result["latency_ok_s"][key], 4)
    finally:
        for device in devices:
            device.close()
        service.stop()
        service_cpu = os.times()  # children: the service and, through it, its matcher workers
        broker.stop()
        if args.keep:
            progress(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    own = os.times()
    result["cpu_s"] = {
        "service_and_workers": round(service_cpu.children_user + service_cpu.children_system, 1),
        "bench_harness": round(own.user + own.system, 1),
        "load_average_1m_at_end": os.getloadavg()[0],
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
