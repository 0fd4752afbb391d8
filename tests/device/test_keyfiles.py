"""The device's private key files (device/keyfiles.py): owner-only, never silently replaced."""

from __future__ import annotations

import os
import stat

import pytest

from blindgate.device.keyfiles import create_aes_key, load_aes_key, write_private
from blindgate.device.labels import LabelError


def test_write_private_is_owner_only_and_exclusive_unless_told(tmp_path):
    path = tmp_path / "secret"
    write_private(path, b"one")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and path.read_bytes() == b"one"
    with pytest.raises(FileExistsError):
        write_private(path, b"two")
    write_private(path, b"two", exclusive=False)
    assert path.read_bytes() == b"two"


def test_an_aes_key_is_made_once_and_read_back(tmp_path):
    path = create_aes_key(tmp_path / "k.key", LabelError, "labels")
    key = load_aes_key(path, LabelError, "label key")
    assert len(key) == 32 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(LabelError, match="already exists: labels would become unreadable"):
        create_aes_key(path, LabelError, "labels")
    assert load_aes_key(path, LabelError, "label key") == key  # untouched by the refusal


def test_a_missing_key_says_to_run_init(tmp_path):
    with pytest.raises(LabelError, match="blindgate-device init"):
        load_aes_key(tmp_path / "missing.key", LabelError, "label key")
