"""Labels: AES-GCM round trip, tamper and wrong-site rejection, key file 0600."""

import os
import stat

import pytest

from blindgate.device.labels import LabelCipher, LabelError


def test_round_trip_and_key_file_mode(tmp_path):
    path = LabelCipher.create_key(tmp_path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(path.read_bytes()) == 32
    cipher = LabelCipher.load(tmp_path, "home")
    blob = cipher.encrypt("Lin-Manuel Miranda")
    assert b"Lin" not in blob
    assert cipher.decrypt(blob) == "Lin-Manuel Miranda"
    assert cipher.encrypt("x") != cipher.encrypt("x")  # fresh nonce


def test_tampered_label_rejected(tmp_path):
    LabelCipher.create_key(tmp_path)
    cipher = LabelCipher.load(tmp_path, "home")
    blob = bytearray(cipher.encrypt("alice"))
    blob[-1] ^= 1
    with pytest.raises(LabelError):
        cipher.decrypt(bytes(blob))
    with pytest.raises(LabelError):
        cipher.decrypt(b"short")


def test_label_bound_to_site_and_key(tmp_path):
    LabelCipher.create_key(tmp_path)
    blob = LabelCipher.load(tmp_path, "home").encrypt("alice")
    with pytest.raises(LabelError):
        LabelCipher.load(tmp_path, "office").decrypt(blob)
    other = tmp_path / "other"
    other.mkdir()
    LabelCipher.create_key(other)
    with pytest.raises(LabelError):
        LabelCipher.load(other, "home").decrypt(blob)


def test_key_never_overwritten(tmp_path):
    LabelCipher.create_key(tmp_path)
    with pytest.raises(LabelError):
        LabelCipher.create_key(tmp_path)
    with pytest.raises(LabelError):
        LabelCipher.load(tmp_path / "missing", "home")
