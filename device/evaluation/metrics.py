"""Verification metrics (pure numpy): accuracy, fold-wise thresholds, ROC, TAR at a FAR, errors."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .common import TARGET_FAR, access_threshold

# -- metrics (pure numpy) -------------------------------------------------------------------------


def accuracy(distances, same, threshold: float | None = None) -> float:
    """Share of pairs decided correctly: same person iff distance <= threshold."""
    d, same = np.asarray(distances, dtype=np.float64), np.asarray(same, dtype=bool)
    threshold = access_threshold() if threshold is None else threshold
    return float(np.mean((d <= threshold) == same))


def best_threshold(distances, same, prefer: float | None = None) -> float:
    """The threshold with the highest accuracy on these pairs.

    Candidates are the midpoints between consecutive distinct distances (plus one below the
    smallest and one above the largest); among equally accurate ones, the closest to `prefer`.
    """
    d, same = np.asarray(distances, dtype=np.float64), np.asarray(same, dtype=bool)
    prefer = access_threshold() if prefer is None else prefer
    values = np.unique(d)
    candidates = np.concatenate([[values[0] - 1e-3], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-3]])
    pos, neg = np.sort(d[same]), np.sort(d[~same])
    correct = np.searchsorted(pos, candidates, side="right") + (len(neg) - np.searchsorted(neg, candidates, side="right"))
    best = np.flatnonzero(correct == correct.max())
    return float(candidates[best[np.argmin(np.abs(candidates[best] - prefer))]])


@dataclass(frozen=True)
class FoldResult:
    fold: int
    threshold: float  # chosen on the other folds
    accuracy: float  # on this fold


def kfold_accuracy(distances, same, folds) -> list[FoldResult]:
    """LFW View-2 protocol: each fold scored with the threshold that is best on all the others."""
    d, same, folds = (
        np.asarray(distances, float),
        np.asarray(same, bool),
        np.asarray(folds),
    )
    results = []
    for fold in np.unique(folds):
        test = folds == fold
        threshold = best_threshold(d[~test], same[~test])
        results.append(FoldResult(int(fold), threshold, accuracy(d[test], same[test], threshold)))
    return results


def roc_curve(distances, same) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FAR, TAR, threshold) for accepting distance <= threshold, at every distinct distance.

    Starts at (0, 0) with threshold -inf and ends at (1, 1).
    """
    d, same = np.asarray(distances, dtype=np.float64), np.asarray(same, dtype=bool)
    pos, neg = np.sort(d[same]), np.sort(d[~same])
    thresholds = np.unique(d)
    tar = np.searchsorted(pos, thresholds, side="right") / len(pos)
    far = np.searchsorted(neg, thresholds, side="right") / len(neg)
    return np.r_[0.0, far], np.r_[0.0, tar], np.r_[-np.inf, thresholds]


def roc_auc(far, tar) -> float:
    return float(np.sum(np.diff(far) * (np.asarray(tar)[1:] + np.asarray(tar)[:-1]) / 2))


def tar_at_false_accepts(distances, same, false_accepts: int) -> dict:
    """TAR with at most `false_accepts` different-person pairs accepted (accept iff d < limit)."""
    d, same = np.asarray(distances, dtype=np.float64), np.asarray(same, dtype=bool)
    pos, neg = d[same], np.sort(d[~same])
    if false_accepts >= len(neg):
        limit = math.inf
    else:
        limit = float(neg[false_accepts])  # the first negative that must be rejected
    accepted_neg = int(np.sum(neg < limit))
    return {
        "tar": float(np.mean(pos < limit)),
        "false_accepts": accepted_neg,
        "far": accepted_neg / len(neg),
        "negatives": int(len(neg)),
        "accept_below": limit if math.isfinite(limit) else None,  # accept iff distance < this (None: all)
    }


def tar_at_far(distances, same, far: float = TARGET_FAR) -> dict:
    """TAR at FAR <= `far`, or `estimable: False` when far < 1/negatives (too few different pairs)."""
    negatives = int(np.sum(~np.asarray(same, dtype=bool)))
    allowed = int(math.floor(far * negatives + 1e-9))
    if allowed < 1:
        return {
            "target_far": far,
            "estimable": False,
            "negatives": negatives,
            "reason": (
                f"{negatives} different-person pairs: the smallest non-zero FAR they can measure is "
                f"1/{negatives} = {1 / negatives:.1e} > {far:g}; at least {math.ceil(1 / far)} are needed"
            ),
        }
    return {
        "target_far": far,
        "estimable": True,
        "false_accepts_allowed": allowed,
        **tar_at_false_accepts(distances, same, allowed),
    }


def error_stats(encrypted, plain) -> dict:
    encrypted, plain = np.asarray(encrypted, float), np.asarray(plain, float)
    err = np.abs(encrypted - plain)
    rel = err[plain > 0] / plain[plain > 0]
    return {
        "max_abs": float(err.max()) if err.size else 0.0,
        "mean_abs": float(err.mean()) if err.size else 0.0,
        "max_rel": float(rel.max()) if rel.size else 0.0,
        "mean_rel": float(rel.mean()) if rel.size else 0.0,
    }
