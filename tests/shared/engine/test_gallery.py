"""gallery.py: exact add/remove, block serialization and its validation.

The block layout (BGB1 | u32 header length | JSON header | (u32 length, SEAL ciphertext)*) is
rebuilt here byte by byte, so that tampered blocks reach the checks behind the container's own.
"""

from __future__ import annotations

import json
import struct

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
    scan,
    verify,
)
from tests.shared.engine.support import SLOTS, TOL, accepted, dlib_like, numpy_distances, scan_and_decode


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
    match = decode_scan(keys, y, replies, gallery.occupancy(), gallery.layouts())
    assert match.best is None and match.distance == float("inf") and not accepted(match.distance)
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
    # a new gallery's first block gives each template 4 slots: 128 / 4 diagonals and the norms
    assert header["key_id"] == keys.key_id and header["copies"] == 4 and header["ciphertexts"] == len(blobs) == 33
    restored = Block.from_bytes(evaluation, data)
    assert restored.to_bytes() == data and restored.digest() == gallery.blocks[0].digest()
    np.testing.assert_array_equal(restored.occupied, gallery.blocks[0].occupied)
    copy = Gallery(evaluation)
    copy.blocks.append(restored)
    x = templates[2] + 0.03
    probe = encrypt_probe(keys, x)
    assert scan(copy, probe) == scan(gallery, probe)  # deterministic evaluation, same bytes
    match = decode_scan(keys, x, scan(copy, probe), copy.occupancy(), copy.layouts())
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
        (join_block(dict(header, occupied="00" * 512), blobs), "holds 33 ciphertexts, expected 0"),
        (join_block(header, blobs[:-1]), "truncated"),
        (join_block(dict(header, ciphertexts=32), blobs[:-1]), "holds 32 ciphertexts, expected 33"),
        # the layout: another one does not fit the ciphertexts, unknown or non-canonical ones are refused
        (join_block({k: v for k, v in header.items() if k != "copies"}, blobs), "holds 33 ciphertexts, expected 129"),
        (join_block(dict(header, copies=2), blobs), "holds 33 ciphertexts, expected 65"),
        (join_block(dict(header, copies=3), blobs), "1, 2 or 4 slots"),
        (join_block(dict(header, copies=1), blobs), "malformed copies 1"),
        (join_block(dict(header, copies="4"), blobs), "malformed copies"),
        (join_block(dict(header, copies=True), blobs), "malformed copies"),
        # slot 8 holds copy 1 of the template in slot 0 (offsets 0, 8, 64, 72 at dim 128): not a base slot
        (join_block(dict(header, occupied="f080" + "00" * 510), blobs), "outside the base slots"),
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
