"""`blindgate-device access`: the door's access rules (device/access_rules.py), kept on the device only.

    blindgate-device access show [--json]
    blindgate-device access disable SUBJECT          # subject id, or a name enrolled once
    blindgate-device access enable SUBJECT
    blindgate-device access group add GROUP SUBJECT...
    blindgate-device access group remove GROUP SUBJECT...
    blindgate-device access group window GROUP ['mon-fri 07:00-19:00' ...]   # no window: clear the group's
    blindgate-device access window set SUBJECT 'mon-fri 07:00-19:00' ['sat 09:00-12:00' ...]
    blindgate-device access window clear SUBJECT

Changes are written atomically to `access_rules.json` in the state directory; a running door uses
them from its next face (it re-reads the file when it changes). A name is looked up in the
cloud's subject list (labels decrypted here); an id needs no cloud.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from blindgate.shared.config import DeviceConfig

from .access_rules import AccessRuleError, AccessRules, Window, check_group_name, describe, windows_for
from .access_store import AccessRuleFile
from .people import People


def add_access_commands(sub, common: argparse.ArgumentParser) -> dict[str, Callable[[DeviceConfig, argparse.Namespace], int]]:
    """Add the `access` parser; returns the command table entry."""
    p = sub.add_parser("access", parents=[common], help="enable/disable people and set their access hours (on the device)")
    actions = p.add_subparsers(dest="access_command", required=True)
    q = actions.add_parser("show", parents=[common], help="the rules in force, with names where the cloud lists them")
    q.add_argument("--json", action="store_true")
    for name, text in (("disable", "refuse this person at any time (they stay enrolled)"), ("enable", "undo disable")):
        actions.add_parser(name, parents=[common], help=text).add_argument("subject", help="subject id, or a name enrolled once")
    q = actions.add_parser("group", parents=[common], help="add people to a group, remove them, or set its access hours")
    q.add_argument("action", choices=("add", "remove", "window"))
    q.add_argument("group")
    q.add_argument("items", nargs="*", metavar="SUBJECT|WINDOW", help="add/remove: subjects; window: 'DAYS HH:MM-HH:MM'...")
    q = actions.add_parser("window", parents=[common], help="set or clear a person's own access hours")
    q.add_argument("action", choices=("set", "clear"))
    q.add_argument("subject", help="subject id, or a name enrolled once")
    q.add_argument("windows", nargs="*", metavar="WINDOW", help="'DAYS HH:MM-HH:MM', e.g. 'mon-fri 07:00-19:00'")
    return {"access": cmd_access}


def _subject_id(config: DeviceConfig, subject: str) -> str:
    return People(config).resolve(subject)


def cmd_access(config: DeviceConfig, args: argparse.Namespace) -> int:
    store = AccessRuleFile(config.state_dir)
    rules = store.read()
    if args.access_command == "show":
        return _show(config, rules, args.json)
    if args.access_command in ("disable", "enable"):
        subject = People(config).set_enabled(args.subject, args.access_command == "enable")
        print(f"{subject}: access {args.access_command}d")
        return 0
    if args.access_command == "group" and args.action == "window":
        windows = [Window.parse(text) for text in args.items]  # every window checked before anything is written
        rules.groups[check_group_name(args.group)] = windows
        store.write(rules)
        print(f"group {args.group}: {describe(windows) or 'no windows (restricts nobody)'}")
        return 0
    if args.access_command == "group":
        group = check_group_name(args.group)
        if not args.items:
            raise AccessRuleError(f"group {args.action} needs one or more SUBJECTs")
        for subject in [_subject_id(config, s) for s in args.items]:  # all resolved before any change
            groups = rules.person(subject).groups
            if args.action == "add" and group not in groups:
                groups.append(group)
            elif args.action == "remove" and group in groups:
                groups.remove(group)
        store.write(rules)
        print(f"group {group}: {', '.join(sorted(s for s, r in rules.people.items() if group in r.groups)) or 'no members'}")
        return 0
    return _window(config, args)


def _window(config: DeviceConfig, args: argparse.Namespace) -> int:
    if args.action == "clear" and args.windows:
        raise AccessRuleError("window clear takes no windows")
    if args.action == "set" and not args.windows:
        raise AccessRuleError("window set needs at least one window, e.g. 'mon-fri 07:00-19:00' (or use window clear)")
    subject, windows = People(config).set_windows(args.subject, args.windows)
    print(f"{subject}: {describe(windows) or 'no windows of their own'}")
    return 0


def _show(config: DeviceConfig, rules: AccessRules, as_json: bool) -> int:
    names: dict[str, str | None] = {}
    problem = None
    if rules.people:
        try:
            names = {person.subject: person.name for person in People(config).listing()[1]}
        except Exception as exc:  # the rules are local: show them even when the cloud is away
            problem = f"names unavailable ({exc})"
    table = rules.to_json()
    for subject, row in table["people"].items():
        row["name"] = names.get(subject)
        row["effective_windows"] = [str(w) for w in windows_for(rules, subject)]
    if as_json:
        print(json.dumps(table | ({"note": problem} if problem else {})))
        return 0
    if problem:
        print(f"note: {problem}")
    print(f"{len(table['people'])} person rule(s); everyone else enrolled may enter at any time")
    for subject, row in table["people"].items():
        state = "enabled" if row["enabled"] else "DISABLED"
        hours = "; ".join(row["effective_windows"]) or "any time"
        groups = f" groups {','.join(row['groups'])}" if row["groups"] else ""
        print(f"  {subject}  {row['name'] or '?'}  {state}{groups}  hours: {hours}")
    for group, windows in table["groups"].items():
        print(f"  group {group}: {'; '.join(windows) or 'no windows (no restriction)'}")
    return 0


__all__ = ["add_access_commands", "cmd_access"]
