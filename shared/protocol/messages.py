"""Probe requests and signed replies: the two messages of the wire protocol, to and from bytes.

A message is a frame (shared/framing.py) with magic `BGP1` and kind `P` (probe) or `R` (reply),
its JSON header listing the blobs, then a 64-byte Ed25519 signature over everything before it.
Probe requests are signed by the door's own key (registered with the cloud) and their header
binds the topic, request id, nonce, expiry and the probe's SHA-256, so a relay can neither
forge nor re-target one. Replies are signed with the cloud's key; the header binds the device
id, request id and nonce, the SHA-256 of the probe that was scanned (and mode and subject),
gallery version, a SHA-256 of the result ciphertexts and an expiry. Homomorphic ciphertexts are
not authenticated (anyone with the public key can encrypt a fake "distance 0"), so a device
trusts a reply only through `open_reply` and then `blindgate.device.requests.PendingRequests`.
"""

from __future__ import annotations

import enum
import hashlib
import math
import secrets
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from blindgate.shared.framing import Layout, frame, unframe
from blindgate.shared.limits import MAX_PROBE_BYTES

from .cloud_keys import ReplyVerifier
from .errors import ProtocolError
from .signing import SIGNATURE_BYTES
from .topics import check_name, probe_topic

VERSION = 1
# A reply whose blocks use more than one slot per template ("copies", see shared/engine/gallery.py)
# carries their layouts and this version, so a device that cannot add the copies up refuses it
# instead of reading partial sums as distances. Replies over 1-copy blocks stay version 1.
REPLY_LAYOUT_VERSION = 2
COPY_CHOICES = (1, 2, 4)
_KIND_PROBE = b"P"
_KIND_REPLY = b"R"
# Replies carry no size limit of their own: the signature is checked first, so only the
# cloud's own bytes are ever parsed; `open_reply` passes the body's length as the limit.
_LAYOUT = Layout(magic=b"BGP1", name="blindgate message", limit=MAX_PROBE_BYTES)
_HEX = frozenset("0123456789abcdef")


class ReplyStatus(enum.StrEnum):
    """What a reply says; only `ok` carries results."""

    OK = "ok"
    BUSY = "busy"  # the matcher queue was full: try again
    ERROR = "error"  # refused or failed; the message says why


class Mode(enum.StrEnum):
    """What a probe asks: 1:N against the site's gallery, or 1:1 against one subject."""

    IDENTIFY = "identify"
    VERIFY = "verify"


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
    mode: Mode = Mode.IDENTIFY
    subject: str | None = None  # for Mode.VERIFY
    topic: str = ""  # the MQTT topic it is published on (signed: a relay cannot re-target it)
    # what `decode_probe_request` received: the signed bytes and their signature (empty when built locally)
    signed: bytes = field(default=b"", repr=False, compare=False)
    signature: bytes = field(default=b"", repr=False, compare=False)

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) > self.expires_at

    @property
    def probe_sha256(self) -> str:
        """The hex SHA-256 of the probe ciphertext: what the signed reply must name."""
        return probe_digest(self.probe)


def probe_digest(probe: bytes) -> str:
    return hashlib.sha256(probe).hexdigest()


def new_probe_request(
    site: str,
    device: str,
    key_id: str,
    probe: bytes,
    ttl: float = 5.0,
    mode: str = Mode.IDENTIFY,
    subject: str | None = None,
    now: float | None = None,
    topic: str | None = None,
) -> ProbeRequest:
    """A request with a fresh request id and nonce, valid for `ttl` seconds.

    `topic` is where it will be published (default: the device's probe topic under prefix `blindgate`).
    """
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
        mode=Mode(mode),
        subject=subject,
        topic=topic if topic is not None else probe_topic(site, device),
    )


def encode_probe_request(req: ProbeRequest, door_key: Ed25519PrivateKey) -> bytes:
    """Serialize and sign a request with the door's key: everything before the 64-byte signature is covered."""
    header = {
        "v": VERSION,
        "site": req.site,
        "device": req.device,
        "key_id": req.key_id,
        "request_id": req.request_id,
        "nonce": req.nonce,
        "issued_at": req.issued_at,
        "expires_at": req.expires_at,
        "mode": str(req.mode),
        "subject": req.subject,
        "topic": req.topic,
        "probe_sha256": req.probe_sha256,
    }
    body = frame(_LAYOUT, header, [req.probe], kind=_KIND_PROBE)
    return body + door_key.sign(body)


def decode_probe_request(data: bytes) -> ProbeRequest:
    """Parse a probe request received by the cloud (at most MAX_PROBE_BYTES), WITHOUT trusting it.

    The signature is split off and kept; only `verify_probe_request` with the door's registered
    key makes the request trustworthy.
    """
    what = "probe request"
    if not isinstance(data, (bytes, bytearray)):
        raise ProtocolError(f"{what}: payload must be bytes")
    if len(data) > MAX_PROBE_BYTES:
        raise ProtocolError(f"{what}: {len(data)} bytes is more than the {MAX_PROBE_BYTES} allowed")
    if len(data) < _LAYOUT.head_start + SIGNATURE_BYTES:
        raise ProtocolError(f"{what}: too short to be a signed request")
    body, signature = bytes(data[:-SIGNATURE_BYTES]), bytes(data[-SIGNATURE_BYTES:])
    header, blobs = _unframe(body, _KIND_PROBE, what, MAX_PROBE_BYTES)
    if len(blobs) != 1:
        raise ProtocolError(f"{what}: expected exactly one probe ciphertext")
    if _field(header, "probe_sha256", str, what) != probe_digest(blobs[0]):
        raise ProtocolError(f"{what}: probe hash mismatch")
    mode = _mode(_field(header, "mode", str, what), what)
    subject = header.get("subject")
    if mode == Mode.VERIFY and not isinstance(subject, str):
        raise ProtocolError(f"{what}: verify needs a subject id")
    for name in ("request_id", "nonce"):
        value = _field(header, name, str, what)
        if len(value) != 32 or not set(value) <= _HEX:
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
        issued_at=_time(header, "issued_at", what),
        expires_at=_time(header, "expires_at", what),
        probe=blobs[0],
        mode=mode,
        subject=subject if mode == Mode.VERIFY else None,
        topic=_field(header, "topic", str, what),
        signed=body,
        signature=signature,
    )


def verify_probe_request(req: ProbeRequest | bytes, door_key: Ed25519PublicKey) -> ProbeRequest:
    """The request, if `door_key` signed exactly these bytes; ProtocolError otherwise."""
    if not isinstance(req, ProbeRequest):
        req = decode_probe_request(req)
    if not req.signed or len(req.signature) != SIGNATURE_BYTES:
        raise ProtocolError("probe request: not signed")
    try:
        door_key.verify(req.signature, req.signed)
    except InvalidSignature:
        raise ProtocolError("probe request: bad signature") from None
    return req


# --- replies ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockResult:
    """One block's encrypted result, which of its slots hold templates and its layout (needed to decode).

    `copies` is how many slots the block gives each template (1, 2 or 4); `occupied` marks each
    template's first slot only.
    """

    block: int
    occupied: bytes  # numpy.packbits of the block's occupancy (512 bytes for 4096 slots)
    ciphertext: bytes = field(repr=False)
    copies: int = 1

    def __post_init__(self) -> None:
        if type(self.copies) is not int or self.copies not in COPY_CHOICES:
            raise ProtocolError(f"block {self.block}: {self.copies!r} slots per template, expected 1, 2 or 4")

    @classmethod
    def of(cls, block: int, occupied: np.ndarray, ciphertext: bytes, copies: int = 1) -> BlockResult:
        """Pack a block's boolean occupancy (one bit per slot) with its result and layout."""
        packed = np.packbits(np.asarray(occupied, dtype=bool)).tobytes()
        return cls(block=block, occupied=packed, ciphertext=ciphertext, copies=int(copies))

    def occupancy(self, slots: int | None = None) -> np.ndarray:
        """The boolean occupancy; with `slots`, refuse one that does not cover exactly that many."""
        if slots is not None and len(self.occupied) * 8 != slots:
            raise ProtocolError(f"block {self.block}: occupancy of {len(self.occupied)} bytes, expected {slots // 8}")
        return np.unpackbits(np.frombuffer(self.occupied, dtype=np.uint8)).astype(bool)


@dataclass(frozen=True)
class Reply:
    """The cloud's answer to one probe request; `results` is empty unless status is ok."""

    status: ReplyStatus
    site: str
    device: str
    request_id: str
    nonce: str
    gallery_version: int
    expires_at: float
    results: tuple[BlockResult, ...] = ()
    message: str = ""
    probe_sha256: str = ""  # of the probe the cloud scanned; empty only in replies without results
    mode: str = ""  # the scanned request's Mode ("" in such replies too)
    subject: str | None = None  # for Mode.VERIFY: the subject compared with


def _has_layouts(results: Iterable[BlockResult]) -> bool:
    return any(r.copies != 1 for r in results)


def results_digest(results: Iterable[BlockResult]) -> str:
    """The SHA-256 the signed header carries, binding every block index, layout, occupancy and result.

    Without a block of more than one copy the layouts are left out: the same digest as version 1.
    """
    results = tuple(results)
    layouts = _has_layouts(results)
    digest = hashlib.sha256()
    for r in results:
        if layouts:
            digest.update(struct.pack("<IQI", r.block, len(r.ciphertext), r.copies))
        else:
            digest.update(struct.pack("<IQ", r.block, len(r.ciphertext)))
        digest.update(hashlib.sha256(r.occupied).digest())
        digest.update(hashlib.sha256(r.ciphertext).digest())
    return digest.hexdigest()


def seal_reply(reply: Reply, signing_key: Ed25519PrivateKey) -> bytes:
    """Serialize and sign a reply: everything before the 64-byte signature is covered."""
    header = {
        "v": REPLY_LAYOUT_VERSION if _has_layouts(reply.results) else VERSION,
        "status": str(reply.status),
        "site": reply.site,
        "device": reply.device,
        "request_id": reply.request_id,
        "nonce": reply.nonce,
        "gallery_version": reply.gallery_version,
        "expires_at": reply.expires_at,
        "message": reply.message,
        "blocks": [r.block for r in reply.results],
        "results_sha256": results_digest(reply.results),
        "probe_sha256": reply.probe_sha256,
        "mode": str(reply.mode),
        "subject": reply.subject,
    }
    if _has_layouts(reply.results):
        header["copies"] = [r.copies for r in reply.results]
    blobs = [blob for r in reply.results for blob in (r.occupied, r.ciphertext)]
    body = frame(_LAYOUT, header, blobs, kind=_KIND_REPLY)
    return body + signing_key.sign(body)


def ok_reply(req: ProbeRequest, gallery_version: int, results: Iterable[BlockResult], ttl: float = 10.0) -> Reply:
    """The answer to `req` with its results, bound to the probe bytes that were scanned (hash, mode, subject)."""
    return Reply(
        status=ReplyStatus.OK,
        site=req.site,
        device=req.device,
        request_id=req.request_id,
        nonce=req.nonce,
        gallery_version=gallery_version,
        expires_at=time.time() + ttl,
        results=tuple(results),
        probe_sha256=req.probe_sha256,
        mode=str(req.mode),
        subject=req.subject,
    )


def error_reply(req_or_fields: ProbeRequest | Mapping[str, Any], status: str, message: str, ttl: float = 10.0) -> Reply:
    """A reply that carries no result: busy, or an error the device logs (door stays locked)."""
    if isinstance(req_or_fields, Mapping):
        fields = req_or_fields
    else:
        fields = {name: getattr(req_or_fields, name) for name in ("site", "device", "request_id", "nonce")}
    return Reply(
        status=ReplyStatus(status),
        site=fields.get("site") or "",
        device=fields.get("device") or "",
        request_id=fields.get("request_id") or "",
        nonce=fields.get("nonce") or "",
        gallery_version=0,
        expires_at=time.time() + ttl,
        message=message,
    )


def open_reply(data: bytes, verify_key: ReplyVerifier) -> Reply:
    """Check the cloud's signature and parse a reply. Freshness is `PendingRequests`' job."""
    what = "reply"
    if not isinstance(data, (bytes, bytearray)) or len(data) < _LAYOUT.head_start + SIGNATURE_BYTES:
        raise ProtocolError(f"{what}: too short to be a signed reply")
    body, signature = bytes(data[:-SIGNATURE_BYTES]), bytes(data[-SIGNATURE_BYTES:])
    try:
        verify_key.verify(signature, body)
    except InvalidSignature:
        raise ProtocolError(f"{what}: bad signature — not from this site's cloud, or altered") from None
    header, blobs = _unframe(body, _KIND_REPLY, what, len(body), versions=(VERSION, REPLY_LAYOUT_VERSION))
    blocks = header.get("blocks")
    if not isinstance(blocks, list) or len(blobs) != 2 * len(blocks) or not all(_is_index(b) for b in blocks):
        raise ProtocolError(f"{what}: block list does not match its results")
    copies = _layouts(header, len(blocks), what)
    results = tuple(
        BlockResult(block=b, occupied=blobs[2 * i], ciphertext=blobs[2 * i + 1], copies=copies[i]) for i, b in enumerate(blocks)
    )
    if results_digest(results) != header.get("results_sha256"):
        raise ProtocolError(f"{what}: result hash mismatch")
    status = _field(header, "status", str, what)
    if status not in set(ReplyStatus):
        raise ProtocolError(f"{what}: unknown status {status!r}")
    return Reply(
        status=ReplyStatus(status),
        site=_field(header, "site", str, what),
        device=_field(header, "device", str, what),
        request_id=_field(header, "request_id", str, what),
        nonce=_field(header, "nonce", str, what),
        gallery_version=int(_field(header, "gallery_version", int, what)),
        expires_at=_time(header, "expires_at", what),
        results=results,
        message=str(header.get("message", "")),
        probe_sha256=_field(header, "probe_sha256", str, what),
        mode=_field(header, "mode", str, what),
        subject=_optional_str(header, "subject", what),
    )


# --- header checks ----------------------------------------------------------------------------


def _unframe(
    data: bytes, kind: bytes, what: str, limit: int, versions: tuple[int, ...] = (VERSION,)
) -> tuple[dict[str, Any], tuple[bytes, ...]]:
    """The framing checks, then the protocol version; every refusal is a ProtocolError."""
    if not isinstance(data, (bytes, bytearray)):
        raise ProtocolError(f"{what}: payload must be bytes")
    parsed = unframe(_LAYOUT, data, what, kind=kind, limit=limit, error=ProtocolError)
    version = parsed.header.get("v")
    if type(version) is not int or version not in versions:
        raise ProtocolError(f"{what}: unsupported protocol version {version!r}")
    return parsed.header, parsed.blobs


def _layouts(header: dict[str, Any], count: int, what: str) -> list[int]:
    """Copies per block: listed exactly when the version says so, each 1, 2 or 4, not all 1."""
    if header.get("v") != REPLY_LAYOUT_VERSION:
        if "copies" in header:
            raise ProtocolError(f"{what}: block layouts in a version {header.get('v')} reply")
        return [1] * count
    copies = header.get("copies")
    if not isinstance(copies, list) or len(copies) != count:
        raise ProtocolError(f"{what}: block layouts do not match its results")
    if not all(type(c) is int and c in COPY_CHOICES for c in copies) or all(c == 1 for c in copies):
        raise ProtocolError(f"{what}: block layouts {copies!r} are not 1, 2 or 4 slots per template (not all 1)")
    return copies


def _mode(value: str, what: str) -> Mode:
    try:
        return Mode(value)
    except ValueError:
        raise ProtocolError(f"{what}: unknown mode {value!r}") from None


def _optional_str(header: dict[str, Any], name: str, what: str) -> str | None:
    value = header.get(name)
    if value is not None and not isinstance(value, str):
        raise ProtocolError(f"{what}: field {name!r} not str or null")
    return value


def _time(header: dict[str, Any], name: str, what: str) -> float:
    """A finite unix time: a 400-digit integer overflows float, and a NaN expiry would never pass."""
    value = _field(header, name, (int, float), what)
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise ProtocolError(f"{what}: field {name!r} is not a finite time")
    return seconds


def _is_index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 32


def _field(header: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = header.get(name)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ProtocolError(f"{what}: field {name!r} missing or not {names}")
    return value
