"""The access rules in the door's state directory (`access_rules.json`, 0600) and the door's view of them.

`AccessRuleFile` reads and replaces the file atomically (device/registry.py), so the running agent
sees the old or the new rules, never half. `AccessPolicy` is what the agent asks after a confirmed
match: it re-reads the file when it changed (inode, mtime, size), so `blindgate-device access ...`
takes effect at the next face without a restart, and evaluates the rules at the door's local
time (`[access] timezone`, empty = the system's). A file that exists but cannot be read or
understood refuses everyone (fail secure; logged once per change of the file).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .access_rules import AccessRuleError, AccessRules, refusal
from .registry import read_registry, write_registry

RULES_FILE = "access_rules.json"
FORMAT = 1
log = logging.getLogger("blindgate.device.access")


class AccessRuleFile:
    """`access_rules.json` in a state directory: a missing file is an empty rule set."""

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / RULES_FILE

    def read(self) -> AccessRules:
        table = read_registry(self.path, "rules", FORMAT, AccessRuleError, "access-rules file")
        try:
            return AccessRules.from_json(table)
        except AccessRuleError as exc:
            raise AccessRuleError(f"{self.path}: {exc}") from None

    def write(self, rules: AccessRules) -> None:
        rules.tidy()
        write_registry(self.path, "rules", FORMAT, rules.to_json())

    def stamp(self) -> tuple[int, int, int] | None:
        """What changes when the file is replaced or edited (None: no file)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)


def door_timezone(name: str) -> tzinfo | None:
    """The zone `[access] timezone` names (None = the system's local time); an unknown name is an error."""
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise AccessRuleError(f"access.timezone {name!r} is not a known time zone (e.g. 'Europe/Berlin')") from None


class AccessPolicy:
    """`refusal(subject)`: None when the subject may enter now, else the reason (for the `denied` event)."""

    def __init__(
        self,
        rules: AccessRuleFile,
        zone: tzinfo | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.file = rules
        self.clock = clock or (lambda: datetime.now(zone) if zone else datetime.now().astimezone())  # None: system local
        self._guard = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._rules: AccessRules | None = AccessRules()
        self._problem = ""

    def current(self) -> AccessRules | None:
        """The rules in force, re-read when the file changed; None when the file is unusable."""
        stamp = self.file.stamp()
        with self._guard:
            if stamp != self._stamp:
                try:
                    self._rules, self._problem = self.file.read(), ""
                except (AccessRuleError, OSError) as exc:
                    self._rules, self._problem = None, str(exc)
                    log.error("access rules unusable, refusing everyone until fixed: %s", exc)
                else:
                    log.info("access rules loaded (%d people, %d groups)", len(self._rules.people), len(self._rules.groups))
                self._stamp = stamp
            return self._rules

    def refusal(self, subject: str) -> str | None:
        rules = self.current()
        if rules is None:
            return "access rules unreadable"
        return refusal(rules, subject, self.clock())


__all__ = ["RULES_FILE", "AccessPolicy", "AccessRuleFile", "door_timezone"]
