"""The site state file (device/site_state.py): versioned, atomic, 0600, re-read on change, fail secure."""

from __future__ import annotations

import json
import os
import stat

from blindgate.device.site_state import STATE_FILE, SiteState, SiteStateData


def test_empty_until_written_then_versioned_and_private(tmp_path):
    state = SiteState(tmp_path, "home")
    assert state.current() == SiteStateData("home") and not state.is_denied("a" * 32)
    first = state.deny(["a" * 32])
    second = state.deny(["b" * 32, "a" * 32])
    assert (first.version, second.version) == (1, 2) and second.denied == {"a" * 32, "b" * 32}
    path = tmp_path / STATE_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    body = json.loads(path.read_text())
    assert body == {"format": 1, "site": "home", "version": 2, "denied": ["a" * 32, "b" * 32]}
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]  # no temp file left behind


def test_a_running_reader_sees_another_writers_change_without_restart(tmp_path):
    reader, writer = SiteState(tmp_path, "home"), SiteState(tmp_path, "home")
    assert not reader.is_denied("c" * 32)
    writer.deny(["c" * 32])
    assert reader.is_denied("c" * 32) and reader.current().version == 1


def test_unreadable_or_foreign_state_denies_everyone(tmp_path):
    path = tmp_path / STATE_FILE
    state = SiteState(tmp_path, "home")
    path.write_text("{not json")
    assert state.is_denied("a" * 32)
    path.write_text(json.dumps({"format": 1, "site": "elsewhere", "version": 1, "denied": []}))
    os.utime(path, ns=(1, 1))
    assert state.is_denied("a" * 32)
    path.write_text(json.dumps({"format": 1, "site": "home", "version": 1, "denied": []}))
    assert not state.is_denied("a" * 32)  # positive control: a good file is read again
