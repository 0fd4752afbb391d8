"""Rotating the cloud's reply-signing key without re-provisioning or re-enrolling anyone.

1. `blindgate-cloud rotate-signing-key`: a next key (`reply-signing-key.next.pem`, 0600) and an
   endorsement of it signed by the current key (`reply-signing-key.endorsement.json`).
   `GET /v1/cloud-key` serves it at once; devices run `blindgate-device refresh-cloud-key`
   and from then on accept replies signed by either key.
2. `blindgate-cloud activate-signing-key`: the next key replaces the current one (the old
   private key is deleted); restart `serve` to sign with it. The endorsement stays published
   so devices that refresh late can still follow, and retire the old key when they do.

Where: the cloud's secret place (cloud/store_settings.py). For a PostgreSQL store that is the
database, shared by every replica: the next key and endorsement are served by all of them at
once, and after activation every replica signs with the new key once restarted. For SQLite it
is the files in `state_dir` named below. Every function takes either (a `Path` means its files).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blindgate.shared.errors import BlindgateError
from blindgate.shared.protocol import new_signing_key, public_key_to_text, signing_key_from_pem, signing_key_to_pem
from blindgate.shared.protocol.cloud_keys import Endorsement, endorse

from .store_settings import ENDORSEMENT, FILE_NAMES, NEXT_SIGNING_KEY, SIGNING_KEY, FileSecrets, SecretPlace

NEXT_KEY_NAME = FILE_NAMES[NEXT_SIGNING_KEY]
ENDORSEMENT_NAME = FILE_NAMES[ENDORSEMENT]


class RotationError(BlindgateError, RuntimeError):
    """A rotation step that cannot be done now; the message says which step comes first."""


def _place(where: SecretPlace | Path) -> SecretPlace:
    return FileSecrets(where) if isinstance(where, Path) else where


def read_endorsement(where: SecretPlace | Path) -> Endorsement | None:
    """The published endorsement (of the pending or the last activated key), if any."""
    data = _place(where).get(ENDORSEMENT)
    return None if data is None else Endorsement.from_dict(json.loads(data))


def rotate(where: SecretPlace | Path, current: Ed25519PrivateKey) -> Endorsement:
    """Create the next key and the current key's endorsement of it; a pending rotation is returned as is."""
    place = _place(where)
    # get_or_create: operators rotating at once (on two replicas) end up with one next key.
    nxt = signing_key_from_pem(place.get_or_create(NEXT_SIGNING_KEY, lambda: signing_key_to_pem(new_signing_key())))
    pending = read_endorsement(place)
    if pending is not None and (pending.endorser, pending.endorsed) == (
        public_key_to_text(current.public_key()),
        public_key_to_text(nxt.public_key()),
    ):
        return pending
    endorsement = endorse(current, nxt.public_key())  # Ed25519 is deterministic: racing rotations write the same
    place.put(ENDORSEMENT, json.dumps(endorsement.to_dict(), indent=2).encode())
    return endorsement


def activate(where: SecretPlace | Path) -> str:
    """Make the pending next key the signing key; returns its public key (hex)."""
    place = _place(where)
    pending = place.get(NEXT_SIGNING_KEY)
    if pending is None:
        raise RotationError("no rotation is pending: run `blindgate-cloud rotate-signing-key` first")
    nxt = signing_key_from_pem(pending)
    endorsement = read_endorsement(place)
    if endorsement is None or endorsement.endorsed != public_key_to_text(nxt.public_key()):
        raise RotationError("the pending key has no matching endorsement: remove it and rotate again")
    place.move(NEXT_SIGNING_KEY, SIGNING_KEY)
    return endorsement.endorsed


def published(where: SecretPlace | Path, current: Ed25519PrivateKey) -> dict[str, Any]:
    """What `GET /v1/cloud-key` answers: the current key, and the endorsement that leads to or from it."""
    key = public_key_to_text(current.public_key())
    answer: dict[str, Any] = {"cloud_public_key": key}
    endorsement = read_endorsement(where)
    if endorsement is not None and key in (endorsement.endorser, endorsement.endorsed):
        answer["endorsement"] = endorsement.to_dict()
    return answer
