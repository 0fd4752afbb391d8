"""shared/limits.py: each limit is the one its parser enforces, and honest data fits under it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from blindgate.device.labels import NONCE_BYTES, LabelCipher, LabelError
from blindgate.shared.engine import Block, EngineError, EvaluationKeys, SiteKeys, encrypt_probe, generate_site_keys
from blindgate.shared.engine.context import LEVEL_ENROLL, LEVEL_PROBE, Params, ciphertext_bytes_limit
from blindgate.shared.framing import Layout, frame
from blindgate.shared.limits import (
    MAX_BLOCK_CIPHERTEXT_BYTES,
    MAX_BUNDLE_BYTES,
    MAX_ENROLLMENT_BYTES,
    MAX_HEADER_BYTES,
    MAX_KEY_FILE_BYTES,
    MAX_LABEL_BYTES,
    MAX_PROBE_BYTES,
    max_block_bytes,
    max_evaluation_bundle_bytes,
)
from blindgate.shared.protocol import (
    ProtocolError,
    decode_probe_request,
    encode_probe_request,
    new_probe_request,
    new_signing_key,
)
from tests.shared.engine.support import legacy_site_keys

TAG_BYTES = 16
DOOR_KEY = new_signing_key()


@pytest.fixture(scope="module")
def keys() -> SiteKeys:
    return generate_site_keys()


def probe_message_of_size(size: int) -> bytes:
    """A well-formed probe request padded to exactly `size` bytes."""
    blob = b""
    for _ in range(3):  # the blob's size is written in the header: converge on its digit count
        data = encode_probe_request(new_probe_request("home", "door1", "k" * 32, blob, now=1_700_000_000.0), DOOR_KEY)
        blob = b"\0" * (len(blob) + size - len(data))
    assert len(data) == size
    return data


def test_probe_limit_is_what_decode_probe_request_enforces():
    assert len(decode_probe_request(probe_message_of_size(MAX_PROBE_BYTES)).probe) > 0
    with pytest.raises(ProtocolError, match=f"{MAX_PROBE_BYTES + 1} bytes is more than the {MAX_PROBE_BYTES} allowed"):
        decode_probe_request(probe_message_of_size(MAX_PROBE_BYTES + 1))


def test_an_honest_probe_fits_the_probe_limit(keys):
    probe = encrypt_probe(keys, np.random.default_rng(1).normal(0, 0.09, 128))
    req = new_probe_request("a" * 64, "b" * 64, keys.key_id, probe)
    assert len(encode_probe_request(req, DOOR_KEY)) < MAX_PROBE_BYTES / 2


def test_header_limit_is_what_every_parser_enforces():
    pad = "x" * MAX_HEADER_BYTES
    layout = Layout(magic=b"BGP1", name="message", limit=1 << 30)
    with pytest.raises(ProtocolError, match=f"more than the {MAX_HEADER_BYTES} allowed"):
        decode_probe_request(frame(layout, {"v": 1, "pad": pad}, [b"p"], kind=b"P") + b"\0" * 64)  # + an (unchecked) signature
    key_file = Layout(magic=b"BGK1", name="key file", limit=1 << 30, sizes="sections")
    with pytest.raises(EngineError, match=f"more than the {MAX_HEADER_BYTES} allowed"):
        EvaluationKeys.from_bytes(frame(key_file, {"pad": pad}, {}, kind=b"E"))


@pytest.mark.parametrize(
    "parse, limit", [(EvaluationKeys.from_bytes, MAX_BUNDLE_BYTES), (SiteKeys.from_bytes, MAX_KEY_FILE_BYTES)]
)
def test_bundle_limit_is_what_the_key_parsers_enforce(parse, limit):
    with pytest.raises(EngineError, match=f"{limit + 1} bytes is more than the {limit} allowed"):
        parse(b"BGK1E" + b"\0" * (limit - 4))
    with pytest.raises(EngineError, match="bad magic"):  # at the limit, the next check speaks
        parse(b"XXXXE" + b"\0" * (limit - 5))


def test_an_honest_bundle_and_device_key_file_fit_the_bundle_limit(keys):
    assert len(keys.to_bytes()) < MAX_KEY_FILE_BYTES
    bound = max_evaluation_bundle_bytes(keys.params.dim)  # computed from the parameters
    # the bound is an older bundle's (a key per power of two, ~5.6 MB of 6.5 MB for dlib's 128
    # values), which must keep loading; today's (keys for steps 1 and 16) is a third of it
    legacy = legacy_site_keys()
    assert 0.8 * bound < len(legacy.evaluation_bytes) <= bound
    assert EvaluationKeys.from_bytes(legacy.evaluation_bytes).key_id == legacy.key_id
    assert len(keys.evaluation_bytes) < 0.4 * bound


def test_block_limit_is_what_block_from_bytes_enforces(keys):
    evaluation = keys.evaluation()
    limit = max_block_bytes(evaluation.params.dim)
    with pytest.raises(EngineError, match=f"more than the {limit} allowed"):
        Block.from_bytes(evaluation, b"BGB1" + b"\0" * (limit - 3))
    header = json.dumps({"ciphertexts": 0, "key_id": keys.key_id, "occupied": "00" * 512}).encode()
    empty = b"BGB1" + len(header).to_bytes(4, "little") + header
    assert Block.from_bytes(evaluation, empty).count == 0


def test_block_limit_covers_the_largest_ciphertexts():
    params = Params()
    assert MAX_BLOCK_CIPHERTEXT_BYTES == ciphertext_bytes_limit(params, LEVEL_PROBE)
    assert max_block_bytes(128) > 129 * (4 + MAX_BLOCK_CIPHERTEXT_BYTES) + MAX_HEADER_BYTES
    assert max_block_bytes(512) > max_block_bytes(128)


def test_enrollment_limit_admits_any_valid_enrollment_ciphertext():
    assert ciphertext_bytes_limit(Params(), LEVEL_ENROLL) <= MAX_ENROLLMENT_BYTES


def test_label_limit_is_what_the_label_cipher_enforces():
    cipher = LabelCipher(b"\1" * 32, "home")
    overhead = NONCE_BYTES + TAG_BYTES
    at_limit = cipher.encrypt("x" * (MAX_LABEL_BYTES - overhead))
    assert len(at_limit) == MAX_LABEL_BYTES and cipher.decrypt(at_limit) == "x" * (MAX_LABEL_BYTES - overhead)
    with pytest.raises(LabelError, match=f"> {MAX_LABEL_BYTES}"):
        cipher.encrypt("x" * (MAX_LABEL_BYTES - overhead + 1))
