"""Fuzzing every parser of both sides in-process: only the module's own error may escape.

Mutated probes, replies, key files, gallery blocks, enrollment and reply ciphertexts, sealed
templates, labels and subject lists go to the function that parses them. A refusal must be that
module's BlindgateError subclass with a message, never IndexError, KeyError, struct.error,
UnicodeDecodeError, OverflowError, MemoryError, RecursionError or RuntimeError. Replies are also
re-signed with the test key after mutation, so parsing past the signature is exercised. The
examples that broke a parser before its fix are pinned as plain tests at the end.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from blindgate.device.directory import DirectoryError, SubjectDirectory
from blindgate.device.labels import LabelCipher, LabelError
from blindgate.device.requests import PendingRequests
from blindgate.device.sealing import MAGIC, SealError, TemplateSealer
from blindgate.shared.engine import (
    Block,
    EngineError,
    EvaluationKeys,
    Gallery,
    SiteKeys,
    decode_scan,
    encrypt_enrollment,
    encrypt_probe,
    generate_site_keys,
    scan_blocks,
)
from blindgate.shared.engine.keys import derive_key_id
from blindgate.shared.framing import FramingError, Layout, frame, unframe
from blindgate.shared.protocol import (
    ProtocolError,
    Reply,
    ReplyStatus,
    decode_probe_request,
    encode_probe_request,
    new_probe_request,
    new_signing_key,
    open_reply,
    seal_reply,
    verify_probe_request,
)
from blindgate.shared.protocol.messages import BlockResult, error_reply

from .fuzzing import (
    JSON_VALUES,
    Budget,
    byte_mutation,
    frame_mutation,
    fuzz_settings,
    join_frame,
    seal_mutation,
    split_frame,
)

MESSAGE_HEAD = 4 + 1 + 4  # BGP1 | kind | u32
KEY_HEAD = 4 + 1 + 4  # BGK1 | kind | u32
BLOCK_HEAD = 4 + 4  # BGB1 | u32
SIGNATURE = 64

DOOR_KEY = new_signing_key()
CLOUD_KEY = new_signing_key()


class World:
    """One site's keys and valid samples of everything a parser sees, built once per module."""

    def __init__(self) -> None:
        self.keys = generate_site_keys()
        self.evaluation = self.keys.evaluation()
        rng = np.random.default_rng(7)
        self.face = rng.normal(0, 0.09, 128)
        self.probe = encrypt_probe(self.keys, self.face)
        self.enrollment = encrypt_enrollment(self.keys, self.face)
        gallery = Gallery(self.evaluation)
        gallery.add(self.enrollment)
        self.block = gallery.blocks[0]
        self.block_bytes = self.block.to_bytes()
        self.empty_block_bytes = Block(self.evaluation).to_bytes()
        (self.reply_ct,) = scan_blocks(self.evaluation, gallery.blocks, self.probe)
        assert self.reply_ct is not None
        self.request = new_probe_request("home", "door", self.keys.key_id, self.probe, ttl=600)
        self.request_bytes = encode_probe_request(self.request, DOOR_KEY)
        result = BlockResult.of(0, self.block.occupied, self.reply_ct)
        ok = Reply(
            status=ReplyStatus.OK,
            site="home",
            device="door",
            request_id=self.request.request_id,
            nonce=self.request.nonce,
            gallery_version=1,
            expires_at=self.request.expires_at,
            results=(result,),
            probe_sha256=self.request.probe_sha256,
            mode=str(self.request.mode),
        )
        self.replies = [seal_reply(ok, CLOUD_KEY), seal_reply(error_reply(self.request, "error", "no"), CLOUD_KEY)]


@pytest.fixture(scope="module")
def world() -> World:
    return World()


def only(error: type[Exception], fn: Any, *args: Any) -> Any:
    """Call `fn`; its own `error` (with a message) is a refusal, anything else fails the test."""
    try:
        return fn(*args)
    except error as exc:
        assert str(exc), f"{error.__name__} without a reason"
        return None


def resign(data: bytes, key: Any = CLOUD_KEY) -> bytes:
    """Replace the trailing signature by a valid one over the (mutated) body."""
    body = data[:-SIGNATURE] if len(data) > SIGNATURE else data
    return body + key.sign(body)


def signed(body: bytes, key: Any = CLOUD_KEY) -> bytes:
    return body + key.sign(body)


_BUDGETS: dict[str, Budget] = {}


def over_budget(test: str, seconds: float = 5.0) -> bool:
    """True once `test` has fuzzed for `seconds`: later cases return at once (bounded on slow machines)."""
    return _BUDGETS.setdefault(test, Budget(seconds)).spent()


# --- framing and JSON level: cheap, many cases ------------------------------------------------

_TEST_LAYOUT = Layout(magic=b"TST1", name="test frame", limit=1 << 20, sizes="blobs")
_NAMED_LAYOUT = Layout(magic=b"TST2", name="named frame", limit=1 << 20, sizes="sections")
_PREFIXED_LAYOUT = Layout(magic=b"TST3", name="prefixed frame", limit=1 << 20, kinded=False, sizes="n", prefixed=True)
_FRAMES = [
    frame(_TEST_LAYOUT, {"a": 1}, [b"x" * 10, b"", b"yz"], kind=b"K"),
    frame(_NAMED_LAYOUT, {"p": [1, 2]}, {"one": b"1" * 5, "two": b"22"}, kind=b"N"),
    frame(_PREFIXED_LAYOUT, {}, [b"abc", b"", b"d" * 300]),
]


@fuzz_settings(1000)
@given(data=frame_mutation(_FRAMES[:2], 9) | frame_mutation(_FRAMES[2:], 8))
def test_unframe_refuses_mutations_with_framing_error_only(data: bytes) -> None:
    if over_budget("unframe"):
        return
    for layout in (_TEST_LAYOUT, _NAMED_LAYOUT, _PREFIXED_LAYOUT):
        parsed = only(FramingError, unframe, layout, data, "fuzz")
        if parsed is not None:
            assert isinstance(parsed.header, dict) and all(isinstance(b, bytes) for b in parsed.blobs)


@fuzz_settings(400)
@given(data=st.data())
def test_decode_and_verify_probe_request_refuse_mutations(world: World, data: st.DataObject) -> None:
    mutated = data.draw(frame_mutation([world.request_bytes], MESSAGE_HEAD))
    if data.draw(st.booleans()):
        mutated = resign(mutated, DOOR_KEY)  # the door's own key: parsing past the signature
    if over_budget("probe"):  # after every draw: hypothesis replays cases and needs the same draws
        return
    req = only(ProtocolError, decode_probe_request, mutated)
    if req is not None:
        assert isinstance(req.expires_at, float) and np.isfinite([req.issued_at, req.expires_at]).all()
        only(ProtocolError, verify_probe_request, req, DOOR_KEY.public_key())
    only(ProtocolError, verify_probe_request, mutated, DOOR_KEY.public_key())


@fuzz_settings(400)
@given(data=st.data())
def test_open_reply_and_pending_requests_refuse_mutations(world: World, data: st.DataObject) -> None:
    mutated = data.draw(frame_mutation(world.replies, MESSAGE_HEAD))
    if data.draw(st.booleans()):
        mutated = resign(mutated)
    if over_budget("reply"):
        return
    reply = only(ProtocolError, open_reply, mutated, CLOUD_KEY.public_key())
    if reply is None:
        return
    pending = PendingRequests("door")
    pending.add(world.request)
    req = only(ProtocolError, pending.accept, reply)
    if req is not None:  # accepted: it must answer exactly this request
        assert (reply.request_id, reply.nonce, reply.device) == (req.request_id, req.nonce, "door")
        assert reply.expires_at >= 0 and np.isfinite(reply.expires_at)


@fuzz_settings(60)
@given(data=st.data())
def test_key_files_refuse_header_mutations(world: World, data: st.DataObject) -> None:
    """Header edits of a bundle and a device key file (SEAL loads are slow: fewer cases)."""
    bundle = data.draw(frame_mutation([world.keys.evaluation_bytes], KEY_HEAD))
    key_file = data.draw(frame_mutation([world.keys.to_bytes()], KEY_HEAD))
    if over_budget("keys"):
        return
    only(EngineError, EvaluationKeys.from_bytes, bundle)
    only(EngineError, SiteKeys.from_bytes, key_file)


@fuzz_settings(12)
@given(section=st.sampled_from(["relin", "galois"]), edit=byte_mutation([b"\x00" * 64]), at=st.integers(0, 2**20))
def test_bundle_with_mutated_keys_and_a_matching_key_id_is_an_engine_error(
    world: World, section: str, edit: bytes, at: int
) -> None:
    """The key id is recomputed, so SEAL itself must refuse the mutated key material."""
    parsed = unframe(Layout(magic=b"BGK1", name="k", limit=1 << 26, sizes="sections"), world.keys.evaluation_bytes, "k")
    sections = parsed.sections()
    raw = bytearray(sections[section])
    at %= len(raw)
    raw[at : at + len(edit)] = edit[: len(raw) - at]
    sections[section] = bytes(raw)
    params = world.keys.params
    header = {"params": params.to_dict(), "key_id": derive_key_id(params, sections["relin"], sections["galois"])}
    only(EngineError, EvaluationKeys.from_bytes, frame(Layout(b"BGK1", "k", 1 << 26, sizes="sections"), header, sections, b"E"))


@fuzz_settings(100)
@given(data=st.data())
def test_gallery_block_refuses_mutations(world: World, data: st.DataObject) -> None:
    seeds = [world.empty_block_bytes] if data.draw(st.integers(0, 9)) else [world.block_bytes]
    mutated = data.draw(frame_mutation(seeds, BLOCK_HEAD))
    if over_budget("block"):
        return
    only(EngineError, Block.from_bytes, world.evaluation, mutated)


@fuzz_settings(150)
@given(data=st.data())
def test_ciphertext_entry_points_refuse_mutations(world: World, data: st.DataObject) -> None:
    """A mutated probe (cloud scan), enrollment (cloud gallery) and result (device decode)."""
    probe = data.draw(seal_mutation([world.probe, world.enrollment]))
    enrollment = data.draw(seal_mutation([world.enrollment, world.probe]))
    result = data.draw(seal_mutation([world.reply_ct, world.probe]))
    if over_budget("ciphertext"):
        return
    only(EngineError, scan_blocks, world.evaluation, [], probe)
    only(EngineError, Gallery(world.evaluation).load_enrollment, enrollment)
    only(EngineError, decode_scan, world.keys, world.face, [result], [world.block.occupied], [world.block.copies])


# --- device-side secrets: sealed templates, labels, the subject list ---------------------------

_TEMPLATE_KEY = AESGCM.generate_key(bit_length=256)
_LABEL_KEY = AESGCM.generate_key(bit_length=256)
_SEALER = TemplateSealer(_TEMPLATE_KEY, "home")
_LABELS = LabelCipher(_LABEL_KEY, "home")
_SEALED = [_SEALER.seal("s1", "kid", np.linspace(-1, 1, 128), "Ada"), _SEALER.seal("s1", "kid", np.zeros(2), "")]


def _authentic_seal(plain: bytes, version: int = 1) -> bytes:
    """What a sealer with the right key could write: authentic, but any plaintext at all."""
    nonce = os.urandom(12)
    ad = _SEALER._ad("s1", "kid", version)
    return struct.pack("<4sI", MAGIC, version) + nonce + AESGCM(_TEMPLATE_KEY).encrypt(nonce, plain, ad)


@fuzz_settings(600)
@given(blob=byte_mutation(_SEALED), plain=st.binary(max_size=1100))
def test_template_sealer_open_refuses_mutations_and_malformed_plaintexts(blob: bytes, plain: bytes) -> None:
    if over_budget("sealed"):
        return
    only(SealError, _SEALER.open, blob, "s1", "kid")
    opened = only(SealError, _SEALER.open, _authentic_seal(plain), "s1", "kid")
    if opened is not None:
        assert 2 <= opened.template.size <= 4096 and np.all(np.isfinite(opened.template))


@fuzz_settings(600)
@given(blob=byte_mutation([_LABELS.encrypt("Ada Lovelace"), _LABELS.encrypt("x")]), plain=st.binary(max_size=64))
def test_label_decrypt_refuses_mutations_and_non_utf8_names(blob: bytes, plain: bytes) -> None:
    if over_budget("label"):
        return
    only(LabelError, _LABELS.decrypt, blob)
    nonce = os.urandom(12)
    only(LabelError, _LABELS.decrypt, nonce + AESGCM(_LABEL_KEY).encrypt(nonce, plain, b"home"))


_LISTING = {
    "gallery_version": 3,
    "subjects": [
        {"subject": "a" * 32, "label": base64.b64encode(_LABELS.encrypt("Ada")).decode(), "block": 0, "slot": 0, "created": 1.0},
        {"subject": "b" * 32, "label": "bm90IGEgbGFiZWw=", "block": 0, "slot": 1, "created": 2.0},
    ],
}


@st.composite
def listing_mutation(draw: st.DrawFn) -> Any:
    """The subject list as JSON with one value replaced somewhere (or a whole other JSON value)."""
    if draw(st.integers(0, 5)) == 0:
        return draw(JSON_VALUES)
    listing = json.loads(json.dumps(_LISTING))
    where = draw(st.sampled_from(["top", "top", "item", "item", "items"]))
    if where == "top":
        listing[draw(st.sampled_from(["gallery_version", "subjects"]))] = draw(JSON_VALUES)
    elif where == "item":
        item = listing["subjects"][draw(st.integers(0, 1))]
        key = draw(st.sampled_from(["subject", "label", "block", "slot", "created"]))
        if draw(st.booleans()):
            item[key] = draw(JSON_VALUES)
        else:
            del item[key]
    else:
        listing["subjects"].append(draw(JSON_VALUES))
    return listing


@fuzz_settings(500)
@given(answer=listing_mutation())
def test_subject_directory_refuses_malformed_lists_and_keeps_the_last_good_one(answer: Any) -> None:
    if over_budget("directory"):
        return
    answers = [_LISTING, answer]
    directory = SubjectDirectory(lambda: answers.pop(0), _LABELS)
    assert directory.refresh() == 3
    if only(DirectoryError, directory.refresh) is None:
        assert directory.version == 3 and directory.lookup(3, 0, 0) == ("a" * 32, "Ada")


# --- pinned: the examples that broke a parser before its fix -------------------------------------


def _probe_with(world: World, field: str, raw_value: str) -> bytes:
    prefix, header, rest = split_frame(world.request_bytes[:-SIGNATURE], MESSAGE_HEAD)
    text = json.dumps(header).replace(f'"{field}": {json.dumps(header[field])}', f'"{field}": {raw_value}')
    return signed(join_frame(prefix, text, rest), DOOR_KEY)


@pytest.mark.parametrize("raw_value", ["1" + "0" * 400, "NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize("field", ["issued_at", "expires_at"])
def test_a_probe_request_with_a_non_finite_or_overflowing_time_is_a_protocol_error(world, field, raw_value):
    """Was: OverflowError (a 400-digit int) out of the MQTT callback, or a NaN expiry that never expires."""
    with pytest.raises(ProtocolError, match="finite|malformed header"):
        decode_probe_request(_probe_with(world, field, raw_value))
    assert decode_probe_request(_probe_with(world, field, "1700000000")).issued_at > 0  # positive control


def test_a_signed_reply_with_a_nan_expiry_is_refused(world):
    """Was: accepted with expires_at=nan, which `now > nan` never makes stale."""
    prefix, header, rest = split_frame(world.replies[1][:-SIGNATURE], MESSAGE_HEAD)
    text = json.dumps(header).replace(f'"expires_at": {json.dumps(header["expires_at"])}', '"expires_at": NaN')
    with pytest.raises(ProtocolError, match="malformed header"):
        open_reply(signed(join_frame(prefix, text, rest)), CLOUD_KEY.public_key())
    assert open_reply(world.replies[1], CLOUD_KEY.public_key()).status == ReplyStatus.ERROR


def test_a_deeply_nested_header_is_a_framing_error():
    """Was: RecursionError out of json.loads for `[[[[…` within the 64 KB header limit."""
    head = b"[" * 30_000 + b"]" * 30_000
    with pytest.raises(FramingError, match="nested too deeply"):
        unframe(_TEST_LAYOUT, b"TST1K" + struct.pack("<I", len(head)) + head, "fuzz")
    assert unframe(_TEST_LAYOUT, _FRAMES[0], "fuzz").header["a"] == 1


@pytest.mark.parametrize(
    "plain", [b"", b"\x01", b"\x80\x00", struct.pack("<H", 128) + b"\x00" * 8, b"\x02\x00" + b"\x00" * 16 + b"\xff"]
)
def test_an_authentic_but_malformed_sealed_template_is_a_seal_error(plain):
    """Was: struct.error, a short template, or UnicodeDecodeError from a blob that decrypts."""
    with pytest.raises(SealError, match="malformed|UTF-8"):
        _SEALER.open(_authentic_seal(plain), "s1", "kid")
    assert _SEALER.open(_SEALED[0], "s1", "kid").label == "Ada"


def test_a_label_that_decrypts_to_non_utf8_is_a_label_error():
    """Was: UnicodeDecodeError."""
    nonce = os.urandom(12)
    with pytest.raises(LabelError, match="UTF-8"):
        _LABELS.decrypt(nonce + AESGCM(_LABEL_KEY).encrypt(nonce, b"\xff\xfe", b"home"))
    assert _LABELS.decrypt(_LABELS.encrypt("Ada")) == "Ada"
