"""The running agent's admin socket: a local Unix socket that carries one CLI command per connection.

Under systemd the door runs as a `DynamicUser=` whose state directory is 0700, so nobody else may
read it, and root writing into it leaves files the service cannot read (a root-owned 0600 deny list
denies everyone). So the agent itself runs the admin commands: the CLI sends its arguments here and
prints what comes back (device/admin_cli.py decides what may be run and how).

Who may connect: the socket is 0660, group `[admin] group` (else the service's own group), in the
unit's `RuntimeDirectory=`; and the server checks each caller's uid (SO_PEERCRED) again: root, the
service's own uid, or a member of that group. Framing: a 4-byte big-endian length, then JSON.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import logging
import os
import pwd
import socket
import stat
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blindgate.shared.config import DeviceConfig
from blindgate.shared.errors import BlindgateError

log = logging.getLogger("blindgate.device.admin_socket")

SOCKET_NAME = "admin.sock"
DEFAULT_SOCKET = "/run/blindgate-device/admin.sock"  # the shipped unit's RuntimeDirectory=blindgate-device
MAX_MESSAGE = 64 * 1024 * 1024  # a request carries enrollment photos
CALLER_TIMEOUT = 30.0  # s a connected caller has to send its request


class AdminError(BlindgateError, RuntimeError):
    """The admin socket could not be served or reached; the message says what to do."""


@dataclass(frozen=True)
class Peer:
    """The process on the other end of a connection, as the kernel reports it."""

    pid: int
    uid: int
    gid: int


Handler = Callable[[dict[str, Any], Peer], dict[str, Any]]


def server_path(config: DeviceConfig, env: Mapping[str, str] | None = None) -> Path | None:
    """Where the agent listens: `[admin] socket`, else systemd's `$RUNTIME_DIRECTORY`; None: no socket."""
    if config.admin.socket:
        return Path(config.admin.socket)
    runtime = (os.environ if env is None else env).get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(runtime) / SOCKET_NAME if runtime else None


def client_path(config: DeviceConfig) -> Path:
    """Where the CLI looks for the agent: `[admin] socket`, else the shipped unit's runtime directory."""
    return Path(config.admin.socket or DEFAULT_SOCKET)


def group_id(name: str) -> int | None:
    """The gid of group `name` (None for ""); AdminError for a group that does not exist."""
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise AdminError(f"[admin] group {name!r} does not exist (create it: sudo groupadd --system {name})") from None


def in_group(uid: int, gid: int) -> bool:
    """True if `uid`'s primary group is `gid` or its user is listed as a member of it."""
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return False
    if user.pw_gid == gid:
        return True
    try:
        return user.pw_name in grp.getgrgid(gid).gr_mem
    except KeyError:
        return False


def may_administer(peer: Peer, own_uid: int, admin_gid: int | None) -> bool:
    """Root, the service's own uid, or a member of the admin group (never "anyone who can connect")."""
    if peer.uid in (0, own_uid):
        return True
    return admin_gid is not None and (peer.gid == admin_gid or in_group(peer.uid, admin_gid))


def peer_of(conn: socket.socket) -> Peer:
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return Peer(*struct.unpack("3i", raw))


def send_message(conn: socket.socket, body: Mapping[str, Any]) -> None:
    data = json.dumps(body).encode()
    conn.sendall(struct.pack(">I", len(data)) + data)


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = conn.recv(min(left, 1 << 20))
        if not chunk:
            raise AdminError("connection closed mid-message")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv_message(conn: socket.socket, limit: int = MAX_MESSAGE) -> dict[str, Any]:
    (size,) = struct.unpack(">I", _read_exactly(conn, 4))
    if size > limit:
        raise AdminError(f"message of {size} bytes is over the {limit} byte limit")
    try:
        body = json.loads(_read_exactly(conn, size))
    except ValueError as exc:
        raise AdminError(f"malformed message: {exc}") from None
    if not isinstance(body, dict):
        raise AdminError("malformed message: not a JSON object")
    return body


class AdminServer:
    """Listens on `path`; each connection is one request answered by `handler`, one at a time."""

    def __init__(self, path: str | Path, handler: Handler, group: str = "") -> None:
        self.path = Path(path)
        self.handler = handler
        self.group = group
        self.admin_gid = group_id(group)
        self.own_uid = os.geteuid()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            # Born 0777 & ~umask: others get no write (connect) permission under any usual umask, and
            # the uid check below holds even then; no os.umask() here, it is process-wide.
            sock.bind(str(self.path))
            os.chmod(self.path, 0o660)
            if self.admin_gid is not None:
                os.chown(self.path, -1, self.admin_gid)  # the service must be in the group (SupplementaryGroups=)
            sock.listen(8)
        except OSError as exc:
            sock.close()
            raise AdminError(f"admin socket {self.path}: {exc.strerror or exc}") from None
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="blindgate-admin", daemon=True)
        self._thread.start()
        log.info("admin socket on %s (group %s)", self.path, self.group or "the service's own")

    def _remove_stale(self) -> None:
        """A socket left by a killed agent is removed; one an agent still answers on, or any other file, is not."""
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise AdminError(f"admin socket {self.path}: exists and is not a socket; remove it or set [admin] socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.path))
            except OSError:
                self.path.unlink(missing_ok=True)
                return
        raise AdminError(f"admin socket {self.path}: another agent is serving it")

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed by stop()
            with conn:
                try:
                    self._answer(conn)
                except (OSError, AdminError) as exc:
                    log.warning("admin connection dropped: %s", exc)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(CALLER_TIMEOUT)
        peer = peer_of(conn)
        if not may_administer(peer, self.own_uid, self.admin_gid):
            log.warning("admin socket: refused uid %d (pid %d)", peer.uid, peer.pid)
            who = f"group {self.group!r}" if self.group else "root or the service's user"
            send_message(conn, {"code": 1, "stdout": "", "stderr": f"permission denied: uid {peer.uid} is not {who}\n"})
            return
        request = recv_message(conn)
        conn.settimeout(None)  # the command may take a while (enrollment, the cloud)
        try:
            answer = self.handler(request, peer)
        except Exception as exc:  # the agent keeps running whatever one command does
            log.exception("admin command failed")
            answer = {"code": 1, "stdout": "", "stderr": f"internal error in the agent: {type(exc).__name__}: {exc}\n"}
        send_message(conn, answer)

    def stop(self) -> None:
        """Stop serving and remove the socket. Safe to call more than once."""
        self._stopping.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            self._sock = None
            with contextlib.suppress(OSError):
                self.path.unlink()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


def call(path: str | Path, request: Mapping[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Send one request to the agent at `path` and return its answer; AdminError saying what to do."""
    path = Path(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as conn:
        conn.settimeout(timeout)
        try:
            conn.connect(str(path))
        except OSError as exc:
            raise AdminError(_unreachable(path, exc)) from None
        try:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                send_message(conn, request)  # a refused caller is answered before it has sent: read that
            return recv_message(conn)
        except (OSError, AdminError) as exc:
            raise AdminError(f"the door agent at {path} did not answer: {exc}") from None


def _unreachable(path: Path, exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (
            f"no permission to use the door agent's admin socket {path}: run as root (sudo) or as a "
            "member of the group named in the config's [admin] group"
        )
    if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
        return (
            f"no door agent answers on {path}: is the service running (systemctl status blindgate-device)? "
            "Its socket is in RuntimeDirectory= unless [admin] socket names another"
        )
    return f"cannot reach the door agent at {path}: {exc.strerror or exc}"


__all__ = [
    "DEFAULT_SOCKET",
    "AdminError",
    "AdminServer",
    "Peer",
    "call",
    "client_path",
    "group_id",
    "may_administer",
    "server_path",
]
