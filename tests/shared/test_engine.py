"""The CKKS matching engine, module by module, checked against numpy on real and synthetic faces.

keys      site keys, the evaluation bundle and everything it must refuse
encrypt   probe/enrollment/bulk-import encryption and embedding validation (dim 128 and 512)
gallery   exact add/remove, block serialization and its validation
scan      1:1 verify and 1:N scan over multi-block galleries, decoded and compared with numpy
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from blindgate.shared.engine import (
    THRESHOLD,
    Block,
    EngineError,
    EvaluationKeys,
    Gallery,
    Params,
    SiteKeys,
    SlotRef,
    decode_scan,
    decode_verify,
    encrypt_block,
    encrypt_enrollment,
    encrypt_probe,
    generate_site_keys,
    is_match,
    scan,
    verify,
)
from blindgate.shared.engine.keys import derive_key_id

SLOTS = 4096
TOL = 1e-4  # distances must agree with numpy far below any decision margin
MAX_PROBE_BYTES = 120_000
MAX_BUNDLE_BYTES = 10 * 1024 * 1024


def dlib_like(rng: np.random.Generator, n: int, dim: int = 128) -> np.ndarray:
    """Random vectors with dlib's statistics: coordinates ~ N(0, 0.09), norm ~ 1 (at dim 128)."""
    return rng.normal(0.0, 0.09 * np.sqrt(128 / dim), size=(n, dim))


def numpy_distances(templates: np.ndarray, occupied: np.ndarray, x: np.ndarray) -> np.ndarray:
    out = np.linalg.norm(templates - x, axis=-1)
    out[~occupied] = np.nan
    return out


def scan_and_decode(keys: SiteKeys, gallery: Gallery, x: np.ndarray, occupancy=None):
    replies = scan(gallery, encrypt_probe(keys, x))
    return decode_scan(keys, x, replies, gallery.occupancy() if occupancy is None else occupancy)


# --- key file and bundle layout (BGK1 | kind | u32 header length | JSON header | sections) ----


def split_key_file(data: bytes) -> tuple[bytes, dict, dict[str, bytes]]:
    assert data[:4] == b"BGK1"
    kind = data[4:5]
    (head_len,) = struct.unpack_from("<I", data, 5)
    header = json.loads(data[9 : 9 + head_len])
    sections, offset = {}, 9 + head_len
    for name, size in header["sections"]:
        sections[name] = data[offset : offset + size]
        offset += size
    assert offset == len(data)
    return kind, header, sections


def join_key_file(kind: bytes, header: dict, sections: dict[str, bytes]) -> bytes:
    header = dict(header, sections=[[name, len(blob)] for name, blob in sections.items()])
    head = json.dumps(header, sort_keys=True).encode()
    return b"BGK1" + kind + struct.pack("<I", len(head)) + head + b"".join(sections.values())


def rebuilt_bundle(bundle: bytes, params: dict | None = None, **sections: bytes) -> bytes:
    """A bundle with other params/sections whose key id is recomputed: only deeper checks can catch it."""
    kind, header, parts = split_key_file(bundle)
    parts = dict(parts, **sections)
    header = dict(header, params=params or header["params"])
    try:
        header["key_id"] = derive_key_id(Params.from_dict(header["params"]), parts["relin"], parts["galois"])
    except EngineError:
        pass
    return join_key_file(kind, header, parts)


# --- block layout (BGB1 | u32 header length | JSON header | (u32 length, SEAL ciphertext)*) ----


def split_block(data: bytes) -> tuple[dict, list[bytes]]:
    assert data[:4] == b"BGB1"
    (head_len,) = struct.unpack_from("<I", data, 4)
    header = json.loads(data[8 : 8 + head_len])
    blobs, offset = [], 8 + head_len
    while offset < len(data):
        (size,) = struct.unpack_from("<I", data, offset)
        blobs.append(data[offset + 4 : offset + 4 + size])
        offset += 4 + size
    return header, blobs


def join_block(header: dict, blobs: list[bytes]) -> bytes:
    head = json.dumps(header).encode()
    return b"BGB1" + struct.pack("<I", len(head)) + head + b"".join(struct.pack("<I", len(b)) + b for b in blobs)


# ============================================================================================
# fixtures


@pytest.fixture(scope="module")
def keys() -> SiteKeys:
    return generate_site_keys()


@pytest.fixture(scope="module")
def evaluation(keys: SiteKeys) -> EvaluationKeys:
    return keys.evaluation()


@pytest.fixture(scope="module")
def other_keys() -> SiteKeys:
    return generate_site_keys()


@pytest.fixture(scope="module")
def small(keys, evaluation):
    """Four random templates enrolled through Gallery.add (slots 0-3); read-only for the tests."""
    templates = dlib_like(np.random.default_rng(11), 4)
    enrollments = [encrypt_enrollment(keys, y) for y in templates]
    gallery = Gallery(evaluation)
    refs = [gallery.add(e) for e in enrollments]
    assert refs == [SlotRef(0, s) for s in range(4)]
    return gallery, templates, enrollments


# ============================================================================================
# keys.py


def test_site_keys_generate_compact_evaluation_bundle(keys, evaluation):
    assert keys.params == Params(dim=128)
    assert len(keys.key_id) == 32 and int(keys.key_id, 16) >= 0
    assert len(keys.evaluation_bytes) < MAX_BUNDLE_BYTES, f"bundle is {len(keys.evaluation_bytes)} bytes"
    kind, header, sections = split_key_file(keys.evaluation_bytes)
    assert kind == b"E" and set(sections) == {"relin", "galois"}  # no secret key inside
    assert header["key_id"] == keys.key_id
    assert evaluation.key_id == keys.key_id and evaluation.params == keys.params
    assert evaluation.to_bytes() == keys.evaluation_bytes
    for step in (1, 2, 4, 8, 16, 32, 64):
        assert evaluation.galois.has_key(pow(3, step, 2 * 8192)), step


def test_two_sites_get_different_key_ids(keys, other_keys):
    assert keys.key_id != other_keys.key_id


def test_site_keys_round_trip_keeps_key_id_and_decrypts(keys, evaluation):
    data = keys.to_bytes()
    restored = SiteKeys.from_bytes(data)
    assert restored.key_id == keys.key_id and restored.params == keys.params
    assert restored.evaluation_bytes == keys.evaluation_bytes
    assert restored.to_bytes() == data
    rng = np.random.default_rng(1)
    x, y = dlib_like(rng, 2)
    expected = float(np.linalg.norm(x - y))
    # encrypted by the original, decrypted by the restored keys, and the other way round
    reply = verify(evaluation, encrypt_probe(keys, x), encrypt_enrollment(restored, y))
    assert decode_verify(restored, reply) == pytest.approx(expected, abs=TOL)
    reply = verify(restored.evaluation(), encrypt_probe(restored, x), encrypt_enrollment(keys, y))
    assert decode_verify(keys, reply) == pytest.approx(expected, abs=TOL)


def test_device_key_file_is_refused_as_evaluation_bundle(keys):
    with pytest.raises(EngineError, match="SECRET"):
        EvaluationKeys.from_bytes(keys.to_bytes())
    # an "evaluation" bundle that smuggles the secret key in a section is refused the same way
    _, _, device_sections = split_key_file(keys.to_bytes())
    kind, header, sections = split_key_file(keys.evaluation_bytes)
    smuggled = join_key_file(kind, header, dict(sections, secret=device_sections["secret"]))
    with pytest.raises(EngineError, match="SECRET"):
        EvaluationKeys.from_bytes(smuggled)


def test_evaluation_bundle_is_refused_as_device_key_file(keys):
    with pytest.raises(EngineError, match="no secret key"):
        SiteKeys.from_bytes(keys.evaluation_bytes)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"poly_degree": 16384}, "unsupported CKKS parameters"),
        ({"poly_degree": 4096}, "unsupported CKKS parameters"),
        ({"coeff_bits": (60, 40, 60)}, "unsupported CKKS parameters"),
        ({"scale_bits": 30}, "unsupported CKKS parameters"),
        ({"dim": 100}, "power of two"),
        ({"dim": 1}, "power of two"),
        ({"dim": 8192}, "power of two"),
    ],
)
def test_params_refuse_other_values(kwargs, message):
    with pytest.raises(EngineError, match=message):
        Params(**kwargs)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"poly_degree": 16384}, "unsupported CKKS parameters"),
        ({"coeff_bits": [60, 40, 40, 40, 60]}, "unsupported CKKS parameters"),
        ({"scale_bits": 50}, "unsupported CKKS parameters"),
        ({"dim": 96}, "power of two"),
        ({"dim": "many"}, "malformed parameter record"),
        # a dimension the Galois keys do not cover, with the key id recomputed to match
        ({"dim": 256}, "Galois keys for elements .* are missing"),
    ],
)
def test_bundle_with_wrong_parameters_is_refused(keys, change, message):
    _, header, _ = split_key_file(keys.evaluation_bytes)
    tampered = rebuilt_bundle(keys.evaluation_bytes, params=dict(header["params"], **change))
    with pytest.raises(EngineError, match=message):
        EvaluationKeys.from_bytes(tampered)


def test_bundle_params_changed_without_key_id_is_a_key_id_mismatch(keys):
    kind, header, sections = split_key_file(keys.evaluation_bytes)
    header["params"]["dim"] = 256
    with pytest.raises(EngineError, match="key id .* does not match its keys"):
        EvaluationKeys.from_bytes(join_key_file(kind, header, sections))


@pytest.mark.parametrize("cut", ["in_header", "after_header", "in_relin", "in_galois", "half", "last_byte"])
def test_truncated_bundle_is_refused(keys, cut):
    data = keys.evaluation_bytes
    (head_len,) = struct.unpack_from("<I", data, 5)
    _, _, sections = split_key_file(data)
    start = 9 + head_len
    at = {
        "in_header": 9 + head_len // 2,
        "after_header": start,
        "in_relin": start + len(sections["relin"]) // 2,
        "in_galois": start + len(sections["relin"]) + 1000,
        "half": len(data) // 2,
        "last_byte": len(data) - 1,
    }[cut]
    with pytest.raises(EngineError, match="truncated"):
        EvaluationKeys.from_bytes(data[:at])


@pytest.mark.parametrize("length", [0, 3, 8])
def test_bundle_shorter_than_its_fixed_header_is_refused(keys, length):
    with pytest.raises(EngineError, match="bad magic|truncated"):
        EvaluationKeys.from_bytes(keys.evaluation_bytes[:length])


def test_truncated_device_key_file_is_refused(keys):
    data = keys.to_bytes()
    for at in (len(data) // 3, len(data) - 1):
        with pytest.raises(EngineError, match="truncated"):
            SiteKeys.from_bytes(data[:at])


def test_truncated_seal_key_inside_a_consistent_bundle_is_refused(keys):
    _, _, sections = split_key_file(keys.evaluation_bytes)
    tampered = rebuilt_bundle(keys.evaluation_bytes, relin=sections["relin"][:-100])
    with pytest.raises(EngineError, match="relinearization key: .*truncated"):
        EvaluationKeys.from_bytes(tampered)


def test_key_id_mismatch_is_refused(keys, other_keys):
    kind, header, sections = split_key_file(keys.evaluation_bytes)
    with pytest.raises(EngineError, match="key id .* does not match"):
        EvaluationKeys.from_bytes(join_key_file(kind, dict(header, key_id=other_keys.key_id), sections))
    for name in ("relin", "galois"):
        blob = bytearray(sections[name])
        blob[len(blob) // 2] ^= 0x01
        with pytest.raises(EngineError, match="key id .* does not match"):
            EvaluationKeys.from_bytes(join_key_file(kind, header, dict(sections, **{name: bytes(blob)})))
    with pytest.raises(EngineError, match="key id .* is not the expected"):
        EvaluationKeys.from_bytes(keys.evaluation_bytes, expected_key_id=other_keys.key_id)
    # a device key file whose bundle was swapped for another site's
    _, device_header, device_sections = split_key_file(keys.to_bytes())
    mixed = join_key_file(b"S", device_header, dict(device_sections, evaluation=other_keys.evaluation_bytes))
    with pytest.raises(EngineError, match="key id"):
        SiteKeys.from_bytes(mixed)


def test_garbage_is_refused_as_keys(keys):
    rng = np.random.default_rng(5)
    noise = rng.bytes(100_000)
    for data, message in [
        (noise, "bad magic"),
        (b"BGK1E" + noise, "truncated header"),
        (b"BGK1E" + struct.pack("<I", 9) + b"not json!" + noise, "malformed header"),
        (b"BGK1E" + struct.pack("<I", 2) + b"[]", "malformed header"),
        (b"BGK1X" + struct.pack("<I", 16) + b'{"sections": []}', "unknown key file kind"),
        (keys.evaluation_bytes + b"\0" * 10, "trailing bytes"),
    ]:
        with pytest.raises(EngineError, match=message):
            EvaluationKeys.from_bytes(data)
        with pytest.raises(EngineError):
            SiteKeys.from_bytes(data)
    with pytest.raises(EngineError, match="expected bytes"):
        EvaluationKeys.from_bytes("BGK1E")  # type: ignore[arg-type]
    # well-formed container, key id recomputed, but the SEAL objects are noise
    for name, message in [("relin", "not a SEAL object"), ("galois", "not a SEAL object")]:
        with pytest.raises(EngineError, match=message):
            EvaluationKeys.from_bytes(rebuilt_bundle(keys.evaluation_bytes, **{name: noise}))
    # swapped keys: a Galois key set where the relinearization key belongs
    _, _, sections = split_key_file(keys.evaluation_bytes)
    swapped = rebuilt_bundle(keys.evaluation_bytes, relin=sections["galois"], galois=sections["relin"])
    with pytest.raises(EngineError, match="SEAL could not load|not valid|missing"):
        EvaluationKeys.from_bytes(swapped)


# ============================================================================================
# encrypt.py


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


def test_decode_refuses_mismatched_inputs(keys, small):
    gallery, templates, _ = small
    replies = scan(gallery, encrypt_probe(keys, templates[0]))
    with pytest.raises(EngineError, match="shape"):
        decode_scan(keys, templates[0][:64], replies, gallery.occupancy())
    with pytest.raises(EngineError, match="occupancy for 2 blocks"):
        decode_scan(keys, templates[0], replies, gallery.occupancy() * 2)
    with pytest.raises(EngineError, match="4096 slots"):
        decode_scan(keys, templates[0], replies, [np.ones(100, bool)])
    with pytest.raises(EngineError, match="no result for a block"):
        decode_scan(keys, templates[0], [None], gallery.occupancy())


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
    match = decode_scan(keys512, x, scan(gallery, probe), gallery.occupancy())
    expected = numpy_distances(mirror, occupied, x)
    np.testing.assert_array_equal(np.isnan(match.distances[0]), ~occupied)
    assert np.nanmax(np.abs(match.distances[0] - expected)) < TOL
    assert match.best == SlotRef(0, int(np.nanargmin(expected)))
    assert match.accepted() == is_match(np.nanmin(expected))
    reply = verify(evaluation, probe, enrollments[0])
    assert decode_verify(keys512, reply) == pytest.approx(np.linalg.norm(x - templates[2]), abs=TOL)

    gallery.remove(SlotRef(0, 3), enrollments[1])
    occupied[3] = False
    replies = scan(gallery, probe)
    match = decode_scan(keys512, x, replies, gallery.occupancy())
    expected = numpy_distances(mirror, occupied, x)
    np.testing.assert_array_equal(np.isnan(match.distances[0]), ~occupied)
    assert np.nanmax(np.abs(match.distances[0] - expected)) < TOL
    # decoded as if occupied, the removed slot holds the zero vector
    raw = decode_scan(keys512, x, replies, [np.ones(SLOTS, bool)])
    assert raw.distances[0, 3] == pytest.approx(np.linalg.norm(x), abs=TOL)

    with pytest.raises(EngineError, match=r"shape \(512,\)"):
        encrypt_probe(keys512, templates[0][:128])


# ============================================================================================
# gallery.py


def test_add_remove_cycles_leave_the_block_exactly_as_before(keys, evaluation):
    rng = np.random.default_rng(3)
    base = dlib_like(rng, 4)
    gallery = Gallery(evaluation)
    enrollments = [encrypt_enrollment(keys, y) for y in base]
    for e in enrollments:
        gallery.add(e)
    gallery.remove(SlotRef(0, 1), enrollments[1])  # slot 1 is the one that cycles
    before = gallery.blocks[0].to_bytes()

    # A block that never held slot 1 at all is the same bytes: removal is exact.
    fresh = Gallery(evaluation)
    for slot in (0, 2, 3):
        fresh.add(enrollments[slot], at=SlotRef(0, slot))
    assert fresh.blocks[0].to_bytes() == before

    mirror = np.zeros((SLOTS, 128))
    mirror[:4] = base
    occupied = np.zeros(SLOTS, bool)
    occupied[[0, 2, 3]] = True
    x = dlib_like(rng, 1)[0]
    worst = 0.0
    for cycle in range(20):
        y = base[1] + rng.normal(0, 0.05, 128)
        enrollment = encrypt_enrollment(keys, y)
        ref = gallery.add(enrollment)
        assert ref == SlotRef(0, 1)
        if cycle % 5 == 4:
            mirror[1], occupied[1] = y, True
            match = scan_and_decode(keys, gallery, x)
            worst = max(worst, np.nanmax(np.abs(match.distances[0] - numpy_distances(mirror, occupied, x))))
            occupied[1] = False
        gallery.remove(ref, enrollment)

    assert gallery.blocks[0].to_bytes() == before
    match = scan_and_decode(keys, gallery, x)
    expected = numpy_distances(mirror, occupied, x)
    np.testing.assert_array_equal(np.isnan(match.distances[0]), ~occupied)
    worst = max(worst, np.nanmax(np.abs(match.distances[0] - expected)))
    assert worst < TOL, worst


def test_removing_the_last_template_empties_the_block(keys, evaluation):
    y = dlib_like(np.random.default_rng(4), 1)[0]
    gallery = Gallery(evaluation)
    enrollment = encrypt_enrollment(keys, y)
    ref = gallery.add(enrollment)
    gallery.remove(ref, enrollment)
    assert len(gallery) == 0 and gallery.blocks[0].diagonals is None
    replies = scan(gallery, encrypt_probe(keys, y))
    assert replies == [None]
    match = decode_scan(keys, y, replies, gallery.occupancy())
    assert match.best is None and match.distance == float("inf") and not match.accepted()
    empty = Block.from_bytes(evaluation, gallery.blocks[0].to_bytes())
    assert empty.count == 0 and empty.diagonals is None
    # the empty block takes a template again
    assert gallery.add(enrollment) == SlotRef(0, 0)
    assert scan_and_decode(keys, gallery, y).distance < 0.01


def test_remove_of_an_empty_slot_or_missing_block_is_refused(keys, small):
    gallery, templates, enrollments = small
    with pytest.raises(EngineError, match="slot 7 holds no template"):
        gallery.remove(SlotRef(0, 7), enrollments[0])
    with pytest.raises(EngineError, match="no block 3"):
        gallery.remove(SlotRef(3, 0), enrollments[0])
    with pytest.raises(EngineError, match="slot 2 is already occupied"):
        gallery.add(enrollments[0], at=SlotRef(0, 2))
    assert gallery.occupancy()[0][:5].tolist() == [True, True, True, True, False]


def test_slot_outside_the_block_is_refused(small):
    gallery, _, enrollments = small
    for slot in (-1, SLOTS):
        with pytest.raises(EngineError, match="outside the block"):
            gallery.remove(SlotRef(0, slot), enrollments[0])
    copy = Gallery(gallery.keys)
    for slot in (-1, SLOTS):
        with pytest.raises(EngineError, match="outside the block"):
            copy.add(enrollments[0], at=SlotRef(0, slot))
    assert copy.blocks == []  # a refused add leaves no empty block behind
    with pytest.raises(EngineError, match="block 5 does not exist"):
        gallery.add(enrollments[0], at=SlotRef(5, 0))


def test_wrong_kind_of_ciphertext_is_refused(keys, evaluation, small):
    gallery, templates, enrollments = small
    probe = encrypt_probe(keys, templates[0])
    with pytest.raises(EngineError, match="enrollment: ciphertext at level 1, expected level 2"):
        gallery.add(probe)
    with pytest.raises(EngineError, match="level 1, expected level 2"):
        gallery.remove(SlotRef(0, 0), probe)
    with pytest.raises(EngineError, match="probe: ciphertext at level 2, expected level 1"):
        scan(gallery, enrollments[0])
    with pytest.raises(EngineError, match="level"):
        verify(evaluation, enrollments[0], probe)
    reply = verify(evaluation, probe, enrollments[1])
    with pytest.raises(EngineError, match="level 0, expected level 1"):
        scan(gallery, reply)
    with pytest.raises(EngineError, match="level 1, expected level 0"):
        decode_verify(keys, probe)
    with pytest.raises(EngineError, match="truncated|SEAL could not load"):
        gallery.add(enrollments[0][: len(enrollments[0]) // 2])
    with pytest.raises(EngineError, match="not a SEAL object"):
        scan(gallery, b"\0" * 1000)
    assert len(gallery) == 4


def test_block_round_trip(keys, evaluation, small):
    gallery, templates, _ = small
    data = gallery.blocks[0].to_bytes()
    header, blobs = split_block(data)
    assert header["key_id"] == keys.key_id and header["ciphertexts"] == len(blobs) == 129
    restored = Block.from_bytes(evaluation, data)
    assert restored.to_bytes() == data and restored.digest() == gallery.blocks[0].digest()
    np.testing.assert_array_equal(restored.occupied, gallery.blocks[0].occupied)
    copy = Gallery(evaluation)
    copy.blocks.append(restored)
    x = templates[2] + 0.03
    probe = encrypt_probe(keys, x)
    assert scan(copy, probe) == scan(gallery, probe)  # deterministic evaluation, same bytes
    match = decode_scan(keys, x, scan(copy, probe), copy.occupancy())
    assert match.best == SlotRef(0, 2)
    assert match.distances[0, :4] == pytest.approx(np.linalg.norm(templates - x, axis=1), abs=TOL)


@pytest.mark.parametrize("cut", [0, 6, "in_header", "after_header", "in_first", "in_norms", "last_byte"])
def test_truncated_block_is_refused(evaluation, small, cut):
    data = small[0].blocks[0].to_bytes()
    (head_len,) = struct.unpack_from("<I", data, 4)
    at = {
        "in_header": 8 + head_len // 2,
        "after_header": 8 + head_len,
        "in_first": 8 + head_len + 1000,
        "in_norms": len(data) - 2000,
        "last_byte": len(data) - 1,
    }.get(cut, cut)
    message = {0: "bad magic", 6: "bad magic", "in_header": "malformed header"}.get(cut, "truncated")
    with pytest.raises(EngineError, match=message):
        Block.from_bytes(evaluation, data[:at])


def test_bad_blocks_are_refused(keys, evaluation, other_keys, small):
    data = small[0].blocks[0].to_bytes()
    header, blobs = split_block(data)
    noise = np.random.default_rng(6).bytes(50_000)
    cases = [
        (noise, "bad magic"),
        (b"BGB1" + noise, "malformed header"),
        (data + b"\0" * 7, "trailing bytes"),
        (join_block(dict(header, occupied="00" * 512), blobs), "holds 129 ciphertexts, expected 0"),
        (join_block(header, blobs[:-1]), "truncated"),
        (join_block(dict(header, ciphertexts=128), blobs[:-1]), "holds 128 ciphertexts, expected 129"),
        (join_block(dict(header, occupied="ff" * 100), blobs), "occupancy covers 800 slots"),
        # a level-0 norms ciphertext where a level-1 diagonal belongs, and the other way round
        (join_block(header, [blobs[-1]] + blobs[1:]), "diagonal: ciphertext at level 0, expected level 1"),
        (join_block(header, blobs[:-1] + [blobs[0]]), "norms: (ciphertext at level 1|.* more than)"),
        (join_block(header, blobs[:5] + [noise[:4000]] + blobs[6:]), "not a SEAL object"),
    ]
    for bad, message in cases:
        with pytest.raises(EngineError, match=message):
            Block.from_bytes(evaluation, bad)
    # another site's block
    foreign = encrypt_block(other_keys, dlib_like(np.random.default_rng(7), 2))
    with pytest.raises(EngineError, match=f"made for keys {other_keys.key_id}, not {keys.key_id}"):
        Block.from_bytes(evaluation, foreign)


# ============================================================================================
# scan.py + decode.py on real embeddings


def test_verify_matches_numpy_on_lfw_pairs(keys, evaluation, lfw_sample):
    pairs, embeddings = lfw_sample
    enrollments: dict[str, bytes] = {}
    errors, near_threshold, decisions = [], 0, []
    for same, a, b in pairs:
        x, y = embeddings[a], embeddings[b]
        if b not in enrollments:
            enrollments[b] = encrypt_enrollment(keys, y)
        distance = decode_verify(keys, verify(evaluation, encrypt_probe(keys, x), enrollments[b]))
        expected = float(np.linalg.norm(x - y))
        errors.append(abs(distance - expected))
        if abs(expected - THRESHOLD) < TOL:
            near_threshold += 1  # a decision numpy itself would call a coin toss
            continue
        assert is_match(distance) == is_match(expected), (a, b, distance, expected)
        decisions.append(is_match(distance) == same)
    assert max(errors) < TOL, f"max |encrypted - numpy| = {max(errors):.3g}"
    assert near_threshold <= 1
    # sanity that these are real dlib embeddings: plain dlib gets nearly all of these right
    assert np.mean(decisions) >= 0.9


def test_identify_the_six_people(keys, evaluation, people_embeddings):
    """Enroll one photo per person; every other photo of them must find that person."""
    gallery = Gallery(evaluation)
    enrolled: dict[SlotRef, tuple[str, str]] = {}
    for identity, name, embedding in people_embeddings:
        if identity not in {who for who, _ in enrolled.values()}:
            enrolled[gallery.add(encrypt_enrollment(keys, embedding))] = (identity, name)
    assert len(enrolled) == 6
    refs = sorted(enrolled)
    gallery_vectors = {ref: e for ref in refs for who, n, e in people_embeddings if (who, n) == enrolled[ref]}
    probes = 0
    for identity, name, x in people_embeddings:
        match = scan_and_decode(keys, gallery, x)
        expected = {ref: float(np.linalg.norm(x - gallery_vectors[ref])) for ref in refs}
        got = {ref: float(match.distances[ref.block, ref.slot]) for ref in refs}
        assert np.isnan(match.distances).sum() == SLOTS - 6
        nearest = min(expected, key=expected.get)
        if (identity, name) in enrolled.values():  # the enrolled photo itself: distance ~0
            assert match.best == nearest and match.distance < 0.01, (name, match.distance)
            continue
        probes += 1
        assert enrolled[match.best][0] == identity, (name, enrolled[match.best], got)
        assert match.best == nearest
        for ref in refs:
            assert got[ref] == pytest.approx(expected[ref], abs=TOL), (name, ref)
        assert match.accepted() == is_match(expected[nearest]), (name, match.distance)
    assert probes == len(people_embeddings) - 6


class MultiBlock:
    """A three-block gallery and its plaintext mirror (templates and occupancy per block)."""

    def __init__(self, gallery: Gallery, templates: np.ndarray, occupied: np.ndarray) -> None:
        self.gallery, self.templates, self.occupied = gallery, templates, occupied
        self.enrollments: dict[SlotRef, bytes] = {}
        self.labels: dict[SlotRef, str] = {}

    def check(self, keys: SiteKeys, x: np.ndarray, self_match_ok: float = 0.01) -> tuple[float, object]:
        """Scan x; compare every slot with numpy. Returns the max error and the Match."""
        assert [o.tolist() for o in self.gallery.occupancy()] == [o.tolist() for o in self.occupied]
        match = scan_and_decode(keys, self.gallery, x)
        expected = np.stack([numpy_distances(t, o, x) for t, o in zip(self.templates, self.occupied)])
        np.testing.assert_array_equal(np.isnan(match.distances), ~self.occupied)
        far = expected >= self_match_ok  # at distance ~0 the square root magnifies CKKS noise
        error = float(np.nanmax(np.abs(match.distances - expected)[far]))
        assert error < TOL, error
        near = ~far & self.occupied
        if near.any():
            assert np.max(np.abs(match.distances[near] ** 2 - expected[near] ** 2)) < TOL
        ordered = np.sort(expected[self.occupied])
        block, slot = divmod(int(np.nanargmin(expected)), SLOTS)
        if ordered[1] - ordered[0] > 2 * TOL:
            assert match.best == SlotRef(block, slot), (match.best, (block, slot))
        assert match.distance == pytest.approx(ordered[0], abs=TOL if ordered[0] >= self_match_ok else 0.01)
        if abs(ordered[0] - THRESHOLD) > TOL:
            assert match.accepted() == is_match(ordered[0])
        return error, match


def lfw_probe_keys(pairs) -> list[str]:
    """Second images of the first same-person pairs: kept out of the gallery, their partners are in."""
    return [b for same, _, b in pairs if same][:10]


@pytest.fixture(scope="module")
def multi_block(keys, evaluation, lfw_sample, people_embeddings) -> MultiBlock:
    """Two full bulk-imported blocks (real LFW faces, near copies of them, random faces) and a third
    bulk block of 200 templates into which the six people are enrolled through Gallery.add."""
    pairs, lfw = lfw_sample
    probes = set(lfw_probe_keys(pairs))
    faces = [k for k in sorted(lfw) if k not in probes]
    rng = np.random.default_rng(8)
    templates = np.zeros((3, SLOTS, 128))
    occupied = np.zeros((3, SLOTS), bool)
    labels = {}
    for index, chosen in enumerate((faces[0::2], faces[1::2])):  # each real face in one block only
        real = np.array([lfw[k] for k in chosen])
        block = dlib_like(rng, SLOTS)
        near = rng.choice(SLOTS, 1000, replace=False)
        block[near] = real[rng.integers(len(real), size=1000)] + rng.normal(0, 0.03, (1000, 128))
        spots = rng.choice(np.setdiff1d(np.arange(SLOTS), near), len(real), replace=False)
        block[spots] = real
        labels.update({SlotRef(index, int(s)): k for s, k in zip(spots, chosen)})
        templates[index], occupied[index] = block, True
    templates[2, :200] = dlib_like(rng, 200)
    occupied[2, :200] = True

    gallery = Gallery(evaluation)
    for index, count in ((0, SLOTS), (1, SLOTS), (2, 200)):
        data = encrypt_block(keys, templates[index, :count])
        gallery.blocks.append(Block.from_bytes(evaluation, data))
    assert gallery.next_slot() == SlotRef(2, 200)
    state = MultiBlock(gallery, templates, occupied)
    state.labels = labels
    seen = set()
    for identity, name, embedding in people_embeddings:
        if identity in seen:
            continue
        seen.add(identity)
        enrollment = encrypt_enrollment(keys, embedding)
        ref = gallery.add(enrollment)
        assert ref.block == 2 and ref.slot == 200 + len(seen) - 1, ref
        templates[ref.block, ref.slot], occupied[ref.block, ref.slot] = embedding, True
        state.enrollments[ref] = enrollment
        state.labels[ref] = name
    assert len(gallery) == 2 * SLOTS + 206
    return state


def test_scan_matches_numpy_over_several_blocks(keys, multi_block, lfw_sample, people_embeddings):
    pairs, lfw = lfw_sample
    probes = [e for _, _, e in people_embeddings]
    probes += [lfw[k] for k in lfw_probe_keys(pairs)]  # their same-person partners are enrolled
    worst = 0.0
    for x in probes:
        error, _ = multi_block.check(keys, x)
        worst = max(worst, error)
    assert worst < TOL


def test_removal_from_bulk_and_enrolled_slots(keys, multi_block, lfw_sample, people_embeddings):
    state, gallery = multi_block, multi_block.gallery
    _, lfw = lfw_sample
    rng = np.random.default_rng(9)
    real_slot = min(ref for ref in state.labels if ref.block == 0)  # a real LFW face, bulk-imported
    random_slot = SlotRef(1, int(np.flatnonzero(state.occupied[1])[-1]))
    bulk_slot = SlotRef(2, 17)
    enrolled_slot = max(state.enrollments)  # added through Gallery.add: its own enrollment bytes
    for ref in (real_slot, random_slot, bulk_slot):
        # bulk-imported templates have no enrollment ciphertext: a fresh one of the same face removes them
        gallery.remove(ref, encrypt_enrollment(keys, state.templates[ref.block, ref.slot]))
    gallery.remove(enrolled_slot, state.enrollments.pop(enrolled_slot))
    removed = [real_slot, random_slot, bulk_slot, enrolled_slot]
    for ref in removed:
        state.occupied[ref.block, ref.slot] = False
    assert gallery.next_slot() == real_slot

    probes = [lfw[state.labels[real_slot]] + 0.01, people_embeddings[0][2], dlib_like(rng, 1)[0]]
    for x in probes:
        _, match = state.check(keys, x)
        for ref in removed:
            assert np.isnan(match.distances[ref.block, ref.slot])
        # decoded as if occupied, a removed slot holds the zero vector: its distance is |x|
        everything = [np.ones(SLOTS, bool)] * 3
        raw = scan_and_decode(keys, gallery, x, occupancy=everything)
        for ref in removed:
            assert raw.distances[ref.block, ref.slot] == pytest.approx(np.linalg.norm(x), abs=TOL), ref

    # the freed slots take new templates, from enrollment and at an explicit place
    y = dlib_like(rng, 2)
    first = gallery.add(encrypt_enrollment(keys, y[0]))
    assert first == real_slot
    second = gallery.add(encrypt_enrollment(keys, y[1]), at=random_slot)
    for ref, vec in ((first, y[0]), (second, y[1])):
        state.templates[ref.block, ref.slot], state.occupied[ref.block, ref.slot] = vec, True
    for x in (y[0] + 0.02, y[1] + 0.02):
        _, match = state.check(keys, x)
    assert match.best == random_slot
