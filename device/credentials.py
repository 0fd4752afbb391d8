"""Badge ids and PINs of enrolled people, kept on the door only as salted scrypt hashes (`credentials.json`, 0600).

A claim (device/claims.py) names a credential; `resolve` says whose it is. The cloud never sees a
credential nor the claimed name: the verify probe carries only the opaque subject id. Hashes are
memory-hard (scrypt, N=2^14, r=8: 16 MiB and tens of ms per try) and salted per record, so a copy
of the file costs an attacker a search per person; a 4-digit PIN is still only 10^4 tries, which
is why the face must match too and wrong claims count toward the lockout.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
from pathlib import Path

from blindgate.shared.errors import BlindgateError

from .claims import CredentialKind
from .registry import read_registry, write_registry

CREDENTIALS_FILE = "credentials.json"
FORMAT = 1
SCRYPT = {"n": 2**14, "r": 8, "p": 1}
PIN = re.compile(r"[0-9]{4,12}")
BADGE = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII, no spaces: what badge readers emit


class CredentialError(BlindgateError, ValueError):
    """A credential that is malformed, already someone else's, or a registry that cannot be read."""


def check_credential(kind: CredentialKind | str, value: str) -> str:
    """`value` if it is a well-formed credential of `kind` (the message never repeats it)."""
    kind = CredentialKind(kind)
    pattern = PIN if kind is CredentialKind.PIN else BADGE
    if not isinstance(value, str) or not pattern.fullmatch(value):
        rule = "4 to 12 digits" if kind is CredentialKind.PIN else "1 to 128 printable characters without spaces"
        raise CredentialError(f"a {kind} must be {rule}")
    return value


def _hash(value: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(value.encode(), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=256 * 1024 * 1024)


def _record(value: str) -> dict:
    salt = secrets.token_bytes(16)
    return {"salt": base64.b64encode(salt).decode(), "hash": base64.b64encode(_hash(value, salt, **SCRYPT)).decode(), **SCRYPT}


def _matches(record: dict, value: str) -> bool:
    try:
        salt, expected = base64.b64decode(record["salt"]), base64.b64decode(record["hash"])
        got = _hash(value, salt, int(record["n"]), int(record["r"]), int(record["p"]))
    except (KeyError, TypeError, ValueError):
        return False  # a damaged record matches nothing
    return hmac.compare_digest(got, expected)


class CredentialStore:
    """subject id -> hashed badge and/or PIN, in the state directory."""

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / CREDENTIALS_FILE
        self._guard = threading.Lock()

    def _read(self) -> dict[str, dict]:
        return read_registry(self.path, "subjects", FORMAT, CredentialError, "credential registry")

    def _write(self, subjects: dict[str, dict]) -> None:
        write_registry(self.path, "subjects", FORMAT, subjects)

    def _holders(self, subjects: dict[str, dict], kind: CredentialKind, value: str) -> list[str]:
        """Every subject whose `kind` is `value`; all records are hashed (no early exit: no timing hint)."""
        return [s for s, creds in sorted(subjects.items()) if kind in creds and _matches(creds[kind], value)]

    def set(self, subject: str, badge: str | None = None, pin: str | None = None) -> None:
        """Give `subject` this badge and/or PIN (replacing its old one); refused if another subject holds it."""
        given = {
            k: check_credential(k, v) for k, v in ((CredentialKind.BADGE, badge), (CredentialKind.PIN, pin)) if v is not None
        }
        if not given:
            return
        with self._guard:
            subjects = self._read()
            for kind, value in given.items():
                others = [s for s in self._holders(subjects, kind, value) if s != subject]
                if others:
                    raise CredentialError(f"that {kind} already belongs to subject {others[0]}: choose another")
            entry = dict(subjects.get(subject, {}))
            entry.update({str(kind): _record(value) for kind, value in given.items()})
            subjects[subject] = entry
            self._write(subjects)

    def check_available(self, subject: str | None, badge: str | None = None, pin: str | None = None) -> None:
        """CredentialError unless the badge/PIN are well formed and held by nobody but `subject` (before enrolling)."""
        subjects = self._read()
        for kind, value in ((CredentialKind.BADGE, badge), (CredentialKind.PIN, pin)):
            if value is not None:
                check_credential(kind, value)
                if [s for s in self._holders(subjects, kind, value) if s != subject]:
                    raise CredentialError(f"that {kind} already belongs to another subject: choose another")

    def clear(self, subject: str, kinds: tuple[CredentialKind, ...] = tuple(CredentialKind)) -> bool:
        """Drop `subject`'s credentials of `kinds` (all by default); True if there were any."""
        with self._guard:
            subjects = self._read()
            entry = subjects.get(subject)
            if not entry:
                return False
            remaining = {k: v for k, v in entry.items() if k not in kinds}
            if remaining:
                subjects[subject] = remaining
            else:
                del subjects[subject]
            self._write(subjects)
            return len(remaining) != len(entry)

    def move(self, old: str, new: str) -> None:
        """`enroll --add-to` replaced `old` by `new`: the person keeps their badge and PIN."""
        with self._guard:
            subjects = self._read()
            if old in subjects:
                subjects[new] = subjects.pop(old)
                self._write(subjects)

    def kinds(self) -> dict[str, list[str]]:
        """subject id -> which credentials it has (never the values)."""
        return {s: sorted(creds) for s, creds in sorted(self._read().items())}

    def resolve(self, kind: CredentialKind | str, value: str) -> str | None:
        """The one subject holding this credential; None for nobody, a malformed value or an ambiguous one."""
        kind = CredentialKind(kind)
        try:
            check_credential(kind, value)
            subjects = self._read()
        except CredentialError:
            return None
        holders = self._holders(subjects, kind, value)
        return holders[0] if len(holders) == 1 else None


def set_credentials(state_dir: str | Path, subject: str, badge: str | None = None, pin: str | None = None) -> None:
    """What `enroll --badge/--pin` calls once the subject is enrolled."""
    CredentialStore(state_dir).set(subject, badge=badge, pin=pin)


def drop_credentials(state_dir: str | Path, subject: str) -> bool:
    """What `remove` calls: a removed person's badge and PIN open nothing any more."""
    return CredentialStore(state_dir).clear(subject)


__all__ = [
    "CREDENTIALS_FILE",
    "CredentialError",
    "CredentialStore",
    "check_credential",
    "drop_credentials",
    "set_credentials",
]
