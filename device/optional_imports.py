"""picamera2 and OpenCV, imported only where used, with errors that say what to do.

picamera2 comes from apt on Raspberry Pi OS (it cannot be pip-installed), built against Debian's
numpy 1.24; OpenCV is the `device` extra, needed only for USB/RTSP cameras and video files. The
classic breakage is a venv where pip replaced apt's numpy with numpy 2 (opencv-python-headless
4.12 and later require it): importing picamera2 then fails with ``ValueError: numpy.dtype size
changed`` (a C extension built for another numpy), which is not an ImportError. Both imports turn
that into `MissingDependency` naming the numpy in use and the fix.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

from blindgate.shared.errors import BlindgateError

# What a C extension built for one numpy says when it is loaded under another.
_NUMPY_ABI_SIGNS = (
    "numpy.dtype size changed",
    "numpy.core.multiarray failed to import",
    "compiled using NumPy 1.x",
    "_ARRAY_API not found",
    "numpy.core._multiarray_umath",
)

PICAMERA2_INSTALL = (
    "the Pi camera needs picamera2, which comes from apt on Raspberry Pi OS: "
    "sudo apt install python3-picamera2 and create the venv with --system-site-packages "
    "(python3 -m venv --system-site-packages ...)"
)


class MissingDependency(BlindgateError, ImportError):
    """An optional module is absent or cannot load here; the message says how to fix it."""


def is_numpy_mismatch(exc: BaseException) -> bool:
    """Whether an import failed because an extension was built for a different numpy."""
    seen: BaseException | None = exc
    while seen is not None:
        if any(sign in str(seen) for sign in _NUMPY_ABI_SIGNS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def numpy_mismatch_message(module: str, exc: BaseException) -> str:
    """One paragraph: which numpy is loaded, why that breaks ``module``, and the commands that fix it."""
    try:
        import numpy

        found = f"numpy {numpy.__version__} from {numpy.__file__}"
    except Exception:  # numpy itself half-broken: the fix is the same
        found = "a numpy that does not load"
    pip = f"{sys.prefix}/bin/pip"
    return (
        f"{module} cannot load with the numpy in this environment ({found}): {exc}. "
        "On Raspberry Pi OS, picamera2 and its helpers come from apt, built for Debian's numpy 1.24 in "
        "/usr/lib/python3/dist-packages; something pip installed (usually opencv-python-headless 4.12 or "
        f"later, which requires numpy 2) put another numpy in the venv. Fix: {pip} uninstall -y numpy "
        f"opencv-python-headless, then reinstall blindgate with its device extra ({pip} install -e '.[device]' "
        "in the checkout), which keeps OpenCV below 4.11 so apt's numpy stays."
    )


def import_picamera2() -> Any:
    """The ``Picamera2`` class, or `MissingDependency` saying how to install it or repair numpy."""
    try:
        from picamera2 import Picamera2
    except (ImportError, ValueError) as exc:
        if is_numpy_mismatch(exc):
            raise MissingDependency(numpy_mismatch_message("picamera2", exc)) from exc
        if isinstance(exc, ValueError):
            raise
        raise MissingDependency(PICAMERA2_INSTALL) from exc
    return Picamera2


def import_cv2(purpose: str) -> ModuleType:
    """The ``cv2`` module for ``purpose`` (e.g. "video file x.mp4"), or `MissingDependency` saying what to install."""
    try:
        import cv2
    except (ImportError, ValueError) as exc:
        if is_numpy_mismatch(exc):
            raise MissingDependency(numpy_mismatch_message("OpenCV (cv2)", exc)) from exc
        if isinstance(exc, ValueError):
            raise
        raise MissingDependency(
            f"{purpose} needs OpenCV, the device extra: pip install -e '.[device]' in the checkout "
            '(opencv-python-headless>=4.8,<4.11). The Pi camera (source = "picamera2"), image folders '
            "and photos need no OpenCV."
        ) from exc
    return cv2


__all__ = ["MissingDependency", "import_cv2", "import_picamera2", "is_numpy_mismatch", "numpy_mismatch_message"]
