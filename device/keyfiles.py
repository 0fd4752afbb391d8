"""The device's private key files: written owner-only (0600), never silently replaced.

Every secret the door keeps (site keys, label key, template key, door key) goes through
`write_private`; the two AES-256 keys (labels, sealed templates) are made and read with
`create_aes_key` / `load_aes_key`, which refuse to overwrite one (what it protects would no longer
open) and say to run `blindgate-device init` when one is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from blindgate.shared.errors import BlindgateError


def write_private(path: Path, data: bytes, exclusive: bool = True) -> None:
    """Create a file readable by its owner only (0600), refusing to overwrite when `exclusive`."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def create_aes_key(path: Path, error: type[BlindgateError], protects: str) -> Path:
    """A new AES-256 key file at `path` (0600); `error` if one exists (`protects` would become unreadable)."""
    try:
        write_private(path, AESGCM.generate_key(bit_length=256))
    except FileExistsError:
        raise error(f"{path} already exists: {protects} would become unreadable") from None
    return path


def load_aes_key(path: Path, error: type[BlindgateError], what: str) -> bytes:
    """The AES key at `path`; `error` naming `blindgate-device init` if it is missing."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} {path} not found: run `blindgate-device init` first") from None
