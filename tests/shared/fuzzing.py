"""Hypothesis strategies shared by the fuzz tests: mutated frames, hostile JSON values, a time budget.

A mutation is a short list of edits applied to one valid seed: bit flips, truncation, extension,
splicing a piece of another seed, and (for framed data) replacing one JSON header field with a
hostile value (wrong type, huge or negative number, NaN, nested objects). Every fuzz test runs
derandomized (the same cases in CI as here), without an example database, within a time budget.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Sequence
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

_U32 = struct.Struct("<I")


def fuzz_settings(examples: int) -> settings:
    """Derandomized, no database, no per-example deadline (SEAL loads vary): the budget bounds the time."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


class Budget:
    """Counts cases and stops a fuzz loop once `seconds` have passed (CI machines differ in speed)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline: float | None = None  # starts with the first case
        self.cases = 0

    def spent(self) -> bool:
        if self.deadline is None:
            self.deadline = time.monotonic() + self.seconds
        self.cases += 1
        return time.monotonic() > self.deadline


HOSTILE_NUMBERS = [-1, 0, 2**31, 2**32, 2**63, -(2**63), 10**40, 10**400, 1e308, -1e-308, 0.5]
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(HOSTILE_NUMBERS),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    _SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12
)


def _raw_json(value: Any) -> str:
    """JSON text as a hostile sender writes it: NaN and Infinity included, deep nesting on request."""
    return json.dumps(value, allow_nan=True)


@st.composite
def byte_mutation(draw: st.DrawFn, seeds: Sequence[bytes]) -> bytes:
    """One seed with 1 to 4 byte-level edits."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "extend", "splice", "set"]))
        if op == "flip" and data:
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate" and data:
            del data[draw(st.integers(0, len(data) - 1)) :]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=64))
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            start = draw(st.integers(0, len(other)))
            piece = other[start : start + draw(st.integers(0, 4096))]
            at = draw(st.integers(0, len(data)))
            data[at:at] = piece
        elif op == "set" and len(data) >= 4:
            pos = draw(st.integers(0, len(data) - 4))
            data[pos : pos + 4] = _U32.pack(draw(st.sampled_from([0, 1, 2**31, 2**32 - 1, len(data)])))
    return bytes(data)


def split_frame(data: bytes, head_start: int) -> tuple[bytes, dict[str, Any], bytes]:
    """(prefix before the header length, header, everything after the header) of a valid frame."""
    (length,) = _U32.unpack_from(data, head_start - 4)
    header = json.loads(data[head_start : head_start + length])
    return data[: head_start - 4], header, data[head_start + length :]


def join_frame(prefix: bytes, header_text: str, rest: bytes) -> bytes:
    raw = header_text.encode()
    return prefix + _U32.pack(len(raw)) + raw + rest


@st.composite
def header_mutation(draw: st.DrawFn, seeds: Sequence[bytes], head_start: int) -> bytes:
    """One framed seed whose JSON header has a field replaced, removed, or the header made hostile."""
    prefix, header, rest = split_frame(draw(st.sampled_from(seeds)), head_start)
    op = draw(st.sampled_from(["replace", "replace", "replace", "remove", "add", "whole", "deep"]))
    if op == "replace" and header:
        header[draw(st.sampled_from(sorted(header)))] = draw(JSON_VALUES)
    elif op == "remove" and header:
        del header[draw(st.sampled_from(sorted(header)))]
    elif op == "add":
        header[draw(st.text(max_size=8))] = draw(JSON_VALUES)
    elif op == "whole":
        return join_frame(prefix, _raw_json(draw(JSON_VALUES)), rest)
    elif op == "deep":
        depth = draw(st.integers(100, 30_000))
        return join_frame(prefix, '{"v":' + "[" * depth + "]" * depth + "}", rest)
    return join_frame(prefix, _raw_json(header), rest)


def frame_mutation(seeds: Sequence[bytes], head_start: int) -> st.SearchStrategy[bytes]:
    return st.one_of(byte_mutation(seeds), header_mutation(seeds, head_start))


@st.composite
def seal_mutation(draw: st.DrawFn, seeds: Sequence[bytes]) -> bytes:
    """A mutated SEAL object whose 16-byte header still states its size, so SEAL itself parses it."""
    data = bytearray(draw(byte_mutation(seeds)))
    if len(data) >= 16 and draw(st.integers(0, 3)):
        data[8:16] = struct.pack("<Q", len(data))
        if draw(st.booleans()):
            data[6] = draw(st.sampled_from([0, 1, 2, 3, 255]))  # compression mode: none, zlib, zstd, unknown
    return bytes(data)
