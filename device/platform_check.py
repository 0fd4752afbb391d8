"""The door needs a 64-bit OS: say so at once instead of failing deep inside an install or import.

Checked when `blindgate.device` is imported (device/__init__.py), before tenseal or dlib load, so
every command and the service refuse with this message rather than a missing-module traceback.
It looks at the interpreter, not the kernel: 32-bit Raspberry Pi OS on a Pi 4 or 5 boots a 64-bit
kernel (``uname -m`` says aarch64) under a 32-bit userland, where the same wheels are missing.
"""

from __future__ import annotations

import platform
import sys

from blindgate.shared.errors import BlindgateError

NEEDS_64_BIT = (
    "blindgate's door needs a 64-bit OS (64-bit Raspberry Pi OS Bookworm, arm64), but this Python is "
    "{bits}-bit ({machine}). Its face and encryption libraries have no 32-bit ARM builds: PyPI has no "
    "armv7l wheels of tenseal, dlib-bin or numpy for Python 3.11, and TenSEAL's source build downloads "
    "its C++ dependencies (Microsoft SEAL and others) while it builds. Install 64-bit Raspberry Pi "
    "OS (a Pi 3, 4, 5 or Zero 2 W) and follow the README's Raspberry Pi section."
)


class UnsupportedPlatform(BlindgateError, ImportError):
    """This interpreter cannot run the door (a 32-bit OS)."""


def interpreter_bits() -> int:
    """32 or 64: the word size of this Python, which is what the wheels must match."""
    return 64 if sys.maxsize > 2**32 else 32


def require_64bit() -> None:
    """Raise `UnsupportedPlatform` with `NEEDS_64_BIT` unless this Python is 64-bit."""
    bits = interpreter_bits()
    if bits != 64:
        raise UnsupportedPlatform(NEEDS_64_BIT.format(bits=bits, machine=platform.machine() or "unknown machine"))


__all__ = ["NEEDS_64_BIT", "UnsupportedPlatform", "interpreter_bits", "require_64bit"]
