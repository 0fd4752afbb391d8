"""One line instead of a traceback when the operating system refuses: which path, and what to do.

The usual case is an admin command run as yourself against the state directory of a door or a
cloud that runs as a systemd service (`DynamicUser=`: the directory is 0700 and owned by the
service's uid), or a config file only root may read. Both CLIs print `explain(...)` and exit 1.
"""

from __future__ import annotations

import errno
import os
import pwd
from pathlib import Path

# How to run an admin command as the service's user, per program (README, "systemd units").
SERVICE_USER_HINT = {
    "blindgate-device": (
        "run the command as the door service's user, with its state directory: "
        "`sudo systemd-run --wait --pty -p DynamicUser=yes -p StateDirectory=blindgate-device "
        "/opt/blindgate/.venv/bin/blindgate-device --config /etc/blindgate/device.toml COMMAND` "
        '(README, "systemd units")'
    ),
    "blindgate-cloud": (
        "run the command as the cloud service's user, with its state directory: "
        "`sudo systemd-run --wait --pty -p DynamicUser=yes -p StateDirectory=blindgate-cloud "
        "/opt/blindgate/.venv/bin/blindgate-cloud --config /etc/blindgate/cloud.toml COMMAND` "
        '(README, "systemd units")'
    ),
}
DENIED = (errno.EACCES, errno.EPERM)


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:  # a DynamicUser= uid has no name while its service is stopped
        return f"uid {uid}"


def blocker(path: Path) -> Path | None:
    """The first directory on the way to `path` this process may not enter, else `path` (or the
    deepest part of it that exists): the one whose owner or mode to look at."""
    found = None
    for part in [*reversed(path.parents), path]:
        try:
            is_dir = part.is_dir()
            os.stat(part)
        except OSError:
            break
        found = part
        if is_dir and part != path and not os.access(part, os.X_OK):
            return part
    return found


def ownership(path: Path) -> str:
    """`PATH is owned by USER, mode 0700; you are USER`, or "" when nothing useful can be said."""
    where = blocker(path)
    if where is None:
        return ""
    try:
        st = os.stat(where)
    except OSError:
        return ""
    mode = f"{st.st_mode & 0o777:04o}"
    return f"{where} is owned by {_user(st.st_uid)}, mode {mode}; you are {_user(os.geteuid())}"


def explain(exc: OSError, program: str, config: str | Path | None = None) -> str:
    """What went wrong, on which path, and the fix: one line for a person at a terminal.

    `config` is the config file given on the command line: the service's own user must read it
    too, so the fix for it is its mode, not another user.
    """
    if exc.filename is None:  # a socket's error, or one raised with a message of ours
        return (exc.strerror or "").lower() or str(exc) or type(exc).__name__
    reason = (exc.strerror or str(exc) or type(exc).__name__).lower()
    path = Path(os.fsdecode(exc.filename))
    text = f"cannot use {path}: {reason}"
    if exc.errno in DENIED:
        owner = ownership(path)
        if config is not None and path == Path(config):
            return (
                f"{text}{f' ({owner})' if owner else ''}. The service's user must read it too: "
                f"`sudo chmod 0644 {path}` (secrets belong in a root-only EnvironmentFile, not in it)"
            )
        hint = SERVICE_USER_HINT.get(program, "run the command as the user that owns it")
        return f"{text}{f' ({owner})' if owner else ''}. If a service owns it, {hint}; or as root"
    if exc.errno == errno.EROFS:
        return f"{text}: use a writable directory (under systemd only the unit's StateDirectory= is writable)"
    if exc.errno == errno.ENOSPC:
        return f"{text}: free some space on that file system"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return f"{text}: check the path (in the config file or the command line)"
    return text


__all__ = ["SERVICE_USER_HINT", "blocker", "explain", "ownership"]
