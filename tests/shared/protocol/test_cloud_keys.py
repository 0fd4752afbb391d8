"""cloud_keys.py: fingerprints, key rings and endorsements of the cloud's next reply-signing key."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidSignature

from blindgate.shared.protocol import ProtocolError, new_signing_key, public_key_to_text
from blindgate.shared.protocol.cloud_keys import Endorsement, KeyRing, check_endorsement, endorse, fingerprint, same_key


def _text(key) -> str:
    return public_key_to_text(key.public_key())


def test_fingerprint_is_short_stable_and_case_blind():
    key = _text(new_signing_key())
    assert fingerprint(key) == fingerprint(key.upper())
    assert fingerprint(key) != fingerprint(_text(new_signing_key()))
    assert fingerprint(key).count(":") == 8


def test_key_ring_accepts_any_member_and_nothing_else():
    a, b, c = new_signing_key(), new_signing_key(), new_signing_key()
    ring = KeyRing([_text(a), _text(b), _text(a)])
    assert len(ring.texts) == 2 and _text(b) in ring and _text(c) not in ring
    ring.verify(a.sign(b"m"), b"m")
    ring.verify(b.sign(b"m"), b"m")
    with pytest.raises(InvalidSignature):
        ring.verify(c.sign(b"m"), b"m")
    with pytest.raises(InvalidSignature):
        ring.verify(a.sign(b"m"), b"other")
    with pytest.raises(ProtocolError):
        KeyRing([])


def test_an_endorsement_by_a_trusted_key_checks():
    old, new = new_signing_key(), new_signing_key()
    endorsement = Endorsement.from_dict(endorse(old, new.public_key()).to_dict())
    assert check_endorsement(endorsement, KeyRing([_text(old)])) == _text(new)
    assert same_key(endorsement.endorsed, _text(new).upper())


def test_forged_endorsements_are_refused():
    old, new, attacker = new_signing_key(), new_signing_key(), new_signing_key()
    trusted = KeyRing([_text(old)])
    honest = endorse(old, new.public_key())
    forged = Endorsement(_text(old), _text(new), endorse(attacker, new.public_key()).signature)  # wrong signer
    with pytest.raises(ProtocolError, match="bad signature"):
        check_endorsement(forged, trusted)
    swapped = Endorsement(honest.endorser, _text(attacker), honest.signature)  # signature for another key
    with pytest.raises(ProtocolError, match="bad signature"):
        check_endorsement(swapped, trusted)
    with pytest.raises(ProtocolError, match="does not trust"):
        check_endorsement(endorse(attacker, new.public_key()), trusted)
    with pytest.raises(ProtocolError, match="bad signature"):
        check_endorsement(Endorsement(honest.endorser, honest.endorsed, "zz"), trusted)
    with pytest.raises(ProtocolError):
        Endorsement.from_dict({"from": _text(old), "to": 5, "signature": "00"})
    with pytest.raises(ProtocolError):
        endorse(old, old.public_key())
    assert check_endorsement(honest, trusted) == _text(new)  # positive control
