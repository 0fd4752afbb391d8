"""Helpers the engine tests share: numpy references, dlib-like vectors and the test's own threshold."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tenseal.sealapi as seal

from blindgate.shared.engine import Gallery, Match, Params, SiteKeys, decode_scan, encrypt_probe, scan
from blindgate.shared.engine.context import context_for, to_bytes
from blindgate.shared.engine.keys import _pack_evaluation, derive_key_id

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
    return decode_scan(keys, x, replies, gallery.occupancy() if occupancy is None else occupancy, gallery.layouts())


def legacy_site_keys(dim: int = 128) -> SiteKeys:
    """Site keys as blindgate made them before issue 14: a Galois key per power of two below dim."""
    params = Params(dim=dim)
    keygen = seal.KeyGenerator(context_for(params).seal)
    relin = to_bytes(keygen.create_relin_keys())
    galois = to_bytes(keygen.create_galois_keys(params.galois_elements(params.rotation_steps)))
    key_id = derive_key_id(params, relin, galois)
    bundle = _pack_evaluation(params, key_id, relin, galois)
    return SiteKeys(params=params, key_id=key_id, secret=keygen.secret_key(), evaluation_bytes=bundle)
