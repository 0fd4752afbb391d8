"""Which cloud keys a device trusts: fingerprints, key rings and endorsed rotation.

A device pins the cloud's reply-signing key at provisioning. To rotate that key without
re-provisioning (or re-enrolling) anyone, the cloud signs, with the key devices already trust,
an endorsement of the next key: `blindgate cloud key endorsement v1 \\0 | from (32) | to (32)`.
A device adds `to` to its ring only when `from` is in the ring and the signature checks; it then
accepts replies signed by either key until the cloud has switched, and retires `from` after.
An endorsement cannot rescue a stolen key (the thief can endorse its own); that needs a new pin.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import ProtocolError
from .signing import public_key_from_text, public_key_to_text

ENDORSEMENT_CONTEXT = b"blindgate cloud key endorsement v1\0"


class ReplyVerifier(Protocol):
    """What checks a reply's signature: one Ed25519 public key, or a `KeyRing` of them."""

    def verify(self, signature: bytes, data: bytes) -> None: ...


def canonical(key_text: str) -> str:
    """The key as 64 lower-case hex characters (a ProtocolError if it is not an Ed25519 key)."""
    return public_key_to_text(public_key_from_text(key_text))


def fingerprint(key_text: str) -> str:
    """Short form for out-of-band comparison: SHA256 of the raw key, first 16 bytes, in groups of 4 hex."""
    digest = hashlib.sha256(bytes.fromhex(canonical(key_text))).hexdigest()[:32]
    return "SHA256:" + ":".join(digest[i : i + 4] for i in range(0, 32, 4))


def same_key(a: str, b: str) -> bool:
    """Constant-time equality of two keys in text form."""
    return hmac.compare_digest(bytes.fromhex(canonical(a)), bytes.fromhex(canonical(b)))


class KeyRing:
    """Several trusted cloud keys (during a rotation): a signature by any of them verifies."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.texts = tuple(dict.fromkeys(canonical(k) for k in keys))
        if not self.texts:
            raise ProtocolError("a key ring needs at least one cloud key")
        self._keys = [public_key_from_text(k) for k in self.texts]

    def verify(self, signature: bytes, data: bytes) -> None:
        for key in self._keys:
            try:
                key.verify(signature, data)
                return
            except InvalidSignature:
                continue
        raise InvalidSignature()

    def __contains__(self, key_text: object) -> bool:
        return isinstance(key_text, str) and any(same_key(key_text, k) for k in self.texts)


@dataclass(frozen=True)
class Endorsement:
    """`endorser` (a trusted key) vouches for `endorsed` (the next key)."""

    endorser: str
    endorsed: str
    signature: str  # 128 hex chars

    def to_dict(self) -> dict[str, str]:
        return {"from": self.endorser, "to": self.endorsed, "signature": self.signature}

    @classmethod
    def from_dict(cls, data: Any) -> Endorsement:
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("from", "to", "signature")):
            raise ProtocolError("cloud key endorsement must be {'from', 'to', 'signature'} (hex strings)")
        return cls(canonical(data["from"]), canonical(data["to"]), data["signature"])


def _statement(endorser: str, endorsed: str) -> bytes:
    return ENDORSEMENT_CONTEXT + bytes.fromhex(canonical(endorser)) + bytes.fromhex(canonical(endorsed))


def endorse(current: Ed25519PrivateKey, endorsed: Ed25519PublicKey) -> Endorsement:
    """The current key's signed statement that `endorsed` is the next reply-signing key."""
    endorser, target = public_key_to_text(current.public_key()), public_key_to_text(endorsed)
    if endorser == target:
        raise ProtocolError("a key cannot endorse itself")
    return Endorsement(endorser, target, current.sign(_statement(endorser, target)).hex())


def check_endorsement(endorsement: Endorsement, trusted: KeyRing) -> str:
    """The endorsed key, if a key in `trusted` signed the endorsement; otherwise a ProtocolError."""
    if endorsement.endorser not in trusted:
        raise ProtocolError(f"endorsement is by {fingerprint(endorsement.endorser)}, a key this device does not trust")
    try:
        signature = bytes.fromhex(endorsement.signature)
        public_key_from_text(endorsement.endorser).verify(signature, _statement(endorsement.endorser, endorsement.endorsed))
    except (ValueError, InvalidSignature):
        raise ProtocolError("cloud key endorsement: bad signature — forged or altered") from None
    return endorsement.endorsed
