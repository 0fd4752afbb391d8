"""Targets and constants of the LFW evaluation, the door decision it measures, and its input error."""

from __future__ import annotations

import functools

import numpy as np

from blindgate.device.decision import VerdictKind, access_verdict
from blindgate.device.operating_point import operating_point
from blindgate.shared.config import DecisionConfig
from blindgate.shared.errors import BlindgateError

# The door's access rule as deployed by default, for one comparison (a pair is 1:1 verification):
# the pairs evaluation measures exactly this decision.
ACCESS_RULE = DecisionConfig()


@functools.cache
def access_threshold() -> float:
    """The door's default 1:1 threshold (from the target max_false_open and the calibration)."""
    return operating_point(ACCESS_RULE, 1, "verify").threshold


def door_accepts(distances: np.ndarray) -> np.ndarray:
    """The door's 1:1 decision for each distance: True where `access_verdict` says MATCH."""
    flat = np.asarray(distances, dtype=np.float64).reshape(-1)
    margin, threshold = ACCESS_RULE.doubt_margin, access_threshold()
    accepted = [access_verdict(float(d), threshold, margin) is VerdictKind.MATCH for d in flat]
    return np.array(accepted, dtype=bool).reshape(np.shape(distances))


# -- targets ------------------------------------------------------------------------------------

MAX_ERROR_TARGET = 1e-4  # largest acceptable |encrypted - plaintext| distance
TARGET_FAR = 1e-3
# dlib's published LFW accuracy for this model (dlib_face_recognition_resnet_model_v1), the
# figure face_recognition quotes; measured on the 10-fold View-2 pairs, not the development split.
REFERENCE_ACCURACY = 0.9938

# The fallback face box as fractions of the image (top, right, bottom, left): the median box of
# dlib's HOG detector (upsample 1) over 300 random LFW deep-funneled 250x250 images,
# (80, 175, 187, 67) px, i.e. a ~108 px square a little below the centre (HOG boxes run from the
# eyebrows to the chin). Embedding the detected images with this fixed box instead of their own
# gives the same embedding for most (median distance 0.000, 90th percentile 0.06).
FALLBACK_BOX = (80 / 250, 175 / 250, 187 / 250, 67 / 250)

CACHE_VERSION = 1
CACHE_NAME = "embeddings.npz"


class InputError(BlindgateError, ValueError):
    """Malformed pairs file or missing images: the message says what to fix."""


def json_default(value):
    """`json.dumps(default=...)` for numpy scalars and arrays in reports."""
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
