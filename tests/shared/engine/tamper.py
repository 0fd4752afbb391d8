"""Hostile ciphertexts built with the SEAL API, for the attack tests of every side.

TenSEAL's bindings cannot write a ciphertext's polynomials and save with zstd, so a hostile
ciphertext is written here in SEAL's *uncompressed* format (which SEAL loads as readily):
outer header | parms_id (4 x u64) | is_ntt_form (u8) | size, N, k (u64) | scale (f64) |
correction factor (u64) | inner header | u64 count | count x u64 coefficients.
`rebuild` of an honest ciphertext round-trips exactly (tested), so only the tampered field
differs in each attack.
"""

from __future__ import annotations

import struct

import tenseal.sealapi as seal

from blindgate.shared.engine.context import SEAL_MAGIC, Context, ciphertext_bytes_limit, from_bytes

_HEADER = struct.Struct("<HBBBBHQ")


def _header(template: bytes, total: int) -> bytes:
    _magic, size, major, minor, _compr, reserved, _ = _HEADER.unpack_from(template)
    return _HEADER.pack(SEAL_MAGIC, size, major, minor, 0, reserved, total)


def coefficients(ct: seal.Ciphertext) -> list[int]:
    array = ct.dyn_array()
    return [array.at(i) for i in range(array.size())]


def serialize(
    template: bytes,
    parms_id: list[int],
    scale: float,
    coeffs: list[int],
    size: int = 2,
    poly_degree: int = 8192,
    ntt: bool = True,
) -> bytes:
    """An uncompressed SEAL ciphertext; `template` (any real serialization) gives the version bytes."""
    k = len(coeffs) // (size * poly_degree)
    inner_body = struct.pack("<Q", len(coeffs)) + struct.pack(f"<{len(coeffs)}Q", *coeffs)
    inner = _header(template, _HEADER.size + len(inner_body)) + inner_body
    members = struct.pack("<4QB3QdQ", *parms_id, int(ntt), size, poly_degree, k, scale, 1) + inner
    return _header(template, _HEADER.size + len(members)) + members


def load(ctx: Context, data: bytes, level: int) -> seal.Ciphertext:
    """Load without the engine's semantic checks (only SEAL's), to read a real ciphertext."""
    return from_bytes(seal.Ciphertext, ctx, data, "test ciphertext", ciphertext_bytes_limit(ctx.params, level))


def rebuild(ctx: Context, data: bytes, level: int, scale: float | None = None) -> bytes:
    """The same ciphertext re-serialized uncompressed, optionally with another scale."""
    ct = load(ctx, data, level)
    return serialize(data, list(ct.parms_id()), ct.scale if scale is None else scale, coefficients(ct))


def transparent(ctx: Context, data: bytes, level: int, values: list[float] | None = None, scale: float | None = None) -> bytes:
    """A ciphertext with c1 = 0: it 'decrypts' to c0 under ANY key. With `values`, c0 encodes them
    (the attack: a chosen result), otherwise c0 is the honest ciphertext's first polynomial."""
    ct = load(ctx, data, level)
    coeffs = coefficients(ct)
    half = len(coeffs) // 2
    if values is not None:
        plain = ctx.encode(values, level, ct.scale if scale is None else scale)
        array = plain.dyn_array()
        c0 = [array.at(i) for i in range(array.size())]
        assert len(c0) == half
    else:
        c0 = coeffs[:half]
    return serialize(data, list(ct.parms_id()), ct.scale, c0 + [0] * half)


def nan_scale(ctx: Context, data: bytes, level: int) -> bytes:
    return rebuild(ctx, data, level, scale=float("nan"))
