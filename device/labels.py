"""Subject names encrypted on the device, so the cloud stores only opaque labels.

AES-256-GCM with a 32-byte key kept in the device's state directory (mode 0600). A label is
`nonce (12 bytes) || ciphertext+tag`, with the site id as associated data: a label copied from
another site (or altered) fails to decrypt instead of naming the wrong person.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from blindgate.shared.errors import BlindgateError
from blindgate.shared.limits import MAX_LABEL_BYTES  # the decoded size the cloud accepts

from .keyfiles import create_aes_key, load_aes_key

KEY_FILE = "label.key"
KEY_BYTES = 32
NONCE_BYTES = 12


class LabelError(BlindgateError, ValueError):
    """A label that cannot be made or read (tampered, wrong site or key, too long)."""


class LabelCipher:
    """Encrypts and decrypts one site's subject names with the device's label key."""

    def __init__(self, key: bytes, site: str) -> None:
        if len(key) != KEY_BYTES:
            raise LabelError(f"label key must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self._ad = site.encode()

    @staticmethod
    def create_key(state_dir: str | Path) -> Path:
        """Make a new label key file in `state_dir` (0600); refuses to replace an existing one."""
        return create_aes_key(Path(state_dir) / KEY_FILE, LabelError, "labels encrypted with it")

    @classmethod
    def load(cls, state_dir: str | Path, site: str) -> LabelCipher:
        return cls(load_aes_key(Path(state_dir) / KEY_FILE, LabelError, "label key"), site)

    def encrypt(self, name: str) -> bytes:
        if not isinstance(name, str) or not name.strip():
            raise LabelError("a label must be a non-empty name")
        nonce = os.urandom(NONCE_BYTES)
        blob = nonce + self._aead.encrypt(nonce, name.encode("utf-8"), self._ad)
        if len(blob) > MAX_LABEL_BYTES:
            raise LabelError(f"label too long: {len(blob)} encrypted bytes > {MAX_LABEL_BYTES}")
        return blob

    def decrypt(self, blob: bytes) -> str:
        if not isinstance(blob, (bytes, bytearray)) or len(blob) < NONCE_BYTES + 16:
            raise LabelError("label too short to be an encrypted name")
        try:
            plain = self._aead.decrypt(bytes(blob[:NONCE_BYTES]), bytes(blob[NONCE_BYTES:]), self._ad)
        except InvalidTag:
            raise LabelError("label does not decrypt: altered, from another site, or another key") from None
        try:
            return plain.decode("utf-8")
        except UnicodeDecodeError:  # authentic bytes, but not a name this site's devices wrote
            raise LabelError("label decrypts to bytes that are not UTF-8") from None
