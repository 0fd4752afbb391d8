"""Identity claims at the door: their wire format, sealing, opening, freshness and single use.

A person first claims who they are (a badge id or a PIN) through a claim SOURCE registered on the
door (a keypad, a badge reader, Home Assistant; device/claim_sources.py). The broker is not
trusted, so each claim is sealed end to end with AES-256-GCM under that source's own key:

    payload   = JSON {"v": 1, "source": NAME, "nonce": b64(12 bytes), "sealed": b64(ciphertext)}
    AAD       = "blindgate-claim-v1" NUL topic NUL source     (binds the door's claim topic and the source)
    plaintext = JSON {"kind": "badge"|"pin", "value": ..., "issued_at": unix s, "id": 32 hex},
                padded with spaces to a fixed size, so the ciphertext does not even tell a PIN's length

The door accepts a claim only if its source is registered, it opens (so it was made with that
source's key for THIS door's topic: a claim for another door does not open here), it was issued
within `ttl` seconds (a few seconds of clock skew tolerated), and its id was never seen before
(`ReplayCache`: ids are remembered until they could no longer pass the freshness check, with a
bound on memory). Pure logic: no MQTT, no files; the clock is passed in.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from blindgate.shared.errors import BlindgateError

FORMAT = 1
AAD_PREFIX = b"blindgate-claim-v1"
PADDED_SIZE = 256  # plaintext bytes before encryption: every claim has the same length on the wire
MAX_PAYLOAD = 2048  # anything longer is not a claim
CLOCK_SKEW_S = 5.0  # a claim may look this far in the future (the source's clock runs ahead)
REPLAY_MEMORY = 4096  # claim ids remembered at most; when full, new claims are refused (fail secure)
KEY_BYTES = 32
CLAIM_ID = re.compile(r"[0-9a-f]{32}")
SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class CredentialKind(StrEnum):
    """What a person presents with a claim."""

    BADGE = "badge"
    PIN = "pin"


class ClaimRejection(StrEnum):
    """Why a claim was dropped (audited and counted; never a failed attempt: a broker attacker can cause them)."""

    MALFORMED = "malformed"
    UNKNOWN_SOURCE = "unknown_source"
    FORGED = "forged"  # does not open under the source's key (wrong key, tampered, another door's topic)
    STALE = "stale"  # issued too long ago, or too far in the future
    REPLAYED = "replayed"
    RETAINED = "retained"
    FLOOD = "flood"  # too many claims to remember or to queue
    IGNORED = "ignored"  # the door is in identify mode


class ClaimError(BlindgateError, ValueError):
    """A claim the door does not accept; `kind` says why (never the credential)."""

    def __init__(self, kind: ClaimRejection, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Claim:
    """An opened, authenticated claim. `value` is the credential: never log or publish it."""

    source: str
    kind: CredentialKind
    value: str
    issued_at: float
    claim_id: str

    def __repr__(self) -> str:  # the credential stays out of logs and tracebacks
        return f"Claim(source={self.source!r}, kind={self.kind!s}, issued_at={self.issued_at}, claim_id={self.claim_id})"


def check_source_name(name: str) -> str:
    if not isinstance(name, str) or not SOURCE_NAME.fullmatch(name):
        raise ClaimError(ClaimRejection.MALFORMED, "a claim source name is 1-64 letters, digits, '_', '.', '-'")
    return name


def _aad(topic: str, source: str) -> bytes:
    return b"\0".join((AAD_PREFIX, topic.encode(), source.encode()))


def seal_claim(
    key: bytes,
    topic: str,
    source: str,
    kind: CredentialKind | str,
    value: str,
    now: float | None = None,
    claim_id: str | None = None,
) -> bytes:
    """A claim as a keypad sends it: `value` of `kind`, sealed for the door whose claim topic is `topic`."""
    check_source_name(source)
    body = {
        "kind": str(CredentialKind(kind)),
        "value": value,
        "issued_at": time.time() if now is None else float(now),
        "id": claim_id or secrets.token_hex(16),
    }
    plaintext = json.dumps(body, separators=(",", ":")).encode()
    if len(plaintext) > PADDED_SIZE:
        raise ClaimError(ClaimRejection.MALFORMED, "credential too long for a claim")
    plaintext = plaintext.ljust(PADDED_SIZE, b" ")
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(key).encrypt(nonce, plaintext, _aad(topic, source))
    envelope = {
        "v": FORMAT,
        "source": source,
        "nonce": base64.b64encode(nonce).decode(),
        "sealed": base64.b64encode(sealed).decode(),
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise ClaimError(ClaimRejection.MALFORMED, f"claim {what} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ClaimError(ClaimRejection.MALFORMED, f"claim {what} is not base64") from None


def claim_source(payload: bytes) -> tuple[str, bytes, bytes]:
    """(source, nonce, ciphertext) of a payload, before any key is looked up; ClaimError(MALFORMED)."""
    if len(payload) > MAX_PAYLOAD:
        raise ClaimError(ClaimRejection.MALFORMED, f"claim larger than {MAX_PAYLOAD} bytes")
    try:
        envelope = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise ClaimError(ClaimRejection.MALFORMED, "claim is not JSON") from None
    if not isinstance(envelope, dict) or envelope.get("v") != FORMAT:
        raise ClaimError(ClaimRejection.MALFORMED, "claim is not a version-1 envelope")
    source = envelope.get("source")
    if not isinstance(source, str) or not SOURCE_NAME.fullmatch(source):
        raise ClaimError(ClaimRejection.MALFORMED, "claim names no valid source")
    nonce = _b64(envelope.get("nonce"), "nonce")
    if len(nonce) != 12:
        raise ClaimError(ClaimRejection.MALFORMED, "claim nonce is not 12 bytes")
    return source, nonce, _b64(envelope.get("sealed"), "ciphertext")


def open_claim(payload: bytes, topic: str, key_of: Callable[[str], bytes | None]) -> Claim:
    """Authenticate and decrypt a claim received on `topic` (freshness and replay are checked apart)."""
    source, nonce, sealed = claim_source(payload)
    key = key_of(source)
    if key is None:
        raise ClaimError(ClaimRejection.UNKNOWN_SOURCE, f"claim from unregistered source {source!r}")
    try:
        plaintext = AESGCM(key).decrypt(nonce, sealed, _aad(topic, source))
    except (InvalidTag, ValueError):
        raise ClaimError(ClaimRejection.FORGED, f"claim does not open under source {source!r}'s key for this door") from None
    try:
        body = json.loads(plaintext.rstrip(b" "))
        kind = CredentialKind(body["kind"])
        value, issued_at, claim_id = body["value"], body["issued_at"], body["id"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ClaimError(ClaimRejection.MALFORMED, f"authenticated claim from {source!r} has a malformed body") from None
    if not isinstance(value, str) or not isinstance(claim_id, str) or not CLAIM_ID.fullmatch(claim_id):
        raise ClaimError(ClaimRejection.MALFORMED, f"authenticated claim from {source!r} has a malformed body")
    if isinstance(issued_at, bool) or not isinstance(issued_at, int | float) or issued_at != issued_at:
        raise ClaimError(ClaimRejection.MALFORMED, f"authenticated claim from {source!r} has no issue time")
    return Claim(source, kind, value, float(issued_at), claim_id)


class ReplayCache:
    """Claim ids seen, each kept until it would fail the freshness check anyway (bounded, thread-safe)."""

    def __init__(self, ttl: float, skew: float = CLOCK_SKEW_S, limit: int = REPLAY_MEMORY) -> None:
        self.ttl, self.skew, self.limit = float(ttl), float(skew), int(limit)
        self._seen: dict[str, float] = {}  # id -> wall time after which the claim is stale anyway
        self._guard = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def check_fresh(self, claim: Claim, now: float) -> None:
        """ClaimError(STALE) unless issued within `ttl` before `now` (or at most `skew` after it)."""
        if claim.issued_at > now + self.skew:
            raise ClaimError(ClaimRejection.STALE, f"claim from {claim.source!r} is issued in the future (clock skew?)")
        if now - claim.issued_at > self.ttl:
            raise ClaimError(ClaimRejection.STALE, f"claim from {claim.source!r} is {now - claim.issued_at:.0f} s old")

    def first_use(self, claim: Claim, now: float) -> None:
        """Fresh and never seen: remember it; otherwise ClaimError (STALE, REPLAYED, or FLOOD when memory is full)."""
        self.check_fresh(claim, now)
        with self._guard:
            if claim.claim_id in self._seen:
                raise ClaimError(ClaimRejection.REPLAYED, f"claim {claim.claim_id} from {claim.source!r} was used before")
            if len(self._seen) >= self.limit:
                self._seen = {cid: until for cid, until in self._seen.items() if until >= now}
                if len(self._seen) >= self.limit:
                    raise ClaimError(ClaimRejection.FLOOD, "too many recent claims to remember: refused")
            self._seen[claim.claim_id] = max(claim.issued_at, now) + self.ttl + self.skew


class ClaimOpener:
    """Everything the door checks about a claim message before it looks at the credential."""

    def __init__(self, topic: str, key_of: Callable[[str], bytes | None], ttl: float, skew: float = CLOCK_SKEW_S) -> None:
        self.topic = topic
        self.key_of = key_of
        self.replays = ReplayCache(ttl, skew)

    def open(self, payload: bytes, retained: bool = False, now: float | None = None) -> Claim:
        """The authenticated, fresh, first-seen claim in `payload`, or ClaimError saying why not."""
        if retained:
            raise ClaimError(ClaimRejection.RETAINED, "retained claim ignored (it could be replayed to every reconnect)")
        claim = open_claim(payload, self.topic, self.key_of)
        self.replays.first_use(claim, time.time() if now is None else now)
        return claim


def new_source_key() -> bytes:
    """A fresh random 256-bit claim-source key."""
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)


__all__ = [
    "CLOCK_SKEW_S",
    "Claim",
    "ClaimError",
    "ClaimOpener",
    "ClaimRejection",
    "CredentialKind",
    "ReplayCache",
    "check_source_name",
    "claim_source",
    "new_source_key",
    "open_claim",
    "seal_claim",
]
