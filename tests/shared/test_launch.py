"""launch.py: the pieces that need no process (free ports and finding mosquitto)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from blindgate.shared import launch
from blindgate.shared.launch import free_port, mosquitto_binary


def test_free_port_can_be_bound():
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_mosquitto_binary_from_path_or_sbin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(launch.shutil, "which", lambda name: None)
    monkeypatch.setattr(launch, "MOSQUITTO_PATHS", (str(tmp_path / "absent"),))
    assert mosquitto_binary() is None
    sbin = tmp_path / "mosquitto"
    sbin.touch()
    monkeypatch.setattr(launch, "MOSQUITTO_PATHS", (str(tmp_path / "absent"), str(sbin)))
    assert mosquitto_binary() == str(sbin)
    monkeypatch.setattr(launch.shutil, "which", lambda name: "/opt/bin/mosquitto" if name == "mosquitto" else None)
    assert mosquitto_binary() == "/opt/bin/mosquitto"
