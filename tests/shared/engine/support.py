"""Helpers the engine tests share: numpy references, dlib-like vectors and the test's own threshold."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from blindgate.shared.engine import Gallery, Match, SiteKeys, decode_scan, encrypt_probe, scan

SLOTS = 4096
TOL = 1e-4  # distances must agree with numpy far below any decision margin
MAX_PROBE_BYTES = 120_000
MAX_BUNDLE_BYTES = 10 * 1024 * 1024
# face_recognition's dlib threshold. The engine does not decide (the device does): the tests only
# check that encrypted distances land on the same side of it as numpy's.
THRESHOLD = 0.6


def accepted(distance: float) -> bool:
    """The test's own decision: a finite distance at or under THRESHOLD."""
    return bool(np.isfinite(distance) and distance <= THRESHOLD)


def dlib_like(rng: np.random.Generator, n: int, dim: int = 128) -> np.ndarray:
    """Random vectors with dlib's statistics: coordinates ~ N(0, 0.09), norm ~ 1 (at dim 128)."""
    return rng.normal(0.0, 0.09 * np.sqrt(128 / dim), size=(n, dim))


def numpy_distances(templates: np.ndarray, occupied: np.ndarray, x: np.ndarray) -> np.ndarray:
    out = np.linalg.norm(templates - x, axis=-1)
    out[~occupied] = np.nan
    return out


def scan_and_decode(keys: SiteKeys, gallery: Gallery, x: np.ndarray, occupancy: Sequence[np.ndarray] | None = None) -> Match:
    replies = scan(gallery, encrypt_probe(keys, x))
    return decode_scan(keys, x, replies, gallery.occupancy() if occupancy is None else occupancy)
