"""encrypt.py: probe, enrollment and bulk-import encryption and embedding validation (dim 128 and 512)."""

from __future__ import annotations

import numpy as np
import pytest

from blindgate.shared.engine import (
    Block,
    EngineError,
    Gallery,
    SlotRef,
    decode_scan,
    decode_verify,
    encrypt_block,
    encrypt_enrollment,
    encrypt_probe,
    generate_site_keys,
    scan,
    verify,
)
from tests.shared.engine.support import MAX_BUNDLE_BYTES, MAX_PROBE_BYTES, SLOTS, TOL, accepted, dlib_like, numpy_distances


def test_probe_fits_the_size_budget(keys):
    rng = np.random.default_rng(2)
    sizes = [len(encrypt_probe(keys, y)) for y in dlib_like(rng, 20)]
    assert max(sizes) <= MAX_PROBE_BYTES, sizes
    enrollment = encrypt_enrollment(keys, dlib_like(rng, 1)[0])
    assert len(enrollment) < 200_000  # one more prime than a probe


BAD_EMBEDDINGS = {
    "short": (np.zeros(127), "shape"),
    "long": (np.zeros(129), "shape"),
    "matrix": (np.zeros((2, 128)), "shape"),
    "scalar": (0.5, "shape"),
    "nan": (np.r_[np.zeros(127), np.nan], "NaN"),
    "inf": (np.r_[np.zeros(127), -np.inf], "infinite"),
    "huge": (np.r_[np.zeros(127), 5.0], "within"),
    "text": (["a"] * 128, "not numeric"),
}


@pytest.mark.parametrize("case", sorted(BAD_EMBEDDINGS))
@pytest.mark.parametrize("encrypt", [encrypt_probe, encrypt_enrollment])
def test_bad_embedding_is_refused(keys, encrypt, case):
    embedding, message = BAD_EMBEDDINGS[case]
    with pytest.raises(EngineError, match=message):
        encrypt(keys, embedding)


def test_bad_bulk_import_is_refused(keys, small):
    _, templates, _ = small
    for embeddings, message in [
        (templates[0], "2-D array"),
        (np.zeros((0, 128)), "between 1 and 4096"),
        (np.zeros((SLOTS + 1, 128)), "between 1 and 4096"),
        (np.zeros((3, 64)), "shape"),
        (np.vstack([templates[:2], np.full(128, np.nan)]), "NaN"),
    ]:
        with pytest.raises(EngineError, match=message):
            encrypt_block(keys, embeddings)


def test_dimension_512_end_to_end():
    keys512 = generate_site_keys(dim=512)
    evaluation = keys512.evaluation()
    assert keys512.params.dim == 512 and len(keys512.evaluation_bytes) < MAX_BUNDLE_BYTES
    rng = np.random.default_rng(512)
    templates = dlib_like(rng, 4, dim=512)
    gallery = Gallery(evaluation)
    gallery.blocks.append(Block.from_bytes(evaluation, encrypt_block(keys512, templates[:2])))
    enrollments = [encrypt_enrollment(keys512, y) for y in templates[2:]]
    assert [gallery.add(e) for e in enrollments] == [SlotRef(0, 2), SlotRef(0, 3)]
    mirror = np.zeros((SLOTS, 512))
    mirror[:4] = templates
    occupied = np.zeros(SLOTS, bool)
    occupied[:4] = True

    x = templates[3] + rng.normal(0, 0.02, 512)  # nearest to slot 3
    probe = encrypt_probe(keys512, x)
    assert len(probe) <= MAX_PROBE_BYTES
    match = decode_scan(keys512, x, scan(gallery, probe), gallery.occupancy(), gallery.layouts())
    expected = numpy_distances(mirror, occupied, x)
    np.testing.assert_array_equal(np.isnan(match.distances[0]), ~occupied)
    assert np.nanmax(np.abs(match.distances[0] - expected)) < TOL
    assert match.best == SlotRef(0, int(np.nanargmin(expected)))
    assert accepted(match.distance) == accepted(np.nanmin(expected))
    reply = verify(evaluation, probe, enrollments[0])
    assert decode_verify(keys512, reply) == pytest.approx(np.linalg.norm(x - templates[2]), abs=TOL)

    gallery.remove(SlotRef(0, 3), enrollments[1])
    occupied[3] = False
    replies = scan(gallery, probe)
    match = decode_scan(keys512, x, replies, gallery.occupancy(), gallery.layouts())
    expected = numpy_distances(mirror, occupied, x)
    np.testing.assert_array_equal(np.isnan(match.distances[0]), ~occupied)
    assert np.nanmax(np.abs(match.distances[0] - expected)) < TOL
    # decoded as if occupied, the removed slot holds the zero vector
    raw = decode_scan(keys512, x, replies, [np.ones(SLOTS, bool)], [1])
    assert raw.distances[0, 3] == pytest.approx(np.linalg.norm(x), abs=TOL)

    with pytest.raises(EngineError, match=r"shape \(512,\)"):
        encrypt_probe(keys512, templates[0][:128])
