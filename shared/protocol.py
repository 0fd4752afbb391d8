"""The wire protocol between door devices and the cloud: probe requests and signed replies.

Pure bytes in, bytes out: no MQTT, no HTTP, no engine. MQTT v5 carries these payloads with
`ResponseTopic`, `CorrelationData` (= the request id) and `MessageExpiryInterval`; nothing is
ever retained.

A message is `MAGIC | kind | u32 header length | JSON header | blobs`, the header listing the
blobs' lengths. Replies are signed with the cloud's Ed25519 key over the whole message before
the signature; the header binds the device id, request id and nonce, gallery version, a SHA-256
of the result ciphertexts and an expiry. Homomorphic ciphertexts are not authenticated (anyone
with the public key can encrypt a fake "distance 0"), so a device trusts a reply only through
`open_reply` and `PendingRequests`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import struct
import time
from dataclasses import dataclass, field

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from blindgate.shared.errors import BlindgateError

VERSION = 1
_MAGIC = b"BGP1"
_KIND_PROBE = b"P"
_KIND_REPLY = b"R"
_SIGNATURE_BYTES = 64
MAX_HEADER_BYTES = 64 * 1024
# A probe is ~116 KB; allow headroom but refuse anything that could not be one.
MAX_PROBE_BYTES = 300 * 1024
DEFAULT_TOPIC_PREFIX = "blindgate"

STATUS_OK = "ok"
STATUS_BUSY = "busy"
STATUS_ERROR = "error"
MODE_IDENTIFY = "identify"
MODE_VERIFY = "verify"


class ProtocolError(BlindgateError, ValueError):
    """A malformed, unauthenticated, stale or unexpected message; the door stays locked."""


# --- topics -----------------------------------------------------------------------------------


def probe_topic(site: str, device: str, prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
    return f"{prefix}/{site}/{device}/probe"


def reply_topic(site: str, device: str, prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
    return f"{prefix}/{site}/{device}/reply"


def probe_subscription(group: str = "blindgate-cloud", prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
    """Shared subscription: each probe reaches exactly one of the cloud processes in `group`."""
    return f"$share/{group}/{prefix}/+/+/probe"


def parse_probe_topic(topic: str, prefix: str = DEFAULT_TOPIC_PREFIX) -> tuple[str, str]:
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != prefix or parts[3] != "probe" or not parts[1] or not parts[2]:
        raise ProtocolError(f"not a probe topic: {topic!r}")
    return parts[1], parts[2]


def check_name(value: str, what: str) -> str:
    """Site and device ids appear in topics: keep them to safe characters."""
    if not isinstance(value, str) or not 1 <= len(value) <= 64 or not all(c.isalnum() or c in "-_." for c in value):
        raise ProtocolError(f"{what} must be 1-64 characters of letters, digits, '-', '_' or '.', got {value!r}")
    return value


# --- framing ----------------------------------------------------------------------------------


def _frame(kind: bytes, header: dict, blobs: list[bytes]) -> bytes:
    header = dict(header, blobs=[len(b) for b in blobs])
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return _MAGIC + kind + struct.pack("<I", len(head)) + head + b"".join(blobs)


def _unframe(data: bytes, kind: bytes, what: str) -> tuple[dict, list[bytes], int]:
    """Parse a frame; returns header, blobs and the offset where the blobs end."""
    if not isinstance(data, (bytes, bytearray)):
        raise ProtocolError(f"{what}: payload must be bytes")
    if len(data) < 9 or data[:4] != _MAGIC:
        raise ProtocolError(f"{what}: not a blindgate message (bad magic)")
    if data[4:5] != kind:
        raise ProtocolError(f"{what}: wrong message kind {bytes(data[4:5])!r}")
    (head_len,) = struct.unpack_from("<I", data, 5)
    if head_len > MAX_HEADER_BYTES or 9 + head_len > len(data):
        raise ProtocolError(f"{what}: header length {head_len} is invalid for a {len(data)}-byte message")
    try:
        header = json.loads(bytes(data[9 : 9 + head_len]))
        sizes = [int(n) for n in header["blobs"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"{what}: malformed header ({exc})") from None
    if not isinstance(header, dict) or header.get("v") != VERSION:
        raise ProtocolError(f"{what}: unsupported protocol version {header.get('v') if isinstance(header, dict) else None!r}")
    blobs, offset = [], 9 + head_len
    for size in sizes:
        if size < 0 or offset + size > len(data):
            raise ProtocolError(f"{what}: truncated")
        blobs.append(bytes(data[offset : offset + size]))
        offset += size
    return header, blobs, offset


def _field(header: dict, name: str, kind: type | tuple[type, ...], what: str):
    value = header.get(name)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ProtocolError(f"{what}: field {name!r} missing or not {names}")
    return value


# --- probe requests ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeRequest:
    """What a device asks: compare this encrypted face with the site's gallery (or one subject)."""

    site: str
    device: str
    key_id: str
    request_id: str  # hex; also the MQTT CorrelationData
    nonce: str  # hex; fresh per request, echoed in the signed reply
    issued_at: float  # unix seconds
    expires_at: float  # unix seconds; the cloud drops requests past it
    probe: bytes = field(repr=False)
    mode: str = MODE_IDENTIFY
    subject: str | None = None  # for MODE_VERIFY

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) > self.expires_at


def new_probe_request(
    site: str,
    device: str,
    key_id: str,
    probe: bytes,
    ttl: float = 5.0,
    mode: str = MODE_IDENTIFY,
    subject: str | None = None,
    now: float | None = None,
) -> ProbeRequest:
    now = time.time() if now is None else now
    return ProbeRequest(
        site=check_name(site, "site"),
        device=check_name(device, "device"),
        key_id=key_id,
        request_id=secrets.token_hex(16),
        nonce=secrets.token_hex(16),
        issued_at=now,
        expires_at=now + ttl,
        probe=probe,
        mode=mode,
        subject=subject,
    )


def encode_probe_request(req: ProbeRequest) -> bytes:
    header = {
        "v": VERSION,
        "site": req.site,
        "device": req.device,
        "key_id": req.key_id,
        "request_id": req.request_id,
        "nonce": req.nonce,
        "issued_at": req.issued_at,
        "expires_at": req.expires_at,
        "mode": req.mode,
        "subject": req.subject,
    }
    return _frame(_KIND_PROBE, header, [req.probe])


def decode_probe_request(data: bytes) -> ProbeRequest:
    what = "probe request"
    if isinstance(data, (bytes, bytearray)) and len(data) > MAX_PROBE_BYTES:
        raise ProtocolError(f"{what}: {len(data)} bytes is more than the {MAX_PROBE_BYTES} allowed")
    header, blobs, end = _unframe(data, _KIND_PROBE, what)
    if end != len(data) or len(blobs) != 1:
        raise ProtocolError(f"{what}: expected exactly one probe ciphertext")
    mode = _field(header, "mode", str, what)
    if mode not in (MODE_IDENTIFY, MODE_VERIFY):
        raise ProtocolError(f"{what}: unknown mode {mode!r}")
    subject = header.get("subject")
    if mode == MODE_VERIFY and not isinstance(subject, str):
        raise ProtocolError(f"{what}: verify needs a subject id")
    for name in ("request_id", "nonce"):
        value = _field(header, name, str, what)
        if len(value) != 32 or any(c not in "0123456789abcdef" for c in value):
            raise ProtocolError(f"{what}: {name} must be 32 hex characters")
    try:
        site = check_name(_field(header, "site", str, what), "site")
        device = check_name(_field(header, "device", str, what), "device")
    except ProtocolError as exc:
        raise ProtocolError(f"{what}: {exc}") from None
    return ProbeRequest(
        site=site,
        device=device,
        key_id=_field(header, "key_id", str, what),
        request_id=header["request_id"],
        nonce=header["nonce"],
        issued_at=float(_field(header, "issued_at", (int, float), what)),
        expires_at=float(_field(header, "expires_at", (int, float), what)),
        probe=blobs[0],
        mode=mode,
        subject=subject if mode == MODE_VERIFY else None,
    )


# --- replies ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockResult:
    """One block's encrypted result and which of its slots hold templates (needed to decode)."""

    block: int
    occupied: bytes  # numpy.packbits of the block's occupancy (512 bytes for 4096 slots)
    ciphertext: bytes = field(repr=False)

    @classmethod
    def of(cls, block: int, occupied: np.ndarray, ciphertext: bytes) -> "BlockResult":
        """Pack a block's boolean occupancy (one bit per slot) with its result."""
        return cls(block=block, occupied=np.packbits(np.asarray(occupied, dtype=bool)).tobytes(), ciphertext=ciphertext)

    def occupancy(self, slots: int | None = None) -> np.ndarray:
        """The boolean occupancy; with `slots`, refuse one that does not cover exactly that many."""
        if slots is not None and len(self.occupied) * 8 != slots:
            raise ProtocolError(f"block {self.block}: occupancy of {len(self.occupied)} bytes, expected {slots // 8}")
        return np.unpackbits(np.frombuffer(self.occupied, dtype=np.uint8)).astype(bool)


@dataclass(frozen=True)
class Reply:
    """The cloud's answer to one probe request; `results` is empty unless status is ok."""

    status: str
    site: str
    device: str
    request_id: str
    nonce: str
    gallery_version: int
    expires_at: float
    results: tuple[BlockResult, ...] = ()
    message: str = ""


def results_digest(results) -> str:
    digest = hashlib.sha256()
    for r in results:
        digest.update(struct.pack("<IQ", r.block, len(r.ciphertext)))
        digest.update(hashlib.sha256(r.occupied).digest())
        digest.update(hashlib.sha256(r.ciphertext).digest())
    return digest.hexdigest()


def seal_reply(reply: Reply, signing_key: Ed25519PrivateKey) -> bytes:
    """Serialize and sign a reply: everything before the 64-byte signature is covered."""
    header = {
        "v": VERSION,
        "status": reply.status,
        "site": reply.site,
        "device": reply.device,
        "request_id": reply.request_id,
        "nonce": reply.nonce,
        "gallery_version": reply.gallery_version,
        "expires_at": reply.expires_at,
        "message": reply.message,
        "blocks": [r.block for r in reply.results],
        "results_sha256": results_digest(reply.results),
    }
    blobs = []
    for r in reply.results:
        blobs += [r.occupied, r.ciphertext]
    body = _frame(_KIND_REPLY, header, blobs)
    return body + signing_key.sign(body)


def error_reply(req_or_fields, status: str, message: str, ttl: float = 10.0) -> Reply:
    """A reply that carries no result: busy, or an error the device logs (door stays locked)."""
    get = (lambda k: getattr(req_or_fields, k)) if not isinstance(req_or_fields, dict) else req_or_fields.get
    return Reply(
        status=status,
        site=get("site") or "",
        device=get("device") or "",
        request_id=get("request_id") or "",
        nonce=get("nonce") or "",
        gallery_version=0,
        expires_at=time.time() + ttl,
        message=message,
    )


def open_reply(data: bytes, verify_key: Ed25519PublicKey) -> Reply:
    """Check the cloud's signature and parse a reply. Freshness is `PendingRequests`' job."""
    what = "reply"
    if not isinstance(data, (bytes, bytearray)) or len(data) < 9 + _SIGNATURE_BYTES:
        raise ProtocolError(f"{what}: too short to be a signed reply")
    body, signature = bytes(data[:-_SIGNATURE_BYTES]), bytes(data[-_SIGNATURE_BYTES:])
    try:
        verify_key.verify(signature, body)
    except InvalidSignature:
        raise ProtocolError(f"{what}: bad signature — not from this site's cloud, or altered") from None
    header, blobs, end = _unframe(body, _KIND_REPLY, what)
    if end != len(body):
        raise ProtocolError(f"{what}: trailing bytes")
    blocks = header.get("blocks")
    if not isinstance(blocks, list) or len(blobs) != 2 * len(blocks):
        raise ProtocolError(f"{what}: block list does not match its results")
    results = tuple(
        BlockResult(block=int(b), occupied=blobs[2 * i], ciphertext=blobs[2 * i + 1]) for i, b in enumerate(blocks)
    )
    if results_digest(results) != header.get("results_sha256"):
        raise ProtocolError(f"{what}: result hash mismatch")
    status = _field(header, "status", str, what)
    if status not in (STATUS_OK, STATUS_BUSY, STATUS_ERROR):
        raise ProtocolError(f"{what}: unknown status {status!r}")
    return Reply(
        status=status,
        site=_field(header, "site", str, what),
        device=_field(header, "device", str, what),
        request_id=_field(header, "request_id", str, what),
        nonce=_field(header, "nonce", str, what),
        gallery_version=int(_field(header, "gallery_version", int, what)),
        expires_at=float(_field(header, "expires_at", (int, float), what)),
        results=results,
        message=str(header.get("message", "")),
    )


class PendingRequests:
    """The device's memory of what it asked: a reply counts once, for its own fresh request.

    A reply is accepted only if it answers a request this device sent and still waits for, with
    the same device id and nonce, before both the request's and the reply's expiry. Accepting
    forgets the request, so a duplicated or replayed reply is refused.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self._waiting: dict[str, ProbeRequest] = {}

    def add(self, req: ProbeRequest) -> None:
        self._waiting[req.request_id] = req

    def discard(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)

    def __len__(self) -> int:
        return len(self._waiting)

    def expire(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for rid in [rid for rid, req in self._waiting.items() if req.expired(now)]:
            del self._waiting[rid]

    def accept(self, reply: Reply, now: float | None = None) -> ProbeRequest:
        """Return the request `reply` answers, or raise ProtocolError (stale, duplicate, foreign)."""
        now = time.time() if now is None else now
        req = self._waiting.get(reply.request_id)
        if req is None:
            raise ProtocolError("reply to no pending request (duplicate, replayed or too late)")
        if reply.device != self.device or reply.site != req.site:
            raise ProtocolError(f"reply addressed to {reply.site}/{reply.device}, not this device")
        if reply.nonce != req.nonce:
            raise ProtocolError("reply nonce does not match the request's")
        if req.expired(now) or now > reply.expires_at:
            del self._waiting[reply.request_id]
            raise ProtocolError("stale reply: past its request's or its own expiry")
        del self._waiting[reply.request_id]
        return req


# --- the cloud's reply-signing key ---------------------------------------------------------------


def new_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def signing_key_to_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def signing_key_from_pem(data: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ProtocolError("the reply-signing key must be an Ed25519 private key")
    return key


def public_key_to_text(key: Ed25519PublicKey) -> str:
    """The cloud's public key as given to devices at provisioning: 64 hex characters."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def public_key_from_text(text: str) -> Ed25519PublicKey:
    try:
        raw = bytes.fromhex(text.strip())
        if len(raw) != 32:
            raise ValueError(f"{len(raw)} bytes")
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise ProtocolError(f"cloud public key must be 64 hex characters (Ed25519): {exc}") from None
