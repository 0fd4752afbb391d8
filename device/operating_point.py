"""The door's operating point: the threshold that keeps a stranger's chance of a match under a target.

The encryption is exact, so whether a stranger gets in depends only on the face model and the
threshold. A frame of a person who is not enrolled opens (before the multi-frame rule) when its
NEAREST template lies within the threshold, so the chance grows with the number of templates N:

    false_open(t, N) = mean over probes p of  1 - (1 - F_p(t)) ** N

where F_p(t) is the share of other people's templates within t of probe p. Averaging per probe,
rather than using one pooled rate, keeps the "wolves" (faces close to many others) that make real
galleries saturate sooner than independent draws would. The F_p come from the calibration fitted on
LFW devtrain (`blindgate-device calibrate`, device/evaluation/calibrate.py) and shipped as
`device/data/calibration.json`: per threshold on a grid, the F_p of every devtrain probe sorted and
summarised as bucket means (which errs slightly towards more false opens, never fewer). The
recognition rate `true_open(t)` is the share of same-person (photo, template) pairs within t.

`operating_point(config, N, mode)` turns `[decision] max_false_open` into the largest threshold
whose predicted per-frame false-open chance is at most the target, for the templates the door
actually compared against (identify: the occupied slots it decoded; verify: 1). An explicit
`[decision] threshold` wins and is reported with its expected rates.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from blindgate.shared.config import DecisionConfig
from blindgate.shared.errors import BlindgateError

CALIBRATION_FORMAT = 1
MODES = ("identify", "verify", "either")


class CalibrationError(BlindgateError, ValueError):
    """The calibration file is missing or malformed: reinstall, or refit with `blindgate-device calibrate`."""


class Enrollment(StrEnum):
    """How a person's templates were made: one photo, or the mean of several photos or frames (what
    `enroll` does). For SEPARATE, `templates` counts people, each enrolled as k separate photos."""

    SINGLE = "single"
    MEAN = "mean"
    SEPARATE = "separate"  # k photos kept as k templates of one person (evaluation only: `enroll` averages)


@dataclass(frozen=True)
class OperatingPoint:
    """The threshold in force and what it is expected to do, per frame."""

    threshold: float
    expected_false_open: float  # chance that one frame of a non-enrolled person matches someone
    expected_true_open: float  # chance that one frame of an enrolled person matches them
    enrolled: int  # templates compared against (1 for verify)
    mode: str  # "identify" | "verify"
    source: str  # "target" (from max_false_open) | "explicit" ([decision] threshold)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Table:
    impostor: np.ndarray  # (grid, buckets): mean F_p of each bucket of probes sorted by F_p
    genuine: np.ndarray  # (grid,): share of same-person pairs within t


class Calibration:
    """Per-frame false-open and true-open rates as functions of the threshold (and gallery size)."""

    def __init__(self, data: dict[str, Any], source: str = "") -> None:
        try:
            if data.get("format") != CALIBRATION_FORMAT:
                raise CalibrationError(f"calibration {source}: format {data.get('format')!r}, expected {CALIBRATION_FORMAT}")
            grid = data["grid"]
            self.grid = float(grid["start"]) + float(grid["step"]) * np.arange(int(grid["count"]))
            self.tables: dict[Enrollment, _Table] = {}
            for name, table in data["enrollments"].items():
                impostor = np.asarray(table["impostor"], dtype=np.float64)
                genuine = np.asarray(table["genuine"], dtype=np.float64)
                if impostor.ndim != 2 or impostor.shape[0] != len(self.grid) or genuine.shape != self.grid.shape:
                    raise CalibrationError(f"calibration {source}: table {name!r} does not match the grid")
                if np.any(impostor < 0) or np.any(impostor > 1) or np.any(genuine < 0) or np.any(genuine > 1):
                    raise CalibrationError(f"calibration {source}: table {name!r} holds rates outside [0, 1]")
                self.tables[Enrollment(name)] = _Table(impostor, genuine)
            self.provenance: dict[str, Any] = dict(data.get("provenance", {}))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, CalibrationError):
                raise
            raise CalibrationError(f"calibration {source} is malformed: {exc}") from None
        if Enrollment.SINGLE not in self.tables:
            raise CalibrationError(f"calibration {source}: no table for single-photo templates")

    @classmethod
    def from_file(cls, path: str | Path) -> Calibration:
        try:
            return cls(json.loads(Path(path).read_text()), str(path))
        except (OSError, json.JSONDecodeError) as exc:
            raise CalibrationError(f"cannot read calibration {path}: {exc}") from None

    def _table(self, enrollment: Enrollment | str) -> _Table:
        return self.tables.get(Enrollment(enrollment)) or self.tables[Enrollment.SINGLE]

    def _false_open_at(self, index: int, templates: int, table: _Table) -> float:
        rates = table.impostor[index]
        return float(np.mean(-np.expm1(templates * np.log1p(-np.minimum(rates, 1 - 1e-15)))))

    def false_open(self, threshold: float, templates: int, enrollment: Enrollment | str = Enrollment.MEAN) -> float:
        """Chance that one frame of a non-enrolled person lies within `threshold` of one of `templates` templates."""
        if templates <= 0 or not math.isfinite(threshold):
            return 0.0
        table = self._table(enrollment)
        position = (threshold - self.grid[0]) / (self.grid[1] - self.grid[0])
        if position <= 0:
            return self._false_open_at(0, templates, table) if position == 0 else 0.0
        if position >= len(self.grid) - 1:
            return self._false_open_at(len(self.grid) - 1, templates, table)
        low = int(math.floor(position))
        a, b = self._false_open_at(low, templates, table), self._false_open_at(low + 1, templates, table)
        weight = position - low
        if a > 0 and b > 0:  # the tail falls roughly exponentially in the distance
            return float(math.exp((1 - weight) * math.log(a) + weight * math.log(b)))
        return float((1 - weight) * a + weight * b)

    def true_open(self, threshold: float, enrollment: Enrollment | str = Enrollment.MEAN) -> float:
        """Chance that one frame of an enrolled person lies within `threshold` of their own template."""
        table = self._table(enrollment)
        return float(np.interp(threshold, self.grid, table.genuine, left=0.0, right=float(table.genuine[-1])))

    def threshold_for(self, target: float, templates: int, enrollment: Enrollment | str = Enrollment.MEAN) -> float:
        """The largest threshold whose predicted false-open chance is at most `target` (the grid's start if none is)."""
        templates = max(1, int(templates))
        low, high = float(self.grid[0]), float(self.grid[-1])
        if self.false_open(high, templates, enrollment) <= target:
            return high
        if self.false_open(low, templates, enrollment) > target:
            return low
        for _ in range(40):  # false_open rises with the threshold: bisect to ~1e-12
            middle = (low + high) / 2
            if self.false_open(middle, templates, enrollment) <= target:
                low = middle
            else:
                high = middle
        return math.floor(low * 1e4) / 1e4  # rounded down: never looser than the target allows


@functools.cache
def load_calibration() -> Calibration:
    """The calibration shipped in the package (fitted on LFW devtrain; see its `provenance`)."""
    try:
        text = resources.files("blindgate.device").joinpath("data/calibration.json").read_text()
    except OSError as exc:
        raise CalibrationError(f"the package's calibration file is missing ({exc}): reinstall blindgate") from None
    return Calibration(json.loads(text), "blindgate.device/data/calibration.json")


def check_decision_config(config: DecisionConfig) -> None:
    """Refuse a decision section the operating point cannot honour (a clear error at start, not at the door)."""
    if config.mode not in MODES:
        raise CalibrationError(f"config decision.mode: {config.mode!r} is not one of {', '.join(MODES)}")
    if not 0 < config.max_false_open < 1:
        raise CalibrationError(f"config decision.max_false_open: {config.max_false_open!r} must be between 0 and 1")
    if config.threshold is not None and not 0 < config.threshold < 2:
        raise CalibrationError(f"config decision.threshold: {config.threshold!r} must be between 0 and 2")
    if not 0 <= config.doubt_margin < 1:
        raise CalibrationError(f"config decision.doubt_margin: {config.doubt_margin!r} must be between 0 and 1")


def operating_point(
    config: DecisionConfig,
    enrolled: int,
    mode: str = "identify",
    enrollment: Enrollment | str = Enrollment.MEAN,
    calibration: Calibration | None = None,
) -> OperatingPoint:
    """The threshold for comparing one frame with `enrolled` templates (identify) or one claimed template (verify)."""
    if mode not in ("identify", "verify"):
        raise CalibrationError(f"operating point mode must be identify or verify, not {mode!r}")
    calibration = calibration or load_calibration()
    templates = 1 if mode == "verify" else max(0, int(enrolled))
    if config.threshold is not None:
        threshold, source = float(config.threshold), "explicit"
    else:
        threshold, source = calibration.threshold_for(config.max_false_open, max(templates, 1), enrollment), "target"
    return OperatingPoint(
        threshold=threshold,
        expected_false_open=float(f"{calibration.false_open(threshold, templates, enrollment):.4g}"),
        expected_true_open=round(calibration.true_open(threshold, enrollment), 4),
        enrolled=templates,
        mode=mode,
        source=source,
    )


__all__ = [
    "Calibration",
    "CalibrationError",
    "Enrollment",
    "OperatingPoint",
    "check_decision_config",
    "load_calibration",
    "operating_point",
]
