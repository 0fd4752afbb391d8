"""picamera2 and OpenCV imports that fail say why and what to do (device/optional_imports.py).

The numpy case is the one Raspberry Pi users hit: apt's picamera2 (built for numpy 1.24) under a
pip-installed numpy 2 raises ``ValueError: numpy.dtype size changed``, not an ImportError.
Stand-in packages on sys.path raise exactly what the real ones do.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from blindgate.device import cli
from blindgate.device.camera import PiCamera2Source, open_camera
from blindgate.device.optional_imports import MissingDependency, import_cv2, import_picamera2, is_numpy_mismatch

ABI_ERROR = "numpy.dtype size changed, may indicate binary incompatibility. Expected 96 from C header, got 88 from PyObject"


def stand_in(monkeypatch, tmp_path: Path, name: str, body: str) -> None:
    """A package `name` whose import runs `body`, first on sys.path and not yet imported."""
    package = tmp_path / "site" / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_picamera2_built_for_another_numpy_names_numpy_and_the_fix(monkeypatch, tmp_path):
    stand_in(monkeypatch, tmp_path, "picamera2", f"raise ValueError({ABI_ERROR!r})")
    with pytest.raises(MissingDependency) as caught:
        PiCamera2Source()
    message = str(caught.value)
    assert f"numpy {np.__version__} from {np.__file__}" in message
    assert "numpy.dtype size changed" in message and "/usr/lib/python3/dist-packages" in message
    assert f"{sys.prefix}/bin/pip uninstall -y numpy opencv-python-headless" in message
    assert isinstance(caught.value, ImportError)  # callers that caught ImportError still do


def test_numpy_mismatch_as_import_error_is_recognised_too(monkeypatch, tmp_path):
    # What numpy 2 prints for a module compiled against 1.x, ending in an ImportError.
    body = "raise ImportError('numpy.core.multiarray failed to import')"
    stand_in(monkeypatch, tmp_path, "picamera2", body)
    with pytest.raises(MissingDependency, match="cannot load with the numpy in this environment"):
        import_picamera2()


def test_other_value_errors_are_not_blamed_on_numpy(monkeypatch, tmp_path):
    stand_in(monkeypatch, tmp_path, "picamera2", "raise ValueError('libcamera: no cameras')")
    with pytest.raises(ValueError, match="no cameras") as caught:
        import_picamera2()
    assert not isinstance(caught.value, MissingDependency)
    assert not is_numpy_mismatch(caught.value)


def test_picamera2_present_is_returned(monkeypatch, tmp_path):
    stand_in(monkeypatch, tmp_path, "picamera2", "class Picamera2:\n    pass\n")
    assert import_picamera2().__name__ == "Picamera2"


def test_missing_opencv_asks_for_the_device_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` fail
    with pytest.raises(MissingDependency, match=r"video file x.mp4 needs OpenCV.*\[device\].*<4.11.*picamera2"):
        import_cv2("video file x.mp4")


def test_opencv_built_for_another_numpy_names_numpy(monkeypatch, tmp_path):
    stand_in(monkeypatch, tmp_path, "cv2", "raise ImportError('numpy.core.multiarray failed to import')")
    with pytest.raises(MissingDependency, match=r"OpenCV \(cv2\) cannot load with the numpy"):
        import_cv2("camera 0")


def test_opencv_present_is_returned():
    assert import_cv2("camera 0").__name__ == "cv2"


def test_cli_says_it_in_one_line(monkeypatch, tmp_path, capsys):
    # `run` on a Pi whose venv has the wrong numpy: one line naming the fix, exit 1, no traceback.
    stand_in(monkeypatch, tmp_path, "picamera2", f"raise ValueError({ABI_ERROR!r})")
    monkeypatch.setitem(cli.COMMANDS, "run", lambda config, args: open_camera(config.camera.source) and 0)
    monkeypatch.setenv("BLINDGATE_STATE_DIR", str(tmp_path / "state"))
    assert cli.main(["run"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("blindgate-device run: picamera2 cannot load") and "numpy.dtype size changed" in err
    assert len(err.strip().splitlines()) == 1
