"""The distribution: everything installs under the one name `blindgate`, nothing else.

The repository keeps its top-level folders (shared/, device/, cloud/); setuptools maps them to
`blindgate.shared`, `blindgate.device` and `blindgate.cloud`. These tests build the real wheel,
install it with `--no-deps` into a fresh venv that sees this environment's dependencies, and
import and run it from a folder outside the checkout.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("blindgate.shared.engine", "blindgate.shared.protocol", "blindgate.device.cli", "blindgate.cloud.cli")


@pytest.mark.parametrize("bare", ["shared", "device", "cloud"])
def test_no_module_is_importable_under_a_second_name(bare: str) -> None:
    assert importlib.util.find_spec(bare) is None, f"`{bare}` is importable as a top-level package"
    assert importlib.util.find_spec(f"blindgate.{bare}") is not None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if build.returncode != 0 and "Could not find a version" in build.stderr:
        pytest.skip(f"cannot fetch the pinned build backend: {build.stderr.strip()[-300:]}")
    assert build.returncode == 0, build.stderr
    (found,) = out.glob("blindgate-*.whl")
    return found


def test_wheel_holds_only_the_blindgate_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"blindgate", wheel.name.split("-py")[0] + ".dist-info"}, tops
    assert "blindgate/shared/engine/scan.py" in names
    assert "blindgate/device/evaluation/metrics.py" in names
    assert "blindgate/shared/protocol.md" in names


def test_wheel_installs_and_runs_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # The dependencies come from this test environment (a plain path entry: its editable-install
    # hook, a .pth file of its own, is not run, so the checkout stays invisible).
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    check = (
        "import importlib, importlib.util, sys\n"
        f"for name in {MODULES!r}:\n"
        "    module = importlib.import_module(name)\n"
        f"    assert module.__file__.startswith({str(site)!r}), module.__file__\n"
        "for bare in ('shared', 'device', 'cloud'):\n"
        "    assert importlib.util.find_spec(bare) is None, bare\n"
        "print('ok')\n"
    )
    run = subprocess.run([str(python), "-c", check], cwd=outside, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
    for command in ("blindgate-device", "blindgate-cloud"):
        helped = subprocess.run([str(venv / "bin" / command), "--help"], cwd=outside, capture_output=True, text=True, timeout=120)
        assert helped.returncode == 0 and "usage" in helped.stdout.lower(), helped.stderr
