"""Provisioning that cannot be hijacked: which cloud `init` may trust, and how it checks the key.

The one registration call hands the device the key that will sign every reply that opens the
door. Over plain HTTP to a remote host, whoever sits on the path could swap that key, so `init`
insists on one of: a loopback cloud, a pinned key (`--cloud-key`, checked in constant time), or
`https://` with certificate verification. Host names are never resolved: only `localhost`,
127.0.0.0/8 and ::1 count as loopback.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import sys
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from blindgate.shared.errors import BlindgateError
from blindgate.shared.protocol import ProtocolError, public_key_from_text
from blindgate.shared.protocol.cloud_keys import Endorsement, KeyRing, canonical, check_endorsement, fingerprint, same_key

from .cloud_client import CloudClient
from .state import DeviceState, StateError

log = logging.getLogger("blindgate.device.provision")


class ProvisionError(BlindgateError, ValueError):
    """`init` refuses to trust this cloud as asked; the message says what to do instead."""


def progress(message: str) -> None:
    """One step of `init` as it happens, on stderr: stdout keeps the result (the cloud key's fingerprint)."""
    print(message, file=sys.stderr, flush=True)


@contextmanager
def step(what: str) -> Iterator[None]:
    """Say `what ...` before a slow step (key generation, the upload) and how long it took once it is done."""
    progress(f"{what} ...")
    started = time.monotonic()
    yield
    progress(f"{what}: done in {time.monotonic() - started:.1f} s")


def is_loopback(host: str) -> bool:
    """`localhost`, an address in 127.0.0.0/8, or ::1; any other name is remote (never resolved)."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_cloud_url(url: str, cloud_key: str | None) -> None:
    """Refuse, before any traffic, a cloud whose registration answer an attacker could rewrite."""
    parsed = urllib.parse.urlsplit(url)
    scheme, host = parsed.scheme.lower(), parsed.hostname or ""
    if scheme not in ("http", "https") or not host:
        raise ProvisionError(f"cloud_url {url!r} must be an http:// or https:// URL with a host")
    if cloud_key:
        public_key_from_text(cloud_key)  # a malformed pin is a typo: say so before registering
        return
    if scheme == "https" or is_loopback(host):
        return
    raise ProvisionError(
        f"refusing to register over plain HTTP with the remote host {host!r}: anyone on the path could "
        "substitute the key that signs the replies that open the door. Either pin the cloud's key with "
        "`--cloud-key $(blindgate-cloud public-key)` (run that on the cloud host), or use an https:// "
        "cloud_url (certificate verified)"
    )


def confirm_cloud_key(offered: str, pinned: str | None) -> str:
    """The cloud key from the registration answer, validated and, when pinned, equal to the pin."""
    key = canonical(offered)
    if pinned is not None and not same_key(key, pinned):  # constant time
        raise ProvisionError(
            f"the cloud answered with key {fingerprint(key)}, not the pinned --cloud-key {fingerprint(pinned)}: "
            "someone between this device and the cloud may be substituting it; nothing was stored"
        )
    return key


def refresh_cloud_key(state: DeviceState, client: CloudClient) -> str:
    """Follow a rotation of the cloud's reply-signing key; returns what changed, in words.

    A key is added only if a key this device already trusts endorsed it; once the cloud serves
    the endorsed key as its current one, the old key is retired. Anything else is refused and
    `cloud.json` stays as it was.
    """
    link = state.load_cloud()
    ring = link.verify_key()
    answer = client.cloud_key_record()
    current = canonical(answer["cloud_public_key"])
    added = None
    if answer.get("endorsement") is not None:
        endorsement = Endorsement.from_dict(answer["endorsement"])
        if endorsement.endorsed not in ring:
            added = check_endorsement(endorsement, ring)
            ring = KeyRing([*ring.texts, added])
    if current not in ring:
        raise ProvisionError(
            f"the cloud serves key {fingerprint(current)}, which no key this device trusts has endorsed: "
            "refusing it; if the cloud's key was replaced, provision again with a pinned --cloud-key"
        )
    if not same_key(current, link.cloud_public_key):  # the cloud has switched: retire the old key
        link = replace(link, cloud_public_key=current, next_cloud_keys=[])
        state.save_cloud(link)
        return f"the cloud now signs with {fingerprint(current)}; the previous key is retired"
    if added is not None:
        link = replace(link, next_cloud_keys=[k for k in ring.texts if not same_key(k, current)])
        state.save_cloud(link)
        return f"accepting also {fingerprint(added)} (endorsed by {fingerprint(current)}) until the cloud switches"
    return f"no change: the cloud signs with {fingerprint(current)}"


class TrustedCloudKeys:
    """The device's trusted cloud keys for reply checks, re-read whenever `cloud.json` changes, so a
    running agent follows `refresh-cloud-key`. An unreadable file keeps the last good keys."""

    def __init__(self, state: DeviceState) -> None:
        self.state = state
        self._stamp: tuple[int, int] | None = None
        self._ring = state.load_cloud().verify_key()
        self._stamp = self._current_stamp()

    def _current_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.state.cloud_path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def verify(self, signature: bytes, data: bytes) -> None:
        stamp = self._current_stamp()
        if stamp is not None and stamp != self._stamp:
            try:
                self._ring = self.state.load_cloud().verify_key()
                self._stamp = stamp
            except (StateError, ProtocolError) as exc:
                log.warning("keeping the previous cloud keys: %s", exc)
        self._ring.verify(signature, data)


def tls_context(ca_file: str) -> ssl.SSLContext | None:
    """Certificate-verifying TLS with `ca_file` (a private CA); None (urllib's default, the system's
    CAs, also verifying) when no file is configured."""
    return ssl.create_default_context(cafile=ca_file) if ca_file else None
