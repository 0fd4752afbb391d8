"""shared/framing.py: the one container, round trips in every layout and every refusal path."""

from __future__ import annotations

import struct

import pytest

from blindgate.shared.errors import BlindgateError
from blindgate.shared.framing import Frame, FramingError, Layout, encode_header, frame, unframe
from blindgate.shared.limits import MAX_HEADER_BYTES

LISTED = Layout(magic=b"TST1", name="test frame", limit=10_000)
NAMED = Layout(magic=b"TST2", name="test file", limit=10_000, sizes="sections")
PREFIXED = Layout(magic=b"TST3", name="test block", limit=10_000, kinded=False, sizes="count", prefixed=True)


class CallerError(BlindgateError, ValueError):
    pass


def raw(layout: Layout, header: bytes, body: bytes = b"", kind: bytes = b"K") -> bytes:
    """A frame built by hand, so tests can say things `frame` never would."""
    return layout.magic + (kind if layout.kinded else b"") + struct.pack("<I", len(header)) + header + body


def test_listed_round_trip():
    data = frame(LISTED, {"a": 1}, [b"xy", b"", b"zzz"], kind=b"K")
    parsed = unframe(LISTED, data, "thing", kind=b"K")
    assert parsed == Frame(kind=b"K", header={"a": 1, "blobs": [2, 0, 3]}, blobs=(b"xy", b"", b"zzz"))
    assert data == frame(LISTED, {"a": 1}, [b"xy", b"", b"zzz"], kind=b"K")  # deterministic


def test_named_sections_round_trip():
    data = frame(NAMED, {"b": [1, 2]}, {"secret": b"s" * 5, "evaluation": b"e"}, kind=b"S")
    parsed = unframe(NAMED, data, "key file")
    assert parsed.kind == b"S" and parsed.names == ("secret", "evaluation")
    assert parsed.sections() == {"secret": b"s" * 5, "evaluation": b"e"}


def test_prefixed_round_trip():
    data = frame(PREFIXED, {"key_id": "k"}, [b"one", b"", b"three"])
    assert data[4:8] == struct.pack("<I", len(encode_header({"count": 3, "key_id": "k"})))
    parsed = unframe(PREFIXED, bytearray(data), "block")
    assert parsed.kind == b"" and parsed.blobs == (b"one", b"", b"three") and parsed.header["count"] == 3


def test_frame_refuses_a_kind_the_layout_does_not_have():
    with pytest.raises(FramingError, match="kind byte is required"):
        frame(LISTED, {}, [])
    with pytest.raises(FramingError, match="not used"):
        frame(PREFIXED, {}, [], kind=b"K")
    with pytest.raises(FramingError, match="named sections"):
        frame(PREFIXED, {}, {"a": b""})


GOOD = frame(LISTED, {"v": 1}, [b"abc", b"de"], kind=b"K")


@pytest.mark.parametrize(
    "data, message",
    [
        ("text", "expected bytes, got str"),
        (b"\0" * 10_001, "10001 bytes is more than the 10000 allowed"),
        (b"", "bad magic or too short"),
        (b"TST1K\x00", "bad magic or too short"),
        (b"XXXX" + GOOD[4:], "bad magic"),
        (b"TST1Q" + GOOD[5:], r"wrong test frame kind b'Q', expected b'K'"),
        (raw(LISTED, b'{"blobs": []}')[:-3], "truncated header"),
        (raw(LISTED, b"not json"), "malformed header"),
        (raw(LISTED, b"[1, 2]"), r"malformed header \(a JSON list, not an object\)"),
        (raw(LISTED, b"{}"), r"'blobs' must be a list"),
        (raw(LISTED, b'{"blobs": 3}'), r"'blobs' must be a list"),
        (raw(LISTED, b'{"blobs": [-1]}', b"x"), "sizes must be non-negative"),
        (raw(LISTED, b'{"blobs": [true]}', b"x"), "bad 'blobs' entry"),
        (raw(LISTED, b'{"blobs": ["1"]}', b"x"), "bad 'blobs' entry"),
        (raw(LISTED, b'{"blobs": [1, ["a", 1]]}', b"xx"), "mixed named and unnamed"),
        (raw(LISTED, b'{"blobs": [["a", 1], 1]}', b"xx"), "bad 'blobs' entry"),
        (GOOD[:-1], r"truncated — blob #1 needs 2 bytes, 1 left"),
        (raw(LISTED, b'{"blobs": [4294967295]}', b"x"), "truncated"),
        (GOOD + b"\0", "1 unexpected trailing bytes"),
    ],
)
def test_unframe_refusals(data, message):
    with pytest.raises(FramingError, match=message):
        unframe(LISTED, data, "thing", kind=b"K")


def test_header_length_bound():
    big = encode_header({"blobs": [], "pad": "x" * MAX_HEADER_BYTES})
    data = raw(LISTED, big)
    with pytest.raises(FramingError, match=f"header of {len(big)} bytes is more than the {MAX_HEADER_BYTES} allowed"):
        unframe(LISTED, data, "thing", limit=len(data))
    just = encode_header({"blobs": [], "pad": "x" * (MAX_HEADER_BYTES - 22)})
    assert len(just) <= MAX_HEADER_BYTES
    unframe(LISTED, raw(LISTED, just), "thing", limit=len(just) + 9)


@pytest.mark.parametrize(
    "data, message",
    [
        (raw(PREFIXED, b'{"count": -1}'), "non-negative count"),
        (raw(PREFIXED, b'{"count": "2"}'), "non-negative count"),
        (raw(PREFIXED, b'{"count": 1000000000}', b"\0" * 8), "lists 1000000000 blobs, only 8 bytes follow"),
        (raw(PREFIXED, b'{"count": 2}', struct.pack("<I", 1) + b"a" + b"\0\0\0"), "blob #1 has no length"),
        (raw(PREFIXED, b'{"count": 1}', struct.pack("<I", 5) + b"abc"), "blob #0 needs 5 bytes, 3 left"),
        (raw(PREFIXED, b'{"count": 1}', struct.pack("<I", 1) + b"ab"), "1 unexpected trailing bytes"),
    ],
)
def test_prefixed_refusals(data, message):
    with pytest.raises(FramingError, match=message):
        unframe(PREFIXED, data, "block")


def test_named_truncation_names_the_section():
    data = frame(NAMED, {}, {"relin": b"r" * 10, "galois": b"g" * 10}, kind=b"E")
    with pytest.raises(FramingError, match=r"truncated — blob 'galois' needs 10 bytes, 5 left"):
        unframe(NAMED, data[:-5], "bundle")


def test_caller_error_class_and_tighter_limit():
    with pytest.raises(CallerError, match="bad magic"):
        unframe(LISTED, b"nonsense!", "thing", error=CallerError)
    with pytest.raises(CallerError, match=f"more than the {len(GOOD) - 1} allowed"):
        unframe(LISTED, GOOD, "thing", limit=len(GOOD) - 1, error=CallerError)
    assert unframe(LISTED, GOOD, "thing", limit=len(GOOD)).blobs == (b"abc", b"de")


def test_framing_error_is_a_blindgate_value_error():
    assert issubclass(FramingError, BlindgateError) and issubclass(FramingError, ValueError)
