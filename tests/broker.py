"""A real Mosquitto broker for tests: `blindgate.shared.launch`'s launcher, skipping when mosquitto is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from blindgate.shared.launch import Broker, BrokerTLS, MosquittoMissing, free_port, mosquitto_binary
from blindgate.shared.launch import start_broker as _start_broker

__all__ = ["Broker", "free_port", "mosquitto_binary", "start_broker"]


def start_broker(workdir: Path, tls: BrokerTLS | None = None) -> Broker:
    try:
        return _start_broker(workdir, tls)
    except MosquittoMissing:
        pytest.skip("mosquitto not installed: apt-get install mosquitto (.ci/run does this)")
