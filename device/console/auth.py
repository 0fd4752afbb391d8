"""Security primitives of the door's web console: the admin password, login sessions, login throttling.

The console is off by default; when on, every page needs a login with one local admin password.

- The password lives hashed in the state directory (`console_password.json`, 0600, replaced
  atomically) under scrypt, a memory-hard KDF, so a copied file is slow to brute-force even on
  GPUs. Its parameters are read back from the file, so they can be raised later without breaking
  older files.
- A password's `fingerprint` changes whenever the password is set again; a session remembers the
  fingerprint it was made under, so setting a new password (`blindgate-device console-password`)
  ends every older session.
- `Sessions` keeps login sessions in memory only (a restart logs everyone out), each with its own
  CSRF token; `LoginLimiter` slows guessing per address and across all addresses.

Nothing here logs or stores a password in the clear.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import sys
import threading
import time
import unicodedata
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from blindgate.shared.errors import BlindgateError

from ..site_state import write_atomic

PASSWORD_FILE = "console_password.json"
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024
SET_COMMAND = "blindgate-device console-password"

# scrypt cost of new passwords: ~32 MiB and ~0.1 s per try on a desktop core (more on a Pi).
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_DKLEN = 32
SALT_BYTES = 16
# Files asking for more memory than this are refused as corrupt: one login must not exhaust a Pi.
MAX_KDF_MEMORY = 512 * 2**20
MIN_MAXMEM = 64 * 2**20

MAX_TRACKED_ADDRESSES = 1024

Clock = Callable[[], float]
log = logging.getLogger("blindgate.device.console")


class ConsoleAuthError(BlindgateError, ValueError):
    """A console password or login problem; the message says what to do."""


# --- the admin password -------------------------------------------------------------------------


def _normalised(password: str) -> bytes:
    """NFC, so the same password typed on systems that compose accents differently still matches."""
    return unicodedata.normalize("NFC", password).encode("utf-8")


def _scrypt_memory(n: int, r: int, p: int) -> int:
    """Bytes scrypt needs (OpenSSL's own accounting), so `maxmem` can be set from the parameters."""
    return 128 * r * (n + 2 + p)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    maxmem = max(MIN_MAXMEM, _scrypt_memory(n, r, p) + 2**20)
    return hashlib.scrypt(_normalised(password), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=dklen)


def check_new_password(password: str) -> None:
    """Refuse a password too weak or too long to set (ConsoleAuthError); the message never contains it."""
    if not isinstance(password, str):
        raise ConsoleAuthError("the console password must be text")
    if not password.strip():
        raise ConsoleAuthError("the console password is empty or only whitespace")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ConsoleAuthError(f"the console password is too short: use at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ConsoleAuthError(f"the console password is too long: use at most {MAX_PASSWORD_LENGTH} characters")


def password_path(state_dir: str | Path) -> Path:
    """Where the console's admin password hash lives."""
    return Path(state_dir) / PASSWORD_FILE


def set_password(state_dir: str | Path, password: str) -> None:
    """Hash `password` with a fresh salt and replace the password file atomically (0600).

    A refused password leaves any existing file untouched. The new salt gives a new fingerprint,
    so sessions made under the previous password end.
    """
    check_new_password(password)
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_DKLEN)
    body = {
        "kdf": "scrypt",
        "n": SCRYPT_N,
        "r": SCRYPT_R,
        "p": SCRYPT_P,
        "salt": base64.b64encode(salt).decode(),
        "hash": base64.b64encode(digest).decode(),
        "set": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path = password_path(state_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(body, indent=2) + "\n").encode())
    log.info("console password set in %s", path)


def _corrupt(path: Path, reason: str) -> ConsoleAuthError:
    return ConsoleAuthError(f"{path}: {reason}; set the console password again with `{SET_COMMAND}`")


def _b64(body: dict[str, Any], key: str, path: Path) -> bytes:
    try:
        value = base64.b64decode(body[key], validate=True)
    except (KeyError, TypeError, binascii.Error, ValueError):
        raise _corrupt(path, f"bad or missing {key!r}") from None
    if not 16 <= len(value) <= 64:
        raise _corrupt(path, f"{key!r} is not 16 to 64 bytes long")
    return value


def _int(body: dict[str, Any], key: str, low: int, high: int, path: Path) -> int:
    value = body.get(key)
    if type(value) is not int or not low <= value <= high:
        raise _corrupt(path, f"scrypt parameter {key!r} is missing or outside {low}..{high}")
    return value


class AdminPassword:
    """The console's admin password as stored: verifies a login, names its version (fingerprint)."""

    __slots__ = ("_salt", "_hash", "n", "r", "p", "set_at")

    def __init__(self, salt: bytes, digest: bytes, n: int, r: int, p: int, set_at: str) -> None:
        self._salt = salt
        self._hash = digest
        self.n, self.r, self.p = n, r, p
        self.set_at = set_at

    @classmethod
    def load(cls, state_dir: str | Path) -> AdminPassword | None:
        """The stored password (None: none set, the console cannot be logged into); a bad file is an error."""
        path = password_path(state_dir)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _corrupt(path, f"cannot be read ({exc.strerror or exc})") from None
        try:
            body = json.loads(raw)
        except ValueError:
            raise _corrupt(path, "is not valid JSON") from None
        if not isinstance(body, dict) or body.get("kdf") != "scrypt":
            raise _corrupt(path, "is not a scrypt password file")
        n = _int(body, "n", 2**10, 2**24, path)
        r = _int(body, "r", 1, 64, path)
        p = _int(body, "p", 1, 16, path)
        if n & (n - 1):
            raise _corrupt(path, "scrypt parameter 'n' is not a power of two")
        if _scrypt_memory(n, r, p) > MAX_KDF_MEMORY:
            raise _corrupt(path, f"scrypt parameters need more than {MAX_KDF_MEMORY // 2**20} MiB")
        salt, digest = _b64(body, "salt", path), _b64(body, "hash", path)
        set_at = body.get("set")
        return cls(salt, digest, n, r, p, set_at if isinstance(set_at, str) else "")

    def verify(self, password: str) -> bool:
        """Whether `password` is the admin password (constant-time comparison of the derived keys)."""
        if not isinstance(password, str) or not password or len(password) > MAX_PASSWORD_LENGTH:
            return False
        candidate = _scrypt(password, self._salt, self.n, self.r, self.p, len(self._hash))
        return hmac.compare_digest(candidate, self._hash)

    @property
    def fingerprint(self) -> str:
        """Names this setting of the password (new salt each time): a session made under another one is void."""
        return hashlib.sha256(self._salt + self._hash).hexdigest()[:16]

    def __repr__(self) -> str:  # never the salt or hash
        return f"AdminPassword(fingerprint={self.fingerprint!r}, set={self.set_at!r})"


def read_new_password(stdin: TextIO | None = None, prompt: Callable[[str], str] | None = None) -> str:
    """A new password: asked twice at a terminal (a mismatch is refused), else one line of stdin (scripts).

    `stdin` and `prompt` default to `sys.stdin` and `getpass.getpass` as they are when called (the
    agent swaps sys.stdin for a caller's input).
    """
    stream = sys.stdin if stdin is None else stdin
    prompt = getpass.getpass if prompt is None else prompt
    if stream.isatty():
        first = prompt("New console password: ")
        if prompt("Repeat it: ") != first:
            raise ConsoleAuthError("the two passwords differ; nothing was changed")
        return first
    line = stream.readline()
    if not line:
        raise ConsoleAuthError("no password on stdin (pipe one line, or run it at a terminal)")
    return line.removesuffix("\n").removesuffix("\r")


# --- sessions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """One login: `token` is the cookie value, `csrf` must come back with every state-changing form."""

    token: str
    csrf: str
    fingerprint: str
    created: float
    last_seen: float

    def __repr__(self) -> str:  # tokens are bearer secrets: keep them out of logs and tracebacks
        return f"Session(fingerprint={self.fingerprint!r}, created={self.created}, last_seen={self.last_seen})"


def _token_key(token: str) -> bytes:
    """Sessions are found by a hash of their token, so lookup time says nothing about a guessed token's prefix."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class Sessions:
    """In-memory login sessions with an absolute lifetime, an idle timeout and a bound on their number."""

    def __init__(
        self, lifetime_s: float = 12 * 3600, idle_s: float = 1800, max_sessions: int = 16, clock: Clock = time.monotonic
    ) -> None:
        if lifetime_s <= 0 or idle_s <= 0 or max_sessions < 1:
            raise ConsoleAuthError("session lifetime and idle timeout must be positive, and max_sessions at least 1")
        self.lifetime_s, self.idle_s, self.max_sessions = lifetime_s, idle_s, max_sessions
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[bytes, Session] = {}  # insertion order = creation order

    def _expired(self, session: Session, now: float) -> bool:
        return now - session.created >= self.lifetime_s or now - session.last_seen >= self.idle_s

    def create(self, fingerprint: str) -> Session:
        """A new session after a successful login; beyond `max_sessions` the oldest one ends."""
        with self._lock:
            now = self._clock()
            for key in [k for k, s in self._sessions.items() if self._expired(s, now)]:
                del self._sessions[key]
            while len(self._sessions) >= self.max_sessions:
                del self._sessions[next(iter(self._sessions))]
            session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), fingerprint, now, now)
            self._sessions[_token_key(session.token)] = session
            return session

    def get(self, token: str | None, fingerprint: str) -> Session | None:
        """The live session of `token` under the current password `fingerprint` (its idle timer restarts), or None."""
        if not token or not isinstance(token, str) or len(token) > 256:
            return None
        key = _token_key(token)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                return None
            now = self._clock()
            if self._expired(session, now) or session.fingerprint != fingerprint:  # fingerprints are not secret
                del self._sessions[key]
                return None
            session = self._sessions[key] = replace(session, last_seen=now)
            return session

    def drop(self, token: str | None) -> None:
        """End one session (logout); an unknown token is ignored."""
        if token and isinstance(token, str):
            with self._lock:
                self._sessions.pop(_token_key(token), None)

    def drop_all(self) -> None:
        """End every session."""
        with self._lock:
            self._sessions.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)


def csrf_ok(session: Session, submitted: str | None) -> bool:
    """Whether a form's CSRF token is the session's (constant-time; missing or empty is never ok)."""
    if not submitted or not isinstance(submitted, str):
        return False
    return hmac.compare_digest(session.csrf.encode(), submitted.encode("utf-8", "surrogatepass"))


# --- login throttling ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Record:
    failures: int
    last_failure: float
    locked_until: float


def address_key(address: str | None) -> str:
    """Whom failures are counted against: an IPv6 client by its /64 (one host owns a whole prefix)."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address[:100]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class LoginLimiter:
    """Slows password guessing: per address, and across all addresses against distributed guessing.

    Per address: after `free_failures` failures every further failure locks the address out for
    `first_lockout_s`, doubling up to `max_lockout_s`. An address's count is forgotten once
    `window_s` has passed since its last failure and its lockout has ended (a sliding window of
    failure times would drain during the lockouts themselves and undo the doubling).
    Globally: when more than `global_failures` failures from all addresses fall within `window_s`,
    every address waits `first_lockout_s` after the latest failure. At most `max_addresses`
    addresses are tracked (the least recently failing is forgotten); churning through many
    addresses to escape lockouts trips the global limit instead.
    """

    def __init__(
        self,
        clock: Clock = time.monotonic,
        free_failures: int = 5,
        window_s: float = 900,
        first_lockout_s: float = 30,
        max_lockout_s: float = 900,
        global_failures: int = 20,
        max_addresses: int = MAX_TRACKED_ADDRESSES,
    ) -> None:
        if free_failures < 0 or global_failures < 1 or max_addresses < 1:
            raise ConsoleAuthError("free_failures must be >= 0, global_failures and max_addresses >= 1")
        if window_s <= 0 or first_lockout_s <= 0 or max_lockout_s < first_lockout_s:
            raise ConsoleAuthError("window and lockouts must be positive, max_lockout_s at least first_lockout_s")
        self._clock = clock
        self.free_failures, self.window_s = free_failures, window_s
        self.first_lockout_s, self.max_lockout_s = first_lockout_s, max_lockout_s
        self.global_failures, self.max_addresses = global_failures, max_addresses
        self._lock = threading.Lock()
        self._records: OrderedDict[str, _Record] = OrderedDict()  # least recently failing first
        self._recent: deque[float] = deque(maxlen=global_failures + 1)  # the latest failures from anyone

    def _current(self, key: str, now: float) -> _Record | None:
        record = self._records.get(key)
        if record is not None and now >= max(record.last_failure, record.locked_until) + self.window_s:
            del self._records[key]
            return None
        return record

    def _global_wait(self, now: float) -> float:
        recent = self._recent
        if len(recent) <= self.global_failures or now - recent[0] >= self.window_s:
            return 0.0
        return max(0.0, recent[-1] + self.first_lockout_s - now)

    def wait_s(self, address: str | None) -> float:
        """Seconds this address must wait before its next login attempt (0: it may try now)."""
        with self._lock:
            now = self._clock()
            record = self._current(address_key(address), now)
            own = max(0.0, record.locked_until - now) if record else 0.0
            return max(own, self._global_wait(now))

    def failed(self, address: str | None) -> None:
        """Count a wrong password from this address (and towards the global limit)."""
        key = address_key(address)
        with self._lock:
            now = self._clock()
            self._recent.append(now)
            record = self._current(key, now) or _Record(0, now, now)
            record.failures += 1
            record.last_failure = now
            beyond = record.failures - self.free_failures
            if beyond > 0:
                lockout = min(self.first_lockout_s * 2 ** min(beyond - 1, 60), self.max_lockout_s)
                record.locked_until = max(record.locked_until, now + lockout)
            self._records[key] = record
            self._records.move_to_end(key)
            while len(self._records) > self.max_addresses:
                self._records.popitem(last=False)

    def succeeded(self, address: str | None) -> None:
        """A correct login: forget this address's failures (the global count stays)."""
        with self._lock:
            self._records.pop(address_key(address), None)

    def __len__(self) -> int:
        """Addresses tracked now (bounded by max_addresses)."""
        with self._lock:
            return len(self._records)


__all__ = [
    "MIN_PASSWORD_LENGTH",
    "MAX_PASSWORD_LENGTH",
    "PASSWORD_FILE",
    "AdminPassword",
    "ConsoleAuthError",
    "LoginLimiter",
    "Session",
    "Sessions",
    "address_key",
    "check_new_password",
    "csrf_ok",
    "password_path",
    "read_new_password",
    "set_password",
]
