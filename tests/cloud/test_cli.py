"""`blindgate-cloud` (cloud/cli.py): the admin commands, and one-line errors instead of tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blindgate.cloud.cli import main
from blindgate.cloud.store import GalleryStore
from blindgate.shared.engine.gallery import SlotRef


def config_file(tmp_path: Path) -> str:
    path = tmp_path / "cloud.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    return str(path)


def test_public_key_is_stable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = config_file(tmp_path)
    assert main(["public-key", "--config", config]) == 0
    first = capsys.readouterr().out.strip()
    assert main(["--config", config, "public-key"]) == 0
    assert capsys.readouterr().out.strip() == first and len(first) == 64


def test_check_store_reports_sizes_and_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = config_file(tmp_path)
    assert main(["check-store", "--config", config]) == 1
    assert "no gallery store at" in capsys.readouterr().err
    with GalleryStore(tmp_path / "state" / "gallery.db") as store:
        store.create_site("home", "token", "key-1", b"bundle")
        store.commit_enrollment("home", "s1", b"l", SlotRef(0, 0), b"e", 0, b"block")
    assert main(["check-store", "--config", config]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["problems"] == []
    assert report["sites"]["home"] | {"bytes": 0} == {
        "key_id": "key-1",
        "gallery_version": 1,
        "subjects": 1,
        "blocks": 1,
        "bytes": 0,
    }


def test_errors_are_one_line_with_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-store", "--config", str(tmp_path / "missing.toml")]) == 2  # a config error, like a usage error
    assert capsys.readouterr().err.startswith("blindgate-cloud: config file")
    config = config_file(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "gallery.db").write_bytes(b"not a database" * 100)
    assert main(["check-store", "--config", config]) == 1
    err = capsys.readouterr().err
    assert "not a blindgate gallery store" in err and "Traceback" not in err and len(err.splitlines()) == 1
