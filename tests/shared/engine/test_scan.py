"""scan.py: 1:1 verify and 1:N scan over multi-block galleries on real dlib embeddings, decoded
and compared with numpy slot by slot."""

from __future__ import annotations

import numpy as np
import pytest

from blindgate.shared.engine import (
    Block,
    Gallery,
    Match,
    SiteKeys,
    SlotRef,
    decode_verify,
    encrypt_block,
    encrypt_enrollment,
    encrypt_probe,
    verify,
)
from tests.shared.engine.support import SLOTS, THRESHOLD, TOL, accepted, dlib_like, numpy_distances, scan_and_decode


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
        assert accepted(distance) == accepted(expected), (a, b, distance, expected)
        decisions.append(accepted(distance) == same)
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
        nearest = min(expected, key=lambda ref: expected[ref])
        if (identity, name) in enrolled.values():  # the enrolled photo itself: distance ~0
            assert match.best == nearest and match.distance < 0.01, (name, match.distance)
            continue
        probes += 1
        assert match.best is not None
        assert enrolled[match.best][0] == identity, (name, enrolled[match.best], got)
        assert match.best == nearest
        for ref in refs:
            assert got[ref] == pytest.approx(expected[ref], abs=TOL), (name, ref)
        assert accepted(match.distance) == accepted(expected[nearest]), (name, match.distance)
    assert probes == len(people_embeddings) - 6


class MultiBlock:
    """A three-block gallery and its plaintext mirror (templates and occupancy per block)."""

    def __init__(self, gallery: Gallery, templates: np.ndarray, occupied: np.ndarray) -> None:
        self.gallery, self.templates, self.occupied = gallery, templates, occupied
        self.enrollments: dict[SlotRef, bytes] = {}
        self.labels: dict[SlotRef, str] = {}

    def check(self, keys: SiteKeys, x: np.ndarray, self_match_ok: float = 0.01) -> tuple[float, Match]:
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
            assert accepted(match.distance) == accepted(ordered[0])
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
