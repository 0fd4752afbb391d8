"""Every command a message, a docstring or the README tells people to run exists."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from blindgate.cloud.cli import COMMANDS as CLOUD_COMMANDS
from blindgate.device.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
NAMED = re.compile(r"blindgate-(device|cloud) (?:--config \S+ )?([a-z][a-z-]+)")


def device_commands() -> set[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_every_named_command_exists():
    known = {"device": device_commands(), "cloud": set(CLOUD_COMMANDS)}
    assert {"init", "enroll", "run", "rekey"} <= known["device"] and "serve" in known["cloud"]  # the parse works
    sources = [p for part in ("shared", "device", "cloud", "systemd") for p in (ROOT / part).rglob("*") if p.is_file()]
    sources.append(ROOT / "README.md")
    missing = set()
    for path in sources:
        if path.suffix not in {".py", ".md", ".service", ".example", ".conf"}:
            continue
        for side, command in NAMED.findall(path.read_text(errors="replace")):
            if command not in known[side]:
                missing.add(f"{path.relative_to(ROOT)}: blindgate-{side} {command}")
    assert not missing, sorted(missing)
