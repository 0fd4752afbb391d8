"""The operating point: a threshold from the target `max_false_open`, the calibration it rests on,
and the `threshold` command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from blindgate.device.cli import main as device_main
from blindgate.device.operating_point import (
    Calibration,
    CalibrationError,
    Enrollment,
    check_decision_config,
    load_calibration,
    operating_point,
)
from blindgate.shared.config import DecisionConfig, DeviceConfig, load_config

from .conftest import provision

DEFAULT = DecisionConfig()


@pytest.fixture(scope="module")
def calibration() -> Calibration:
    return load_calibration()


def test_the_shipped_calibration_was_fitted_on_devtrain_with_millions_of_pairs(calibration):
    p = calibration.provenance
    assert p["folder"] == "lfw-devtrain/images" and p["command"].startswith("blindgate-device calibrate ")
    assert p["single_impostor_pairs"] > 1_000_000 and p["mean_impostor_pairs"] > 1_000_000
    assert p["single_genuine_pairs"] > 1000 and set(calibration.tables) == set(Enrollment)


@pytest.mark.parametrize("enrollment", list(Enrollment))
def test_rates_rise_with_the_threshold_and_the_gallery(calibration, enrollment):
    thresholds = np.linspace(0.25, 0.75, 41)
    for n in (1, 10, 100, 1000):
        rates = [calibration.false_open(t, n, enrollment) for t in thresholds]
        assert all(b >= a for a, b in zip(rates, rates[1:])) and 0 <= rates[0] <= rates[-1] <= 1
    for t in thresholds:
        by_size = [calibration.false_open(t, n, enrollment) for n in (1, 10, 100, 1000)]
        assert all(b >= a for a, b in zip(by_size, by_size[1:]))
    true = [calibration.true_open(t, enrollment) for t in thresholds]
    assert all(b >= a for a, b in zip(true, true[1:])) and true[-1] > 0.95
    assert calibration.false_open(0.6, 0, enrollment) == 0.0  # nobody enrolled: nobody is matched


@pytest.mark.parametrize("n", [1, 3, 10, 100, 1000, 4096])
def test_the_threshold_is_the_largest_that_meets_the_target(calibration, n):
    point = operating_point(DEFAULT, n)
    assert point.source == "target" and point.enrolled == n and point.mode == "identify"
    assert point.expected_false_open <= DEFAULT.max_false_open
    assert calibration.false_open(point.threshold + 0.002, n) > DEFAULT.max_false_open  # not needlessly strict


def test_more_templates_a_stricter_threshold_and_a_looser_target_a_looser_one():
    sizes = [operating_point(DEFAULT, n).threshold for n in (1, 10, 100, 1000)]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] - sizes[-1] > 0.05
    loose = operating_point(DecisionConfig(max_false_open=0.01), 100)
    assert loose.threshold > operating_point(DEFAULT, 100).threshold and loose.expected_false_open <= 0.01


def test_the_default_threshold_is_far_stricter_than_the_old_fixed_one(calibration):
    # the fixed 0.6 let about a third of strangers match someone in a gallery of 100 (issue 12)
    assert calibration.false_open(0.6, 100, Enrollment.SINGLE) > 0.2
    assert operating_point(DEFAULT, 100).threshold < 0.45


def test_an_explicit_threshold_wins_and_is_reported_with_its_rates(calibration):
    point = operating_point(DecisionConfig(threshold=0.6), 100, enrollment=Enrollment.SINGLE)
    assert point.threshold == 0.6 and point.source == "explicit"
    assert point.expected_false_open == pytest.approx(calibration.false_open(0.6, 100, Enrollment.SINGLE), rel=1e-3)
    assert point.expected_false_open > DEFAULT.max_false_open  # it is reported, not hidden


def test_verify_compares_one_template_whatever_the_gallery():
    one = operating_point(DEFAULT, 1, "verify")
    assert one == operating_point(DEFAULT, 5000, "verify") and one.enrolled == 1
    assert one.threshold > operating_point(DEFAULT, 100, "identify").threshold
    with pytest.raises(CalibrationError):
        operating_point(DEFAULT, 1, "either")  # each comparison is one or the other


@pytest.mark.parametrize(
    "bad",
    [
        DecisionConfig(mode="guess"),
        DecisionConfig(max_false_open=0.0),
        DecisionConfig(max_false_open=1.5),
        DecisionConfig(threshold=-0.1),
        DecisionConfig(doubt_margin=-0.01),
    ],
)
def test_a_decision_section_it_cannot_honour_is_refused(bad):
    with pytest.raises(CalibrationError, match="decision"):
        check_decision_config(bad)
    check_decision_config(DecisionConfig(mode="either", threshold=0.5))  # positive control


def test_threshold_in_toml_and_environment_is_optional_but_typed(tmp_path):
    assert load_config(DeviceConfig, env={}).decision.threshold is None
    assert load_config(DeviceConfig, env={"BLINDGATE_DECISION_THRESHOLD": "0.5"}).decision.threshold == 0.5
    path = tmp_path / "d.toml"
    path.write_text('[decision]\nthreshold = "0.5"\n')
    with pytest.raises(ValueError, match="decision.threshold"):
        load_config(DeviceConfig, path, env={})


def _table(rows: int, buckets: int, value: float) -> list:
    return [[value] * buckets for _ in range(rows)]


@pytest.mark.parametrize(
    "data, message",
    [
        ({"format": 99}, "format"),
        ({"format": 1, "grid": {"start": 0.2, "step": 0.1, "count": 3}}, "malformed"),
        (
            {
                "format": 1,
                "grid": {"start": 0.2, "step": 0.1, "count": 3},
                "enrollments": {"single": {"impostor": _table(2, 4, 0.1), "genuine": [0.1, 0.2, 0.3]}},
            },
            "grid",
        ),
        (
            {
                "format": 1,
                "grid": {"start": 0.2, "step": 0.1, "count": 3},
                "enrollments": {"single": {"impostor": _table(3, 4, 1.5), "genuine": [0.1, 0.2, 0.3]}},
            },
            "outside",
        ),
        (
            {
                "format": 1,
                "grid": {"start": 0.2, "step": 0.1, "count": 3},
                "enrollments": {"mean": {"impostor": _table(3, 4, 0.1), "genuine": [0.1, 0.2, 0.3]}},
            },
            "single",
        ),
    ],
)
def test_a_malformed_calibration_is_refused_with_what_is_wrong(data, message):
    with pytest.raises(CalibrationError, match=message):
        Calibration(data, "test")


def test_a_small_calibration_is_read_exactly():
    # per probe bucket: F = 0 and 0.5 at t=0.3; 0.1 and 0.5 at t=0.4
    data = {
        "format": 1,
        "grid": {"start": 0.3, "step": 0.1, "count": 2},
        "enrollments": {"single": {"impostor": [[0.0, 0.5], [0.1, 0.5]], "genuine": [0.5, 0.9]}},
    }
    c = Calibration(data, "test")
    assert c.false_open(0.3, 1) == pytest.approx(0.25)
    assert c.false_open(0.4, 2) == pytest.approx(((1 - 0.9**2) + (1 - 0.5**2)) / 2)
    assert c.false_open(0.2, 1) == 0.0 and c.true_open(0.35) == pytest.approx(0.7)
    assert c.threshold_for(0.25, 1) == pytest.approx(0.3, abs=1e-3)


def test_the_threshold_command_prints_the_operating_point(capsys):
    assert device_main(["threshold", "--enrolled", "100"]) == 0
    hundred = json.loads(capsys.readouterr().out)
    assert {"threshold", "expected_false_open", "expected_true_open", "enrolled", "mode"} <= set(hundred)
    assert hundred["enrolled"] == 100 and hundred["mode"] == "identify" and hundred["expected_false_open"] <= 0.001
    assert device_main(["threshold", "--enrolled", "100", "--mode", "verify"]) == 0
    verify = json.loads(capsys.readouterr().out)
    assert verify["enrolled"] == 1 and verify["threshold"] > hundred["threshold"]
    assert device_main(["threshold", "--enrolled", "-1"]) == 1
    assert "--enrolled" in capsys.readouterr().err


def test_status_shows_the_operating_point_of_the_listed_gallery(tmp_path, cloud, mqtt_broker, faces_dir, capsys):
    config = provision(tmp_path, cloud, mqtt_broker, faces_dir, "opsite", {"Obama": ["obama/obama.jpg"]}, camera="none")
    capsys.readouterr()

    def status() -> dict:
        assert device_main(["--config", str(config), "status"]) == 0
        return json.loads(capsys.readouterr().out)["operating_point"]

    one = status()
    assert one["enrolled"] == 1 and one["threshold"] == operating_point(DEFAULT, 1).threshold
    assert one["max_false_open"] == DEFAULT.max_false_open and one["source"] == "target"
    assert device_main(["--config", str(config), "enroll", "Biden", str(faces_dir / "people/biden/biden.jpg")]) == 0
    capsys.readouterr()
    two = status()
    assert two["enrolled"] == 2 and two["threshold"] < one["threshold"]  # the gallery grew: stricter
