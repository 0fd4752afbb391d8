"""Fitting the calibration (device/evaluation/calibrate.py) on embeddings with known distances."""

from __future__ import annotations

import json

import numpy as np
import pytest

from blindgate.device.evaluation.calibrate import GRID, buckets, fit, lfw_images, main
from blindgate.device.evaluation.common import InputError
from blindgate.device.operating_point import Calibration, Enrollment


def _line(points: list[float]) -> np.ndarray:
    """Embeddings on one axis: the distance between two is the difference of their positions."""
    out = np.zeros((len(points), 128))
    out[:, 0] = points
    return out


def test_rates_are_counted_per_probe_against_other_people_only():
    # a at 0 and 0.1 (two photos), b at 0.35, c at 1.0
    embeddings, people = _line([0.0, 0.1, 0.35, 1.0]), ["a", "a", "b", "c"]
    data = fit(embeddings, people, k=2, draws=1, bucket_count=4)
    c = Calibration(data, "test")
    grid = GRID[0] + GRID[1] * np.arange(GRID[2])
    t = int(np.searchsorted(grid, 0.3 - 1e-9))  # grid point 0.30
    impostor = np.array(data["enrollments"]["single"]["impostor"])
    # at 0.30 only a2 (0.1) and b (0.35) are within reach of each other (0.25). Every other PERSON
    # weighs the same: a2 sees b but not c (1/2); b sees half of a's photos and none of c's (1/4)
    assert sorted(impostor[t].tolist()) == pytest.approx([0.0, 0.0, 0.25, 0.5], abs=1e-4)
    assert c.false_open(0.30, 1, Enrollment.SINGLE) == pytest.approx((0.25 + 0.5) / 4, abs=1e-4)
    assert data["enrollments"]["single"]["genuine_pairs"] == 1  # a1-a2 at 0.1
    assert c.true_open(0.2, Enrollment.SINGLE) == 1.0
    assert data["provenance"]["single_impostor_pairs"] == 4 * 4 - 2 - 2 - 1 - 1  # every pair of different people, both ways
    # only `a` has k=2 photos: one person's mean templates say nothing about strangers, so no table;
    # asking for it falls back to the single-photo table
    assert "mean" not in data["enrollments"]
    assert c.false_open(0.30, 1, Enrollment.MEAN) == c.false_open(0.30, 1, Enrollment.SINGLE)
    data = fit(embeddings[[0, 1, 2, 2, 3]] + np.eye(5, 128) * 1e-3, ["a", "a", "b", "b", "c"], k=2, draws=1)
    assert data["enrollments"]["mean"]["templates"] == 2 and data["enrollments"]["separate"]["templates"] == 4


def test_separate_templates_count_a_person_once_by_their_nearest_photo():
    # probe x at 0; person a has photos at 0.2 and 0.9, b at 0.5 and 0.6: within 0.25 of x only a
    # (its nearest photo, 0.2); every other probe is 0.3 or more from the other person
    embeddings, people = _line([0.0, 0.2, 0.9, 0.5, 0.6]), ["x", "a", "a", "b", "b"]
    data = fit(embeddings, people, k=2, draws=1, bucket_count=5)
    grid = GRID[0] + GRID[1] * np.arange(GRID[2])
    t = int(np.searchsorted(grid, 0.25 - 1e-9))
    separate = np.array(data["enrollments"]["separate"]["impostor"])
    assert sorted(separate[t].tolist()) == pytest.approx([0, 0, 0, 0, 0.5])  # x: a within, b not -> 1 of 2 people
    assert data["enrollments"]["separate"]["k"] == 2


def test_buckets_average_sorted_rates():
    rates = np.array([[0.0], [0.4], [0.2], [0.6]])
    assert buckets(rates, 2).tolist() == [[0.1, 0.5]]


def test_fit_needs_two_people_and_a_folder(tmp_path):
    with pytest.raises(InputError, match="two people"):
        fit(_line([0.0, 0.1]), ["a", "a"])
    with pytest.raises(InputError, match="not a folder"):
        lfw_images(tmp_path / "missing")
    with pytest.raises(InputError, match="no <Name>"):
        lfw_images(tmp_path)
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "c.json")]) == 2


def test_the_fit_is_reproducible():
    rng = np.random.default_rng(3)
    embeddings = rng.normal(0, 0.09, (40, 128))
    people = [f"p{i // 4}" for i in range(40)]
    a, b = fit(embeddings, people, seed=5), fit(embeddings, people, seed=5)
    assert json.dumps(a) == json.dumps(b)
