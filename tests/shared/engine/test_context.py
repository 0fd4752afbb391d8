"""context.py: the one CKKS parameter set, SEAL contexts and validated SEAL (de)serialization."""

from __future__ import annotations

import numpy as np
import pytest

from blindgate.shared.engine import EngineError, Params, SiteKeys, encrypt_probe
from blindgate.shared.engine.context import LEVEL_ENROLL, LEVEL_PROBE, LEVEL_REPLY, context_for, load_ciphertext
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
