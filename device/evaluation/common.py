"""Targets and constants of the LFW evaluation, and its input error."""
from __future__ import annotations

from blindgate.shared.errors import BlindgateError

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
