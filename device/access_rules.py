"""Who may open the door when: per-person enable/disable and weekly time windows (pure, no I/O).

The cloud recognises faces; whether a recognised person may come in NOW is the door's own
business and stays on the device (device/access_store.py keeps the rules in the state
directory, keyed by subject id: no name or schedule ever reaches the cloud).

Rules:
- A disabled person is refused at any time.
- A person may enter within any of their own windows or of any group they belong to. With no
  window at all (none of their own, none in their groups) they may enter at any time.
- A window is days and a time range in the door's local time, e.g. `mon-fri 07:00-19:00`,
  `sat,sun 09:00-13:00`, `daily 22:00-06:00`. The start is inclusive, the end exclusive; an
  end before the start runs past midnight into the next day (the window belongs to the day it
  starts on: `fri 22:00-06:00` admits Saturday 03:00, not Friday 03:00). `24:00` ends at midnight.

`refusal(rules, subject, now)` is the one evaluation: None (may enter) or the reason (refused).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from blindgate.shared.errors import BlindgateError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # datetime.weekday() order
DAY_MINUTES = 24 * 60
_TIME = re.compile(r"([01]?\d|2[0-4]):([0-5]\d)")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class AccessRuleError(BlindgateError, ValueError):
    """A window, group name or rules document that cannot be understood."""


def _minutes(text: str, what: str) -> int:
    m = _TIME.fullmatch(text)
    value = int(m.group(1)) * 60 + int(m.group(2)) if m else -1
    if not 0 <= value <= DAY_MINUTES:
        raise AccessRuleError(f"{what} {text!r} is not a time HH:MM (00:00 to 24:00)")
    return value


def _days(text: str) -> frozenset[int]:
    if text in ("daily", "all", "*"):
        return frozenset(range(7))
    days: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        try:
            a, b = DAYS.index(first), DAYS.index(last or first)
        except ValueError:
            raise AccessRuleError(f"days {text!r}: use mon..sun, ranges (mon-fri), lists (sat,sun) or daily") from None
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))  # fri-mon wraps over the weekend
    return frozenset(days)


def _day_text(days: frozenset[int]) -> str:
    """`daily`, or runs of three or more days as ranges: {0..4} -> `mon-fri`, {5, 6} -> `sat,sun`."""
    if len(days) == 7:
        return "daily"
    parts, ordered = [], sorted(days)
    while ordered:
        run = [ordered.pop(0)]
        while ordered and ordered[0] == run[-1] + 1:
            run.append(ordered.pop(0))
        parts.extend([f"{DAYS[run[0]]}-{DAYS[run[-1]]}"] if len(run) >= 3 else [DAYS[d] for d in run])
    return ",".join(parts)


@dataclass(frozen=True)
class Window:
    """Days (0 = Monday) and [start, end) in minutes after midnight; end < start crosses midnight."""

    days: frozenset[int]
    start: int
    end: int

    @classmethod
    def parse(cls, text: str) -> Window:
        """`DAYS HH:MM-HH:MM`, e.g. `mon-fri 07:00-19:00` (lower case or not)."""
        parts = text.strip().lower().split()
        if len(parts) != 2 or parts[1].count("-") != 1:
            raise AccessRuleError(f"window {text!r}: write DAYS HH:MM-HH:MM, e.g. 'mon-fri 07:00-19:00'")
        start_text, end_text = parts[1].split("-")
        try:
            start, end, days = _minutes(start_text, "start"), _minutes(end_text, "end"), _days(parts[0])
        except AccessRuleError as exc:
            raise AccessRuleError(f"window {text!r}: {exc}") from None
        if start == end or start == DAY_MINUTES:
            raise AccessRuleError(f"window {text!r} is empty (for a whole day write 00:00-24:00)")
        return cls(days, start, end)

    def __str__(self) -> str:
        return f"{_day_text(self.days)} {self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"

    def contains(self, now: datetime) -> bool:
        """Whether `now` (a local wall-clock time) falls in the window."""
        day, minute = now.weekday(), now.hour * 60 + now.minute
        if self.start < self.end:
            return day in self.days and self.start <= minute < self.end
        # past midnight: the evening of a listed day, or the early hours of the day after one
        return (day in self.days and minute >= self.start) or ((day - 1) % 7 in self.days and minute < self.end)


def check_group_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise AccessRuleError(f"group name {name!r}: letters, digits, '_', '.', '-' (at most 64, no leading symbol)")
    return name


@dataclass
class PersonRule:
    """One subject's rule: enabled or not, their groups, their own windows."""

    enabled: bool = True
    groups: list[str] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)

    @property
    def is_default(self) -> bool:
        return self.enabled and not self.groups and not self.windows


@dataclass
class AccessRules:
    """Every subject's rule and every group's windows (subjects without a rule may enter at any time)."""

    people: dict[str, PersonRule] = field(default_factory=dict)
    groups: dict[str, list[Window]] = field(default_factory=dict)

    def person(self, subject: str) -> PersonRule:
        """The subject's rule, created on first use (drop unchanged ones with `tidy`)."""
        return self.people.setdefault(subject, PersonRule())

    def tidy(self) -> None:
        """Forget rules that say nothing and groups with neither windows nor members."""
        self.people = {s: r for s, r in self.people.items() if not r.is_default}
        members = {g for r in self.people.values() for g in r.groups}
        self.groups = {g: w for g, w in self.groups.items() if w or g in members}

    # -- JSON (the table inside access_rules.json) --------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "people": {
                s: {"enabled": r.enabled, "groups": sorted(r.groups), "windows": [str(w) for w in r.windows]}
                for s, r in sorted(self.people.items())
            },
            "groups": {g: [str(w) for w in ws] for g, ws in sorted(self.groups.items())},
        }

    @classmethod
    def from_json(cls, table: dict[str, Any]) -> AccessRules:
        """Parse strictly: a rule the door does not understand is an error, never ignored."""
        try:
            people = {
                str(s): PersonRule(
                    enabled=_bool(r.get("enabled", True)),
                    groups=[check_group_name(g) for g in _list(r.get("groups", []))],
                    windows=[Window.parse(w) for w in _list(r.get("windows", []))],
                )
                for s, r in _table(table.get("people", {})).items()
            }
            groups = {
                check_group_name(g): [Window.parse(w) for w in _list(ws)] for g, ws in _table(table.get("groups", {})).items()
            }
        except (AttributeError, TypeError, ValueError) as exc:
            raise AccessRuleError(f"access rules: {exc}") from None
        return cls(people, groups)


def _table(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise AccessRuleError(f"expected a table, got {value!r}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise AccessRuleError(f"'enabled' must be true or false, not {value!r}")
    return value


def _list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AccessRuleError(f"expected a list of strings, got {value!r}")
    return value


def windows_for(rules: AccessRules, subject: str) -> list[Window]:
    """The subject's own windows and those of their groups (empty: no time restriction)."""
    rule = rules.people.get(subject, PersonRule())
    found = list(rule.windows)
    for group in rule.groups:
        found.extend(rules.groups.get(group, []))
    return found


def describe(windows: Iterable[Window]) -> str:
    return "; ".join(sorted({str(w) for w in windows}))


def refusal(rules: AccessRules, subject: str, now: datetime) -> str | None:
    """None when `subject` may enter at `now` (local wall-clock time), else why not (no score, no name)."""
    rule = rules.people.get(subject)
    if rule is not None and not rule.enabled:
        return "access disabled for this person"
    windows = windows_for(rules, subject)
    if windows and not any(w.contains(now) for w in windows):
        return f"outside access hours ({describe(windows)})"
    return None


__all__ = [
    "AccessRuleError",
    "AccessRules",
    "PersonRule",
    "Window",
    "check_group_name",
    "describe",
    "refusal",
    "windows_for",
]
