"""Admin commands through the running door agent: which ones, what travels, and when the CLI goes that way.

`blindgate-device --via-agent list` (or any command below, when the state directory belongs to
another user and the agent's socket is there) sends its arguments over the admin socket
(device/admin_socket.py); the agent parses them with the same parser and runs the same command
function (`cli.dispatch`) with its own config, as the service's user in the service's state
directory, so a command does exactly what it does locally. Photos for `enroll` travel as bytes (the
service cannot read your home directory), and so does stdin for `--pin -`.

The agent picks the changes up without a restart: a new gallery version refreshes its subject
directory, and it re-reads the deny list, access rules, claim sources, credentials and door key when
those files change. `rekey` changes the keys the agent holds: it stays a stopped-service command.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import logging
import os
import stat
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from blindgate.shared.config import DeviceConfig

from .admin_socket import AdminError, AdminServer, Peer, call, client_path, server_path
from .claim_cli import read_secret
from .console.auth import read_new_password

log = logging.getLogger("blindgate.device.admin_cli")

AGENT_COMMANDS = frozenset(
    {
        "enroll",
        "list",
        "remove",
        "status",
        "access",
        "credentials",
        "claim-source",
        "refresh-cloud-key",
        "rotate-door-key",
        "console-password",
    }
)
NOT_THROUGH_AGENT = "`{}` does not run through the agent (it runs: {}); stop the service and run it as the service's user"
_SERIAL = threading.Lock()  # one admin command at a time: they swap sys.stdin/stdout for the caller's


def is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def wants_agent(config: DeviceConfig, args: argparse.Namespace) -> bool:
    """`--via-agent`, or an admin command on a state directory that is not the caller's while the agent listens.

    Root writing into the service's directory would leave files the service cannot read (a root-owned
    0600 deny list denies everyone), so a foreign directory goes through the agent too.
    """
    if getattr(args, "via_agent", False):
        return True
    if args.command not in AGENT_COMMANDS or not is_socket(client_path(config)):
        return False
    state_dir = Path(config.state_dir)
    try:
        owner = state_dir.stat().st_uid
    except PermissionError:  # e.g. /var/lib/private (0700) on the way
        return True
    except OSError:
        return False
    return owner != os.geteuid() or not os.access(state_dir, os.R_OK | os.X_OK)


def build_request(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """What the agent needs to run `argv`: the arguments, enrollment photos' bytes, a PIN read here."""
    if args.command not in AGENT_COMMANDS:
        raise AdminError(NOT_THROUGH_AGENT.format(args.command, ", ".join(sorted(AGENT_COMMANDS))))
    request: dict[str, Any] = {"argv": argv, "files": [], "stdin": ""}
    if args.command == "enroll":
        if args.camera:
            raise AdminError("enroll --camera: the running agent holds the camera; enroll from photos, or stop the service")
        for image in args.images:
            request["files"].append({"name": Path(image).name, "data": base64.b64encode(Path(image).read_bytes()).decode()})
    if args.command == "console-password":  # asked here, where the terminal is; the agent writes the hash
        request["stdin"] = read_new_password() + "\n"
    if getattr(args, "pin", None) == "-":
        request["stdin"] = (read_secret("-") or "") + "\n"  # read here, where the terminal is
    return request


def via_agent(config: DeviceConfig, args: argparse.Namespace, argv: list[str]) -> int:
    """Run `argv` in the agent and print its output as if it ran here; its exit code."""
    answer = call(client_path(config), build_request(args, argv))
    sys.stdout.write(str(answer.get("stdout", "")))
    sys.stderr.write(str(answer.get("stderr", "")))
    code = answer.get("code")
    return code if isinstance(code, int) else 1


# -- the agent's side ---------------------------------------------------------------------------


def answer(config: DeviceConfig, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
    """Run one request as the CLI would, its output captured; never lets an exception out."""
    out, err = io.StringIO(), io.StringIO()
    with _SERIAL, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        saved_stdin = sys.stdin
        try:
            with tempfile.TemporaryDirectory(prefix="blindgate-admin-") as tmp:
                code = _run(config, request, peer, Path(tmp))
        except (AdminError, ValueError, TypeError, OSError) as exc:
            print(f"blindgate-device (agent): {exc}", file=sys.stderr)
            code = 1
        finally:
            sys.stdin = saved_stdin
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def _run(config: DeviceConfig, request: dict[str, Any], peer: Peer, tmp: Path) -> int:
    from .cli import build_parser, dispatch  # cli imports this module

    argv = request.get("argv")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise AdminError("malformed request: argv must be a list of strings")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # a usage error, or --help: argparse printed it (captured)
        return exc.code if isinstance(exc.code, int) else 2
    if args.command not in AGENT_COMMANDS:
        raise AdminError(NOT_THROUGH_AGENT.format(args.command, ", ".join(sorted(AGENT_COMMANDS))))
    if args.command == "enroll":
        if args.camera:
            raise AdminError("enroll --camera: the running agent holds the camera; enroll from photos")
        args.images = _write_photos(request.get("files"), tmp, len(args.images))
    sys.stdin = io.StringIO(str(request.get("stdin") or ""))
    log.info("admin command %r from uid %d (pid %d)", args.command, peer.uid, peer.pid)  # never argv: PINs
    return dispatch(config, args)


def _write_photos(files: Any, folder: Path, expected: int) -> list[str]:
    """The caller's photos as private files here, in order; their own names kept for messages."""
    if not isinstance(files, list) or len(files) != expected:
        raise AdminError(f"malformed request: {expected} photo(s) named, {len(files) if isinstance(files, list) else 0} sent")
    paths = []
    for index, item in enumerate(files):
        name = Path(str(item.get("name", "photo"))).name or "photo"  # no directories from the caller
        path = folder / f"{index:03d}-{name}"
        path.write_bytes(base64.b64decode(str(item.get("data", "")), validate=True))
        paths.append(str(path))
    return paths


def start_admin(config: DeviceConfig) -> AdminServer | None:
    """The agent's admin socket when `[admin] socket` or systemd's RuntimeDirectory= gives a place; else None."""
    path = server_path(config)
    if path is None:
        return None
    server = AdminServer(path, lambda request, peer: answer(config, request, peer), config.admin.group)
    server.start()
    return server


__all__ = ["AGENT_COMMANDS", "answer", "build_request", "start_admin", "via_agent", "wants_agent"]
