"""Benchmark: 1, 2 and 3 cloud replicas on one PostgreSQL store, then one killed with SIGKILL under load.

Creates its own database on the local PostgreSQL server (dropped after), a Mosquitto broker and
`blindgate-cloud serve` replicas on loopback (1 matcher worker each, own state directories: all
they share is the database and the MQTT shared subscription). Simulated doors publish real
encrypted, signed probes at `--rate` per second in total; every reply's signature is verified and
one in `--check-every` is decrypted and decoded: it must name the subject the probe was made from
(`wrong_decisions`, which must be 0).

Phases: `--duration` seconds at `--rate` with 1, then 2, then 3 replicas (latency at a steady
load), each followed by `--saturate` seconds of closed loop with 4 probes per replica outstanding
(`capacity_ok_per_s`: what the replicas sustain, on however many cores there are); then a run
with 3 replicas where replica 1 gets SIGKILL halfway, right after a burst of `--kill-burst`
probes so that it has some in flight. Probes in flight at the kill may never be answered: they time
out at the door and are counted apart (`lost_at_kill`), not in the percentiles; every probe sent
after the kill must be answered by the survivors (`lost_after_kill` = 0).

    python bench/cloud_scale.py                          # G=1024, 8 probes/s, 15 s per phase
    python bench/cloud_scale.py --rate 10 --duration 30 --gallery 1000

One JSON object on stdout, progress on stderr. Latency is publish -> verified reply received.
Numbers depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import psycopg
from cloud_load import Device, build_gallery, percentile  # bench/ is on sys.path when run as a script

from blindgate.shared.engine import base_slots, decode_scan, encrypt_probe, generate_site_keys, plan_blocks
from blindgate.shared.launch import Broker, CloudService, start_broker
from blindgate.shared.protocol import new_signing_key, open_reply, public_key_from_text

PG_ADMIN_URL = os.environ.get("BLINDGATE_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def progress(message: str) -> None:
    print(f"[cloud_scale] {message}", file=sys.stderr, flush=True)


@dataclass
class Sent:
    """One probe: when it left, which face it was made from, and whether its reply is decoded."""

    at: float
    face: int
    check: bool
    reply_at: float | None = None
    status: str | None = None


@dataclass
class Run:
    """The probes of one phase, and when (if) a replica was killed."""

    sent: dict[str, Sent] = field(default_factory=dict)
    killed_at: float | None = None
    seconds: float = 0.0
    checked: int = 0
    wrong: int = 0
    bad_signature: int = 0
    duplicates: int = 0


class BenchDatabase:
    """A fresh database on the local server for this run, dropped WITH (FORCE) by `drop()`."""

    def __init__(self, admin_url: str) -> None:
        self.admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
        self.name = f"blindgate_bench_{secrets.token_hex(4)}"
        self.admin.execute(f"CREATE DATABASE {self.name}")
        self.url = urlsplit(admin_url)._replace(path=f"/{self.name}").geturl()

    def drop(self) -> None:
        self.admin.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
        self.admin.close()


class Load:
    """Doors, their probes and the reply collector, shared by every phase."""

    def __init__(self, broker: Broker, keys, faces: np.ndarray, doors: dict, args: argparse.Namespace, cloud_key) -> None:
        self.keys, self.faces, self.args, self.cloud_key = keys, faces, args, cloud_key
        self.replies: queue.Queue = queue.Queue()
        self.devices = [Device(name, broker, self.replies, key) for name, key in doors.items()]
        rng = np.random.default_rng(11)
        chosen = [int(i) for i in rng.integers(0, len(faces), 12)]
        self.probes = [(i, encrypt_probe(keys, faces[i] + rng.normal(0, 0.01, 128))) for i in chosen]
        self.counter = 0
        # face index -> (block, slot) where the import put it: what a right decision names
        self.places: list[tuple[int, int]] = []
        for block, (start, end, copies) in enumerate(plan_blocks(keys.params, len(faces))):
            slots = base_slots(keys.params, copies)
            self.places.extend((block, int(slots[k])) for k in range(end - start))

    def close(self) -> None:
        for device in self.devices:
            device.close()

    def warm_up(self, replicas: int) -> None:
        """A few probes per replica, so each worker has loaded the gallery before the clock starts."""
        run = Run()
        for _ in range(3 * replicas):
            self._send(run, check=False)
        self._collect(run, time.perf_counter() + 120, until_all=True)

    def run(self, seconds: float, kill: CloudService | None = None) -> Run:
        """Probes at `--rate` for `seconds`; with `kill`, that replica gets SIGKILL halfway."""
        run = Run()
        interval = 1.0 / self.args.rate
        start = time.perf_counter()
        count = int(seconds * self.args.rate)
        for k in range(count):
            delay = start + k * interval - time.perf_counter()
            if delay > 0:
                self._collect(run, time.perf_counter() + delay)
            self._send(run, check=self.args.check_every > 0 and self.counter % self.args.check_every == 0)
            if kill is not None and run.killed_at is None and k >= count // 2:
                for _ in range(self.args.kill_burst):  # so that the victim surely has probes in flight
                    self._send(run, check=self.args.check_every > 0)
                time.sleep(0.05)  # the burst reaches the replicas
                kill.kill()
                run.killed_at = time.perf_counter()
                progress(f"SIGKILL sent to the replica on port {kill.port}")
        run.seconds = time.perf_counter() - start
        self._collect(run, time.perf_counter() + self.args.reply_timeout, until_all=True)
        return run

    def saturate(self, seconds: float, outstanding: int) -> float:
        """Closed loop: keep `outstanding` probes in flight for `seconds`; the ok replies per second (capacity)."""
        run = Run()
        for _ in range(outstanding):
            self._send(run, check=False)
        start = time.perf_counter()
        done = 0
        while time.perf_counter() - start < seconds:
            before = sum(s.status is not None for s in run.sent.values())
            self._collect(run, time.perf_counter() + 0.05)
            answered = sum(s.status is not None for s in run.sent.values())
            for _ in range(answered - before):
                self._send(run, check=False)
            done = sum(s.status == "ok" for s in run.sent.values())
        elapsed = time.perf_counter() - start
        self._collect(run, time.perf_counter() + self.args.reply_timeout, until_all=True)  # drain before the next phase
        return round(done / elapsed, 2)

    def _send(self, run: Run, check: bool) -> None:
        face, probe = self.probes[self.counter % len(self.probes)]
        device = self.devices[self.counter % len(self.devices)]
        self.counter += 1
        req = device.publish(self.keys.key_id, probe, self.args.ttl)
        run.sent[req.request_id] = Sent(time.perf_counter(), face, check)

    def _collect(self, run: Run, until: float, until_all: bool = False) -> None:
        """Take replies until `until` (or, with `until_all`, as soon as every probe of `run` is answered)."""
        while True:
            left = until - time.perf_counter()
            if left <= 0 or (until_all and all(s.status is not None for s in run.sent.values())):
                return
            try:
                received, payload = self.replies.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            try:
                reply = open_reply(payload, self.cloud_key)
            except Exception:
                run.bad_signature += 1
                continue
            sent = run.sent.get(reply.request_id)
            if sent is None:
                continue  # an earlier phase's late reply
            if sent.status is not None:
                run.duplicates += 1
                continue
            sent.status, sent.reply_at = reply.status, received
            if reply.status == "ok" and sent.check:
                run.checked += 1
                occupancy = [r.occupancy() for r in reply.results]
                layouts = [r.copies for r in reply.results]
                match = decode_scan(self.keys, self.faces[sent.face], [r.ciphertext for r in reply.results], occupancy, layouts)
                if match.best is None or (match.best.block, match.best.slot) != self.places[sent.face]:
                    run.wrong += 1
                    best = None if match.best is None else (match.best.block, match.best.slot)
                    progress(f"WRONG decision: face {sent.face} at {self.places[sent.face]}, decoded {best}")


def summary(run: Run, replicas: int) -> dict:
    """Counts, throughput and latency of one phase; probes unanswered at a kill are counted apart."""
    answered = [s for s in run.sent.values() if s.status is not None]
    ok = [s.reply_at - s.at for s in answered if s.status == "ok" and s.reply_at is not None]
    result: dict = {
        "replicas": replicas,
        "sent": len(run.sent),
        "ok": sum(s.status == "ok" for s in answered),
        "busy": sum(s.status == "busy" for s in answered),
        "error": sum(s.status not in (None, "ok", "busy") for s in answered),
        "throughput_ok_per_s": round(len(ok) / run.seconds, 2) if run.seconds else None,
        "latency_ok_s": {
            "p50": round(percentile(ok, 0.50), 4) if ok else None,
            "p99": round(percentile(ok, 0.99), 4) if ok else None,
            "max": round(max(ok), 4) if ok else None,
            "mean": round(statistics.fmean(ok), 4) if ok else None,
        },
        "decoded_checked": run.checked,
        "wrong_decisions": run.wrong,
        "bad_signature": run.bad_signature,
        "duplicates": run.duplicates,
    }
    unanswered = [s for s in run.sent.values() if s.status is None]
    if run.killed_at is None:
        result["lost"] = len(unanswered)
    else:
        result["lost_at_kill"] = sum(s.at <= run.killed_at for s in unanswered)
        result["lost_after_kill"] = sum(s.at > run.killed_at for s in unanswered)
        result["ok_after_kill"] = sum(s.status == "ok" and s.at > run.killed_at for s in answered)
    result["p99_within_1s"] = bool(ok) and percentile(ok, 0.99) <= 1.0
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=3, help="the most replicas (phases run 1..N); at least 2")
    parser.add_argument("--devices", type=int, default=6)
    parser.add_argument("--rate", type=float, default=8.0, help="probes per second, all doors together")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of load per phase")
    parser.add_argument("--gallery", type=int, default=1024, help="subjects enrolled (G)")
    parser.add_argument("--queue-size", type=int, default=32)
    parser.add_argument("--ttl", type=float, default=5.0, help="probe request lifetime (s): the door's timeout")
    parser.add_argument("--reply-timeout", type=float, default=8.0, help="wait after the last probe of a phase")
    parser.add_argument("--saturate", type=float, default=8.0, help="seconds of closed-loop capacity per phase (0: skip)")
    parser.add_argument("--kill-burst", type=int, default=6, help="probes sent right before the SIGKILL")
    parser.add_argument("--check-every", type=int, default=5, help="decode one reply in N (0: none)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    args = parser.parse_args()
    if args.replicas < 2:
        parser.error("--replicas must be at least 2: the kill run needs a survivor")

    workdir = Path(tempfile.mkdtemp(prefix="blindgate-cloud-scale-"))
    database = BenchDatabase(PG_ADMIN_URL)
    broker: Broker | None = None
    services: list[CloudService] = []
    load: Load | None = None
    result: dict = {}
    try:
        keys = generate_site_keys()
        faces = np.random.default_rng(7).normal(0, 0.09, (args.gallery, 128))
        doors = {f"door{i}": new_signing_key() for i in range(args.devices)}
        started = time.perf_counter()
        build_gallery(database.url, keys, faces, doors)
        progress(f"gallery of {args.gallery} imported into {database.name} in {time.perf_counter() - started:.1f} s")
        broker = start_broker(workdir / "mosquitto")
        env = {
            "BLINDGATE_STORE_URL": database.url,
            "BLINDGATE_WORKERS": 1,
            "BLINDGATE_QUEUE_SIZE": args.queue_size,
            "BLINDGATE_LOG_LEVEL": "WARNING",
        }

        def add_replica() -> CloudService:
            index = len(services) + 1
            service = CloudService(workdir / f"state{index}", broker, workdir / f"replica{index}.log", env=env)
            services.append(service.start())
            return service

        first = add_replica()
        with urllib.request.urlopen(f"{first.url}/v1/cloud-key") as resp:
            cloud_key = public_key_from_text(json.load(resp)["cloud_public_key"])
        load = Load(broker, keys, faces, doors, args, cloud_key)

        phases = []
        for count in range(1, args.replicas + 1):
            while len(services) < count:
                add_replica()
            load.warm_up(count)
            progress(f"{count} replica(s): {args.rate} probes/s for {args.duration:.0f} s")
            phases.append(summary(load.run(args.duration), count))
            progress(json.dumps(phases[-1]["latency_ok_s"]))
            if args.saturate:
                phases[-1]["capacity_ok_per_s"] = load.saturate(args.saturate, outstanding=4 * count)
                progress(f"capacity with {4 * count} probes outstanding: {phases[-1]['capacity_ok_per_s']} ok/s")

        progress(f"{len(services)} replicas, SIGKILL of one halfway through {args.duration:.0f} s")
        kill_run = load.run(args.duration, kill=services[0])
        kill = summary(kill_run, len(services))
        kill["survivors_answered_total"] = [counter(s.url, "blindgate_probes_answered_total") for s in services[1:]]
        result = {
            "gallery": args.gallery,
            "blocks": len(plan_blocks(keys.params, args.gallery)),
            "rate_offered_per_s": args.rate,
            "duration_s_per_phase": args.duration,
            "devices": args.devices,
            "workers_per_replica": 1,
            "cores": os.cpu_count(),
            "phases": phases,
            "kill": kill,
            "wrong_decisions": sum(p["wrong_decisions"] for p in phases) + kill["wrong_decisions"],
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),  # includes this bench's own replicas
        }
    finally:
        if load is not None:
            load.close()
        for service in services:
            service.stop()
        if broker is not None:
            broker.stop()
        database.drop()
        if args.keep:
            progress(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0 if result and result["wrong_decisions"] == 0 and result["kill"]["lost_after_kill"] == 0 else 1


def counter(url: str, name: str) -> float:
    """The sum of a counter's series on a replica's /metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.split("{")[0].split(" ")[0] == name)


if __name__ == "__main__":
    raise SystemExit(main())
