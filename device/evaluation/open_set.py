"""Open-set identification on a labelled face set: how often a stranger matches someone, and how
often an enrolled person is not recognised, for random galleries of a given size.

Pure numpy on embeddings and person labels (no images, no engine), so every figure can be
checked by hand on a small synthetic set:

- a gallery of `size` people is drawn from those with enough photos for the enrollment mode
  (`single`: 1 photo per template; `mean`: one template, the mean of k photos; `separate`: k
  templates of one photo each), and at least two (so that the gallery is not made of people the
  folder has one photo of); a photo left over is held out as that person's genuine probe (people
  with none left enrol but give no genuine probe: FNIR counts those who do);
- every photo of every person NOT in the gallery is a stranger probe;
- FPIR(t): share of stranger probes whose nearest template lies within t (the door would open);
- FNIR(t): share of genuine probes whose nearest template is not their own, or is beyond t.

Counts are pooled over the repeated galleries and given 95% Wilson score intervals. The pooled
probes are not independent (the same photos recur in several galleries), so the intervals are
somewhat narrow; the spread of the per-gallery rates is reported beside them.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile


class Mode(StrEnum):
    """How a person's photos become templates."""

    SINGLE = "single"  # one photo -> one template
    MEAN = "mean"  # mean of k photos -> one template (what `enroll` does)
    SEPARATE = "separate"  # k photos -> k templates


def photos_needed(mode: Mode, k: int) -> int:
    """Enrollment photos per person (a person also needs one more, held out as their probe)."""
    return 1 if mode is Mode.SINGLE else k


def templates_per_person(mode: Mode, k: int) -> int:
    return k if mode is Mode.SEPARATE else 1


def group_photos(labels: np.ndarray) -> list[np.ndarray]:
    """Image indices of each person (labels are 0..P-1)."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=int(labels.max()) + 1 if labels.size else 0)
    return np.split(order, np.cumsum(counts)[:-1])


def eligible_people(groups: Sequence[np.ndarray], mode: Mode, k: int) -> np.ndarray:
    """People with enough photos to be enrolled in this mode, and at least two."""
    need = max(photos_needed(mode, k), 2)
    return np.array([p for p, g in enumerate(groups) if len(g) >= need], dtype=np.int64)


def capped_sizes(sizes: Sequence[int], available: int) -> dict[int, list[int]]:
    """Gallery size actually used -> the requested sizes it stands for (capped by the people available)."""
    used: dict[int, list[int]] = {}
    for size in sorted(sizes):
        used.setdefault(min(size, available), []).append(size)
    return {size: requested for size, requested in used.items() if size > 0}


def wilson(successes, trials, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion (NaN bounds where there are no trials)."""
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denominator = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denominator
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
        low, high = np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)
    low = np.where(k <= 0, 0.0, low)  # exact at the ends, free of rounding
    high = np.where(k >= n, 1.0, high)
    return low, high


@dataclass(frozen=True)
class Draw:
    """One random gallery: its templates (and whose they are) and its probes (image indices)."""

    templates: np.ndarray = field(repr=False)  # (T, d)
    owners: np.ndarray  # (T,) person of each template
    genuine: np.ndarray  # (G,) image index of each enrolled person's held-out probe
    genuine_owner: np.ndarray  # (G,) that person
    strangers: np.ndarray  # (S,) image indices of every photo of people not enrolled


def draw_gallery(
    embeddings: np.ndarray,
    labels: np.ndarray,
    groups: Sequence[np.ndarray],
    eligible: np.ndarray,
    size: int,
    mode: Mode,
    k: int,
    rng: np.random.Generator,
) -> Draw:
    """Enroll `size` random eligible people; a remaining photo gives each a random genuine probe (if one is left)."""
    if size > len(eligible):
        raise ValueError(f"gallery of {size} people but only {len(eligible)} are eligible")
    people = np.sort(rng.choice(eligible, size=size, replace=False))
    need = photos_needed(mode, k)
    templates, owners, genuine, genuine_owner = [], [], [], []
    for person in people:
        photos = rng.permutation(groups[person])
        enrol, held_out = photos[:need], photos[need:]
        if mode is Mode.MEAN:
            templates.append(embeddings[enrol].mean(axis=0, keepdims=True))
            owners.append([person])
        else:
            templates.append(embeddings[enrol])
            owners.append([person] * need)
        if len(held_out):
            genuine.append(held_out[0])  # already in random order
            genuine_owner.append(person)
    enrolled = np.zeros(len(groups), dtype=bool)
    enrolled[people] = True
    return Draw(
        templates=np.concatenate(templates),
        owners=np.concatenate([np.asarray(o, dtype=np.int64) for o in owners]),
        genuine=np.array(genuine, dtype=np.int64),
        genuine_owner=np.array(genuine_owner, dtype=np.int64),
        strangers=np.flatnonzero(~enrolled[np.asarray(labels)]).astype(np.int64),
    )


def distances(probes: np.ndarray, templates: np.ndarray) -> np.ndarray:
    """Euclidean distance of every probe to every template, (P, T)."""
    squared = (
        np.einsum("ij,ij->i", probes, probes)[:, None]
        + np.einsum("ij,ij->i", templates, templates)[None, :]
        - 2 * probes @ templates.T
    )
    return np.sqrt(np.maximum(squared, 0.0))


def nearest(probes: np.ndarray, templates: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Distance to, and index of, each probe's nearest template."""
    dist = np.empty(len(probes))
    index = np.empty(len(probes), dtype=np.int64)
    for start in range(0, len(probes), chunk):
        d = distances(probes[start : start + chunk], templates)
        index[start : start + chunk] = np.argmin(d, axis=1)
        dist[start : start + chunk] = d[np.arange(len(d)), index[start : start + chunk]]
    return dist, index


@dataclass(frozen=True)
class Rates:
    """FPIR and FNIR at one or more thresholds, with pooled counts and 95% Wilson intervals."""

    thresholds: np.ndarray
    false_opens: np.ndarray  # stranger probes within t of their nearest template
    strangers: int
    misses: np.ndarray  # genuine probes not matched to themselves within t
    genuine: int

    @property
    def fpir(self) -> np.ndarray:
        return self.false_opens / max(self.strangers, 1)

    @property
    def fnir(self) -> np.ndarray:
        return self.misses / max(self.genuine, 1)

    def fpir_ci(self) -> tuple[np.ndarray, np.ndarray]:
        return wilson(self.false_opens, self.strangers)

    def fnir_ci(self) -> tuple[np.ndarray, np.ndarray]:
        return wilson(self.misses, self.genuine)


@dataclass
class Outcome:
    """One gallery size and enrollment mode, pooled over its repeated galleries."""

    size: int
    requested: list[int]
    mode: Mode
    templates: int  # templates per gallery (size x templates per person)
    repeats: int
    stranger_distance: np.ndarray = field(repr=False)  # nearest-template distance, every stranger probe
    stranger_repeat: np.ndarray = field(repr=False)
    genuine_distance: np.ndarray = field(repr=False)  # nearest-template distance, every genuine probe
    genuine_self: np.ndarray = field(repr=False)  # ... and whether that template is their own
    genuine_repeat: np.ndarray = field(repr=False)
    first: Draw | None = field(default=None, repr=False)  # repeat 0, kept for the encrypted check
    stranger_image: np.ndarray | None = field(default=None, repr=False)  # image index of each stranger probe

    def distinct_false_opens(self, threshold: float) -> int | None:
        """How many different stranger photos opened at least once: pooled counts repeat a photo
        in every gallery that holds its look-alike, so a few photos can make many false opens."""
        if self.stranger_image is None:
            return None
        return len(np.unique(self.stranger_image[self.stranger_distance <= threshold]))

    def rates(self, thresholds: Sequence[float] | np.ndarray) -> Rates:
        t = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
        stranger = np.sort(self.stranger_distance)
        own = np.sort(self.genuine_distance[self.genuine_self])
        false_opens = np.searchsorted(stranger, t, side="right")
        hits = np.searchsorted(own, t, side="right")
        return Rates(t, false_opens, len(stranger), len(self.genuine_distance) - hits, len(self.genuine_distance))

    def per_repeat(self, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """FPIR and FNIR of each gallery on its own (their spread shows the between-gallery variation)."""
        fpir = np.array([np.mean(self.stranger_distance[self.stranger_repeat == r] <= threshold) for r in range(self.repeats)])
        fnir = np.array(
            [
                1 - np.mean(self.genuine_self[m] & (self.genuine_distance[m] <= threshold))
                for m in (self.genuine_repeat == r for r in range(self.repeats))
            ]
        )
        return fpir, fnir


def run_open_set(
    embeddings: np.ndarray,
    labels: np.ndarray,
    sizes: Sequence[int],
    modes: Sequence[Mode],
    k: int = 3,
    repeats: int = 20,
    seed: int = 0,
) -> list[Outcome]:
    """Every (capped) size x mode, `repeats` random galleries each; the same seed gives the same galleries."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    groups = group_photos(labels)
    outcomes = []
    for mode in modes:
        eligible = eligible_people(groups, mode, k)
        for size, requested in capped_sizes(sizes, len(eligible)).items():
            s_d, s_r, s_i, g_d, g_s, g_r = [], [], [], [], [], []
            first = None
            for repeat in range(repeats):
                # One stream per (seed, mode, size, repeat): a configuration's galleries do not
                # depend on which other sizes or modes were asked for.
                rng = np.random.default_rng([seed, zlib.crc32(mode.value.encode()), size, repeat])
                draw = draw_gallery(embeddings, labels, groups, eligible, size, mode, k, rng)
                if repeat == 0:
                    first = draw
                d, _ = nearest(embeddings[draw.strangers], draw.templates)
                s_d.append(d)
                s_r.append(np.full(len(d), repeat))
                s_i.append(draw.strangers)
                d, index = nearest(embeddings[draw.genuine], draw.templates)
                g_d.append(d)
                g_s.append(draw.owners[index] == draw.genuine_owner)
                g_r.append(np.full(len(d), repeat))
            outcomes.append(
                Outcome(
                    size=size,
                    requested=requested,
                    mode=mode,
                    templates=size * templates_per_person(mode, k),
                    repeats=repeats,
                    stranger_distance=np.concatenate(s_d),
                    stranger_repeat=np.concatenate(s_r),
                    genuine_distance=np.concatenate(g_d),
                    genuine_self=np.concatenate(g_s),
                    genuine_repeat=np.concatenate(g_r),
                    first=first,
                    stranger_image=np.concatenate(s_i),
                )
            )
    return outcomes


def threshold_grid(start: float = 0.30, stop: float = 0.70, step: float = 0.005) -> np.ndarray:
    count = int(round((stop - start) / step)) + 1
    return np.round(start + step * np.arange(count), 6)


@dataclass(frozen=True)
class Comparison:
    """Predicted vs measured per-frame false-open rate at one threshold."""

    threshold: float
    predicted: float
    measured: float
    expected_false_opens: float  # predicted x stranger probes
    observed_false_opens: int
    distinct_images: int | None  # different stranger photos among the observed false opens
    ratio: float  # predicted / measured (inf when none was measured)
    within: bool


def compare_predictions(
    outcome: Outcome,
    thresholds: Sequence[float] | np.ndarray,
    predict: Callable[[float], float],
    min_expected: float = 10.0,
    factor: float = 2.0,
) -> list[Comparison]:
    """Where at least `min_expected` false opens are predicted, is predicted/measured within `factor`?"""
    rates = outcome.rates(thresholds)
    rows = []
    for t, observed, measured in zip(rates.thresholds, rates.false_opens, rates.fpir):
        predicted = float(predict(float(t)))
        expected = predicted * rates.strangers
        if expected < min_expected:
            continue
        ratio = predicted / measured if measured > 0 else math.inf
        rows.append(
            Comparison(
                float(t),
                predicted,
                float(measured),
                expected,
                int(observed),
                outcome.distinct_false_opens(float(t)),
                ratio,
                1 / factor <= ratio <= factor,
            )
        )
    return rows


def decisions(dist: np.ndarray, owners: np.ndarray, threshold: float) -> np.ndarray:
    """Each probe's decision from its (P, T) distances: the owner of its nearest template if within
    `threshold`, else -1 (no match). NaN distances are empty slots."""
    dist = np.where(np.isnan(dist), np.inf, dist)
    index = np.argmin(dist, axis=1)
    best = dist[np.arange(len(dist)), index]
    return np.where(best <= threshold, owners[index], -1)
