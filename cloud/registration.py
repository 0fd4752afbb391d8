"""Who may register a site, and how many: the provision token, the site cap and the registration rate.

Registration is closed by default. Without a configured `provision_token` the cloud creates one at
first start (`state_dir/provision-token`, mode 0600, reused across restarts) and logs once how to
pass it to `blindgate-device init`; only `open_registration = true` lets anyone register. A token
holder is still bounded: at most `max_sites` sites (403 beyond) and `registrations_per_minute`
registrations per rolling minute, cloud-wide (429 with Retry-After), so a leaked token cannot fill
the disk or the workers' memory faster than an operator notices.

Several replicas on one PostgreSQL store share all of it: the generated token is a cloud-wide
secret (cloud/store_settings.py; a single-host cloud's token file is copied in the first time),
`max_sites` compares with the sites in the database, and the rate counts the registrations the
database holds from the last minute besides this replica's own attempts. Two replicas admitting
at the same instant can each pass the last free place, so either cap may be overshot by at most
one per replica.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import secrets
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from blindgate.shared.config import CloudConfig
from blindgate.shared.errors import BlindgateError

from .store_settings import PROVISION_TOKEN, CloudSettings, FileSecrets, SecretPlace

if TYPE_CHECKING:
    from .store import GalleryStore
    from .store_schema import StoreDatabase

log = logging.getLogger("blindgate.cloud.app")

PROVISION_TOKEN_NAME = "provision-token"
WINDOW_S = 60.0


class ProvisionTokenError(BlindgateError, RuntimeError):
    """The provision token file exists but holds no token."""


def _refusal(cls: type[web.HTTPException], message: str, **headers: str) -> web.HTTPException:
    """A JSON error answer, shaped as cloud/http_errors.py's (which this module cannot import: a cycle).

    Header names come as keywords with "_" for "-" (Retry_After=...).
    """
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    return cls(text=json.dumps({"error": message}), content_type="application/json", headers=named or None)


def load_or_create_provision_token(state_dir: Path) -> str:
    """The cloud's generated provision token, created (mode 0600) on first start and reused after."""
    path = state_dir / PROVISION_TOKEN_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text().strip()
        if token:
            return token
        raise ProvisionTokenError(f"{path} is empty: delete it to have the cloud create a new provision token") from None
    # Hex, never urlsafe base64: a token starting with '-' would read as an option on a command line.
    token = secrets.token_hex(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    log.warning(
        "created a provision token: doors register with it",
        extra={
            "path": str(path),
            "token": token,
            "how": f"blindgate-device init --provision-token $(cat {path}) (or BLINDGATE_PROVISION_TOKEN)",
        },
    )
    return token


def shared_provision_token(place: SecretPlace, legacy: FileSecrets | None = None) -> str:
    """The cloud-wide generated provision token in the shared store, created by the first replica to start.

    `legacy`: a state dir whose token file (a single-host install's) is copied in instead of a new token.
    """
    made: list[bytes] = []

    def make() -> bytes:
        existing = (legacy.get(PROVISION_TOKEN) or b"").strip() if legacy is not None else b""
        made.append(existing or secrets.token_hex(32).encode())  # hex: never an option-like leading '-'
        return made[0]

    token = place.get_or_create(PROVISION_TOKEN, make).decode().strip()
    if not token:
        raise ProvisionTokenError("the store's provision token is empty: delete it (table cloud_secret) to have a new one")
    if made and made[0].decode() == token:
        log.warning(
            "stored the cloud's provision token in the gallery store: doors register with it",
            extra={"token": token, "how": "blindgate-device init --provision-token <token> (or BLINDGATE_PROVISION_TOKEN)"},
        )
    return token


def registered_since(database: StoreDatabase, since: float) -> int:
    """How many sites the store holds that were registered after `since` (Unix time), by any replica."""
    with database.read() as db:
        return int(db.execute("SELECT count(*) FROM site WHERE created > ?", (since,)).fetchone()[0])


class RegistrationGate:
    """The registration route's checks before it reads a bundle: token, rate, then site count."""

    def __init__(
        self,
        token: str | None,
        max_sites: int,
        per_minute: int,
        clock: Callable[[], float] = time.monotonic,
        cloud_recent: Callable[[float], int] | None = None,
    ) -> None:
        self.token = token  # None: open registration (an explicit opt-in)
        self.max_sites = max(0, int(max_sites))
        self.per_minute = max(0, int(per_minute))
        self._now = clock
        self._recent: deque[float] = deque()
        # registrations every replica committed in the last `seconds` (shared store); None: one process
        self.cloud_recent = cloud_recent

    @classmethod
    def for_config(
        cls,
        config: CloudConfig,
        place: SecretPlace | Path,
        store: GalleryStore | None = None,
        legacy: FileSecrets | None = None,
    ) -> RegistrationGate:
        """The configured token; else the generated one (from `place`), unless registration is explicitly open.

        `store`: count recent registrations cloud-wide in it (replicas sharing a PostgreSQL store).
        """
        if isinstance(place, Path):
            place = FileSecrets(place)
        if config.provision_token:
            token: str | None = config.provision_token
        elif config.open_registration:
            log.warning("open_registration is set: anyone who reaches the API can register a site")
            token = None
        elif isinstance(place, FileSecrets):
            token = load_or_create_provision_token(place.state_dir)
        else:
            token = shared_provision_token(place, legacy)
        recent = None
        if store is not None and isinstance(place, CloudSettings):
            database = store.database

            def recent(seconds: float) -> int:
                return registered_since(database, time.time() - seconds)

        return cls(token, config.max_sites, config.registrations_per_minute, cloud_recent=recent)

    def authorize(self, offered: str | None) -> None:
        """401 unless registration is open or `offered` is the provision token (constant time)."""
        if self.token is None:
            return
        if not hmac.compare_digest((offered or "").encode(), self.token.encode()):
            raise _refusal(
                web.HTTPUnauthorized,
                "registering a site needs 'Authorization: Bearer <provision token>': the cloud's provision_token, "
                f"or the one it created in its state directory ({PROVISION_TOKEN_NAME})",
                WWW_Authenticate="Bearer",
            )

    def admit(self) -> None:
        """429 once `per_minute` registrations were attempted here, or committed cloud-wide, in the last minute.

        Else counts this attempt.
        """
        now = self._now()
        while self._recent and now - self._recent[0] >= WINDOW_S:
            self._recent.popleft()
        cloud_wide = self.cloud_recent(WINDOW_S) if self.cloud_recent is not None else 0
        if len(self._recent) >= self.per_minute or cloud_wide >= self.per_minute:
            wait = math.ceil(WINDOW_S - (now - self._recent[0])) if self._recent else int(WINDOW_S)
            message = f"more than {self.per_minute} site registrations in a minute (registrations_per_minute); retry in {wait} s"
            raise _refusal(web.HTTPTooManyRequests, message, Retry_After=str(max(1, wait)))
        self._recent.append(now)

    def check_capacity(self, registered: int) -> None:
        """403 when the cloud already holds `max_sites` sites: a lasting limit, not a retry-later."""
        if registered >= self.max_sites:
            raise _refusal(
                web.HTTPForbidden, f"this cloud already holds {registered} sites, its max_sites; raise max_sites to register more"
            )


REGISTRATION = web.AppKey("registration", RegistrationGate)
