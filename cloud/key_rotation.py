"""Rotating the cloud's reply-signing key without re-provisioning or re-enrolling anyone.

1. `blindgate-cloud rotate-signing-key`: a next key (`reply-signing-key.next.pem`, 0600) and an
   endorsement of it signed by the current key (`reply-signing-key.endorsement.json`).
   `GET /v1/cloud-key` serves it at once; devices run `blindgate-device refresh-cloud-key`
   and from then on accept replies signed by either key.
2. `blindgate-cloud activate-signing-key`: the next key replaces the current one (the old
   private key is deleted); restart `serve` to sign with it. The endorsement stays published
   so devices that refresh late can still follow, and retire the old key when they do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blindgate.shared.errors import BlindgateError
from blindgate.shared.protocol import new_signing_key, public_key_to_text, signing_key_from_pem, signing_key_to_pem
from blindgate.shared.protocol.cloud_keys import Endorsement, endorse

from .resources import SIGNING_KEY_NAME

NEXT_KEY_NAME = "reply-signing-key.next.pem"
ENDORSEMENT_NAME = "reply-signing-key.endorsement.json"


class RotationError(BlindgateError, RuntimeError):
    """A rotation step that cannot be done now; the message says which step comes first."""


def _write_private(path: Path, data: bytes, exclusive: bool) -> None:
    """Write 0600 via a temporary file and an atomic rename (or create-exclusive)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    if exclusive and path.exists():
        os.unlink(tmp)
        raise RotationError(f"{path} already exists")
    os.replace(tmp, path)


def read_endorsement(state_dir: Path) -> Endorsement | None:
    try:
        return Endorsement.from_dict(json.loads((state_dir / ENDORSEMENT_NAME).read_text()))
    except FileNotFoundError:
        return None


def rotate(state_dir: Path, current: Ed25519PrivateKey) -> Endorsement:
    """Create the next key and the current key's endorsement of it; a pending rotation is returned as is."""
    next_path = state_dir / NEXT_KEY_NAME
    if next_path.exists():
        pending = read_endorsement(state_dir)
        if pending is None:
            raise RotationError(f"{next_path} exists without its endorsement: remove it and rotate again")
        return pending
    nxt = new_signing_key()
    endorsement = endorse(current, nxt.public_key())
    _write_private(state_dir / ENDORSEMENT_NAME, json.dumps(endorsement.to_dict(), indent=2).encode(), exclusive=False)
    _write_private(next_path, signing_key_to_pem(nxt), exclusive=True)
    return endorsement


def activate(state_dir: Path) -> str:
    """Make the pending next key the signing key; returns its public key (hex)."""
    next_path = state_dir / NEXT_KEY_NAME
    if not next_path.exists():
        raise RotationError("no rotation is pending: run `blindgate-cloud rotate-signing-key` first")
    nxt = signing_key_from_pem(next_path.read_bytes())
    endorsement = read_endorsement(state_dir)
    if endorsement is None or endorsement.endorsed != public_key_to_text(nxt.public_key()):
        raise RotationError("the pending key has no matching endorsement: remove it and rotate again")
    os.replace(next_path, state_dir / SIGNING_KEY_NAME)
    return endorsement.endorsed


def published(state_dir: Path, current: Ed25519PrivateKey) -> dict[str, Any]:
    """What `GET /v1/cloud-key` answers: the current key, and the endorsement that leads to or from it."""
    key = public_key_to_text(current.public_key())
    answer: dict[str, Any] = {"cloud_public_key": key}
    endorsement = read_endorsement(state_dir)
    if endorsement is not None and key in (endorsement.endorser, endorsement.endorsed):
        answer["endorsement"] = endorsement.to_dict()
    return answer
