"""Open-set evaluation: hand-counted FPIR/FNIR, gallery draws, Wilson intervals, the prediction
check, encrypted decisions equal to plaintext (and a tampered engine caught), the command's exit
codes, and a small real run on ../shared/lfw-devtest (skipped when absent)."""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from blindgate.device import evaluate
from blindgate.device.evaluation import open_set_encrypted, open_set_run
from blindgate.device.evaluation.open_set import (
    Mode,
    Outcome,
    capped_sizes,
    compare_predictions,
    decisions,
    draw_gallery,
    eligible_people,
    group_photos,
    nearest,
    run_open_set,
    threshold_grid,
    wilson,
)
from blindgate.device.evaluation.open_set_encrypted import EncryptedChecker

DIM = 128


def _axis(x: float, y: float = 0.0) -> np.ndarray:
    v = np.zeros(DIM)
    v[0], v[1] = x, y
    return v


def _outcome(strangers, genuine, own, repeats=1) -> Outcome:
    strangers, genuine = np.asarray(strangers, float), np.asarray(genuine, float)
    return Outcome(
        size=len(genuine),
        requested=[len(genuine)],
        mode=Mode.SINGLE,
        templates=len(genuine),
        repeats=repeats,
        stranger_distance=strangers,
        stranger_repeat=np.arange(len(strangers)) % repeats,
        genuine_distance=genuine,
        genuine_self=np.asarray(own, bool),
        genuine_repeat=np.arange(len(genuine)) % repeats,
    )


def _clusters(people: list[int], spread: float = 0.25, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic embeddings: person p's photos scattered around their own random centre."""
    rng = np.random.default_rng(seed)
    embeddings, labels = [], []
    for person, photos in enumerate(people):
        centre = rng.normal(0, 0.09, DIM)
        for _ in range(photos):
            embeddings.append(centre + rng.normal(0, spread / math.sqrt(DIM), DIM))
            labels.append(person)
    return np.array(embeddings), np.array(labels)


# -- counting by hand -----------------------------------------------------------------------------


def test_hand_made_gallery_counts():
    # A and B have two identical photos each (so any draw gives the same gallery); C, D, E one.
    # (Binary-exact positions: distances come from |p|^2 + |t|^2 - 2<p, t>, as the engine's do.)
    embeddings = np.array([_axis(0), _axis(0), _axis(1), _axis(1), _axis(0.375), _axis(0.75), _axis(3)])
    labels = np.array([0, 0, 1, 1, 2, 3, 4])
    [outcome] = run_open_set(embeddings, labels, [2], [Mode.SINGLE], repeats=5, seed=3)
    assert (outcome.size, outcome.templates, outcome.repeats) == (2, 2, 5)
    # Strangers C, D, E are 0.375, 0.25 and 2.0 from their nearest template.
    rates = outcome.rates([0.125, 0.25, 0.3, 0.375, 2.0])
    assert rates.strangers == 15 and rates.genuine == 10
    assert rates.false_opens.tolist() == [0, 5, 5, 10, 15]  # "within" includes the threshold
    np.testing.assert_allclose(rates.fpir, [0, 1 / 3, 1 / 3, 2 / 3, 1])
    assert rates.misses.tolist() == [0] * 5  # residents' probes equal their templates
    # 5 false opens at 0.25 but all by one photo (D in every gallery); 10 at 0.375 by two photos.
    assert [outcome.distinct_false_opens(t) for t in (0.125, 0.25, 0.375)] == [0, 1, 2]
    fpir, fnir = outcome.per_repeat(0.25)
    np.testing.assert_allclose(fpir, [1 / 3] * 5)
    np.testing.assert_allclose(fnir, [0] * 5)


def test_fnir_counts_wrong_person_and_too_far_as_misses():
    outcome = _outcome(strangers=[0.4, 0.7], genuine=[0.1, 0.2, 0.5], own=[True, False, True])
    rates = outcome.rates([0.05, 0.3, 0.6])
    # 0.2 is nearest to someone else: a miss at every threshold; 0.5 is theirs but only within 0.6.
    assert rates.misses.tolist() == [3, 2, 1]
    np.testing.assert_allclose(rates.fnir, [1, 2 / 3, 1 / 3])
    assert rates.false_opens.tolist() == [0, 0, 1]


def test_pooled_counts_equal_a_brute_force_count():
    embeddings, labels = _clusters([5, 4, 4, 3, 3, 2, 2, 2, 1, 1, 1, 1], spread=0.5)
    for mode in Mode:
        [outcome] = run_open_set(embeddings, labels, [4], [mode], k=2, repeats=1, seed=7)
        draw = outcome.first
        assert draw is not None
        for t in (0.3, 0.45, 0.6):
            false_opens = sum(min(np.linalg.norm(embeddings[i] - tpl) for tpl in draw.templates) <= t for i in draw.strangers)
            misses = 0
            for image, person in zip(draw.genuine, draw.genuine_owner):
                d = [np.linalg.norm(embeddings[image] - tpl) for tpl in draw.templates]
                best = int(np.argmin(d))
                misses += not (draw.owners[best] == person and d[best] <= t)
            rates = outcome.rates([t])
            assert (int(rates.false_opens[0]), int(rates.misses[0])) == (false_opens, misses), (mode, t)


# -- gallery draws --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(Mode))
def test_draw_enrolls_distinct_people_and_holds_out_their_probe(mode):
    embeddings, labels = _clusters([6, 5, 4, 4, 3, 2, 1, 1])
    groups = group_photos(labels)
    eligible = eligible_people(groups, mode, 3)
    # at least two photos, and enough for the mode (person 4 has exactly 3: enrolled, but no probe left)
    assert eligible.tolist() == ([0, 1, 2, 3, 4, 5] if mode is Mode.SINGLE else [0, 1, 2, 3, 4])
    draw = draw_gallery(embeddings, labels, groups, eligible, 4, mode, 3, np.random.default_rng(0))
    people = sorted(set(draw.owners.tolist()))
    assert len(people) == 4 and set(people) <= set(eligible.tolist())
    assert len(draw.templates) == (12 if mode is Mode.SEPARATE else 4)
    enrolled = draw.genuine_owner  # those with a photo to spare
    need = 1 if mode is Mode.SINGLE else 3
    assert enrolled.tolist() == [p for p in people if len(groups[p]) > need]
    assert labels[draw.genuine].tolist() == enrolled.tolist()
    # Strangers: every photo of every person not enrolled, and nothing else.
    assert sorted(draw.strangers.tolist()) == [i for i, p in enumerate(labels) if p not in people]
    for image, person in zip(draw.genuine, enrolled):
        own = draw.templates[draw.owners == person]
        assert not any(np.allclose(embeddings[image], t) for t in own)  # the probe is no template
        photos = embeddings[labels == person]
        if mode is Mode.MEAN:
            # The template is the mean of 3 of the person's other photos.
            others = [p for p in photos if not np.allclose(p, embeddings[image])]
            means = [
                np.mean([others[a], others[b], others[c]], axis=0)
                for a in range(len(others))
                for b in range(a + 1, len(others))
                for c in range(b + 1, len(others))
            ]
            assert any(np.allclose(own[0], m) for m in means)
        else:
            assert all(any(np.allclose(t, p) for p in photos) for t in own)


def test_sizes_are_capped_by_the_people_available():
    assert capped_sizes([10, 100, 1000], 53) == {10: [10], 53: [100, 1000]}
    assert capped_sizes([1000, 10], 361) == {10: [10], 361: [1000]}
    assert capped_sizes([5], 0) == {}


def test_same_seed_same_galleries_and_independent_of_other_sizes():
    embeddings, labels = _clusters([4] * 12 + [1] * 5)
    a = run_open_set(embeddings, labels, [3, 6], [Mode.MEAN], k=2, repeats=3, seed=11)
    b = run_open_set(embeddings, labels, [6], [Mode.MEAN], k=2, repeats=3, seed=11)
    c = run_open_set(embeddings, labels, [6], [Mode.MEAN], k=2, repeats=3, seed=12)
    np.testing.assert_array_equal(a[1].stranger_distance, b[0].stranger_distance)
    np.testing.assert_array_equal(a[1].genuine_distance, b[0].genuine_distance)
    assert not np.array_equal(b[0].stranger_distance, c[0].stranger_distance)


def test_nearest_matches_a_loop():
    rng = np.random.default_rng(2)
    probes, templates = rng.normal(size=(9, DIM)), rng.normal(size=(5, DIM))
    dist, index = nearest(probes, templates, chunk=4)
    loop = np.array([[np.linalg.norm(p - t) for t in templates] for p in probes])
    np.testing.assert_allclose(dist, loop.min(axis=1))
    assert index.tolist() == loop.argmin(axis=1).tolist()


def test_decisions_name_the_nearest_owner_within_the_threshold():
    dist = np.array([[0.3, 0.5, np.nan], [0.7, 0.65, np.nan], [0.4, 0.4 + 1e-9, np.nan]])
    owners = np.array([7, 8, 9])
    assert decisions(dist, owners, 0.6).tolist() == [7, -1, 7]
    assert decisions(dist, owners, 0.66).tolist() == [7, 8, 7]
    assert decisions(dist, owners, 0.2).tolist() == [-1, -1, -1]


# -- confidence intervals and the prediction check ------------------------------------------------


def test_wilson_interval_known_values():
    low, high = wilson([0, 5, 10, 1], [10, 10, 10, 1000])
    np.testing.assert_allclose(low, [0.0, 0.2366, 0.7225, 0.000177], atol=2e-4)
    np.testing.assert_allclose(high, [0.2775, 0.7634, 1.0, 0.00565], atol=2e-4)
    low, high = wilson(0, 0)
    assert math.isnan(float(low)) is False and float(low) == 0.0 and float(high) == 1.0


def test_wilson_interval_covers_about_95_percent():
    rng = np.random.default_rng(0)
    n, p = 400, 0.02
    k = rng.binomial(n, p, size=4000)
    low, high = wilson(k, n)
    coverage = np.mean((low <= p) & (p <= high))
    assert 0.93 <= coverage <= 0.975


def test_prediction_check_only_where_enough_false_opens_are_expected():
    strangers = np.r_[np.full(20, 0.40), np.full(30, 0.50), np.full(950, 0.9)]  # 1000 stranger probes
    outcome = _outcome(strangers, genuine=[0.1], own=[True])
    rows = compare_predictions(outcome, [0.3, 0.45, 0.55], lambda t: {0.3: 0.005, 0.45: 0.03, 0.55: 0.2}[t])
    # 0.3: 5 expected (< 10) -> not compared; 0.45: 30 expected vs 20 seen (1.5x, within);
    # 0.55: 200 expected vs 50 seen (4x, outside).
    assert [r.threshold for r in rows] == [0.45, 0.55]
    assert [r.observed_false_opens for r in rows] == [20, 50]
    assert rows[0].within and rows[0].ratio == pytest.approx(1.5)
    assert not rows[1].within and rows[1].ratio == pytest.approx(4.0)
    [zero] = compare_predictions(outcome, [0.35], lambda t: 0.02)
    assert zero.ratio == math.inf and not zero.within  # predicted 20, none seen


def test_threshold_grid_includes_both_ends():
    grid = threshold_grid()
    assert grid[0] == 0.30 and grid[-1] == 0.70 and len(grid) == 81
    assert 0.45 in grid and 0.5 in grid and 0.6 in grid


# -- the encrypted check --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checker() -> EncryptedChecker:
    return EncryptedChecker(DIM)


def _draw():
    embeddings, labels = _clusters([3] * 8 + [1] * 6, spread=0.5)
    [outcome] = run_open_set(embeddings, labels, [5], [Mode.SEPARATE], k=2, repeats=1)
    return embeddings, outcome.first


def test_encrypted_decisions_equal_plaintext(checker):
    embeddings, draw = _draw()
    result = checker.check(embeddings, draw, [0.45, 0.5, 0.6], 12, np.random.default_rng(0))
    assert result["probes"] == 12 and result["genuine_probes"] == 5 and result["stranger_probes"] == 7
    assert result["templates"] == 10 and result["blocks"] == 1
    assert result["disagreements"] == 0 and result["nearest_template_differs"] == 0
    assert 0 < result["max_abs_error"] <= 1e-4


def test_a_tampered_engine_is_caught(checker, monkeypatch):
    # Attack on the check itself: an engine that returns the second-nearest template's distance
    # for the nearest one must show up as disagreements.
    embeddings, draw = _draw()
    real = open_set_encrypted.decode_scan

    def swapped(*args, **kwargs):
        match = real(*args, **kwargs)
        flat = match.distances.reshape(-1)
        order = np.argsort(np.where(np.isnan(flat), np.inf, flat))
        flat[order[0]], flat[order[1]] = flat[order[1]], flat[order[0]]
        return match

    monkeypatch.setattr(open_set_encrypted, "decode_scan", swapped)
    result = checker.check(embeddings, draw, [2.0], 12, np.random.default_rng(0))
    assert result["disagreements"] > 0 and result["nearest_template_differs"] == 12


# -- the command ----------------------------------------------------------------------------------


class _FlatCalibration:
    """A stand-in calibration predicting the same false-open rate at every threshold."""

    def __init__(self, rate: float) -> None:
        self.rate, self.provenance = rate, {"fake": True}

    def false_open(self, threshold, templates, enrollment=None) -> float:
        return self.rate

    def true_open(self, threshold, enrollment=None) -> float:
        return 0.9

    def threshold_for(self, target, templates, enrollment=None) -> float:
        return 0.5


@pytest.fixture
def fake_folder(tmp_path, monkeypatch):
    """An LFW-format folder of empty files whose 'embeddings' are synthetic clusters."""
    people = [4] * 12 + [1] * 20
    embeddings, labels = _clusters(people, spread=0.5)
    images = tmp_path / "images"
    for person, photos in enumerate(people):
        name = f"Person_{person:02d}"
        (images / name).mkdir(parents=True)
        for n in range(1, photos + 1):
            (images / name / f"{name}_{n:04d}.jpg").write_bytes(b"")

    def fake_embed(args, paths, progress):
        # paths are sorted by folder then file: the same order as the clusters.
        assert len(paths) == len(embeddings)
        return embeddings, {"settings": {}, "cached": 0, "fallback_images": 0, "seconds": 0.0}

    monkeypatch.setattr(open_set_run, "_embed", fake_embed)
    return images


def _run(images: Path, out: Path, *extra: str) -> int:
    return evaluate.main(
        [
            "--open-set",
            str(images),
            "--out",
            str(out),
            "--sizes",
            "5,100",
            "--repeats",
            "3",
            "-q",
            "--encrypted-probes",
            "8",
            *extra,
        ]
    )


def test_command_exit_0_writes_json_markdown_and_det(fake_folder, tmp_path, monkeypatch):
    import blindgate.device.operating_point as op

    monkeypatch.setattr(op, "load_calibration", lambda: _FlatCalibration(0.0))  # nothing expected: no comparison
    out = tmp_path / "out"
    assert _run(fake_folder, out) == 0
    summary = json.loads((out / "open_set.json").read_text())
    results = {(r["mode"], r["size"]): r for r in summary["results"]}
    # single: 12 eligible -> sizes 5 and 12 (100 capped); mean/separate need 4 photos: 12 too.
    assert set(results) == {(m, s) for m in ("single", "mean", "separate") for s in (5, 12)}
    assert results[("separate", 12)]["templates"] == 36 and results[("separate", 12)]["requested_sizes"] == [100]
    r = results[("single", 5)]
    assert r["operating_point"]["threshold"] == 0.5
    assert r["operating_point"]["measured"]["stranger_probes"] == 3 * (7 * 4 + 20)
    assert r["operating_point"]["measured"]["genuine_probes"] == 15
    assert r["encrypted_check"]["disagreements"] == 0 and r["encrypted_check"]["probes"] == 8
    assert summary["passed"] is True and "Wilson" in summary["ci_method"]
    md = (out / "open_set.md").read_text()
    assert "| 12 (asked 100) | separate | 36 | 0.5000 |" in md and "threshold 0.45" in md
    data = (out / "det.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24])[0] >= 400


def test_command_exit_1_when_the_prediction_is_off(fake_folder, tmp_path, monkeypatch):
    import blindgate.device.operating_point as op

    monkeypatch.setattr(op, "load_calibration", lambda: _FlatCalibration(1.0))  # predicts every stranger opens
    out = tmp_path / "out"
    assert _run(fake_folder, out, "--modes", "single") == 1
    summary = json.loads((out / "open_set.json").read_text())
    assert summary["checks"] == {"encrypted_decisions_equal_plaintext": True, "prediction_at_operating_point": False}
    assert summary["prediction_across_grid"] is False
    for r in summary["results"]:
        pc = r["prediction_check"]
        if "skipped" in pc:  # the size that enrolls every eligible person: one gallery repeated
            assert r["size"] == r["people_eligible"] and pc["compared"] == 0
            continue
        assert pc["failed"] == pc["over_predicted"] > 0 and pc["under_predicted"] == 0
        assert pc["at_operating_point"] is None or not pc["at_operating_point"]["within"]
    assert any(r["prediction_check"]["at_operating_point"] for r in summary["results"])


@pytest.mark.parametrize(
    "extra, message",
    [(["--k", "1"], "--k must be at least 2"), (["--repeats", "0"], "--repeats"), (["--encrypted-probes", "0"], "probes")],
)
def test_command_bad_arguments_exit_2(fake_folder, tmp_path, capsys, extra, message):
    assert _run(fake_folder, tmp_path / "out", *extra) == 2
    assert message in capsys.readouterr().err


def test_command_bad_folders_exit_2(tmp_path, capsys):
    assert _run(tmp_path / "missing", tmp_path / "out") == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _run(tmp_path / "empty", tmp_path / "out") == 2
    (tmp_path / "single" / "A").mkdir(parents=True)
    (tmp_path / "single" / "A" / "A_0001.jpg").write_bytes(b"")
    assert _run(tmp_path / "single", tmp_path / "out") == 2
    assert "enough photos" in capsys.readouterr().err


def test_cli_forwards_open_set(fake_folder, tmp_path, monkeypatch):
    import blindgate.device.operating_point as op
    from blindgate.device.cli import main as device_main

    monkeypatch.setattr(op, "load_calibration", lambda: _FlatCalibration(0.0))
    out = tmp_path / "out"
    code = device_main(
        [
            "evaluate",
            "--open-set",
            str(fake_folder),
            "--out",
            str(out),
            "--sizes",
            "5",
            "--repeats",
            "1",
            "--modes",
            "single",
            "--encrypted-probes",
            "4",
            "-q",
        ]
    )
    assert code == 0 and (out / "open_set.json").is_file()


# -- a small real run -----------------------------------------------------------------------------


def test_real_lfw_open_set(shared_dir, tmp_path):
    images = shared_dir / "lfw-devtest" / "images"
    if not images.is_dir():
        pytest.skip(f"LFW devtest images not found: {images}")
    # A few people keep it under a minute without a cache: 12 with >= 4 photos, 15 with fewer.
    people = sorted(p for p in images.iterdir() if p.is_dir())
    counts = {p: len(list(p.glob("*.jpg"))) for p in people}
    chosen = [p for p in people if counts[p] >= 4][:12] + [p for p in people if counts[p] < 4][:15]
    subset = tmp_path / "images"
    subset.mkdir()
    for person in chosen:
        os.symlink(person, subset / person.name)
    out = tmp_path / "out"
    args = ["--open-set", str(subset), "--out", str(out), "--sizes", "10", "--repeats", "2", "--encrypted-probes", "20", "-q"]
    code = evaluate.main(args)
    summary = json.loads((out / "open_set.json").read_text())
    assert code == (0 if summary["passed"] else 1)
    assert summary["dataset"]["people"] == 27
    assert summary["checks"]["encrypted_decisions_equal_plaintext"] is True
    for r in summary["results"]:
        assert r["size"] == 10 and r["encrypted_check"]["probes"] == 20
        assert r["encrypted_check"]["disagreements"] == 0 and r["encrypted_check"]["max_abs_error"] <= 1e-4
        op = r["operating_point"]
        assert 0.3 < op["threshold"] < 0.7 and op["source"] == "target"
        # 2 galleries x 10 people; in mean/separate mode someone with exactly 3 photos has no probe left
        assert 0 <= op["measured"]["fpir"] <= 1 and 10 <= op["measured"]["genuine_probes"] <= 20
    assert {r["mode"] for r in summary["results"]} == {"single", "mean", "separate"}
    assert (out / "det.png").is_file() and "At the default target" in (out / "open_set.md").read_text()
