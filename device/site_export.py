"""The file that carries a site's secrets to a new door: encrypted under a passphrase (scrypt, AES-256-GCM).

`blindgate-device export-site` writes it on a door of the site; `blindgate-device init --join`
reads it on the new door. It holds what makes a door part of the site (CKKS keys with the SECRET
key, label and template keys, the site state, badge/PIN hashes, the pinned cloud key) and the new
door's own identity at the cloud (its request key and bearer token), so anyone with the file AND
the passphrase can act as that door: keep it off shared drives and delete it after joining.

Layout: one JSON object. The header (format, site, door, scrypt parameters and salt, nonce) is
in clear so a wrong file is named before asking for a passphrase, and it is the AEAD's associated
data, so changing a byte of it (or of the ciphertext) fails like a wrong passphrase does:

    {"format": "blindgate-site-export/1", "site": "home", "door": "door2", "created": 1.7e9,
     "kdf": {"name": "scrypt", "n": 65536, "r": 8, "p": 1, "salt": "<b64>"}, "nonce": "<b64>",
     "ciphertext": "<b64 of AES-GCM(JSON payload)>"}
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import json
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from blindgate.shared.errors import BlindgateError
from blindgate.shared.protocol import ProtocolError, check_name

FORMAT = "blindgate-site-export/1"
# scrypt at 64 MiB: ~0.2 s per guess on a laptop, more on a Pi; the passphrase length does the rest.
KDF = {"name": "scrypt", "n": 2**16, "r": 8, "p": 1}
MAX_KDF_N = 2**20  # a hostile header cannot make `init --join` allocate more than 1 GiB
MIN_PASSPHRASE = 12
MAX_EXPORT_BYTES = 64 * 1024 * 1024


class SiteExportError(BlindgateError, ValueError):
    """A site export that cannot be written or opened: wrong passphrase, altered or foreign file."""


@dataclass(frozen=True)
class SiteExport:
    """What a new door receives: the site's files and its own identity at the cloud."""

    site: str
    door: str  # the door this file adds (its device_id)
    door_token: str  # that door's own bearer token at the cloud
    door_key_pem: bytes  # that door's first request-signing key (replaced by `init --join` at once)
    cloud: dict[str, Any]  # key_id, cloud_public_key, next_cloud_keys, cloud_url of the exporting door
    files: dict[str, bytes] = field(default_factory=dict)  # state-directory file name -> content
    created: float = 0.0

    def payload(self) -> bytes:
        return json.dumps(
            {
                "door_token": self.door_token,
                "door_key_pem": self.door_key_pem.decode(),
                "cloud": self.cloud,
                "files": {name: base64.b64encode(data).decode() for name, data in sorted(self.files.items())},
            }
        ).encode()


def _derive(passphrase: str, kdf: dict[str, Any], salt: bytes) -> bytes:
    n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
    if kdf.get("name") != "scrypt" or not (2 <= n <= MAX_KDF_N) or n & (n - 1) or not (1 <= r <= 32) or not (1 <= p <= 4):
        raise SiteExportError("the file's key derivation is not one this version accepts")
    return hashlib.scrypt(passphrase.encode(), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=(128 * r * n) + 2**24)


def _header_bytes(header: dict[str, Any]) -> bytes:
    """The associated data: the clear header, canonical (sorted keys, no spaces)."""
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def seal_export(export: SiteExport, passphrase: str) -> bytes:
    """The file's bytes: `export` encrypted under `passphrase` (at least MIN_PASSPHRASE characters)."""
    if len(passphrase) < MIN_PASSPHRASE:
        raise SiteExportError(f"the passphrase must be at least {MIN_PASSPHRASE} characters")
    salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
    kdf = {**KDF, "salt": base64.b64encode(salt).decode()}
    header = {
        "format": FORMAT,
        "site": export.site,
        "door": export.door,
        "created": export.created or time.time(),
        "kdf": kdf,
        "nonce": base64.b64encode(nonce).decode(),
    }
    key = _derive(passphrase, kdf, salt)
    ciphertext = AESGCM(key).encrypt(nonce, export.payload(), _header_bytes(header))
    return json.dumps({**header, "ciphertext": base64.b64encode(ciphertext).decode()}).encode() + b"\n"


def read_header(data: bytes) -> dict[str, Any]:
    """The clear header (site, door, created, kdf, nonce); SiteExportError if this is no site export."""
    if len(data) > MAX_EXPORT_BYTES:
        raise SiteExportError(f"the file is over {MAX_EXPORT_BYTES} bytes: not a site export")
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise SiteExportError("not a site export (written by `blindgate-device export-site`)") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise SiteExportError(f"not a site export of format {FORMAT!r} (written by `blindgate-device export-site`)")
    try:
        check_name(document["site"], "site")
        check_name(document["door"], "door")
    except (KeyError, ProtocolError) as exc:
        raise SiteExportError(f"the site export names no valid site or door: {exc}") from None
    return document


def open_export(data: bytes, passphrase: str) -> SiteExport:
    """The export inside `data`; SiteExportError for a wrong passphrase or an altered file (nothing is written)."""
    document = read_header(data)
    header = {k: v for k, v in document.items() if k != "ciphertext"}
    try:
        kdf = dict(header["kdf"])
        salt, nonce = base64.b64decode(kdf["salt"], validate=True), base64.b64decode(header["nonce"], validate=True)
        ciphertext = base64.b64decode(document["ciphertext"], validate=True)
    except (KeyError, TypeError, ValueError):
        raise SiteExportError("the site export is damaged (header or ciphertext unreadable)") from None
    try:
        key = _derive(passphrase, kdf, salt)
        plain = AESGCM(key).decrypt(nonce, ciphertext, _header_bytes(header))
    except SiteExportError:
        raise
    except (InvalidTag, ValueError, KeyError, TypeError):
        raise SiteExportError("wrong passphrase, or the file was altered: nothing was written") from None
    try:
        body = json.loads(plain)
        files = {str(name): base64.b64decode(content, validate=True) for name, content in body["files"].items()}
        return SiteExport(
            site=header["site"],
            door=header["door"],
            door_token=str(body["door_token"]),
            door_key_pem=str(body["door_key_pem"]).encode(),
            cloud=dict(body["cloud"]),
            files=files,
            created=float(header.get("created", 0.0)),
        )
    except (KeyError, TypeError, ValueError, AttributeError):  # authentic but not ours: a bug, not an attack
        raise SiteExportError("the site export decrypts but its content is malformed") from None


def read_passphrase(confirm: bool, prompt: str = "passphrase for the site export") -> str:
    """From the terminal without echo (twice when `confirm`), or the first line of stdin; never argv."""
    if sys.stdin.isatty():
        first = getpass.getpass(f"{prompt}: ")
        if confirm and getpass.getpass("again: ") != first:
            raise SiteExportError("the two passphrases differ")
        passphrase = first
    else:
        passphrase = sys.stdin.readline().rstrip("\r\n")
    if not passphrase:
        raise SiteExportError("no passphrase given (type it at the prompt, or give it as the first line of stdin)")
    return passphrase


__all__ = [
    "FORMAT",
    "MIN_PASSPHRASE",
    "SiteExport",
    "SiteExportError",
    "open_export",
    "read_header",
    "read_passphrase",
    "seal_export",
]
