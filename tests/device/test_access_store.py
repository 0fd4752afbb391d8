"""access_rules.json: private, atomic, re-read by the running door when it changes; unusable means refuse all."""

import json
import os
import stat
from datetime import datetime

import pytest

from blindgate.device.access_rules import AccessRuleError, AccessRules, PersonRule, Window
from blindgate.device.access_store import AccessPolicy, AccessRuleFile, door_timezone

ALICE = "a" * 32
MONDAY_NOON = datetime(2024, 1, 1, 12, 0)


def policy(tmp_path, now=MONDAY_NOON):
    return AccessPolicy(AccessRuleFile(tmp_path), clock=lambda: now)


def test_missing_file_lets_everyone_enrolled_in(tmp_path):
    assert policy(tmp_path).refusal(ALICE) is None


def test_written_owner_only_and_read_back(tmp_path):
    store = AccessRuleFile(tmp_path)
    store.write(AccessRules(people={ALICE: PersonRule(enabled=False)}))
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert store.read().people[ALICE].enabled is False
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_the_running_door_follows_changes_without_a_restart(tmp_path):
    store, door = AccessRuleFile(tmp_path), policy(tmp_path)
    assert door.refusal(ALICE) is None
    store.write(AccessRules(people={ALICE: PersonRule(enabled=False)}))
    assert door.refusal(ALICE) == "access disabled for this person"
    store.write(AccessRules(people={ALICE: PersonRule(windows=[Window.parse("mon 11:00-13:00")])}))
    assert door.refusal(ALICE) is None
    store.path.unlink()  # rules deleted: back to the default
    assert door.refusal(ALICE) is None


def test_a_corrupted_file_refuses_everyone_until_fixed(tmp_path):
    store, door = AccessRuleFile(tmp_path), policy(tmp_path)
    store.path.write_text("{not json")
    assert door.refusal(ALICE) == "access rules unreadable"
    store.path.write_text(json.dumps({"format": 1, "rules": {"people": {ALICE: {"enabled": "yes"}}}}))
    os.utime(store.path, ns=(1, 1))  # a new stamp even on a coarse clock
    assert door.refusal(ALICE) == "access rules unreadable"
    with pytest.raises(AccessRuleError, match=str(store.path)):
        store.read()
    store.write(AccessRules())  # positive control: a good file lets them in again
    assert door.refusal(ALICE) is None


def test_time_zone_names(tmp_path):
    assert door_timezone("") is None
    with pytest.raises(AccessRuleError, match="Mars/Olympus"):
        door_timezone("Mars/Olympus")
    try:
        zone = door_timezone("Pacific/Kiritimati")  # UTC+14, no daylight saving
    except AccessRuleError:
        pytest.skip("no time zone database on this host")
    local = AccessPolicy(AccessRuleFile(tmp_path), zone).clock()  # windows are judged in the door's zone
    assert local.utcoffset().total_seconds() == 14 * 3600
