"""The access rules: windows (weekdays, across midnight, across the week's end), disabled people, groups."""

from datetime import datetime

import pytest

from blindgate.device.access_rules import AccessRuleError, AccessRules, PersonRule, Window, refusal, windows_for

# 2024-01-01 was a Monday: day(0) is Monday, day(4) Friday, day(6) Sunday.
ALICE, BOB = "a" * 32, "b" * 32


def at(weekday: int, hhmm: str) -> datetime:
    hour, minute = map(int, hhmm.split(":"))
    return datetime(2024, 1, 1 + weekday, hour, minute)


@pytest.mark.parametrize(
    "text, shown",
    [
        ("mon-fri 07:00-19:00", "mon-fri 07:00-19:00"),
        ("Sat,Sun 9:00-13:00", "sat,sun 09:00-13:00"),
        ("daily 22:00-06:00", "daily 22:00-06:00"),
        ("fri-mon 00:00-24:00", "mon,fri-sun 00:00-24:00"),
        ("mon,wed,thu,fri 10:00-11:30", "mon,wed-fri 10:00-11:30"),
    ],
)
def test_windows_parse_and_print_back_the_same(text, shown):
    window = Window.parse(text)
    assert str(window) == shown and Window.parse(shown) == window


@pytest.mark.parametrize(
    "text",
    ["mon 07:00", "mon 7-19", "someday 07:00-08:00", "mon 25:00-26:00", "mon 07:60-08:00", "mon 07:00-07:00", "mon 24:00-01:00"],
)
def test_malformed_windows_are_errors(text):
    with pytest.raises(AccessRuleError):
        Window.parse(text)


def test_weekday_hours_start_inclusive_end_exclusive():
    w = Window.parse("mon-fri 07:00-19:00")
    assert w.contains(at(0, "07:00")) and w.contains(at(4, "18:59"))
    assert not w.contains(at(0, "06:59")) and not w.contains(at(4, "19:00"))
    assert not w.contains(at(5, "10:00")) and not w.contains(at(6, "10:00"))  # the weekend


def test_a_window_across_midnight_belongs_to_the_day_it_starts():
    w = Window.parse("fri 22:00-06:00")
    assert w.contains(at(4, "22:00")) and w.contains(at(4, "23:59")) and w.contains(at(5, "05:59"))
    assert not w.contains(at(4, "03:00"))  # Friday's early hours belong to Thursday's night
    assert not w.contains(at(5, "06:00")) and not w.contains(at(5, "22:30"))


def test_sunday_night_runs_into_monday():
    w = Window.parse("sun 22:00-02:00")
    assert w.contains(at(0, "01:00")) and not w.contains(at(1, "01:00")) and not w.contains(at(6, "01:00"))


def test_no_rule_means_any_time_and_disabled_means_never():
    rules = AccessRules()
    assert refusal(rules, ALICE, at(6, "03:00")) is None  # positive control: the default lets them in
    rules.person(ALICE).enabled = False
    assert refusal(rules, ALICE, at(2, "12:00")) == "access disabled for this person"
    assert refusal(rules, BOB, at(2, "12:00")) is None  # only Alice
    rules.person(ALICE).enabled = True
    assert refusal(rules, ALICE, at(2, "12:00")) is None


def test_outside_the_window_is_refused_with_the_hours_as_reason():
    rules = AccessRules(people={ALICE: PersonRule(windows=[Window.parse("mon-fri 07:00-19:00")])})
    assert refusal(rules, ALICE, at(1, "08:00")) is None
    reason = refusal(rules, ALICE, at(5, "08:00"))
    assert reason == "outside access hours (mon-fri 07:00-19:00)"


def test_group_windows_apply_to_members_and_add_to_their_own():
    bob = PersonRule(groups=["staff"], windows=[Window.parse("sat 09:00-12:00")])
    staff = [Window.parse("mon-fri 07:00-19:00")]
    rules = AccessRules(people={ALICE: PersonRule(groups=["staff"]), BOB: bob}, groups={"staff": staff})
    assert refusal(rules, ALICE, at(0, "08:00")) is None and refusal(rules, ALICE, at(5, "10:00")) is not None
    assert refusal(rules, BOB, at(5, "10:00")) is None and refusal(rules, BOB, at(0, "08:00")) is None  # either window
    assert refusal(rules, BOB, at(6, "10:00")) is not None
    assert [str(w) for w in windows_for(rules, BOB)] == ["sat 09:00-12:00", "mon-fri 07:00-19:00"]
    rules.groups["staff"] = []  # a group without windows restricts nobody
    assert refusal(rules, ALICE, at(6, "03:00")) is None


def test_a_disabled_member_stays_refused_inside_the_window():
    always = [Window.parse("daily 00:00-24:00")]
    rules = AccessRules(people={ALICE: PersonRule(enabled=False, groups=["staff"])}, groups={"staff": always})
    assert refusal(rules, ALICE, at(2, "12:00")) == "access disabled for this person"


def test_json_round_trip_and_strict_parsing():
    rules = AccessRules(
        people={ALICE: PersonRule(enabled=False, groups=["staff"], windows=[Window.parse("sat 09:00-12:00")])},
        groups={"staff": [Window.parse("mon-fri 07:00-19:00")]},
    )
    again = AccessRules.from_json(rules.to_json())
    assert again == rules
    for bad in (
        {"people": {ALICE: {"enabled": "no"}}},  # a quoted boolean is not silently true
        {"people": {ALICE: {"windows": ["mon 7"]}}},
        {"people": {ALICE: {"groups": "staff"}}},
        {"groups": {"bad name!": []}},
        {"people": []},
    ):
        with pytest.raises(AccessRuleError):
            AccessRules.from_json(bad)


def test_tidy_drops_rules_that_say_nothing():
    rules = AccessRules(people={ALICE: PersonRule(), BOB: PersonRule(groups=["staff"])}, groups={"staff": [], "empty": []})
    rules.tidy()
    assert set(rules.people) == {BOB} and set(rules.groups) == {"staff"}
