"""Site keys: the device's secret half and the cloud's evaluation bundle.

A site's door devices share one CKKS secret key; the cloud gets only what the scan needs (a
relinearization key and Galois keys for rotations by 1 and by the giant step b, in SEAL's
compact seeded form; older bundles hold one per power of two and keep working), under a
key id derived from those bytes so that every probe and reply can name the keys it belongs to.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import tenseal.sealapi as seal

from blindgate.shared.framing import Layout, frame, unframe
from blindgate.shared.limits import MAX_BUNDLE_BYTES, MAX_KEY_FILE_BYTES, max_evaluation_bundle_bytes

from .context import Context, EngineError, Params, context_for, from_bytes, to_bytes

_KIND_SECRET = b"S"
_KIND_EVALUATION = b"E"
# `BGK1 | kind | u32 header length | JSON header | sections`, the header naming each section.
_LAYOUT = Layout(magic=b"BGK1", name="blindgate key file", limit=MAX_KEY_FILE_BYTES, sizes="sections")
# An evaluation bundle holds exactly these sections, in this order, and this header: nothing else.
_EVALUATION_SECTIONS = ("relin", "galois")
_EVALUATION_HEADER = {"params", "key_id", _LAYOUT.sizes}


def _pack(kind: bytes, header: dict, sections: dict[str, bytes]) -> bytes:
    return frame(_LAYOUT, header, sections, kind=kind)


def _unpack(data: bytes, what: str, limit: int | None = None) -> tuple[bytes, dict, dict[str, bytes]]:
    parsed = unframe(_LAYOUT, data, what, limit=limit, error=EngineError)
    if len(set(parsed.names)) != len(parsed.names):
        raise EngineError(f"{what}: a section is listed twice — malformed or tampered")
    return parsed.kind, parsed.header, parsed.sections()


def _check_evaluation_shape(header: dict, sections: dict[str, bytes], params: Params, size: int, what: str) -> None:
    """Exactly the expected header fields and sections, within the size an honest bundle can have.

    The key id covers only the keys, so anything else (an extra section, header field or padding)
    would be stored and cached verbatim: a registered site could make the cloud hold megabytes of junk.
    """
    if tuple(sections) != _EVALUATION_SECTIONS:
        raise EngineError(f"{what}: sections {list(sections)} are not exactly {list(_EVALUATION_SECTIONS)}")
    extra = set(header) - _EVALUATION_HEADER
    if extra:
        raise EngineError(f"{what}: unknown header fields {sorted(extra)}")
    if header.get("params") != params.to_dict():
        raise EngineError(f"{what}: parameter record {header.get('params')!r} is not in canonical form")
    limit = max_evaluation_bundle_bytes(params.dim)
    if size > limit:
        raise EngineError(f"{what}: {size} bytes is more than the {limit} an evaluation bundle for {params.dim} values can be")


def derive_key_id(params: Params, relin: bytes, galois: bytes) -> str:
    """A stable name for a key set: a hash of the public material the cloud holds."""
    digest = hashlib.sha256()
    digest.update(json.dumps(params.to_dict(), sort_keys=True).encode())
    digest.update(hashlib.sha256(relin).digest())
    digest.update(hashlib.sha256(galois).digest())
    return digest.hexdigest()[:32]


def _pack_evaluation(params: Params, key_id: str, relin: bytes, galois: bytes) -> bytes:
    return _pack(_KIND_EVALUATION, {"params": params.to_dict(), "key_id": key_id}, {"relin": relin, "galois": galois})


@dataclass
class EvaluationKeys:
    """The cloud's half: enough to scan and enroll, nothing that decrypts."""

    params: Params
    key_id: str
    relin: seal.RelinKeys
    galois: seal.GaloisKeys
    raw: bytes = field(repr=False)

    @property
    def context(self) -> Context:
        return context_for(self.params)

    def has_steps(self, steps: tuple[int, ...]) -> bool:
        """Whether the bundle holds a Galois key for each rotation step (older bundles hold more)."""
        return all(self.galois.has_key(e) for e in self.params.galois_elements(steps))

    def to_bytes(self) -> bytes:
        """The canonical serialization (header re-encoded, sections in order): what the cloud stores."""
        return self.raw

    @classmethod
    def from_bytes(cls, data: bytes, expected_key_id: str | None = None) -> EvaluationKeys:
        """Load and validate a bundle received from a device."""
        what = "evaluation bundle"
        kind, header, sections = _unpack(data, what, MAX_BUNDLE_BYTES)
        if kind == _KIND_SECRET or "secret" in sections:
            raise EngineError(
                f"{what}: this holds a SECRET key — it is the device's key file, never send it to the cloud; "
                "send only its evaluation half (`SiteKeys.evaluation_bytes`, what `blindgate-device init` registers)"
            )
        if kind != _KIND_EVALUATION:
            raise EngineError(f"{what}: unknown key file kind {kind!r}")
        params = Params.from_dict(header.get("params", {}))
        missing = {"relin", "galois"} - set(sections)
        if missing:
            raise EngineError(f"{what}: missing {sorted(missing)} keys")
        _check_evaluation_shape(header, sections, params, len(data), what)
        key_id = derive_key_id(params, sections["relin"], sections["galois"])
        if header.get("key_id") != key_id:
            raise EngineError(
                f"{what}: key id {header.get('key_id')!r} does not match its keys ({key_id}) — corrupted or tampered"
            )
        if expected_key_id is not None and expected_key_id != key_id:
            raise EngineError(f"{what}: key id {key_id} is not the expected {expected_key_id}")
        ctx = context_for(params)
        relin = from_bytes(seal.RelinKeys, ctx, sections["relin"], f"{what} relinearization key", MAX_BUNDLE_BYTES)
        galois = from_bytes(seal.GaloisKeys, ctx, sections["galois"], f"{what} Galois keys", MAX_BUNDLE_BYTES)
        absent = [e for e in params.galois_elements() if not galois.has_key(e)]
        if absent:
            raise EngineError(f"{what}: Galois keys for elements {absent} are missing")
        # Exactly today's set, or exactly an older bundle's (every power of two): no extra key.
        sizes = sorted({len(accepted) for accepted in params.accepted_galois_sets()})
        held = [s for s in params.accepted_galois_sets() if galois.size() == len(s) and all(galois.has_key(e) for e in s)]
        if not held:
            raise EngineError(f"{what}: {galois.size()} Galois keys, expected exactly {' or '.join(map(str, sizes))}")
        if relin.size() != 1:
            raise EngineError(f"{what}: {relin.size()} relinearization keys, expected exactly 1")
        raw = _pack_evaluation(params, key_id, sections["relin"], sections["galois"])
        return cls(params=params, key_id=key_id, relin=relin, galois=galois, raw=raw)


@dataclass
class SiteKeys:
    """The device's half: the secret key (never leaves the device) plus the bundle it registered."""

    params: Params
    key_id: str
    secret: seal.SecretKey
    evaluation_bytes: bytes = field(repr=False)

    @property
    def context(self) -> Context:
        return context_for(self.params)

    def evaluation(self) -> EvaluationKeys:
        return EvaluationKeys.from_bytes(self.evaluation_bytes, expected_key_id=self.key_id)

    def to_bytes(self) -> bytes:
        """The device's key file: keep it private (mode 0600), never upload it."""
        header = {"params": self.params.to_dict(), "key_id": self.key_id}
        return _pack(_KIND_SECRET, header, {"secret": to_bytes(self.secret), "evaluation": self.evaluation_bytes})

    @classmethod
    def from_bytes(cls, data: bytes) -> SiteKeys:
        what = "device key file"
        kind, header, sections = _unpack(data, what)
        if kind != _KIND_SECRET or "secret" not in sections:
            raise EngineError(f"{what}: holds no secret key — this is an evaluation bundle, not the device's keys")
        params = Params.from_dict(header.get("params", {}))
        ctx = context_for(params)
        secret = from_bytes(seal.SecretKey, ctx, sections["secret"], f"{what} secret key", MAX_KEY_FILE_BYTES)
        evaluation = EvaluationKeys.from_bytes(sections.get("evaluation", b""), expected_key_id=header.get("key_id"))
        if evaluation.params != params:
            raise EngineError(f"{what}: evaluation bundle parameters differ from the secret key's")
        return cls(params=params, key_id=evaluation.key_id, secret=secret, evaluation_bytes=sections["evaluation"])


def generate_site_keys(dim: int = 128) -> SiteKeys:
    """Create a site's CKKS keys (N=8192, 128-bit security) for embeddings of `dim` values."""
    params = Params(dim=dim)
    ctx = context_for(params)
    keygen = seal.KeyGenerator(ctx.seal)
    relin = to_bytes(keygen.create_relin_keys())  # seeded: half the size
    galois = to_bytes(keygen.create_galois_keys(params.galois_elements()))
    key_id = derive_key_id(params, relin, galois)
    bundle = _pack_evaluation(params, key_id, relin, galois)
    return SiteKeys(params=params, key_id=key_id, secret=keygen.secret_key(), evaluation_bytes=bundle)
