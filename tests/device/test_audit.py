"""The audit log: one JSON object per line with a UTC timestamp; a failing disk never raises."""

import json
import logging
from datetime import datetime

from blindgate.device.audit import AuditLog, now_iso


def test_entries_are_appended_as_json_lines(tmp_path):
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    audit.write(kind="event", event="recognized", label="Alice")
    AuditLog(path).write(kind="lock", state="LOCKED")  # a new process appends too
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["kind"] for e in lines] == ["event", "lock"]
    assert lines[0]["label"] == "Alice" and set(lines[0]) == {"ts", "kind", "event", "label"}


def test_timestamps_are_utc_iso_with_milliseconds():
    ts = now_iso()
    assert ts.endswith("Z") and len(ts.split(".")[1]) == 4  # "mmmZ"
    assert datetime.fromisoformat(ts.replace("Z", "+00:00")).utcoffset().total_seconds() == 0


def test_no_path_writes_nothing(tmp_path):
    AuditLog(None).write(kind="event")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_log_warns_instead_of_raising(tmp_path, caplog):
    audit = AuditLog(tmp_path / "missing-dir" / "audit.jsonl")
    with caplog.at_level(logging.WARNING, logger="blindgate.device.audit"):
        audit.write(kind="event")
    assert "audit log write failed" in caplog.text
