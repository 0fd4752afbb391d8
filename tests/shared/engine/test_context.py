"""context.py: the one CKKS parameter set, SEAL contexts and validated SEAL (de)serialization."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal.sealapi as seal

from blindgate.shared.engine import EngineError, Gallery, Params, SiteKeys, decode_scan, encrypt_enrollment, encrypt_probe, scan
from blindgate.shared.engine.context import LEVEL_ENROLL, LEVEL_PROBE, LEVEL_REPLY, context_for, load_ciphertext
from tests.shared.engine import tamper
from tests.shared.engine.support import dlib_like


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"poly_degree": 16384}, "unsupported CKKS parameters"),
        ({"poly_degree": 4096}, "unsupported CKKS parameters"),
        ({"coeff_bits": (60, 40, 60)}, "unsupported CKKS parameters"),
        ({"scale_bits": 30}, "unsupported CKKS parameters"),
        ({"dim": 100}, "power of two"),
        ({"dim": 1}, "power of two"),
        ({"dim": 8192}, "power of two"),
    ],
)
def test_params_refuse_other_values(kwargs, message):
    with pytest.raises(EngineError, match=message):
        Params(**kwargs)


def test_params_round_trip_through_a_record():
    params = Params(dim=512)
    assert Params.from_dict(params.to_dict()) == params
    assert (params.baby, params.giant, params.slots) == (32, 16, 4096)
    assert params.rotation_steps == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    with pytest.raises(EngineError, match="malformed parameter record"):
        Params.from_dict({"dim": 128})


def test_context_is_shared_per_parameter_set():
    assert context_for(Params()) is context_for(Params())
    assert context_for(Params(dim=512)) is not context_for(Params())


def test_load_ciphertext_insists_on_level_and_header(keys: SiteKeys):
    ctx = keys.context
    probe = encrypt_probe(keys, dlib_like(np.random.default_rng(12), 1)[0])
    assert ctx.level_of(load_ciphertext(ctx, probe, LEVEL_PROBE, "probe")) == LEVEL_PROBE
    for level in (LEVEL_ENROLL, LEVEL_REPLY):
        with pytest.raises(EngineError, match=f"probe: ciphertext at level {LEVEL_PROBE}, expected level {level}"):
            load_ciphertext(ctx, probe, level, "probe")
    with pytest.raises(EngineError, match="truncated"):
        load_ciphertext(ctx, probe[:10], LEVEL_PROBE, "probe")
    with pytest.raises(EngineError, match="header says"):
        load_ciphertext(ctx, probe[:-1], LEVEL_PROBE, "probe")
    with pytest.raises(EngineError, match="not a SEAL object"):
        load_ciphertext(ctx, b"\0" * 100, LEVEL_PROBE, "probe")
    with pytest.raises(EngineError, match="expected bytes"):
        load_ciphertext(ctx, "text", LEVEL_PROBE, "probe")  # type: ignore[arg-type]


# --- hostile ciphertexts: refused before any arithmetic, on both sides ------------------------


def test_an_uncompressed_rebuild_is_accepted(keys: SiteKeys):
    """Positive control for the attacks below: the tampering serializer itself is faithful."""
    ctx = keys.context
    probe = encrypt_probe(keys, dlib_like(np.random.default_rng(13), 1)[0])
    rebuilt = tamper.rebuild(ctx, probe, LEVEL_PROBE)
    assert rebuilt != probe
    honest = load_ciphertext(ctx, probe, LEVEL_PROBE, "probe")
    assert tamper.coefficients(load_ciphertext(ctx, rebuilt, LEVEL_PROBE, "probe")) == tamper.coefficients(honest)


@pytest.mark.parametrize(
    "attack, message",
    [
        (lambda ctx, data, level: tamper.transparent(ctx, data, level), "transparent ciphertext"),
        (lambda ctx, data, level: tamper.transparent(ctx, data, level, values=[0.5] * 4096), "transparent ciphertext"),
        (tamper.nan_scale, "scale nan"),
        (lambda ctx, data, level: tamper.rebuild(ctx, data, level, scale=float("inf")), "scale inf"),
        (lambda ctx, data, level: tamper.rebuild(ctx, data, level, scale=2.0**41), "scale 2.19902e"),
        (lambda ctx, data, level: tamper.rebuild(ctx, data, level, scale=0.0), "SEAL could not load it"),  # SEAL's own check
    ],
)
@pytest.mark.parametrize("level", [LEVEL_ENROLL, LEVEL_PROBE])
def test_load_ciphertext_refuses_transparent_and_bad_scales(keys: SiteKeys, attack, message, level):
    ctx = keys.context
    x = dlib_like(np.random.default_rng(14), 1)[0]
    honest = encrypt_probe(keys, x) if level == LEVEL_PROBE else encrypt_enrollment(keys, x)
    load_ciphertext(ctx, honest, level, "ct")
    with pytest.raises(EngineError, match=message):
        load_ciphertext(ctx, attack(ctx, honest, level), level, "ct")


def test_load_ciphertext_refuses_other_parameters(keys: SiteKeys):
    ctx = keys.context
    probe = encrypt_probe(keys, dlib_like(np.random.default_rng(15), 1)[0])
    ct = tamper.load(ctx, probe, LEVEL_PROBE)
    forged = tamper.serialize(probe, [1, 2, 3, 4], ct.scale, tamper.coefficients(ct))
    with pytest.raises(EngineError):
        load_ciphertext(ctx, forged, LEVEL_PROBE, "probe")
    unntt = tamper.serialize(probe, list(ct.parms_id()), ct.scale, tamper.coefficients(ct), ntt=False)
    with pytest.raises(EngineError):
        load_ciphertext(ctx, unntt, LEVEL_PROBE, "probe")


def test_every_receiving_path_refuses_hostile_ciphertexts(keys: SiteKeys, evaluation, small):
    """Probe (cloud scan), enrollment (cloud gallery) and reply (device decode)."""
    gallery, templates, _ = small
    ctx = keys.context
    x = templates[0]
    probe = encrypt_probe(keys, x)
    replies = scan(gallery, probe)  # positive control: the honest round trip matches slot 0
    assert decode_scan(keys, x, replies, gallery.occupancy(), gallery.layouts()).distance < 0.05
    for bad in (tamper.transparent(ctx, probe, LEVEL_PROBE), tamper.nan_scale(ctx, probe, LEVEL_PROBE)):
        with pytest.raises(EngineError, match="probe"):
            scan(gallery, bad)
    enrollment = encrypt_enrollment(keys, x)
    fresh = Gallery(evaluation)
    for bad in (tamper.transparent(ctx, enrollment, LEVEL_ENROLL), tamper.nan_scale(ctx, enrollment, LEVEL_ENROLL)):
        with pytest.raises(EngineError, match="enrollment"):
            fresh.add(bad)
    assert len(fresh) == 0
    # The reply attack: a transparent result that "decrypts" to -|x|^2 everywhere = distance 0.
    norm2 = float(x @ x)
    forged = tamper.transparent(ctx, replies[0], LEVEL_REPLY, values=[-norm2] * 4096, scale=ctx.reply_scale)
    plain = seal.Plaintext()  # the attack is real: SEAL alone would decrypt it to the chosen value
    seal.Decryptor(ctx.seal, keys.secret).decrypt(tamper.load(ctx, forged, LEVEL_REPLY), plain)
    assert abs(ctx.decode(plain)[0] + norm2) < 1e-6
    for bad in (forged, tamper.nan_scale(ctx, replies[0], LEVEL_REPLY)):
        with pytest.raises(EngineError, match="result of block 0"):
            decode_scan(keys, x, [bad], gallery.occupancy(), gallery.layouts())
