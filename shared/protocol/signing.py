"""The cloud's Ed25519 reply-signing key: creating it, storing it, and giving devices its public half.

Homomorphic ciphertexts are not authenticated, so devices trust a reply only through this
signature; the public key reaches a device at provisioning as 64 hex characters.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import ProtocolError

SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32


def new_signing_key() -> Ed25519PrivateKey:
    """A fresh key for a new cloud deployment."""
    return Ed25519PrivateKey.generate()


def signing_key_to_pem(key: Ed25519PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM, for a file only the cloud's user can read."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def signing_key_from_pem(data: bytes) -> Ed25519PrivateKey:
    """Load the cloud's key, refusing any other kind of private key."""
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ProtocolError("the reply-signing key must be an Ed25519 private key")
    return key


def public_key_to_text(key: Ed25519PublicKey) -> str:
    """The cloud's public key as given to devices at provisioning: 64 hex characters."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def public_key_from_text(text: str) -> Ed25519PublicKey:
    """Parse what `public_key_to_text` wrote; anything else is a ProtocolError."""
    try:
        raw = bytes.fromhex(text.strip())
        if len(raw) != PUBLIC_KEY_BYTES:
            raise ValueError(f"{len(raw)} bytes")
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise ProtocolError(f"cloud public key must be 64 hex characters (Ed25519): {exc}") from None
