"""Benchmark: what the trust checks of the door cost per decision (time and bytes).

    python bench/trust_checks.py [--runs 200]

Per decision the door signs its request with its own key, the cloud checks that signature and
the probe's hash before scanning, the cloud's signed reply names the probe hash, and the door
checks it; on a match the door opens the subject's sealed template and recomputes the distance.
Each step is timed in-process on real objects (a real probe ciphertext, a real 1:N reply over a
block, real keys); the bytes are the difference with the unsigned request and the reply without
the probe binding (the request's header grew by its topic and probe hash, +183 bytes with the
signature, measured against the earlier format). Fetching a sealed template is one HTTP GET per subject and gallery version
(then cached), which this benchmark does not include. One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from blindgate.device.integrity import TemplateCheck
from blindgate.device.requests import PendingRequests
from blindgate.device.sealing import TemplateSealer
from blindgate.shared.config import DecisionConfig
from blindgate.shared.engine import Block, encrypt_block, encrypt_probe, generate_site_keys, scan_blocks
from blindgate.shared.protocol import (
    BlockResult,
    Reply,
    ReplyStatus,
    decode_probe_request,
    encode_probe_request,
    new_probe_request,
    new_signing_key,
    open_reply,
    seal_reply,
    verify_probe_request,
)
from blindgate.shared.protocol.signing import SIGNATURE_BYTES


def timed(fn: Callable[[], object], runs: int) -> float:
    """Median milliseconds of `runs` calls."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 4)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    print("[trust-checks] keys, a block of 1000 templates, a probe", file=sys.stderr, flush=True)
    keys = generate_site_keys()
    rng = np.random.default_rng(0)
    templates = rng.normal(0, 0.09, (1000, 128))
    block = Block.from_bytes(keys.evaluation(), encrypt_block(keys, templates))
    live = templates[0] + rng.normal(0, 0.01, 128)
    door, cloud = new_signing_key(), new_signing_key()
    request = new_probe_request("home", "door1", keys.key_id, encrypt_probe(keys, live), ttl=30.0)
    payload = encode_probe_request(request, door)
    (ct,) = scan_blocks(keys.evaluation(), [block], request.probe)
    results = (BlockResult.of(0, block.occupied, ct),)

    def reply(bound: bool) -> Reply:
        binding = {"probe_sha256": request.probe_sha256, "mode": str(request.mode), "subject": None} if bound else {}
        return Reply(ReplyStatus.OK, "home", "door1", request.request_id, request.nonce, 1, time.time() + 30, results, **binding)

    sealed_reply, unbound_reply = seal_reply(reply(True), cloud), seal_reply(reply(False), cloud)

    def accept() -> None:
        pending = PendingRequests("door1")
        pending.add(request)
        pending.accept(open_reply(sealed_reply, cloud.public_key()))

    with tempfile.TemporaryDirectory() as state:
        TemplateSealer.create_key(Path(state))
        sealer = TemplateSealer.load(Path(state), "home")
        blob = sealer.seal("s0", keys.key_id, templates[0], "person 0")
        distance = float(np.linalg.norm(templates[0] - live))

        def sealed_check() -> None:  # a fresh cache each time: the first match of a subject
            assert TemplateCheck(lambda s: blob, sealer, keys.key_id, DecisionConfig()).confirm(1, "s0", distance, live, 0.6).ok

        summary = {
            "benchmark": "trust_checks",
            "runs": args.runs,
            "ms": {
                "door_sign_request": timed(lambda: encode_probe_request(request, door), args.runs),
                "cloud_decode_and_verify_request": timed(
                    lambda: verify_probe_request(decode_probe_request(payload), door.public_key()), args.runs
                ),
                "cloud_sign_reply": timed(lambda: seal_reply(reply(True), cloud), args.runs),
                "door_open_and_accept_reply": timed(accept, args.runs),
                "door_sealed_template_check": timed(sealed_check, args.runs),
            },
            "bytes": {
                "probe_request": len(payload),
                "request_signature": SIGNATURE_BYTES,
                "request_header_and_signature": len(payload) - len(request.probe),
                "reply": len(sealed_reply),
                "reply_probe_binding": len(sealed_reply) - len(unbound_reply),
                "sealed_template": len(blob),
            },
        }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
