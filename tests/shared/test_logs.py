"""logs.py: one JSON object per line, with `extra` fields as keys."""

from __future__ import annotations

import json
import logging

import pytest

from blindgate.shared.logs import JsonFormatter, setup_logging


def test_json_line_carries_extra_fields():
    record = logging.makeLogRecord({"name": "door", "levelname": "INFO", "msg": "opened %s", "args": ("door1",)})
    record.__dict__.update(site="home", attempt=3, _private="hidden")
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "opened door1" and entry["level"] == "info" and entry["logger"] == "door"
    assert entry["site"] == "home" and entry["attempt"] == 3
    assert "_private" not in entry and "args" not in entry
    assert entry["ts"].endswith("Z")


def test_setup_logging_writes_json_to_stderr(capsys: pytest.CaptureFixture[str]):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("debug", "json")
        setup_logging("debug", "json")  # calling again replaces the handler
        assert len(root.handlers) == 1
        logging.getLogger("blindgate.test").debug("hello", extra={"device": "door1"})
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1
        assert json.loads(lines[0])["device"] == "door1"
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
