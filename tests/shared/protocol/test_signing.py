"""shared/protocol/signing.py: the cloud's reply-signing key and its public text form."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from blindgate.shared.protocol.errors import ProtocolError
from blindgate.shared.protocol.signing import (
    new_signing_key,
    public_key_from_text,
    public_key_to_text,
    signing_key_from_pem,
    signing_key_to_pem,
)


def test_pem_round_trip_signs_the_same():
    key = new_signing_key()
    again = signing_key_from_pem(signing_key_to_pem(key))
    public = key.public_key()
    public.verify(again.sign(b"message"), b"message")  # raises if the keys differ


def test_pem_of_another_key_type_is_refused():
    other = generate_private_key(SECP256R1())
    pem = other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(ProtocolError, match="must be an Ed25519 private key"):
        signing_key_from_pem(pem)


def test_public_key_text_round_trip():
    public = new_signing_key().public_key()
    text = public_key_to_text(public)
    assert len(text) == 64 and all(c in "0123456789abcdef" for c in text)
    assert public_key_to_text(public_key_from_text(f"  {text}\n")) == text


@pytest.mark.parametrize("text", ["", "abc", "zz" * 32, "00" * 31, "00" * 33])
def test_public_key_text_refuses(text):
    with pytest.raises(ProtocolError, match="64 hex characters"):
        public_key_from_text(text)
