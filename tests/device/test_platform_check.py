"""A 32-bit OS is refused at once, with why (device/platform_check.py, checked in device/__init__.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from blindgate.device import platform_check
from blindgate.device.platform_check import UnsupportedPlatform, interpreter_bits, require_64bit


def test_32_bit_python_is_refused_with_the_reason(monkeypatch):
    monkeypatch.setattr(platform_check.sys, "maxsize", 2**31 - 1)
    monkeypatch.setattr(platform_check.platform, "machine", lambda: "armv7l")
    assert interpreter_bits() == 32
    with pytest.raises(UnsupportedPlatform) as caught:
        require_64bit()
    message = str(caught.value)
    assert "needs a 64-bit OS" in message and "32-bit (armv7l)" in message
    assert "armv7l wheels of tenseal, dlib-bin or numpy" in message and "TenSEAL's source build" in message
    # 32-bit Raspberry Pi OS on a Pi 4 boots a 64-bit kernel: the interpreter decides, not uname.
    monkeypatch.setattr(platform_check.platform, "machine", lambda: "aarch64")
    with pytest.raises(UnsupportedPlatform, match=r"32-bit \(aarch64\)"):
        require_64bit()


def test_64_bit_python_passes():
    assert interpreter_bits() == 64
    require_64bit()


def test_the_cli_refuses_before_loading_anything(tmp_path):
    # The check runs when blindgate.device is imported, before the CLI imports tenseal or dlib.
    child = "import sys; sys.maxsize = 2**31 - 1\nfrom blindgate.device.cli import main\nmain(['--help'])\n"
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1 and "needs a 64-bit OS" in done.stderr and "usage:" not in done.stdout
    # The control: the same child on the real (64-bit) interpreter prints the help.
    done = subprocess.run(
        [sys.executable, "-c", child.replace("sys.maxsize = 2**31 - 1", "pass")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and "usage: blindgate-device" in done.stdout
