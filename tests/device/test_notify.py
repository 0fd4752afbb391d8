"""sd_notify over a real datagram socket (path and abstract), and the watchdog interval."""

import os
import socket

from blindgate.device.notify import Notifier, notify, watchdog_interval


def _listener(address):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2)
    return sock


def test_path_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    with _listener(path) as sock:
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"})
        assert n.interval == 15.0
        assert n.ready("running") and n.watchdog() and n.stopping()
        assert sock.recv(100) == b"READY=1\nSTATUS=running"
        assert sock.recv(100) == b"WATCHDOG=1"
        assert sock.recv(100) == b"STOPPING=1"


def test_abstract_socket():
    name = f"blindgate-test-{os.getpid()}"
    with _listener("\0" + name) as sock:
        assert notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100) == b"READY=1"


def test_no_socket_is_a_no_op(tmp_path):
    assert not notify("READY=1", {})
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "absent")})
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}) is None
