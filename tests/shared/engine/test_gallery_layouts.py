"""gallery.py's block layouts: 1, 2 or 4 slots per template, where they go, and their exactness.

A block with r copies sums d / r coordinates per slot; the device adds a template's copies up.
These tests pin the layout arithmetic (pure), then check every layout against numpy through
bulk import and enrollment, across block boundaries, with old (one-copy) blocks and old
(power-of-two) key bundles.
"""

from __future__ import annotations

import numpy as np
import pytest

from blindgate.shared.engine import (
    Block,
    EngineError,
    EvaluationKeys,
    Gallery,
    Params,
    SlotRef,
    base_slots,
    block_layout,
    copies_for_block,
    decode_scan,
    decode_verify,
    encrypt_block,
    encrypt_enrollment,
    encrypt_probe,
    first_free_slot,
    plan_blocks,
    scan,
    scan_blocks,
    verify,
)
from blindgate.shared.engine.gallery import copy_slots
from blindgate.shared.engine.scan import baby_steps, load_probe, scan_block
from tests.shared.engine.support import SLOTS, TOL, dlib_like, legacy_site_keys, numpy_distances, scan_and_decode

DIMS = (2, 4, 8, 16, 32, 64, 128, 256, 512)


def layouts_of(dim: int) -> list[int]:
    return [c for c in (1, 2, 4) if c <= dim]


# --- the layout arithmetic (no SEAL) ----------------------------------------------------------


@pytest.mark.parametrize("dim", DIMS)
def test_copies_tile_every_coordinate_and_every_slot_once(dim):
    params = Params(dim=dim)
    for copies in layouts_of(dim):
        layout = block_layout(params, copies)
        assert layout.per_copy * copies == dim and layout.stride == params.baby
        assert layout.baby <= params.baby and len(layout.offsets) == copies and layout.offsets[0] == 0
        covered = sorted((k + o) % dim for k in layout.terms for o in layout.offsets)
        assert covered == list(range(dim)), (dim, copies)  # each coordinate summed by exactly one copy
        bases = base_slots(params, copies)
        assert len(bases) == SLOTS // copies and list(bases) == sorted(bases)
        slots = np.concatenate([bases + o for o in layout.offsets])
        assert sorted(slots.tolist()) == list(range(SLOTS))  # copies of different templates never collide
        assert copy_slots(params, copies, int(bases[-1]))[-1] < SLOTS


def test_one_copy_is_the_original_layout():
    params = Params()
    layout = block_layout(params, 1)
    assert (layout.baby, layout.giant, layout.stride, layout.offsets) == (params.baby, params.giant, params.baby, (0,))
    assert base_slots(params, 1).tolist() == list(range(SLOTS))


def test_dlib_layouts():
    """At dim 128: 4 copies sum 32 terms with 8 baby steps and 4 giant steps of 16."""
    params = Params()
    four, two = block_layout(params, 4), block_layout(params, 2)
    assert (four.baby, four.giant, four.offsets) == (8, 4, (0, 8, 64, 72))
    assert (two.baby, two.giant, two.offsets) == (16, 4, (0, 64))
    assert base_slots(params, 4)[:10].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 16, 17]


@pytest.mark.parametrize("copies", [0, 3, 8, -1, "4"])
def test_unknown_layouts_are_refused(copies):
    with pytest.raises(EngineError, match="1, 2 or 4 slots"):
        block_layout(Params(), copies)
    with pytest.raises(EngineError, match="1, 2 or 4 slots"):
        block_layout(Params(dim=2), 4)  # more copies than coordinates


def test_layout_policy_for_new_blocks():
    params = Params()
    assert [copies_for_block(params, i) for i in range(4)] == [4, 1, 1, 1]
    assert [copies_for_block(Params(dim=2), i) for i in range(2)] == [2, 1]  # never more copies than coordinates


def test_first_free_slot():
    params = Params()
    four = base_slots(params, 4)
    assert first_free_slot(params, [], []) == (SlotRef(0, 0), 4)
    taken = [SlotRef(0, int(s)) for s in four[:10]]
    assert first_free_slot(params, [4], taken) == (SlotRef(0, int(four[10])), 4)
    assert first_free_slot(params, [4], taken[1:]) == (SlotRef(0, 0), 4)
    full = [SlotRef(0, int(s)) for s in four]
    assert first_free_slot(params, [4], full) == (SlotRef(1, 0), copies_for_block(params, 1))  # the policy's layout
    assert first_free_slot(params, [2], [SlotRef(0, 0)]) == (SlotRef(0, 1), 2)  # existing blocks keep theirs
    # an old one-copy block fills in slot order; a freed slot in an earlier block comes first
    old = [SlotRef(0, s) for s in range(SLOTS)] + [SlotRef(1, s) for s in range(7)]
    assert first_free_slot(params, [1, 1], old) == (SlotRef(1, 7), 1)
    assert first_free_slot(params, [1, 1], old[1:]) == (SlotRef(0, 0), 1)
    assert first_free_slot(params, [1, 1], old[:SLOTS] + [SlotRef(1, s) for s in range(SLOTS)]) == (SlotRef(2, 0), 1)


# --- exactness against numpy ------------------------------------------------------------------


@pytest.mark.parametrize("copies", [1, 2, 4])
def test_bulk_blocks_of_every_layout_match_numpy(keys, evaluation, copies):
    rng = np.random.default_rng(20 + copies)
    count = SLOTS // copies - 3  # nearly full: every copy slot of most templates in use
    templates = dlib_like(rng, count)
    data = encrypt_block(keys, templates, copies=copies)
    block = Block.from_bytes(evaluation, data)
    assert block.copies == copies and block.count == count and block.capacity == SLOTS // copies
    assert len(block.diagonals) * len(block.diagonals[0]) == 128 // copies
    bases = base_slots(keys.params, copies)
    assert np.flatnonzero(block.occupied).tolist() == bases[:count].tolist()
    for x in (templates[5] + rng.normal(0, 0.02, 128), dlib_like(rng, 1)[0]):
        (reply,) = scan_blocks(evaluation, [block], encrypt_probe(keys, x))
        match = decode_scan(keys, x, [reply], [block.occupied], [copies])
        expected = np.full(SLOTS, np.nan)
        expected[bases[:count]] = np.linalg.norm(templates - x, axis=1)
        np.testing.assert_array_equal(np.isnan(match.distances[0]), np.isnan(expected))
        assert np.nanmax(np.abs(match.distances[0] - expected)) < TOL
        assert match.best == SlotRef(0, int(bases[np.argmin(np.linalg.norm(templates - x, axis=1))]))
    with pytest.raises(EngineError, match=f"between 1 and {SLOTS // copies}"):
        encrypt_block(keys, dlib_like(rng, SLOTS // copies + 1), copies=copies)


@pytest.mark.parametrize("copies", [2, 4])
def test_add_and_remove_are_exact_in_every_layout(keys, evaluation, copies):
    rng = np.random.default_rng(30 + copies)
    templates = dlib_like(rng, 3)
    enrollments = [encrypt_enrollment(keys, y) for y in templates]
    bases = base_slots(keys.params, copies)
    spots = [int(bases[0]), int(bases[9]), int(bases[-1])]  # includes a slot whose copies wrap a group
    cts = [Gallery(evaluation).load_enrollment(e) for e in enrollments]
    block = Block(evaluation, copies)
    for ct, slot in zip(cts, spots):
        block.add(ct, slot)
    before = block.to_bytes()
    ct = cts[1]
    block.remove(ct, spots[1])
    without = Block(evaluation, copies)
    for index in (0, 2):
        without.add(cts[index], spots[index])
    assert block.to_bytes() == without.to_bytes()  # removal leaves exactly the block that never held it
    block.add(ct, spots[1])
    assert block.to_bytes() == before  # and re-adding gives identical bytes
    x = templates[1] + 0.01
    (reply,) = scan_blocks(evaluation, [block], encrypt_probe(keys, x))
    match = decode_scan(keys, x, [reply], [block.occupied], [copies])
    assert match.best == SlotRef(0, spots[1])
    assert match.distances[0, spots] == pytest.approx(np.linalg.norm(templates - x, axis=1), abs=TOL)
    with pytest.raises(EngineError, match="not where a template"):
        block.add(ct, spots[0] + block.layout.offsets[1])  # a copy slot of another template


def test_gallery_grows_across_block_boundaries_with_mixed_layouts(keys, evaluation):
    """A nearly full 4-copy block 0 (bulk), enrollment spilling into a new one-copy block 1, and a
    2-copy block 2: one scan (8 and 16 baby steps at once) decodes every slot right."""
    rng = np.random.default_rng(40)
    first = dlib_like(rng, SLOTS // 4 - 1)
    gallery = Gallery(evaluation)
    gallery.blocks.append(Block.from_bytes(evaluation, encrypt_block(keys, first, copies=4)))
    last_base = int(base_slots(keys.params, 4)[-1])
    assert gallery.next_slot() == SlotRef(0, last_base)
    enrolled = dlib_like(rng, 3)
    refs = [gallery.add(encrypt_enrollment(keys, y)) for y in enrolled]
    assert refs == [SlotRef(0, last_base), SlotRef(1, 0), SlotRef(1, 1)]
    assert gallery.layouts() == [4, 1] and gallery.blocks[0].is_full
    assert b'"copies"' not in gallery.blocks[1].to_bytes()[:1000]  # one copy: the format before layouts
    two = dlib_like(rng, 50)
    gallery.blocks.append(Block.from_bytes(evaluation, encrypt_block(keys, two, copies=2)))
    assert gallery.layouts() == [4, 1, 2] and len(gallery) == SLOTS // 4 + 2 + 50

    mirror = np.zeros((3, SLOTS, 128))
    occupied = np.zeros((3, SLOTS), bool)
    bases4 = base_slots(keys.params, 4)
    mirror[0, bases4[:-1]], mirror[0, last_base] = first, enrolled[0]
    bases2 = base_slots(keys.params, 2)[:50]
    mirror[1, :2], mirror[2, bases2] = enrolled[1:], two
    occupied[0, bases4], occupied[1, :2], occupied[2, bases2] = True, True, True
    for x in (enrolled[2] + 0.01, two[7] + 0.01, first[500] + 0.01):
        match = scan_and_decode(keys, gallery, x)
        expected = np.stack([numpy_distances(t, o, x) for t, o in zip(mirror, occupied)])
        np.testing.assert_array_equal(np.isnan(match.distances), ~occupied)
        assert np.nanmax(np.abs(match.distances - expected)) < TOL
        block, slot = divmod(int(np.nanargmin(expected)), SLOTS)
        assert match.best == SlotRef(block, slot)


def test_decode_refuses_layouts_that_do_not_fit(keys, small):
    gallery, templates, _ = small
    replies = scan(gallery, encrypt_probe(keys, templates[0]))
    occupancy = gallery.occupancy()
    assert gallery.layouts() == [4]
    with pytest.raises(EngineError, match="layouts for 2 blocks"):
        decode_scan(keys, templates[0], replies, occupancy, [4, 4])
    with pytest.raises(EngineError, match="1, 2 or 4 slots"):
        decode_scan(keys, templates[0], replies, occupancy, [3])
    copy_slot = occupancy[0].copy()
    copy_slot[8] = True  # slot 8 holds copy 1 of slot 0's template
    with pytest.raises(EngineError, match="outside the base slots"):
        decode_scan(keys, templates[0], replies, [copy_slot], [4])
    # read as one-copy results, the partial sums are not distances: the layout matters
    wrong = decode_scan(keys, templates[0], replies, occupancy, [1])
    assert wrong.distances[0, 0] > 0.1
    assert decode_scan(keys, templates[0], replies, occupancy, [4]).distances[0, 0] < 0.01


def test_scan_block_needs_its_baby_steps(keys, evaluation, small):
    gallery, templates, _ = small
    steps = baby_steps(evaluation, load_probe(evaluation, encrypt_probe(keys, templates[0])), 4)
    with pytest.raises(EngineError, match="needs 8 baby steps, got 4"):
        scan_block(evaluation, gallery.blocks[0], steps)


# --- old key bundles --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def legacy():
    return legacy_site_keys()


def test_old_power_of_two_bundle_still_enrolls_scans_and_verifies(legacy):
    evaluation = EvaluationKeys.from_bytes(legacy.evaluation_bytes)
    assert evaluation.galois.size() == 7 and evaluation.has_steps(legacy.params.rotation_steps)
    assert len(legacy.evaluation_bytes) > 5_000_000  # the old bundle: kept working, not made anew
    rng = np.random.default_rng(50)
    templates = dlib_like(rng, 3)
    enrollments = [encrypt_enrollment(legacy, y) for y in templates]
    gallery = Gallery(evaluation)
    for e in enrollments:
        gallery.add(e)
    gallery.blocks.append(Block.from_bytes(evaluation, encrypt_block(legacy, templates)))  # an old block
    x = templates[1] + 0.02
    match = scan_and_decode(legacy, gallery, x)
    expected = np.linalg.norm(templates - x, axis=1)
    assert match.distances[0, :3] == pytest.approx(expected, abs=TOL)
    assert match.distances[1, :3] == pytest.approx(expected, abs=TOL)
    distance = decode_verify(legacy, verify(evaluation, encrypt_probe(legacy, x), enrollments[2]))
    assert distance == pytest.approx(expected[2], abs=TOL)


def test_new_bundle_verifies_with_chained_rotations(keys, evaluation):
    assert not evaluation.has_steps(keys.params.rotation_steps)  # so verify takes 15 + 7 rotations
    x, y = dlib_like(np.random.default_rng(51), 2)
    reply = verify(evaluation, encrypt_probe(keys, x), encrypt_enrollment(keys, y))
    assert decode_verify(keys, reply) == pytest.approx(float(np.linalg.norm(x - y)), abs=TOL)


def test_plan_blocks_follows_the_enrollment_layouts_or_a_fixed_one():
    params = Params()
    plan = plan_blocks(params, 6000)
    assert [copies for _, _, copies in plan] == [copies_for_block(params, i) for i in range(len(plan))]
    assert [end - start for start, end, copies in plan[:-1]] == [params.slots // copies for _, _, copies in plan[:-1]]
    assert plan[0][0] == 0 and plan[-1][1] == 6000 and all(a[1] == b[0] for a, b in zip(plan, plan[1:]))
    assert plan_blocks(params, 5000, 1) == [(0, 4096, 1), (4096, 5000, 1)]
    assert plan_blocks(params, 0) == []
