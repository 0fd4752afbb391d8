"""Benchmark: encrypted 1:N identification and 1:1 verification against the seed paper's method.

Runs on one core (pinned) and prints one JSON object on stdout; progress goes to stderr.

    python bench/matching.py                       # sizes 1,100,1000,4096,16384,65536
    python bench/matching.py --sizes 1,4096 --runs 5
    python bench/matching.py --sizes 65536 --workers 2   # the sharded MatcherPool instead (bench/sharded_scan.py)

Methods timed, per gallery size N:
- blindgate-scan: this engine's 1:N scan (probe validation, baby steps, every block), the
  reply being one ciphertext per block (4096 / copies templates; `--copies`, "copies" per block);
- blindgate-verify: this engine's 1:1 verification, times N sequential comparisons (sampled);
- seed-paper: subtract, square, relinearize, 127 one-slot rotations with an add after each,
  per template (Yang et al. 2021), rebuilt on the same SEAL;
- tenseal-dot: TenSEAL's CKKSVector.dot (7 power-of-two rotations) per template;
- numpy: plaintext Euclidean distances.
Per-template methods time a sample and scale it linearly; their entries say so.
Templates are realistic random vectors (dlib-like: N(0, 0.09) per coordinate); galleries are
built with the engine's bulk import, which has exactly the layout enrollment builds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np  # noqa: E402
import tenseal as ts  # noqa: E402
import tenseal.sealapi as seal  # noqa: E402

from blindgate.shared.engine import (  # noqa: E402
    Block,
    EvaluationKeys,
    base_slots,
    decode_scan,
    decode_verify,
    encrypt_block,
    encrypt_enrollment,
    encrypt_probe,
    generate_site_keys,
    plan_blocks,
    scan_blocks,
    verify,
)

SLOTS = 4096


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def timed(fn, runs: int) -> tuple[float, list[float], object]:
    """Median milliseconds over `runs` calls (after one warm-up), all timings, last result."""
    result = fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), times, result


def seed_method(ctx: seal.SEALContext, x: seal.Ciphertext, y: seal.Ciphertext, relin, galois) -> seal.Ciphertext:
    """The seed paper's comparison: (x - y)^2 then 127 rotations by one slot, adding each time."""
    ev = seal.Evaluator(ctx)
    diff = seal.Ciphertext()
    ev.sub(x, y, diff)
    ev.square_inplace(diff)
    ev.relinearize_inplace(diff, relin)
    ev.rescale_to_next_inplace(diff)
    acc = diff
    rotated = diff
    for _ in range(127):
        nxt = seal.Ciphertext()
        ev.rotate_vector(rotated, 1, galois, nxt)
        rotated = nxt
        ev.add_inplace(acc, rotated)
    return acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,100,1000,4096,16384,65536", help="gallery sizes, comma-separated")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per measurement (after a warm-up)")
    parser.add_argument("--sample", type=int, default=3, help="templates timed for per-template methods")
    parser.add_argument("--core", type=int, default=0, help="CPU core to pin to")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="instead: identification through a real MatcherPool sharded over N workers (bench/sharded_scan.py)",
    )
    parser.add_argument(
        "--copies",
        default="plan",
        choices=["plan", "1", "2", "4"],
        help="slots per template: 'plan' = the layouts enrollment gives (engine.copies_for_block), or one for every block",
    )
    args = parser.parse_args()
    if args.workers:  # the service's path: store, sharded worker processes, fan-out and merge (no pinning)
        from sharded_scan import main as sharded_main

        sharded_main(["--sizes", args.sizes, "--workers", str(args.workers), "--runs", str(args.runs)])
        return
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    if not sizes or min(sizes) < 1:
        parser.error("--sizes takes positive integers, e.g. 1,4096,65536")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.core})
    rng = np.random.default_rng(7)
    dim = 128

    log("generating site keys")
    keys = generate_site_keys(dim)
    evk = EvaluationKeys.from_bytes(keys.evaluation_bytes)
    x = rng.normal(0, 0.09, dim)

    results: list[dict] = []
    max_err = 0.0

    start = time.perf_counter()
    probe = encrypt_probe(keys, x)
    enc_ms, _, probe = timed(lambda: encrypt_probe(keys, x), max(args.runs, 20))
    results.append({"method": "blindgate-encrypt-probe", "gallery": 0, "median_ms": enc_ms, "runs": max(args.runs, 20)})

    # Blocks per `layout_plan`; full ones are shared by every size, each partial one built for its size.
    templates = rng.normal(0, 0.09, (max(sizes), dim))
    built: dict[tuple[int, int, int], Block] = {}

    def block_for(start: int, end: int, copies: int) -> Block:
        if (start, end, copies) not in built:
            log(f"bulk-importing templates {start}..{end - 1} ({copies} copies)")
            built[start, end, copies] = Block.from_bytes(evk, encrypt_block(keys, templates[start:end], copies=copies))
        return built[start, end, copies]

    reply_bytes = None
    for n in sizes:
        plan = plan_blocks(keys.params, n, None if args.copies == "plan" else int(args.copies))
        blocks = [block_for(*entry) for entry in plan]
        runs = args.runs if n <= 16384 else max(2, args.runs // 2)
        log(f"scanning gallery of {n} ({len(blocks)} blocks), {runs} runs")
        ms, _, replies = timed(lambda blocks=blocks: scan_blocks(evk, blocks, probe), runs)
        reply_bytes = len(replies[0])
        match = decode_scan(keys, x, replies, [b.occupied for b in blocks], [b.copies for b in blocks])
        expected = np.linalg.norm(templates[:n] - x, axis=1)
        bases = [base_slots(keys.params, b.copies)[: b.count] for b in blocks]
        got = np.concatenate([match.distances[i][bases[i]] for i in range(len(blocks))])
        err = float(np.max(np.abs(got - expected)))
        max_err = max(max_err, err)
        best_index = None
        if match.best is not None:
            best_index = plan[match.best.block][0] + int(np.flatnonzero(bases[match.best.block] == match.best.slot)[0])
        same_best = best_index == int(np.argmin(expected))
        results.append(
            {
                "method": "blindgate-scan",
                "gallery": n,
                "median_ms": ms,
                "runs": runs,
                "blocks": len(blocks),
                "copies": [b.copies for b in blocks],
                "templates_per_s": n / (ms / 1000),
                "max_abs_error": err,
                "best_matches_numpy": same_best,
            }
        )
        numpy_ms, _, _ = timed(lambda n=n: np.linalg.norm(templates[:n] - x, axis=1), args.runs)
        results.append({"method": "numpy", "gallery": n, "median_ms": numpy_ms, "runs": args.runs})

    # 1:1 verification, per template.
    sample = templates[: args.sample]
    enrollments = [encrypt_enrollment(keys, y) for y in sample]
    verify_times, verify_err = [], 0.0
    for y, enrollment in zip(sample, enrollments):
        ms, _, reply = timed(lambda enrollment=enrollment: verify(evk, probe, enrollment), args.runs)
        verify_times.append(ms)
        verify_err = max(verify_err, abs(decode_verify(keys, reply) - float(np.linalg.norm(x - y))))
    max_err = max(max_err, verify_err)
    verify_ms = statistics.median(verify_times)
    verify_reply_bytes = len(reply)

    # The seed paper's method, rebuilt on the same SEAL, per template.
    log("timing the seed paper's method")
    ctx = keys.context
    encryptor = seal.Encryptor(ctx.seal, keys.secret)
    xrep = ctx.encode(np.tile(x, SLOTS // dim).tolist(), 2, 2.0**40)
    x_ct = seal.Ciphertext()
    encryptor.encrypt_symmetric(xrep, x_ct)
    seed_times, seed_err = [], 0.0
    decryptor = seal.Decryptor(ctx.seal, keys.secret)
    for y in sample:
        y_ct = seal.Ciphertext()
        encryptor.encrypt_symmetric(ctx.encode(np.tile(y, SLOTS // dim).tolist(), 2, 2.0**40), y_ct)
        ms, _, out = timed(lambda y_ct=y_ct: seed_method(ctx.seal, x_ct, y_ct, evk.relin, evk.galois), max(1, args.runs // 2))
        seed_times.append(ms)
        plain = seal.Plaintext()
        decryptor.decrypt(out, plain)
        seed_err = max(seed_err, abs(np.sqrt(max(ctx.decode(plain)[0], 0)) - float(np.linalg.norm(x - y))))
    seed_ms = statistics.median(seed_times)

    log("timing TenSEAL CKKSVector.dot")
    tctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    tctx.global_scale = 2.0**40
    tctx.generate_galois_keys()
    tx = ts.ckks_vector(tctx, x.tolist())
    dot_times = []
    for y in sample:
        ty = ts.ckks_vector(tctx, y.tolist())
        ms, _, _ = timed(lambda ty=ty: tx.dot(ty), args.runs)
        dot_times.append(ms)
    dot_ms = statistics.median(dot_times)

    for n in sizes:
        results.append(
            {
                "method": "blindgate-verify",
                "gallery": n,
                "median_ms": verify_ms * n,
                "runs": args.runs,
                "per_template_ms": verify_ms,
                "scaled_from_sample": args.sample,
            }
        )
        results.append(
            {
                "method": "seed-paper",
                "gallery": n,
                "median_ms": seed_ms * n,
                "runs": max(1, args.runs // 2),
                "per_template_ms": seed_ms,
                "scaled_from_sample": args.sample,
            }
        )
        results.append(
            {
                "method": "tenseal-dot",
                "gallery": n,
                "median_ms": dot_ms * n,
                "runs": args.runs,
                "per_template_ms": dot_ms,
                "scaled_from_sample": args.sample,
            }
        )

    scan_by_size = {r["gallery"]: r["median_ms"] for r in results if r["method"] == "blindgate-scan"}
    speedup = {str(n): (seed_ms * n) / ms for n, ms in scan_by_size.items()}
    summary = {
        "machine": {"cpus_used": 1, "cpu_count": os.cpu_count(), "tenseal": ts.__version__},
        "results": results,
        "sizes": {
            "probe_bytes": len(probe),
            "reply_bytes_per_block": reply_bytes,
            "verify_reply_bytes": verify_reply_bytes,
            "evaluation_keys_bytes": len(keys.evaluation_bytes),
            "enrollment_bytes": len(enrollments[0]),
            "block_bytes_by_copies": {str(c): len(b.to_bytes()) for (_, _, c), b in sorted(built.items())},
            "tenseal_public_context_bytes": len(tctx.serialize(save_secret_key=False)),
        },
        "speedup_vs_seed_paper": speedup,
        "max_abs_error": max_err,
        "seed_paper_max_abs_error": seed_err,
        "wall_s": time.perf_counter() - start,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
