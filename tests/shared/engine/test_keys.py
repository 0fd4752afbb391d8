"""keys.py: site keys, the evaluation bundle and everything it must refuse.

The key file layout (BGK1 | kind | u32 header length | JSON header | sections) is rebuilt here
byte by byte, so that tampered files reach the checks behind the container's own.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import tenseal.sealapi as seal

from blindgate.shared.engine import (
    EngineError,
    EvaluationKeys,
    Params,
    SiteKeys,
    decode_verify,
    encrypt_enrollment,
    encrypt_probe,
    verify,
)
from blindgate.shared.engine.context import context_for, to_bytes
from blindgate.shared.engine.keys import derive_key_id
from blindgate.shared.limits import max_evaluation_bundle_bytes
from tests.shared.engine.support import MAX_BUNDLE_BYTES, TOL, dlib_like


def split_key_file(data: bytes) -> tuple[bytes, dict, dict[str, bytes]]:
    assert data[:4] == b"BGK1"
    kind = data[4:5]
    (head_len,) = struct.unpack_from("<I", data, 5)
    header = json.loads(data[9 : 9 + head_len])
    sections, offset = {}, 9 + head_len
    for name, size in header["sections"]:
        sections[name] = data[offset : offset + size]
        offset += size
    assert offset == len(data)
    return kind, header, sections


def join_key_file(kind: bytes, header: dict, sections: dict[str, bytes]) -> bytes:
    header = dict(header, sections=[[name, len(blob)] for name, blob in sections.items()])
    head = json.dumps(header, sort_keys=True).encode()
    return b"BGK1" + kind + struct.pack("<I", len(head)) + head + b"".join(sections.values())


def rebuilt_bundle(bundle: bytes, params: dict | None = None, /, **sections: bytes) -> bytes:
    """A bundle with other params/sections whose key id is recomputed: only deeper checks can catch it."""
    kind, header, parts = split_key_file(bundle)
    parts = dict(parts, **sections)
    header = dict(header, params=params or header["params"])
    try:
        header["key_id"] = derive_key_id(Params.from_dict(header["params"]), parts["relin"], parts["galois"])
    except EngineError:
        pass
    return join_key_file(kind, header, parts)


def test_site_keys_generate_compact_evaluation_bundle(keys, evaluation):
    assert keys.params == Params(dim=128)
    assert len(keys.key_id) == 32 and int(keys.key_id, 16) >= 0
    assert len(keys.evaluation_bytes) < MAX_BUNDLE_BYTES, f"bundle is {len(keys.evaluation_bytes)} bytes"
    kind, header, sections = split_key_file(keys.evaluation_bytes)
    assert kind == b"E" and set(sections) == {"relin", "galois"}  # no secret key inside
    assert header["key_id"] == keys.key_id
    assert evaluation.key_id == keys.key_id and evaluation.params == keys.params
    assert evaluation.to_bytes() == keys.evaluation_bytes
    # exactly the rotations the engine uses: 1 (baby steps) and 16 (giant steps), ~2.1 MB in all
    assert evaluation.galois.size() == 2
    for step in (1, 16):
        assert evaluation.galois.has_key(pow(3, step, 2 * 8192)), step
    assert evaluation.has_steps((1, 16)) and not evaluation.has_steps((2,))


def test_two_sites_get_different_key_ids(keys, other_keys):
    assert keys.key_id != other_keys.key_id


def test_site_keys_round_trip_keeps_key_id_and_decrypts(keys, evaluation):
    data = keys.to_bytes()
    restored = SiteKeys.from_bytes(data)
    assert restored.key_id == keys.key_id and restored.params == keys.params
    assert restored.evaluation_bytes == keys.evaluation_bytes
    assert restored.to_bytes() == data
    rng = np.random.default_rng(1)
    x, y = dlib_like(rng, 2)
    expected = float(np.linalg.norm(x - y))
    # encrypted by the original, decrypted by the restored keys, and the other way round
    reply = verify(evaluation, encrypt_probe(keys, x), encrypt_enrollment(restored, y))
    assert decode_verify(restored, reply) == pytest.approx(expected, abs=TOL)
    reply = verify(restored.evaluation(), encrypt_probe(restored, x), encrypt_enrollment(keys, y))
    assert decode_verify(keys, reply) == pytest.approx(expected, abs=TOL)


def test_device_key_file_is_refused_as_evaluation_bundle(keys):
    with pytest.raises(EngineError, match="SECRET"):
        EvaluationKeys.from_bytes(keys.to_bytes())
    # an "evaluation" bundle that smuggles the secret key in a section is refused the same way
    _, _, device_sections = split_key_file(keys.to_bytes())
    kind, header, sections = split_key_file(keys.evaluation_bytes)
    smuggled = join_key_file(kind, header, dict(sections, secret=device_sections["secret"]))
    with pytest.raises(EngineError, match="SECRET"):
        EvaluationKeys.from_bytes(smuggled)


def test_evaluation_bundle_is_refused_as_device_key_file(keys):
    with pytest.raises(EngineError, match="no secret key"):
        SiteKeys.from_bytes(keys.evaluation_bytes)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"poly_degree": 16384}, "unsupported CKKS parameters"),
        ({"coeff_bits": [60, 40, 40, 40, 60]}, "unsupported CKKS parameters"),
        ({"scale_bits": 50}, "unsupported CKKS parameters"),
        ({"dim": 96}, "power of two"),
        ({"dim": "many"}, "malformed parameter record"),
        # a dimension the Galois keys do not cover, with the key id recomputed to match
        ({"dim": 512}, "Galois keys for elements .* are missing"),
    ],
)
def test_bundle_with_wrong_parameters_is_refused(keys, change, message):
    _, header, _ = split_key_file(keys.evaluation_bytes)
    tampered = rebuilt_bundle(keys.evaluation_bytes, dict(header["params"], **change))
    with pytest.raises(EngineError, match=message):
        EvaluationKeys.from_bytes(tampered)


def test_bundle_params_changed_without_key_id_is_a_key_id_mismatch(keys):
    kind, header, sections = split_key_file(keys.evaluation_bytes)
    header["params"]["dim"] = 256
    with pytest.raises(EngineError, match="key id .* does not match its keys"):
        EvaluationKeys.from_bytes(join_key_file(kind, header, sections))


@pytest.mark.parametrize("cut", ["in_header", "after_header", "in_relin", "in_galois", "half", "last_byte"])
def test_truncated_bundle_is_refused(keys, cut):
    data = keys.evaluation_bytes
    (head_len,) = struct.unpack_from("<I", data, 5)
    _, _, sections = split_key_file(data)
    start = 9 + head_len
    at = {
        "in_header": 9 + head_len // 2,
        "after_header": start,
        "in_relin": start + len(sections["relin"]) // 2,
        "in_galois": start + len(sections["relin"]) + 1000,
        "half": len(data) // 2,
        "last_byte": len(data) - 1,
    }[cut]
    with pytest.raises(EngineError, match="truncated"):
        EvaluationKeys.from_bytes(data[:at])


@pytest.mark.parametrize("length", [0, 3, 8])
def test_bundle_shorter_than_its_fixed_header_is_refused(keys, length):
    with pytest.raises(EngineError, match="bad magic|truncated"):
        EvaluationKeys.from_bytes(keys.evaluation_bytes[:length])


def test_truncated_device_key_file_is_refused(keys):
    data = keys.to_bytes()
    for at in (len(data) // 3, len(data) - 1):
        with pytest.raises(EngineError, match="truncated"):
            SiteKeys.from_bytes(data[:at])


def test_truncated_seal_key_inside_a_consistent_bundle_is_refused(keys):
    _, _, sections = split_key_file(keys.evaluation_bytes)
    tampered = rebuilt_bundle(keys.evaluation_bytes, relin=sections["relin"][:-100])
    with pytest.raises(EngineError, match="relinearization key: .*truncated"):
        EvaluationKeys.from_bytes(tampered)


def test_key_id_mismatch_is_refused(keys, other_keys):
    kind, header, sections = split_key_file(keys.evaluation_bytes)
    with pytest.raises(EngineError, match="key id .* does not match"):
        EvaluationKeys.from_bytes(join_key_file(kind, dict(header, key_id=other_keys.key_id), sections))
    for name in ("relin", "galois"):
        blob = bytearray(sections[name])
        blob[len(blob) // 2] ^= 0x01
        with pytest.raises(EngineError, match="key id .* does not match"):
            EvaluationKeys.from_bytes(join_key_file(kind, header, dict(sections, **{name: bytes(blob)})))
    with pytest.raises(EngineError, match="key id .* is not the expected"):
        EvaluationKeys.from_bytes(keys.evaluation_bytes, expected_key_id=other_keys.key_id)
    # a device key file whose bundle was swapped for another site's
    _, device_header, device_sections = split_key_file(keys.to_bytes())
    mixed = join_key_file(b"S", device_header, dict(device_sections, evaluation=other_keys.evaluation_bytes))
    with pytest.raises(EngineError, match="key id"):
        SiteKeys.from_bytes(mixed)


def test_garbage_is_refused_as_keys(keys):
    rng = np.random.default_rng(5)
    noise = rng.bytes(100_000)
    for data, message in [
        (noise, "bad magic"),
        (b"BGK1E" + noise, "truncated header"),
        (b"BGK1E" + struct.pack("<I", 9) + b"not json!" + noise, "malformed header"),
        (b"BGK1E" + struct.pack("<I", 2) + b"[]", "malformed header"),
        (b"BGK1X" + struct.pack("<I", 16) + b'{"sections": []}', "unknown key file kind"),
        (keys.evaluation_bytes + b"\0" * 10, "trailing bytes"),
    ]:
        with pytest.raises(EngineError, match=message):
            EvaluationKeys.from_bytes(data)
        with pytest.raises(EngineError):
            SiteKeys.from_bytes(data)
    with pytest.raises(EngineError, match="expected bytes"):
        EvaluationKeys.from_bytes("BGK1E")  # type: ignore[arg-type]
    # well-formed container, key id recomputed, but the SEAL objects are noise
    for name, message in [("relin", "not a SEAL object"), ("galois", "not a SEAL object")]:
        with pytest.raises(EngineError, match=message):
            EvaluationKeys.from_bytes(rebuilt_bundle(keys.evaluation_bytes, **{name: noise}))
    # swapped keys: a Galois key set where the relinearization key belongs
    _, _, sections = split_key_file(keys.evaluation_bytes)
    swapped = rebuilt_bundle(keys.evaluation_bytes, relin=sections["galois"], galois=sections["relin"])
    with pytest.raises(EngineError, match="SEAL could not load|not valid|missing"):
        EvaluationKeys.from_bytes(swapped)


# --- strict bundles (issue 11): the key id covers only the keys, so nothing else may ride along ---


def test_an_honest_bundle_is_accepted_and_already_canonical(keys):
    parsed = EvaluationKeys.from_bytes(keys.evaluation_bytes)  # positive control
    assert parsed.to_bytes() == keys.evaluation_bytes
    assert len(keys.evaluation_bytes) <= max_evaluation_bundle_bytes(keys.params.dim)


def test_a_non_canonical_header_is_re_serialized(keys):
    kind, header, sections = split_key_file(keys.evaluation_bytes)
    spaced = join_key_file(kind, header, sections)  # json.dumps' default ", " and ": " separators
    assert spaced != keys.evaluation_bytes
    assert EvaluationKeys.from_bytes(spaced).to_bytes() == keys.evaluation_bytes


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda k, h, s: join_key_file(k, h, dict(s, pad=b"\0" * 100_000)), "not exactly"),
        (lambda k, h, s: join_key_file(k, h, {"galois": s["galois"], "relin": s["relin"]}), "not exactly"),
        (lambda k, h, s: join_key_file(k, dict(h, pad="x" * 1000), s), "unknown header fields"),
        (lambda k, h, s: join_key_file(k, dict(h, params=dict(h["params"], pad=1)), s), "canonical form"),
        (lambda k, h, s: join_key_file(k, h, s) + b"\0" * 1000, "trailing bytes"),
    ],
    ids=["extra_section", "reordered_sections", "extra_header_field", "padded_params", "trailing_bytes"],
)
def test_padded_or_extended_bundle_is_refused(keys, tamper, message):
    kind, header, sections = split_key_file(keys.evaluation_bytes)
    with pytest.raises(EngineError, match=message):
        EvaluationKeys.from_bytes(tamper(kind, header, sections))


def test_duplicate_section_is_refused(keys):
    kind, header, sections = split_key_file(keys.evaluation_bytes)
    listing = [["relin", len(sections["relin"])], ["relin", len(sections["relin"])], ["galois", len(sections["galois"])]]
    head = json.dumps(dict(header, sections=listing), sort_keys=True).encode()
    data = b"BGK1" + kind + struct.pack("<I", len(head)) + head + sections["relin"] * 2 + sections["galois"]
    with pytest.raises(EngineError, match="listed twice"):
        EvaluationKeys.from_bytes(data)


def test_bundle_with_more_galois_keys_than_needed_is_refused(keys):
    """Valid extra keys under a correct key id: each one is ~700 KB the cloud would hold for nothing."""
    params = keys.params
    ctx = context_for(params)
    keygen = seal.KeyGenerator(ctx.seal)
    extra = [*params.galois_elements(), pow(3, 3, 2 * params.poly_degree)]
    relin, galois = to_bytes(keygen.create_relin_keys()), to_bytes(keygen.create_galois_keys(extra))
    bundle = join_key_file(
        b"E", {"params": params.to_dict(), "key_id": derive_key_id(params, relin, galois)}, {"relin": relin, "galois": galois}
    )
    with pytest.raises(EngineError, match="Galois keys, expected exactly"):
        EvaluationKeys.from_bytes(bundle)


@pytest.mark.parametrize(
    "steps",
    [
        (1, 2, 4, 8, 16, 32, 64, 3),  # an old bundle plus one key
        (1, 2, 4, 8, 16, 32, 3),  # as many keys as an old bundle, one of them useless
        (1, 3),  # as many keys as a new bundle, without the giant step
    ],
)
def test_bundle_holding_neither_exact_key_set_is_refused(keys, steps):
    params = keys.params
    keygen = seal.KeyGenerator(context_for(params).seal)
    relin, galois = to_bytes(keygen.create_relin_keys()), to_bytes(keygen.create_galois_keys(params.galois_elements(steps)))
    bundle = join_key_file(
        b"E", {"params": params.to_dict(), "key_id": derive_key_id(params, relin, galois)}, {"relin": relin, "galois": galois}
    )
    with pytest.raises(EngineError, match="Galois keys, expected exactly 2 or 7|Galois keys for elements .* are missing"):
        EvaluationKeys.from_bytes(bundle)


def test_bundle_over_its_dimension_bound_is_refused(keys):
    """Padding inside the 10 MB route limit but past what a 128-value bundle can be."""
    kind, header, sections = split_key_file(keys.evaluation_bytes)
    room = max_evaluation_bundle_bytes(keys.params.dim) - len(keys.evaluation_bytes) + 1
    padded = sections["galois"] + b"\0" * room
    padded = padded[:8] + struct.pack("<Q", len(padded)) + padded[16:]  # SEAL's own size field agrees
    header = dict(header, key_id=derive_key_id(keys.params, sections["relin"], padded))
    with pytest.raises(EngineError, match="an evaluation bundle for 128 values can be"):
        EvaluationKeys.from_bytes(join_key_file(kind, header, dict(sections, galois=padded)))
