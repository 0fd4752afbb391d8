"""Several doors at one site: add a door through one already there, join with the file, remove a door.

`export_site` (on a door of the site) registers the NEW door at the cloud with a request key made
here, receives that door's own bearer token, and writes both with the site's secrets into a
passphrase-encrypted file (device/site_export.py). `join_site` (on the new door) opens the file
BEFORE touching the disk, so a wrong passphrase leaves nothing behind; it writes the site's files,
checks the token against the cloud, then replaces the request key at once with one made on the
new door (the exporting door never knew the key the new door signs with), and writes `cloud.json`
last: a join cut short removes every file it wrote (the door stays registered at the cloud until
`remove-door`, and a new export for the same id is refused until then).
`remove_door` (from any door of the site) revokes one door's token and key at the cloud.

Each door keeps its own claim sources, access rules, audit log and snapshots; the site's gallery,
keys, deny list and badge/PIN hashes are shared (the deny list and hashes as of the export).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from blindgate.shared.config import DeviceConfig
from blindgate.shared.errors import BlindgateError
from blindgate.shared.protocol import check_name, new_signing_key, signing_key_from_pem, signing_key_to_pem

from .cloud_client import CloudClient, CloudError
from .credentials import CREDENTIALS_FILE
from .door_key import public_text, rotate_door_key
from .keyfiles import write_private
from .labels import KEY_FILE as LABEL_KEY_FILE
from .provision import check_cloud_url, confirm_cloud_key, tls_context
from .sealing import KEY_FILE as TEMPLATE_KEY_FILE
from .site_export import MIN_PASSPHRASE, SiteExport, open_export, seal_export
from .site_state import STATE_FILE
from .state import CLOUD_FILE, DOOR_KEY_FILE, KEYS_FILE, CloudLink, DeviceState

log = logging.getLogger("blindgate.device.site_doors")

# The site's files a joining door needs (the first three are required), by state-directory name.
SITE_FILES = (KEYS_FILE, LABEL_KEY_FILE, TEMPLATE_KEY_FILE, STATE_FILE, CREDENTIALS_FILE)
REQUIRED = SITE_FILES[:3]

Progress = Callable[[str], None]


class SiteDoorError(BlindgateError, ValueError):
    """A door cannot be added, joined or removed as asked; the message says what to do."""


def _quiet(message: str) -> None:
    pass


# -- export (on a door of the site) -----------------------------------------------------------------


def export_site(config: DeviceConfig, new_door: str, passphrase: str, out: Path, progress: Progress = _quiet) -> SiteExport:
    """Register `new_door` at the cloud and write its passphrase-encrypted site file to `out` (0600, never replaced)."""
    new_door = check_name(new_door, "door id")
    if len(passphrase) < MIN_PASSPHRASE:  # refused before the cloud is asked, not after
        raise SiteDoorError(f"the passphrase must be at least {MIN_PASSPHRASE} characters")
    if new_door == config.device_id:
        raise SiteDoorError(f"{new_door!r} is this door's own id: give the new door another device_id")
    state = DeviceState(config.state_dir)
    link = state.load_cloud()
    files = {name: (state.dir / name).read_bytes() for name in SITE_FILES if (state.dir / name).exists()}
    missing = [name for name in REQUIRED if name not in files]
    if missing:
        raise SiteDoorError(f"this door's state lacks {', '.join(missing)}: it cannot share the site")
    cloud = {k: v for k, v in dataclasses.asdict(link).items() if k != "token"}
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # reserved before the cloud is asked
    except FileExistsError:
        raise SiteDoorError(f"{out} exists: choose another --out (an export is never overwritten)") from None
    registered = False
    client = CloudClient(config.cloud_url, config.site, token=link.token, tls=tls_context(config.cloud_ca_file))
    try:
        key = new_signing_key()  # the new door's first request key; `init --join` replaces it with its own at once
        progress(f"registering door {new_door!r} at {config.cloud_url}")
        try:
            answer = client.add_door(new_door, public_text(key))
        except CloudError as exc:
            if exc.status != 409:
                raise
            raise SiteDoorError(
                f"{exc.message}. If an earlier join of {new_door!r} failed, remove it first: "
                f"`blindgate-device remove-door {new_door}`"
            ) from None
        registered = True
        export = SiteExport(config.site, new_door, answer["token"], signing_key_to_pem(key), cloud, files, time.time())
        progress("encrypting the site's keys under the passphrase")
        data = seal_export(export, passphrase)
        with os.fdopen(fd, "wb") as fh:
            fd = -1
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        if fd >= 0:
            os.close(fd)
        out.unlink(missing_ok=True)
        if registered:  # no file, no door: undo the registration rather than leave an unusable door behind
            try:
                client.remove_door(new_door)
            except CloudError as exc:
                log.warning(
                    "door %r stays registered: remove it with `blindgate-device remove-door %s` (%s)", new_door, new_door, exc
                )
        raise
    return export


# -- join (on the new door) ---------------------------------------------------------------------------


def join_site(
    config: DeviceConfig, data: bytes, passphrase: str, progress: Progress = _quiet, cloud_key: str | None = None
) -> CloudLink:
    """Make this state directory a door of the exported site; on any failure nothing of it is left behind.

    `cloud_key` (init's `--cloud-key`), when given, must be the cloud key the file pins.
    """
    export = open_export(data, passphrase)  # a wrong passphrase fails here, before anything is written
    if export.site != config.site or export.door != config.device_id:
        raise SiteDoorError(
            f"this file adds door {export.door!r} to site {export.site!r}, but the config says site {config.site!r}, "
            f"device_id {config.device_id!r}: set those (or export again for this door's id); nothing was written"
        )
    pinned = str(export.cloud.get("cloud_public_key", ""))
    if not pinned:
        raise SiteDoorError("the site export carries no cloud key: export again from a registered door")
    check_cloud_url(config.cloud_url, pinned)  # the cloud key is pinned (and well formed): the exporting door trusted it
    if cloud_key is not None:
        confirm_cloud_key(pinned, cloud_key)  # constant time; refuses a file pinning another cloud
    state = DeviceState(config.state_dir)
    taken = [name for name in (*SITE_FILES, DOOR_KEY_FILE, CLOUD_FILE) if (state.dir / name).exists()]
    if taken:
        raise SiteDoorError(f"{state.dir} already holds {', '.join(taken)}: join needs the state directory of a new door")
    created_dir = not state.dir.exists()
    state.ensure_dir()
    written: list[Path] = []
    try:
        for name, content in export.files.items():
            if name not in SITE_FILES:
                continue  # a newer exporter's extra file: not for this version
            write_private(state.dir / name, content)
            written.append(state.dir / name)
        signing_key_from_pem(export.door_key_pem)  # well formed before it is stored
        write_private(state.door_key_path, export.door_key_pem)
        written.append(state.door_key_path)
        client = CloudClient(config.cloud_url, config.site, token=export.door_token, tls=tls_context(config.cloud_ca_file))
        progress(f"checking door {config.device_id!r}'s token with {config.cloud_url}")
        stats = client.stats()
        key_id = str(export.cloud.get("key_id", ""))
        if stats.get("key_id") != key_id or state.load_keys().key_id != key_id:
            raise SiteDoorError(
                f"the site's keys changed since the export (cloud key id {stats.get('key_id')!r}, file {key_id!r}): "
                "export again from a door of the site"
            )
        progress("replacing the door's request key with one made here")
        written.append(state.next_door_key_path)
        rotate_door_key(state, client, config.device_id)
        link = CloudLink(
            site=config.site,
            key_id=key_id,
            token=export.door_token,
            cloud_public_key=pinned,
            cloud_url=config.cloud_url,
            next_cloud_keys=[str(k) for k in export.cloud.get("next_cloud_keys", [])],
        )
        state.save_cloud(link)  # last: from now on this directory is a registered door
        return link
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        if created_dir:
            shutil.rmtree(state.dir, ignore_errors=True)
        raise


def read_export_file(path: Path) -> bytes:
    """The export's bytes; SiteDoorError naming the path when it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SiteDoorError(
            f"no site export at {path} (write one with `blindgate-device export-site` on a door of the site)"
        ) from None


# -- remove (from any door of the site) ---------------------------------------------------------------


def remove_door(config: DeviceConfig, door: str) -> dict:
    """Revoke `door` at the cloud: its token and request key stop working now; the site's other doors keep theirs."""
    door = check_name(door, "door id")
    state = DeviceState(config.state_dir)
    link = state.load_cloud()
    client = CloudClient(config.cloud_url, config.site, token=link.token, tls=tls_context(config.cloud_ca_file))
    try:
        return client.remove_door(door)
    except CloudError as exc:
        if exc.status == 404:
            raise SiteDoorError(f"site {config.site!r} has no door {door!r} (see `blindgate-device doors`)") from None
        if exc.status == 409:
            raise SiteDoorError(f"{exc.message}: add another door first (`blindgate-device export-site`)") from None
        raise


def list_doors(config: DeviceConfig) -> list[dict]:
    """The site's doors as the cloud knows them: door, created, own_token, you."""
    state = DeviceState(config.state_dir)
    link = state.load_cloud()
    client = CloudClient(config.cloud_url, config.site, token=link.token, tls=tls_context(config.cloud_ca_file))
    return list(client.doors().get("doors", []))


__all__ = ["SITE_FILES", "SiteDoorError", "export_site", "join_site", "list_doors", "read_export_file", "remove_door"]
