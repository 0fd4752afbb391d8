"""The one binary container behind every blindgate file and message, and its checks.

A frame is `magic (4 bytes) | kind (1 byte, optional) | u32 header length | JSON header | blobs`.
The header lists the blobs: either their sizes in one field (`[n, ...]`, or `[[name, n], ...]`
for named sections), or — for the `prefixed` layout — their count, each blob then carrying its
own u32 length. Key files, gallery blocks and wire messages differ only in that `Layout`.

`unframe` does every structural check once: type, total size limit, magic, kind, header length
bound, the header is a JSON object (finite numbers only, nesting within the parser's stack), blob
sizes are non-negative and within the data, and no trailing bytes. What the header *means* is the
caller's job. Pure bytes, no I/O; errors are raised as the caller's error class so the engine says
EngineError and the protocol ProtocolError.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from blindgate.shared.errors import BlindgateError
from blindgate.shared.limits import MAX_HEADER_BYTES

_U32 = struct.Struct("<I")


class FramingError(BlindgateError, ValueError):
    """Bytes that are not a well-formed frame of the expected layout."""


@dataclass(frozen=True)
class Layout:
    """How one format uses the container: its magic, whether a kind byte follows, how blobs are listed."""

    magic: bytes
    name: str  # what the data is not, when the magic is wrong: "blindgate key file"
    limit: int  # the most bytes ever parsed (a caller may pass a tighter or computed one)
    kinded: bool = True
    sizes: str = "blobs"  # the header field listing the blobs (sizes, [name, size] pairs, or a count)
    prefixed: bool = False  # each blob is preceded by its u32 length; header[sizes] is their count

    @property
    def head_start(self) -> int:
        return len(self.magic) + (1 if self.kinded else 0) + _U32.size


@dataclass(frozen=True)
class Frame:
    """A parsed frame: its kind byte (b"" when the layout has none), header and blobs in order."""

    kind: bytes
    header: dict[str, Any]
    blobs: tuple[bytes, ...] = field(repr=False)
    names: tuple[str, ...] = ()  # set when the blobs are named sections

    def sections(self) -> dict[str, bytes]:
        """Named blobs as a mapping (later duplicates win, as JSON objects do)."""
        return dict(zip(self.names, self.blobs))


def encode_header(header: Mapping[str, Any]) -> bytes:
    """Canonical JSON: sorted keys, no spaces, so a frame re-encodes to the same bytes."""
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def frame(layout: Layout, header: Mapping[str, Any], blobs: Sequence[bytes] | Mapping[str, bytes], kind: bytes = b"") -> bytes:
    """Serialize `header` and `blobs` (a mapping makes named sections) in `layout`."""
    if layout.kinded != (len(kind) == 1):
        raise FramingError(f"{layout.name}: a kind byte is {'required' if layout.kinded else 'not used'}")
    if isinstance(blobs, Mapping) and layout.prefixed:
        raise FramingError(f"{layout.name}: named sections need a listed layout")
    parts = list(blobs.values()) if isinstance(blobs, Mapping) else list(blobs)
    listing: Any
    if layout.prefixed:
        listing = len(parts)
    elif isinstance(blobs, Mapping):
        listing = [[name, len(blob)] for name, blob in blobs.items()]
    else:
        listing = [len(blob) for blob in parts]
    head = encode_header(dict(header, **{layout.sizes: listing}))
    if layout.prefixed:
        body = b"".join(_U32.pack(len(blob)) + blob for blob in parts)
    else:
        body = b"".join(parts)
    return layout.magic + kind + _U32.pack(len(head)) + head + body


def unframe(
    layout: Layout,
    data: bytes | bytearray | memoryview,
    what: str,
    kind: bytes | None = None,
    limit: int | None = None,
    error: type[BlindgateError] = FramingError,
) -> Frame:
    """Parse and check a frame; `kind` (if given) must match. Every refusal raises `error`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise error(f"{what}: expected bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    size, limit = len(view), layout.limit if limit is None else limit
    if size > limit:
        raise error(f"{what}: {size} bytes is more than the {limit} allowed")
    start = layout.head_start
    if size < start or view[: len(layout.magic)] != layout.magic:
        raise error(f"{what}: not a {layout.name} (bad magic or too short) — wrong data or corrupted")
    found = bytes(view[len(layout.magic) : len(layout.magic) + 1]) if layout.kinded else b""
    if kind is not None and found != kind:
        raise error(f"{what}: wrong {layout.name} kind {found!r}, expected {kind!r}")
    (head_len,) = _U32.unpack_from(view, start - _U32.size)
    if start + head_len > size:
        raise error(
            f"{what}: truncated header — it claims {head_len} bytes, {size - start} follow (malformed header or cut-off data)"
        )
    if head_len > MAX_HEADER_BYTES:
        raise error(f"{what}: header of {head_len} bytes is more than the {MAX_HEADER_BYTES} allowed")
    header = _parse_header(view[start : start + head_len], what, error)
    names, sizes = _listing(layout, header, size - start - head_len, what, error)
    blobs, offset = [], start + head_len
    for index, expected in enumerate(sizes):
        label = repr(names[index]) if names else f"#{index}"
        if expected is None:  # prefixed: read the length first
            if offset + _U32.size > size:
                raise error(f"{what}: truncated — blob {label} has no length, {size - offset} bytes left")
            (expected,) = _U32.unpack_from(view, offset)
            offset += _U32.size
        if offset + expected > size:
            raise error(f"{what}: truncated — blob {label} needs {expected} bytes, {size - offset} left")
        blobs.append(bytes(view[offset : offset + expected]))
        offset += expected
    if offset != size:
        raise error(f"{what}: {size - offset} unexpected trailing bytes")
    return Frame(kind=found, header=header, blobs=tuple(blobs), names=tuple(names))


def _finite(text: str) -> float:
    """JSON numbers only: `1e999` would parse as inf, and NaN compares false with every expiry."""
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:20]!r} is not finite")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _parse_header(raw: memoryview, what: str, error: type[BlindgateError]) -> dict[str, Any]:
    try:
        header = json.loads(bytes(raw), parse_float=_finite, parse_constant=_no_constant)
    except ValueError as exc:  # includes UnicodeDecodeError and the int-digits limit
        raise error(f"{what}: malformed header ({exc})") from None
    except RecursionError:  # `[[[[...` nested deeper than the parser's stack
        raise error(f"{what}: malformed header (nested too deeply)") from None
    if not isinstance(header, dict):
        raise error(f"{what}: malformed header (a JSON {type(header).__name__}, not an object)")
    return header


def _listing(
    layout: Layout, header: dict[str, Any], room: int, what: str, error: type[BlindgateError]
) -> tuple[list[str], list[int | None]]:
    """The blobs the header announces: names (if any) and sizes (None: read from the prefix).

    `room` is the number of bytes after the header, which bounds a prefixed count.
    """
    listing = header.get(layout.sizes)
    if layout.prefixed:
        if not _is_count(listing):
            raise error(f"{what}: malformed header ({layout.sizes!r} must be a non-negative count)")
        if listing * _U32.size > room:
            raise error(f"{what}: truncated — the header lists {listing} blobs, only {room} bytes follow it")
        unknown: list[int | None] = [None] * listing
        return [], unknown
    if not isinstance(listing, list):
        raise error(f"{what}: malformed header ({layout.sizes!r} must be a list)")
    names: list[str] = []
    sizes: list[int | None] = []
    for entry in listing:
        if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and _is_count(entry[1]):
            names.append(entry[0])
            sizes.append(entry[1])
        elif _is_count(entry) and not names:
            sizes.append(entry)
        else:
            raise error(f"{what}: malformed header (bad {layout.sizes!r} entry {entry!r}: sizes must be non-negative)")
    if names and len(names) != len(sizes):
        raise error(f"{what}: malformed header (mixed named and unnamed {layout.sizes!r})")
    return names, sizes


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
