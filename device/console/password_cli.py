"""`blindgate-device console-password`: set the web console's admin password.

    blindgate-device console-password            # at a terminal: asked twice
    echo 'long passphrase' | blindgate-device console-password

The password is stored hashed (scrypt) in `console_password.json` in the state directory; every
console session made under an earlier password ends (device/console/auth.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from blindgate.shared.config import DeviceConfig

from .auth import read_new_password, set_password

HELP = "set the web console's admin password (stored hashed in the state directory)"


def add_console_password_command(
    sub, common: argparse.ArgumentParser
) -> dict[str, Callable[[DeviceConfig, argparse.Namespace], int]]:
    """Add the `console-password` parser; returns the command table entry."""
    sub.add_parser("console-password", parents=[common], help=HELP, description=HELP)
    return {"console-password": cmd_console_password}


def cmd_console_password(config: DeviceConfig, args: argparse.Namespace) -> int:
    """Read the new password (terminal twice, or one stdin line), hash it into the state directory."""
    Path(config.state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    set_password(config.state_dir, read_new_password())
    print("console password set; sessions made before it end")
    return 0


__all__ = ["add_console_password_command", "cmd_console_password"]
