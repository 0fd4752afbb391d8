"""What the gallery store hands out and takes in: records, subject ids, token hashes, argument checks.

Plain values with no database behind them, so callers (the HTTP routes, the matcher workers)
can pass them around and compare them freely.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from blindgate.shared.engine.gallery import SlotRef

# Domain separation for token hashes, so a stored hash is useless as a hash of anything else.
TOKEN_CONTEXT = b"blindgate-site-token-v1\x00"


@dataclass(frozen=True)
class SiteRecord:
    """A registered site, without its (large) evaluation bundle."""

    site_id: str
    key_id: str
    version: int  # gallery version: +1 for every committed enrollment or removal
    created: float  # Unix time


@dataclass(frozen=True)
class GallerySnapshot:
    """A site's gallery as of one transaction; bundle and blocks are None when the reader is current."""

    key_id: str
    version: int
    bundle: bytes | None
    blocks: list[bytes] | None


@dataclass(frozen=True)
class SubjectRecord:
    """One enrolled person: an opaque id, the device-encrypted label and where the template lives."""

    subject_id: str
    label: bytes  # encrypted by the device; opaque here
    block: int
    slot: int
    created: float  # Unix time

    @property
    def ref(self) -> SlotRef:
        return SlotRef(self.block, self.slot)


def new_subject_id() -> str:
    """A fresh random subject id (128 bits): says nothing about the person or enrollment order."""
    return secrets.token_hex(16)


def hash_token(token: str) -> bytes:
    """What is stored instead of a site's access token.

    Tokens are random 32-byte secrets, so a plain (domain-separated) SHA-256 is enough: there
    is nothing to brute-force that a slow hash would protect.
    """
    if not isinstance(token, str) or not token:
        raise ValueError("an access token must be a non-empty string")
    return hashlib.sha256(TOKEN_CONTEXT + token.encode()).digest()


def require_text(value: object, what: str) -> str:
    """`value` if it is a non-empty string; ValueError naming `what` otherwise."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return value


def require_bytes(value: object, what: str) -> bytes:
    """`value` as bytes if it is bytes-like; ValueError naming `what` otherwise."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise ValueError(f"{what} must be bytes, got {type(value).__name__}")
    return bytes(value)


def require_index(value: object, what: str) -> int:
    """`value` if it is a non-negative int (not a bool); ValueError naming `what` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    return value
