"""Every pair through the real engine: 1:1 as in the seed paper, and 1:N over one encrypted gallery."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from blindgate.shared.engine import (
    Block,
    EvaluationKeys,
    Gallery,
    decode_scan,
    decode_verify,
    encrypt_block,
    encrypt_enrollment,
    encrypt_probe,
    generate_site_keys,
    scan,
    verify,
)

from .common import door_accepts
from .embedding import Progress

# -- the encrypted run --------------------------------------------------------------------------


@dataclass
class EncryptedRun:
    d11: np.ndarray  # per pair, 1:1 verify
    d1n: np.ndarray  # per pair, 1:N scan at the first image's slot
    all_slots: dict  # every probe x every gallery template: error and decision differences
    times_ms: dict[str, list[float]]
    sizes: dict[str, int]
    gallery_size: int
    blocks: int


def _timed(times: dict[str, list[float]], name: str, fn: Callable, *args):
    start = time.perf_counter()
    result = fn(*args)
    times.setdefault(name, []).append((time.perf_counter() - start) * 1000)
    return result


def run_encrypted(
    first: np.ndarray,
    second: np.ndarray,
    gallery_rows: np.ndarray,
    slot_of_pair: np.ndarray,
    progress: bool = True,
) -> EncryptedRun:
    """1:1 and 1:N encrypted distances for every pair (first[i], second[i]) through the engine.

    `gallery_rows` are the distinct first images, bulk-imported in order (row r is at block
    r // slots, slot r % slots); `slot_of_pair[i]` is the row of pair i's first image.
    """
    times: dict[str, list[float]] = {}
    keys = _timed(times, "keygen", generate_site_keys, first.shape[1])
    cloud = _timed(times, "load_evaluation_keys", EvaluationKeys.from_bytes, keys.evaluation_bytes)
    slots = keys.params.slots

    gallery = Gallery(cloud)
    block_bytes = []
    for start in range(0, len(gallery_rows), slots):
        blob = _timed(
            times,
            "encrypt_block",
            encrypt_block,
            keys,
            gallery_rows[start : start + slots],
        )
        block_bytes.append(len(blob))
        gallery.blocks.append(_timed(times, "load_block", Block.from_bytes, cloud, blob))
    occupancy, layouts = gallery.occupancy(), gallery.layouts()  # one-copy blocks: slot = template index

    n = len(first)
    d11, d1n = np.empty(n), np.empty(n)
    sizes: dict[str, int] = {}
    max_err, sum_err, count, flips = 0.0, 0.0, 0, 0
    self_count, self_max = 0, 0.0
    bar = Progress("encrypted 1:1 + 1:N", n, enabled=progress)
    for i in range(n):
        enrollment = _timed(times, "encrypt_enrollment", encrypt_enrollment, keys, first[i])
        probe = _timed(times, "encrypt_probe", encrypt_probe, keys, second[i])
        reply = _timed(times, "verify", verify, cloud, probe, enrollment)
        d11[i] = _timed(times, "decode_verify", decode_verify, keys, reply)

        probe_n = encrypt_probe(keys, second[i])  # a fresh encryption, as a second request would be
        replies = _timed(times, "scan", scan, gallery, probe_n)
        match = _timed(times, "decode_scan", decode_scan, keys, second[i], replies, occupancy, layouts)
        block, slot = divmod(int(slot_of_pair[i]), slots)
        d1n[i] = match.distances[block, slot]

        enc_all = match.distances.reshape(-1)[: len(gallery_rows)]
        plain_all = np.linalg.norm(gallery_rows - second[i], axis=1)
        err = np.abs(enc_all - plain_all)
        flips += int(np.sum(door_accepts(enc_all) != door_accepts(plain_all)))
        # The probe's own image in the gallery (plaintext distance exactly 0): the engine decrypts
        # |x - y|^2 with an error near 1e-7 and the square root magnifies that to ~3e-4 at 0.
        own = plain_all == 0.0
        if own.any():
            self_count += int(own.sum())
            self_max = max(self_max, float(err[own].max()))
        err = err[~own]
        if err.size:
            max_err = max(max_err, float(err.max()))
            sum_err += float(err.sum())
            count += err.size
        if i == 0:
            sizes = {
                "probe": len(probe),
                "enrollment": len(enrollment),
                "reply_1to1": len(reply),
                "reply_1toN_per_block": len(replies[0]),
            }
        bar.update(i + 1)
    sizes["evaluation_keys"] = len(keys.evaluation_bytes)
    sizes["gallery_block"] = max(block_bytes)
    sizes["device_key_file"] = len(keys.to_bytes())
    all_slots = {
        "comparisons": count,
        "decision_differences": flips,
        "max_abs_error": max_err,
        "mean_abs_error": sum_err / count if count else 0.0,
        "identical_image_comparisons": self_count,
        "identical_image_max_abs_error": self_max,
    }
    return EncryptedRun(d11, d1n, all_slots, times, sizes, len(gallery_rows), len(gallery.blocks))
