"""shared/protocol/messages.py: probe requests and signed replies, round trips and every refusal."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest

from blindgate.shared.framing import Layout, frame
from blindgate.shared.limits import MAX_PROBE_BYTES
from blindgate.shared.protocol.errors import ProtocolError
from blindgate.shared.protocol.messages import (
    VERSION,
    BlockResult,
    Mode,
    Reply,
    ReplyStatus,
    decode_probe_request,
    encode_probe_request,
    error_reply,
    new_probe_request,
    ok_reply,
    open_reply,
    probe_digest,
    results_digest,
    seal_reply,
    verify_probe_request,
)
from blindgate.shared.protocol.signing import new_signing_key

WIRE = Layout(magic=b"BGP1", name="blindgate message", limit=1 << 30)  # the same bytes, built by hand
KEY = new_signing_key()
DOOR = new_signing_key()  # a door's request-signing key
NOW = 1_700_000_000.0


def a_reply(**change) -> Reply:
    occupied = np.zeros(4096, dtype=bool)
    occupied[[0, 3]] = True
    fields = dict(
        status=ReplyStatus.OK,
        site="home",
        device="door1",
        request_id="ab" * 16,
        nonce="cd" * 16,
        gallery_version=7,
        expires_at=NOW + 10,
        results=(BlockResult.of(0, occupied, b"ct0" * 100), BlockResult.of(2, ~occupied, b"ct2")),
        probe_sha256=probe_digest(b"probe"),
        mode="identify",
    )
    return Reply(**(fields | change))


def reply_header(reply: Reply, **change) -> dict:
    header = {
        "v": VERSION,
        "status": str(reply.status),
        "site": reply.site,
        "device": reply.device,
        "request_id": reply.request_id,
        "nonce": reply.nonce,
        "gallery_version": reply.gallery_version,
        "expires_at": reply.expires_at,
        "message": reply.message,
        "blocks": [r.block for r in reply.results],
        "results_sha256": results_digest(reply.results),
        "probe_sha256": reply.probe_sha256,
        "mode": reply.mode,
        "subject": reply.subject,
    }
    return header | change


def signed(header: dict, blobs: list[bytes], kind: bytes = b"R", tail: bytes = b"") -> bytes:
    """A message the cloud's key really signed, whatever it says."""
    body = frame(WIRE, header, blobs, kind=kind) + tail
    return body + KEY.sign(body)


def blobs_of(reply: Reply) -> list[bytes]:
    return [blob for r in reply.results for blob in (r.occupied, r.ciphertext)]


# --- replies ----------------------------------------------------------------------------------


def test_sealed_reply_opens_to_the_same_reply():
    reply = a_reply(message="hi")
    opened = open_reply(seal_reply(reply, KEY), KEY.public_key())
    assert opened == reply and opened.status is ReplyStatus.OK
    assert opened.results[0].occupancy(4096).nonzero()[0].tolist() == [0, 3]


def test_hand_built_reply_matches_seal_reply():
    reply = a_reply()
    assert open_reply(signed(reply_header(reply), blobs_of(reply)), KEY.public_key()) == reply


@pytest.mark.parametrize("status", list(ReplyStatus))
def test_every_status_round_trips_with_its_old_string(status):
    reply = a_reply(status=status, results=())
    data = seal_reply(reply, KEY)
    assert f'"status":"{status.value}"'.encode() in data
    assert open_reply(data, KEY.public_key()).status == status


def test_signature_from_another_key_is_refused():
    with pytest.raises(ProtocolError, match="bad signature"):
        open_reply(seal_reply(a_reply(), new_signing_key()), KEY.public_key())


@pytest.mark.parametrize("where", [0, 4, 5, 20, -70, -1])
def test_any_altered_byte_is_refused(where):
    data = bytearray(seal_reply(a_reply(), KEY))
    data[where] ^= 0x01
    with pytest.raises(ProtocolError, match="bad signature"):
        open_reply(bytes(data), KEY.public_key())


@pytest.mark.parametrize("length", [0, 10, 72, "half", "minus_one"])
def test_truncated_reply_is_refused(length):
    data = seal_reply(a_reply(), KEY)
    cut = {"half": len(data) // 2, "minus_one": len(data) - 1}.get(length, length)
    with pytest.raises(ProtocolError, match="too short|bad signature"):
        open_reply(data[:cut], KEY.public_key())


def test_not_bytes_is_refused():
    with pytest.raises(ProtocolError, match="too short to be a signed reply"):
        open_reply("text", KEY.public_key())  # type: ignore[arg-type]


def test_trailing_bytes_even_when_signed_are_refused():
    reply = a_reply()
    with pytest.raises(ProtocolError, match="unexpected trailing bytes"):
        open_reply(signed(reply_header(reply), blobs_of(reply), tail=b"\0\0"), KEY.public_key())
    data = seal_reply(reply, KEY)
    with pytest.raises(ProtocolError, match="bad signature"):  # unsigned trailing bytes shift the signature
        open_reply(data + b"\0", KEY.public_key())


def test_result_hash_mismatch_is_refused():
    reply = a_reply()
    swapped = blobs_of(reply)
    swapped[1], swapped[3] = swapped[3], swapped[1]  # results of two blocks exchanged
    with pytest.raises(ProtocolError, match="result hash mismatch"):
        open_reply(signed(reply_header(reply), swapped), KEY.public_key())
    with pytest.raises(ProtocolError, match="result hash mismatch"):
        open_reply(signed(reply_header(reply, results_sha256="00" * 32), blobs_of(reply)), KEY.public_key())


def test_block_list_must_match_the_results():
    reply = a_reply()
    for header in (reply_header(reply, blocks=[0]), reply_header(reply, blocks="0,2"), reply_header(reply, blocks=[0, "2"])):
        with pytest.raises(ProtocolError, match="block list does not match"):
            open_reply(signed(header, blobs_of(reply)), KEY.public_key())


def test_unknown_status_is_refused():
    reply = a_reply()
    with pytest.raises(ProtocolError, match="unknown status 'maybe'"):
        open_reply(signed(reply_header(reply, status="maybe"), blobs_of(reply)), KEY.public_key())


def test_wrong_kind_is_refused():
    reply = a_reply()
    with pytest.raises(ProtocolError, match="kind b'P', expected b'R'"):
        open_reply(signed(reply_header(reply), blobs_of(reply), kind=b"P"), KEY.public_key())


@pytest.mark.parametrize(
    "change, message",
    [
        ({"v": 3}, "unsupported protocol version 3"),
        ({"v": "1"}, "unsupported protocol version '1'"),
        ({"v": 2}, "block layouts do not match its results"),  # version 2 lists the layouts
        ({"copies": [1, 1]}, "block layouts in a version 1 reply"),
        ({"site": 5}, "field 'site' missing or not str"),
        ({"gallery_version": True}, "field 'gallery_version' missing or not int"),
        ({"expires_at": "soon"}, "field 'expires_at'"),
        ({"probe_sha256": None}, "field 'probe_sha256' missing or not str"),
        ({"mode": 1}, "field 'mode' missing or not str"),
        ({"subject": 7}, "field 'subject' not str or null"),
    ],
)
def test_malformed_signed_header_is_refused(change, message):
    reply = a_reply()
    with pytest.raises(ProtocolError, match=message):
        open_reply(signed(reply_header(reply, **change), blobs_of(reply)), KEY.public_key())


def test_occupancy_of_the_wrong_size_is_refused():
    result = BlockResult(block=1, occupied=b"\xff" * 100, ciphertext=b"")
    assert result.occupancy().sum() == 800
    with pytest.raises(ProtocolError, match="occupancy of 100 bytes, expected 512"):
        result.occupancy(4096)


def a_layout_reply() -> Reply:
    """Block 0 gives each template 4 slots, block 2 one: version 2 with a "copies" list."""
    base = a_reply()
    first, second = base.results
    return a_reply(results=(BlockResult(0, first.occupied, first.ciphertext, copies=4), second))


def test_reply_with_block_layouts_round_trips_as_version_2():
    reply = a_layout_reply()
    data = seal_reply(reply, KEY)
    assert b'"v":2' in data and b'"copies":[4,1]' in data
    opened = open_reply(data, KEY.public_key())
    assert opened == reply and [r.copies for r in opened.results] == [4, 1]
    header = reply_header(reply, v=2, copies=[4, 1])
    assert open_reply(signed(header, blobs_of(reply)), KEY.public_key()) == reply


def test_one_copy_replies_stay_version_1_with_the_old_digest():
    """An older device opens them unchanged; the digest is the <IQ form without layouts."""
    reply = a_reply()
    data = seal_reply(reply, KEY)
    assert b'"v":1' in data and b"copies" not in data
    old = hashlib.sha256()
    for r in reply.results:
        old.update(struct.pack("<IQ", r.block, len(r.ciphertext)))
        old.update(hashlib.sha256(r.occupied).digest())
        old.update(hashlib.sha256(r.ciphertext).digest())
    assert results_digest(reply.results) == old.hexdigest()
    assert results_digest(a_layout_reply().results) != old.hexdigest()  # the layouts are covered


@pytest.mark.parametrize(
    "copies, message",
    [
        ([4], "block layouts do not match"),
        ("4,1", "block layouts do not match"),
        ([3, 1], "not 1, 2 or 4"),
        ([4, True], "not 1, 2 or 4"),
        ([4.0, 1], "not 1, 2 or 4"),
        ([1, 1], "not all 1"),
    ],
)
def test_malformed_block_layouts_are_refused(copies, message):
    reply = a_layout_reply()
    header = reply_header(reply, v=2, copies=copies)
    with pytest.raises(ProtocolError, match=message):
        open_reply(signed(header, blobs_of(reply)), KEY.public_key())


def test_changed_layout_breaks_the_result_hash():
    reply = a_layout_reply()
    header = reply_header(reply, v=2, copies=[2, 1])  # the digest was made over [4, 1]
    with pytest.raises(ProtocolError, match="result hash mismatch"):
        open_reply(signed(header, blobs_of(reply)), KEY.public_key())


@pytest.mark.parametrize("copies", [0, 3, 8, True, 4.0])
def test_block_result_refuses_an_unknown_layout(copies):
    with pytest.raises(ProtocolError, match="slots per template, expected 1, 2 or 4"):
        BlockResult(block=0, occupied=b"", ciphertext=b"", copies=copies)


def test_error_reply_from_a_request_or_from_fields():
    req = new_probe_request("home", "door1", "k" * 32, b"probe", now=NOW)
    busy = error_reply(req, "busy", "queue full")
    assert (busy.status, busy.request_id, busy.nonce, busy.results) == (ReplyStatus.BUSY, req.request_id, req.nonce, ())
    blind = error_reply({"site": "home", "request_id": "ef" * 16}, ReplyStatus.ERROR, "unparseable")
    assert blind.nonce == "" and blind.device == "" and blind.request_id == "ef" * 16 and blind.status == "error"
    with pytest.raises(ValueError):
        error_reply(req, "fine", "not a status")


# --- probe requests ---------------------------------------------------------------------------


def test_probe_request_round_trip():
    req = new_probe_request("home", "door1", "k" * 32, b"\x01" * 1000, ttl=5, now=NOW)
    assert req.mode is Mode.IDENTIFY and req.expires_at == NOW + 5 and not req.expired(NOW + 5) and req.expired(NOW + 5.1)
    assert req.topic == "blindgate/home/door1/probe"
    assert decode_probe_request(encode_probe_request(req, DOOR)) == req
    assert verify_probe_request(encode_probe_request(req, DOOR), DOOR.public_key()) == req
    verify = new_probe_request(
        "home", "door1", "k" * 32, b"p", mode="verify", subject="s" * 32, now=NOW, topic="x/home/door1/probe"
    )
    decoded = decode_probe_request(encode_probe_request(verify, DOOR))
    assert decoded == verify and decoded.mode is Mode.VERIFY and decoded.mode == "verify"
    assert decoded.topic == "x/home/door1/probe" and decoded.probe_sha256 == probe_digest(b"p")
    assert verify_probe_request(decoded, DOOR.public_key()) is decoded
    assert b'"mode":"verify"' in encode_probe_request(verify, DOOR)


def test_request_signature_covers_every_byte():
    data = encode_probe_request(new_probe_request("home", "door1", "k" * 32, b"\x01" * 100, now=NOW), DOOR)
    with pytest.raises(ProtocolError, match="bad signature"):
        verify_probe_request(data, new_signing_key().public_key())  # an unregistered key
    for where in (4, 30, len(data) - 80, len(data) - 1):
        altered = bytearray(data)
        altered[where] ^= 0x01
        with pytest.raises(ProtocolError):
            verify_probe_request(bytes(altered), DOOR.public_key())
    with pytest.raises(ProtocolError, match="not signed"):
        verify_probe_request(new_probe_request("home", "door1", "k", b"p"), DOOR.public_key())


def test_substituted_probe_with_the_old_signature_is_refused():
    """A relay swaps in a recorded probe, keeping header and signature: the hash or signature fails."""
    req = new_probe_request("home", "door1", "k" * 32, b"stranger", now=NOW)
    data = encode_probe_request(req, DOOR)
    header = json.loads(data[9:-SIG][: int.from_bytes(data[5:9], "little")])
    del header["blobs"]
    swapped = frame(WIRE, header, [b"resident"], kind=b"P") + data[-SIG:]
    with pytest.raises(ProtocolError, match="probe hash mismatch"):
        decode_probe_request(swapped)
    rehashed = frame(WIRE, header | {"probe_sha256": probe_digest(b"resident")}, [b"resident"], kind=b"P") + data[-SIG:]
    with pytest.raises(ProtocolError, match="bad signature"):
        verify_probe_request(rehashed, DOOR.public_key())


def test_new_probe_request_refuses_bad_names_and_modes():
    with pytest.raises(ProtocolError, match="site must be"):
        new_probe_request("a/b", "door1", "k", b"p")
    with pytest.raises(ValueError):
        new_probe_request("home", "door1", "k", b"p", mode="guess")


SIG = 64


def probe_header(**change) -> dict:
    req = new_probe_request("home", "door1", "k" * 32, b"p", now=NOW)
    header = json.loads(encode_probe_request(req, DOOR)[9 : -1 - SIG])
    del header["blobs"]
    return header | change


def signed_probe(header: dict, blobs: list[bytes], kind: bytes = b"P") -> bytes:
    body = frame(WIRE, header, blobs, kind=kind)
    return body + DOOR.sign(body)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"mode": "guess"}, "unknown mode 'guess'"),
        ({"mode": "verify"}, "verify needs a subject id"),
        ({"request_id": "AB" * 16}, "request_id must be 32 hex characters"),
        ({"nonce": "ab"}, "nonce must be 32 hex characters"),
        ({"site": "a/b"}, "probe request: site must be"),
        ({"device": ""}, "probe request: device must be"),
        ({"key_id": None}, "field 'key_id' missing"),
        ({"issued_at": False}, "field 'issued_at'"),
        ({"v": 0}, "unsupported protocol version 0"),
        ({"topic": None}, "field 'topic' missing"),
        ({"probe_sha256": "00" * 32}, "probe hash mismatch"),
    ],
)
def test_malformed_probe_request_is_refused(change, message):
    with pytest.raises(ProtocolError, match=message):
        decode_probe_request(signed_probe(probe_header(**change), [b"p"]))


def test_probe_request_framing_refusals():
    good = signed_probe(probe_header(), [b"p"])
    assert decode_probe_request(good).probe == b"p"
    unsigned = frame(WIRE, probe_header(), [b"p"], kind=b"P")
    for data, message in [
        (signed_probe(probe_header(), [b"p", b"q"]), "exactly one probe ciphertext"),
        (signed_probe(probe_header(), []), "exactly one probe ciphertext"),
        (signed_probe(probe_header(), [b"p"], kind=b"R"), "kind b'R', expected b'P'"),
        (good[:-SIG] + b"\0" + good[-SIG:], "trailing bytes"),
        (good[: -SIG - 1] + good[-SIG:], "truncated"),
        (unsigned, "truncated|bad magic|trailing"),  # the last 64 bytes are taken as a signature
        (b"garbage", "too short"),
        (b"\0" * (MAX_PROBE_BYTES + 1), f"more than the {MAX_PROBE_BYTES} allowed"),
        ("text", "payload must be bytes"),
    ]:
        with pytest.raises(ProtocolError, match=message):
            decode_probe_request(data)


def test_ok_reply_is_bound_to_the_request_it_answers():
    req = new_probe_request("home", "door1", "k" * 32, b"probe bytes", ttl=5.0, mode=Mode.VERIFY, subject="s" * 32)
    reply = ok_reply(req, 3, ())
    assert (reply.status, reply.request_id, reply.nonce, reply.gallery_version) == (ReplyStatus.OK, req.request_id, req.nonce, 3)
    assert (reply.probe_sha256, reply.mode, reply.subject) == (req.probe_sha256, "verify", req.subject)
