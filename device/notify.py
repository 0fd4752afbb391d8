"""systemd's sd_notify protocol without a dependency: one datagram to $NOTIFY_SOCKET.

`READY=1` once the agent runs, `WATCHDOG=1` only while it is healthy, `STOPPING=1` on the way
out. Outside systemd (no $NOTIFY_SOCKET) every call is a no-op returning False.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send `state` (e.g. "READY=1") to systemd; True if a notification socket took it."""
    address = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address[0] == "@":  # abstract namespace socket
        address = "\0" + address[1:]
    elif address[0] != "/":
        return False  # vsock and other forms are not supported here
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
        return True
    except OSError:
        return False


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not watched."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


class Notifier:
    """The agent's link to systemd: the four notifications it sends, and how often to ping."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = env
        self.interval = watchdog_interval(env)

    def ready(self, status: str = "") -> bool:
        return notify("READY=1" + (f"\nSTATUS={status}" if status else ""), self.env)

    def watchdog(self) -> bool:
        return notify("WATCHDOG=1", self.env)

    def status(self, text: str) -> bool:
        return notify(f"STATUS={text}", self.env)

    def stopping(self) -> bool:
        return notify("STOPPING=1", self.env)
