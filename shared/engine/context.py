"""CKKS parameters, SEAL objects and their byte (de)serialization.

Everything else in the engine stands on this module. It knows nothing of keys' owners, of
galleries or of the network: only how a CKKS context is built, which level each kind of
ciphertext lives at, and how SEAL objects become bytes and back with validation (SEAL 4.1.1,
inside TenSEAL, trusts serialized input more than later releases, so sizes, parameters and
levels are checked here before anything received is used).
"""

from __future__ import annotations

import functools
import math
import os
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import tenseal.sealapi as seal

from blindgate.shared.errors import BlindgateError


class EngineError(BlindgateError, ValueError):
    """Bad key material, ciphertext or embedding given to the engine; the message says what to do."""


# Levels in the modulus chain [60, 40, 40 | 60]: index 2 is the top data level.
LEVEL_ENROLL = 2  # enrollment ciphertexts: the cloud masks them, which uses one level
LEVEL_PROBE = 1  # probes and gallery diagonals: their product is rescaled once
LEVEL_REPLY = 0  # scan and verify results: the smallest ciphertexts on the wire

SEAL_MAGIC = 0xA15E


@dataclass(frozen=True)
class Params:
    """The CKKS parameter set (N = 8192, 128-bit security) and the embedding dimension."""

    dim: int = 128
    poly_degree: int = 8192
    coeff_bits: tuple[int, ...] = (60, 40, 40, 60)
    scale_bits: int = 40

    def __post_init__(self) -> None:
        if self.poly_degree != 8192 or self.coeff_bits != (60, 40, 40, 60) or self.scale_bits != 40:
            raise EngineError(
                "unsupported CKKS parameters: blindgate uses N=8192, coeff modulus "
                f"[60, 40, 40, 60], scale 2^40; got N={self.poly_degree}, "
                f"{list(self.coeff_bits)}, 2^{self.scale_bits}"
            )
        if self.dim < 2 or self.dim > self.slots or self.dim & (self.dim - 1):
            raise EngineError(
                f"embedding dimension must be a power of two between 2 and {self.slots}, "
                f"got {self.dim} (128 for dlib, 512 for larger face models)"
            )

    @property
    def slots(self) -> int:
        return self.poly_degree // 2

    @property
    def scale(self) -> float:
        return float(2**self.scale_bits)

    @property
    def baby(self) -> int:
        """Baby steps b: the query is rotated b times per scan, once for every block."""
        return 1 << ((self.dim.bit_length() - 1 + 1) // 2)

    @property
    def giant(self) -> int:
        """Giant steps G = dim / b: each block pays G rotations of partial sums."""
        return self.dim // self.baby

    @property
    def galois_steps(self) -> tuple[int, ...]:
        """The rotations a new bundle holds keys for: 1 (baby steps) and b (giant steps).

        Every rotation the engine does is one of these or a chain of them (verify's and
        enrollment's sum over `dim` slots: b - 1 steps of 1, then G - 1 steps of b).
        """
        return (1,) if self.giant == 1 else (1, self.baby)

    @property
    def rotation_steps(self) -> tuple[int, ...]:
        """Powers of two below dim: the keys of older bundles, with which that sum takes log2(dim) steps."""
        return tuple(1 << k for k in range(self.dim.bit_length() - 1))

    def galois_elements(self, steps: tuple[int, ...] | None = None) -> list[int]:
        """SEAL's Galois elements for `steps` (default `galois_steps`, what a new bundle holds)."""
        chosen = self.galois_steps if steps is None else steps
        return [pow(3, step, 2 * self.poly_degree) for step in chosen]

    def accepted_galois_sets(self) -> tuple[frozenset[int], ...]:
        """The exact Galois element sets a bundle may hold: today's, or an older bundle's superset."""
        return (frozenset(self.galois_elements()), frozenset(self.galois_elements(self.rotation_steps)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "poly_degree": self.poly_degree,
            "coeff_bits": list(self.coeff_bits),
            "scale_bits": self.scale_bits,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Params:
        try:
            return cls(
                dim=int(data["dim"]),
                poly_degree=int(data["poly_degree"]),
                coeff_bits=tuple(int(b) for b in data["coeff_bits"]),
                scale_bits=int(data["scale_bits"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, EngineError):
                raise
            raise EngineError(f"malformed parameter record {data!r}: {exc}") from None


class Context:
    """One SEAL context with its encoder and evaluator; built once per parameter set."""

    def __init__(self, params: Params) -> None:
        self.params = params
        parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(params.poly_degree)
        parms.set_coeff_modulus(seal.CoeffModulus.Create(params.poly_degree, list(params.coeff_bits)))
        self.seal = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
        if not self.seal.parameters_set():
            raise EngineError(f"SEAL rejected the parameters: {self.seal.parameters_error_message()}")
        self.encoder = seal.CKKSEncoder(self.seal)
        self.evaluator = seal.Evaluator(self.seal)
        # parms_id and the prime that the next rescale divides by, per level index.
        self._parms: dict[int, list[int]] = {}
        self._last_prime: dict[int, float] = {}
        data = self.seal.first_context_data()
        while data is not None:
            index = data.chain_index()
            self._parms[index] = data.parms_id()
            self._last_prime[index] = float(data.parms().coeff_modulus()[-1].value())
            data = data.next_context_data()
        if sorted(self._parms) != [LEVEL_REPLY, LEVEL_PROBE, LEVEL_ENROLL]:
            raise EngineError(f"unexpected modulus chain {sorted(self._parms)}")

    def parms_id(self, level: int) -> list[int]:
        return self._parms[level]

    def prime(self, level: int) -> float:
        """The prime a rescale at this level divides by: encoding masks at this scale keeps scales exact."""
        return self._last_prime[level]

    def level_of(self, ct: seal.Ciphertext) -> int:
        for level, pid in self._parms.items():
            if list(ct.parms_id()) == list(pid):
                return level
        raise EngineError("ciphertext is not at any level of this parameter set")

    def encode(self, values: list[float], level: int, scale: float) -> seal.Plaintext:
        plain = seal.Plaintext()
        self.encoder.encode(values, self.parms_id(level), scale, plain)
        return plain

    def decode(self, plain: seal.Plaintext) -> list[float]:
        return self.encoder.decode_double(plain)

    @property
    def reply_scale(self) -> float:
        """Scale of scan and verify results: 2^40 * 2^40 rescaled once by the level-1 prime."""
        return self.params.scale * self.params.scale / self.prime(LEVEL_PROBE)


@functools.lru_cache(maxsize=4)
def context_for(params: Params) -> Context:
    """Contexts are costly to build and immutable: share one per parameter set per process."""
    return Context(params)


# --- bytes <-> SEAL objects ---------------------------------------------------------------
# TenSEAL's SEAL bindings save and load through file paths only; a RAM-backed temp dir keeps
# that cheap.

_TMP_DIR = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class SealObject(Protocol):
    """What TenSEAL's SEAL bindings offer for (de)serialization: file paths only."""

    def save(self, path: str) -> None: ...

    def load(self, context: Any, path: str) -> None: ...


def to_bytes(obj: Any) -> bytes:
    """Serialize a SEAL object (or a seeded `Serializable`) to bytes."""
    fd, path = tempfile.mkstemp(prefix="blindgate-", dir=_TMP_DIR)
    os.close(fd)
    try:
        obj.save(path)
        with open(path, "rb") as fh:
            return fh.read()
    finally:
        os.unlink(path)


T = TypeVar("T", bound=SealObject)


def _check_seal_header(data: bytes, what: str, max_bytes: int) -> None:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise EngineError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) < 16:
        raise EngineError(f"{what}: truncated ({len(data)} bytes, a SEAL object has a 16-byte header)")
    if len(data) > max_bytes:
        raise EngineError(f"{what}: {len(data)} bytes is more than the {max_bytes} allowed")
    magic, _header_size, _major, _minor, _compr, _reserved, size = struct.unpack_from("<HBBBBHQ", data)
    if magic != SEAL_MAGIC:
        raise EngineError(f"{what}: not a SEAL object (bad magic) — wrong or corrupted data")
    if size != len(data):
        raise EngineError(f"{what}: header says {size} bytes but {len(data)} were given (truncated or padded)")


def from_bytes(factory: Callable[[], T], ctx: Context, data: bytes, what: str, max_bytes: int) -> T:
    """Load a SEAL object from bytes after checking its header; SEAL checks `is_valid_for`."""
    _check_seal_header(data, what, max_bytes)
    obj = factory()
    fd, path = tempfile.mkstemp(prefix="blindgate-", dir=_TMP_DIR)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        obj.load(ctx.seal, path)
    except Exception as exc:  # SEAL raises ValueError/RuntimeError with terse texts
        raise EngineError(f"{what}: SEAL could not load it ({exc}) — truncated, corrupted or made for other keys") from None
    finally:
        os.unlink(path)
    if not seal.is_valid_for(obj, ctx.seal):
        raise EngineError(f"{what}: not valid for these encryption parameters")
    return obj


def ciphertext_bytes_limit(params: Params, level: int, size: int = 2) -> int:
    """Upper bound of a serialized ciphertext: uncompressed data plus headers."""
    primes = level + 1
    return size * primes * params.poly_degree * 8 + 4096


def load_ciphertext(ctx: Context, data: bytes, level: int, what: str, scale: float | None = None) -> seal.Ciphertext:
    """Load a received ciphertext and insist on its parameters, level, size, scale and opacity.

    All of it is checked before any arithmetic: a transparent ciphertext (c1 = 0) "decrypts" to
    its sender's chosen c0 under any key, and a NaN scale passes `abs(nan - x) > tol`.
    """
    ct = from_bytes(seal.Ciphertext, ctx, data, what, ciphertext_bytes_limit(ctx.params, level))
    if ct.size() != 2:
        raise EngineError(f"{what}: expected a 2-component ciphertext, got {ct.size()}")
    if not ct.is_ntt_form():
        raise EngineError(f"{what}: a CKKS ciphertext must be in NTT form")
    actual = ctx.level_of(ct)  # refuses another parameter set's parms_id
    if actual != level:
        raise EngineError(f"{what}: ciphertext at level {actual}, expected level {level}")
    expected = ctx.params.scale if scale is None else scale
    if not math.isfinite(ct.scale) or not abs(ct.scale - expected) <= 1e-9 * expected:
        raise EngineError(f"{what}: ciphertext scale {ct.scale:.6g}, expected {expected:.6g}")
    if ct.is_transparent():
        raise EngineError(f"{what}: transparent ciphertext (its second component is zero): it is not encrypted")
    return ct
