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


def test_the_log_is_created_owner_only(tmp_path):
    path = tmp_path / "audit.jsonl"
    AuditLog(path).write(kind="event", label="Alice")
    assert path.stat().st_mode & 0o777 == 0o600


def test_an_existing_looser_log_is_tightened_when_opened(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.write_text("")
    path.chmod(0o644)  # names readable by everyone, as before the fix
    audit = AuditLog(path)
    assert path.stat().st_mode & 0o777 == 0o600
    audit.write(kind="event")
    assert path.stat().st_mode & 0o777 == 0o600 and len(path.read_text().splitlines()) == 1
