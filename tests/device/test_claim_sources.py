"""The claim-source registry: one random key per source, owner-only, followed by a running door."""

from __future__ import annotations

import base64
import stat

import pytest

from blindgate.device.claim_sources import ClaimSourceError, ClaimSources, read_key_file


def test_add_gives_a_fresh_key_kept_owner_only(tmp_path):
    sources = ClaimSources(tmp_path)
    key = sources.add("keypad")
    assert len(key) == 32 and sources.key("keypad") == key
    assert stat.S_IMODE(sources.path.stat().st_mode) == 0o600
    assert sources.add("ha") != key
    assert [s["name"] for s in sources.list()] == ["ha", "keypad"]
    assert "key" not in sources.list()[0]


def test_existing_source_is_not_silently_rekeyed(tmp_path):
    sources = ClaimSources(tmp_path)
    key = sources.add("keypad")
    with pytest.raises(ClaimSourceError):
        sources.add("keypad")
    assert sources.key("keypad") == key


def test_remove_takes_effect_for_a_running_reader(tmp_path):
    writer, reader = ClaimSources(tmp_path), ClaimSources(tmp_path)
    key = writer.add("keypad")
    assert reader.key("keypad") == key
    writer.remove("keypad")
    assert reader.key("keypad") is None
    new = writer.add("keypad")
    assert reader.key("keypad") == new != key
    with pytest.raises(ClaimSourceError):
        writer.remove("nobody")


def test_unknown_or_unreadable_registry_knows_no_source(tmp_path):
    sources = ClaimSources(tmp_path)
    assert sources.key("keypad") is None
    sources.path.write_text("{broken")
    assert sources.key("keypad") is None  # fail secure
    with pytest.raises(ClaimSourceError):
        sources.add("keypad")


@pytest.mark.parametrize("name", ["", "a/b", "x" * 65, "../up", "space name"])
def test_bad_names_are_refused(tmp_path, name):
    with pytest.raises(ClaimSourceError):
        ClaimSources(tmp_path).add(name)


def test_key_file_round_trip(tmp_path):
    key = ClaimSources(tmp_path).add("ha")
    path = tmp_path / "ha.key"
    path.write_text(base64.b64encode(key).decode() + "\n")
    assert read_key_file(path) == key
    path.write_text(base64.b64encode(b"short").decode())
    with pytest.raises(ClaimSourceError):
        read_key_file(path)
