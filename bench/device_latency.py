"""Benchmark: the door's frame-to-decision latency, stage by stage, with a 1000-face gallery.

    python bench/device_latency.py                 # scan in-process (default)
    python bench/device_latency.py --mqtt          # round trip through a local Mosquitto
    python bench/device_latency.py --frames 40 --gallery 1000
    python bench/device_latency.py --live-view     # with the web console's live view open (4 pictures/s)

Frames: the recorded Hamilton clip (640x360) padded to 640x480, only frames in which a usable
face is found (skipped frames cost one detection and are not decisions). Gallery: lin1.png's
embedding in slot 0 plus random dlib-like templates, built with the engine's bulk import
(`encrypt_block` per `plan_blocks`: the layouts enrollment builds).

Per frame, timed on the device's own code path (`Agent.handle_reply`):
- detect: HOG detection (tracked around the last face, as the door runs it) + quality checks;
  embed: landmarks + ResNet descriptor;
- encrypt: `encrypt_probe`;
- round_trip: request encoding, the cloud's work (`decode_probe_request`, `scan_blocks`,
  `seal_reply`) and, with --mqtt, both MQTT v5 hops through a real broker (responder in a
  thread of this process; the cloud service is not started);
- decrypt: signature check, freshness check, `decode_scan`, threshold, subject lookup.
With --live-view, each frame is handed to the console's `LiveView` as the agent does, and a
thread asks it for a JPEG `live_fps` times a second as an open browser tab makes the console do
(downscale, draw, encode): its effect on the door's own timings.
One JSON object on stdout (median and p95 per stage, ms); progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np  # noqa: E402
from detection import clip_frames  # noqa: E402  (bench/ is on sys.path when run as a script)

FACES = Path(__file__).resolve().parents[2] / "shared" / "faces"
STAGES = ("detect_ms", "embed_ms", "encrypt_ms", "round_trip_ms", "decrypt_ms", "total_ms")


def log(msg: str) -> None:
    print(f"[device-latency] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=30, help="decisions to time (default 30)")
    parser.add_argument("--gallery", type=int, default=1000, help="templates (in the layouts enrollment gives)")
    parser.add_argument("--mqtt", action="store_true", help="round trip through a local Mosquitto broker")
    parser.add_argument("--live-view", action="store_true", help="a console browser tab open on the live view meanwhile")
    args = parser.parse_args()
    if not FACES.is_dir():
        print(json.dumps({"error": f"face data not found at {FACES}"}))
        return 2

    import cv2

    from blindgate.device.agent import Agent
    from blindgate.device.build import face_config
    from blindgate.device.decision import VerdictKind
    from blindgate.device.directory import SubjectDirectory
    from blindgate.device.faces import FaceAnalyzer, load_image
    from blindgate.device.integrity import TemplateCheck
    from blindgate.device.labels import LabelCipher
    from blindgate.device.lock import Lock
    from blindgate.device.sealing import TemplateSealer
    from blindgate.device.tracking import track_faces
    from blindgate.shared.config import DecisionConfig, DeviceConfig
    from blindgate.shared.engine import (
        Block,
        base_slots,
        encrypt_block,
        encrypt_probe,
        generate_site_keys,
        plan_blocks,
        scan_blocks,
    )
    from blindgate.shared.protocol import (
        BlockResult,
        decode_probe_request,
        encode_probe_request,
        new_probe_request,
        new_signing_key,
        ok_reply,
        seal_reply,
        verify_probe_request,
    )

    still = FaceAnalyzer(face_config(DeviceConfig()))  # the door's settings; photos: no tracking
    enrolled = still.analyze(load_image(FACES / "people" / "lin_manuel_miranda" / "lin1.png"))
    keys = generate_site_keys()
    evaluation = keys.evaluation()
    rng = np.random.default_rng(0)
    templates = np.vstack([enrolled.embedding, rng.normal(0, 0.09, (args.gallery - 1, 128))])
    t0 = time.perf_counter()
    plan = plan_blocks(keys.params, args.gallery)  # the layouts enrollment gives these templates
    blocks = [Block.from_bytes(evaluation, encrypt_block(keys, templates[a:b], copies=c)) for a, b, c in plan]
    places = [(i, int(base_slots(keys.params, c)[k])) for i, (a, b, c) in enumerate(plan) for k in range(b - a)]
    log(f"gallery of {args.gallery} built in {time.perf_counter() - t0:.1f} s")

    state = Path(tempfile.mkdtemp(prefix="bg-bench-"))
    LabelCipher.create_key(state)
    labels = LabelCipher.load(state, "home")
    import base64

    listing = {
        "gallery_version": 1,
        "subjects": [
            {"subject": f"s{i}", "label": base64.b64encode(labels.encrypt(f"person {i}")).decode(), "block": b, "slot": slot}
            for i, (b, slot) in enumerate(places)
        ],
    }
    TemplateSealer.create_key(state)
    sealer = TemplateSealer.load(state, "home")
    # The sealed templates the cloud would hand back; the agent fetches one per subject and gallery
    # version (over HTTP in the real system, ~1.5 ms on loopback), then uses its cache.
    sealed = {f"s{i}": sealer.seal(f"s{i}", keys.key_id, templates[i], f"person {i}") for i in range(args.gallery)}
    signer = new_signing_key()
    door_key = new_signing_key()  # the door's request-signing key, "registered" with this stand-in cloud
    config = DeviceConfig(site="home", device_id="door1", decision=DecisionConfig(reply_timeout=5.0))
    analyzer = track_faces(still, config.face.track_frames)  # the camera stream's analyzer, as build_agent makes it
    agent = Agent(
        config,
        keys,
        signer.public_key(),
        SubjectDirectory(lambda: listing, labels),
        Lock("GPIO17", pin_factory="mock"),
        TemplateCheck(sealed.__getitem__, sealer, keys.key_id, config.decision),
        door_key=door_key,
    )

    def cloud_answer(payload: bytes) -> bytes:
        req = verify_probe_request(decode_probe_request(payload), door_key.public_key())
        cts = scan_blocks(evaluation, blocks, req.probe)
        reply = ok_reply(req, 1, tuple(BlockResult.of(i, b.occupied, ct, b.copies) for i, (b, ct) in enumerate(zip(blocks, cts))))
        return seal_reply(reply, signer)

    broker = client = None
    if args.mqtt:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        from blindgate.shared.launch import start_broker

        broker = start_broker(Path(tempfile.mkdtemp(prefix="bg-bench-mqtt-")))
        config.mqtt.host, config.mqtt.port = broker.host, broker.port
        config.mqtt.username, config.mqtt.password = "door", broker.users["door"]
        client = broker.client("cloud", "bench-cloud")

        def on_message(c, u, msg):
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = msg.properties.CorrelationData
            c.publish(msg.properties.ResponseTopic, cloud_answer(bytes(msg.payload)), qos=1, properties=props)

        client.on_message = on_message
        client.connect(broker.host, broker.port)
        client.subscribe("blindgate/+/+/probe", qos=1)
        client.loop_start()
        agent.connect(wait=10)
        time.sleep(0.3)

    def in_process_probe(embedding):
        """The agent's `probe` with the MQTT hop replaced by a direct call (same timings)."""
        t0 = time.perf_counter()
        ciphertext = encrypt_probe(keys, embedding)
        t1 = time.perf_counter()
        req = new_probe_request("home", "door1", keys.key_id, ciphertext, ttl=5.0)
        agent.pending.add(req)
        payload = cloud_answer(encode_probe_request(req, door_key))
        t2 = time.perf_counter()
        verdict = agent.handle_reply(payload, False, embedding)
        return verdict, {
            "encrypt_ms": (t1 - t0) * 1000,
            "round_trip_ms": (t2 - t1) * 1000,
            "decrypt_ms": verdict.timings["decrypt_ms"],
        }

    frames = []
    for rgb in clip_frames():  # padded to 640x480, the door's camera size
        pad = max(0, (480 - rgb.shape[0]) // 2)
        frames.append(cv2.copyMakeBorder(rgb, pad, 480 - rgb.shape[0] - pad, 0, 0, cv2.BORDER_CONSTANT))
    log(f"{len(frames)} frames of {frames[0].shape[1]}x{frames[0].shape[0]}; timing {args.frames} decisions")

    live, viewer, watching = None, None, threading.Event()
    if args.live_view:
        from blindgate.device.console.live import LiveView

        live = LiveView(config.console.live_width)

        def watch() -> None:  # what the console's /live/frame.jpg does for one open tab
            while not watching.wait(1 / config.console.live_fps):
                live.jpeg()

        viewer = threading.Thread(target=watch, daemon=True)
        viewer.start()

    rows, matches, skipped, i = [], 0, 0, 0
    while len(rows) < args.frames and i < 20 * len(frames):
        rgb = frames[i % len(frames)]
        i += 1
        start = time.perf_counter()
        result = analyzer.analyze(rgb)
        if live is not None:
            live.frame_seen(rgb, result)
        if not hasattr(result, "embedding"):
            skipped += 1
            continue
        if args.mqtt:
            verdict = agent.probe(result.embedding)
            stages = dict(verdict.timings)
        else:
            verdict, stages = in_process_probe(result.embedding)
        end = time.perf_counter()
        stages.update(
            detect_ms=result.timings.detect_ms + result.timings.quality_ms,
            embed_ms=result.timings.embed_ms,
            total_ms=(end - start) * 1000,
        )
        matches += verdict.kind == VerdictKind.MATCH
        rows.append(stages)

    watching.set()
    if args.mqtt:
        agent.close()
        client.loop_stop()
        client.disconnect()
        broker.stop()
    else:
        agent.lock.close()

    summary = {
        stage: {
            "median": round(statistics.median(r[stage] for r in rows), 2),
            "p95": round(pct([r[stage] for r in rows], 0.95), 2),
        }
        for stage in STAGES
    }
    print(
        json.dumps(
            {
                "benchmark": "device_latency",
                "mode": "mqtt (local mosquitto, in-thread responder)" if args.mqtt else "in-process scan",
                "frame": "640x480",
                "live_view": {"pictures_encoded": live.frames_encoded, "fps_asked": config.console.live_fps} if live else None,
                "gallery": args.gallery,
                "decisions": len(rows),
                "matches": matches,
                "skipped_frames": skipped,
                "cpu_count": os.cpu_count(),
                "stages_ms": summary,
                "target_median_total_ms": 500,
                "meets_target": summary["total_ms"]["median"] <= 500,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
