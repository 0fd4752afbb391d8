"""`blindgate-device access ...`: changes land in access_rules.json (0600); names resolve like `remove` does."""

import json
import stat

import pytest

from blindgate.device.access_store import AccessRuleFile
from blindgate.device.cli import main
from blindgate.device.people import People, Person

ALICE, BOB = "a" * 32, "b" * 32


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("BLINDGATE_STATE_DIR", str(tmp_path))
    listing = [Person(ALICE, "Alice", 0), Person(BOB, "Bob", 0), Person("c" * 32, "Bob", 0)]
    monkeypatch.setattr(People, "listing", lambda self: (3, listing))  # the cloud's list, names decrypted
    return tmp_path


def rules(state):
    return AccessRuleFile(state).read()


def test_disable_and_enable_by_id_or_unique_name(state, capsys):
    assert main(["access", "disable", ALICE]) == 0
    assert rules(state).people[ALICE].enabled is False
    assert stat.S_IMODE((state / "access_rules.json").stat().st_mode) == 0o600
    assert main(["access", "enable", "Alice"]) == 0
    assert ALICE not in rules(state).people  # back to the default: the rule is dropped


def test_an_ambiguous_or_unknown_name_changes_nothing(state, capsys):
    assert main(["access", "disable", "Bob"]) == 1
    assert "2 subjects are named 'Bob'" in capsys.readouterr().err
    assert main(["access", "disable", "Carol"]) == 1
    assert not (state / "access_rules.json").exists()


def test_groups_and_windows(state, capsys):
    assert main(["access", "group", "add", "staff", "Alice", BOB]) == 0
    assert main(["access", "group", "window", "staff", "mon-fri 07:00-19:00"]) == 0
    assert main(["access", "window", "set", "Alice", "sat 09:00-12:00", "daily 22:00-02:00"]) == 0
    r = rules(state)
    assert r.people[ALICE].groups == ["staff"] and r.people[BOB].groups == ["staff"]
    assert [str(w) for w in r.groups["staff"]] == ["mon-fri 07:00-19:00"]
    assert [str(w) for w in r.people[ALICE].windows] == ["sat 09:00-12:00", "daily 22:00-02:00"]
    capsys.readouterr()
    assert main(["access", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["people"][ALICE]["name"] == "Alice"
    assert shown["people"][ALICE]["effective_windows"] == ["sat 09:00-12:00", "daily 22:00-02:00", "mon-fri 07:00-19:00"]
    assert main(["access", "window", "clear", "Alice"]) == 0 and main(["access", "group", "remove", "staff", BOB]) == 0
    r = rules(state)
    assert r.people[ALICE].windows == [] and BOB not in r.people
    assert main(["access", "group", "window", "staff"]) == 0  # no windows: the group restricts nobody
    assert rules(state).groups["staff"] == []
    assert main(["access", "group", "add", "staff"]) == 1  # add whom?


def test_a_bad_window_is_refused_before_anything_is_written(state, capsys):
    assert main(["access", "window", "set", ALICE, "mon-fri 07:00-19:00"]) == 0
    before = (state / "access_rules.json").read_text()
    assert main(["access", "window", "set", ALICE, "mon-fri 07:00-19:00", "weekends 9-5"]) == 1
    assert "weekends" in capsys.readouterr().err
    assert main(["access", "window", "set", ALICE]) == 1  # nothing to set: clear says so explicitly
    assert (state / "access_rules.json").read_text() == before


def test_show_works_without_the_cloud(state, capsys, monkeypatch):
    assert main(["access", "disable", ALICE]) == 0

    def offline(config):
        raise OSError("connection refused")

    monkeypatch.setattr(People, "listing", offline)
    capsys.readouterr()
    assert main(["access", "show"]) == 0
    out = capsys.readouterr().out
    assert "names unavailable" in out and f"{ALICE}  ?  DISABLED" in out
