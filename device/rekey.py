"""`blindgate-device rekey`: renew the site's CKKS keys without re-enrolling anyone (ISO/IEC 24745 renewability).

Every template comes back from its sealed copy (device/sealing.py), which only this site can
open: no photo and no person is needed. The steps, each safe to fail:

1. list the subjects and open every sealed template under the CURRENT key id; if any does not
   open, stop and name it (nobody is silently dropped) — nothing has changed yet;
2. make new `SiteKeys`, keep them as `site.keys.next` (0600) until the switch;
3. stage the new evaluation bundle, then per subject its enrollment ciphertext under the new keys,
   its template re-sealed under the new key id (same subject id and version) and its label;
4. commit: the cloud rebuilds the gallery under the new keys and switches in one transaction;
   from then on the old key id is refused;
5. switch the device: `site.keys` is replaced by rename (the old file stays as `site.keys.old`
   until the new one and `cloud.json` with the new key id are both in place, then it is deleted).

If the commit is refused, the device deletes `site.keys.next` and keeps its keys; the cloud keeps
its gallery. If the answer to the commit is lost, the next `rekey` asks the cloud which key id it
is on and finishes the switch (or starts over).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from blindgate.shared.engine import SiteKeys, encrypt_enrollment, generate_site_keys
from blindgate.shared.errors import BlindgateError

from .cloud_client import CloudClient, CloudError
from .keyfiles import write_private
from .labels import LabelCipher
from .sealing import SealedTemplate, SealError, TemplateSealer
from .state import CloudLink, DeviceState

NEXT_KEYS = "site.keys.next"
OLD_KEYS = "site.keys.old"
COMMIT_SECONDS_BASE = 60.0
COMMIT_SECONDS_PER_SUBJECT = 1.0


class RekeyError(BlindgateError, RuntimeError):
    """The rekey cannot go on; the message says what was (not) changed and what to do."""


@dataclass(frozen=True)
class RekeyResult:
    old_key_id: str
    key_id: str
    gallery_version: int
    subjects: int


def _replace_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (0600 temp file, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    write_private(tmp, data)
    os.replace(tmp, path)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def switch_keys(state: DeviceState, keys: SiteKeys, link: CloudLink) -> None:
    """Make `keys` the device's site keys and name their key id in `cloud.json`, each by an atomic rename."""
    old, nxt = state.dir / OLD_KEYS, state.dir / NEXT_KEYS
    if not nxt.exists():
        write_private(nxt, keys.to_bytes())
    old.unlink(missing_ok=True)
    if state.keys_path.exists():
        os.link(state.keys_path, old)  # the old keys stay readable until the switch is complete
    os.replace(nxt, state.keys_path)
    _replace_private(
        state.cloud_path, json.dumps(dataclasses.asdict(dataclasses.replace(link, key_id=keys.key_id)), indent=2).encode()
    )
    _sync_dir(state.dir)
    old.unlink(missing_ok=True)  # renewal means the old secret key is gone
    _sync_dir(state.dir)


def _cloud_key_id(client: CloudClient) -> str | None:
    try:
        return str(client.stats()["key_id"])
    except (CloudError, KeyError, TypeError):
        return None


def _abort(client: CloudClient) -> None:
    """Best effort: drop what was staged (the next rekey would replace it anyway)."""
    try:
        client.abort_rekey()
    except CloudError:
        pass


def resume(state: DeviceState, client: CloudClient, say: Callable[[str], None]) -> bool:
    """Finish or undo an interrupted rekey; True if one was finished (the device is now on the new keys)."""
    nxt = state.dir / NEXT_KEYS
    keys, link = state.load_keys(), state.load_cloud()
    if nxt.exists():
        pending = SiteKeys.from_bytes(nxt.read_bytes())
        on = _cloud_key_id(client)
        if on is None:
            raise RekeyError("an earlier rekey is unfinished and the cloud cannot be asked which keys it uses: retry later")
        if on == pending.key_id:
            switch_keys(state, pending, link)
            say(f"finished an interrupted rekey: now on key id {pending.key_id}")
            return True
        nxt.unlink()
        say(f"dropped the keys of an unfinished rekey ({pending.key_id}): the cloud never switched to them")
    elif link.key_id != keys.key_id and _cloud_key_id(client) == keys.key_id:
        switch_keys(state, keys, link)  # crashed between the two renames
        say(f"finished an interrupted rekey: now on key id {keys.key_id}")
        return True
    return False


def open_all(
    client: CloudClient, sealer: TemplateSealer, subjects: list[str], key_id: str, say: Callable[[str], None]
) -> dict[str, SealedTemplate]:
    """Every subject's sealed template, opened; RekeyError naming those that do not open."""
    opened, failed = {}, []
    for subject in subjects:
        try:
            opened[subject] = sealer.open(client.sealed(subject), subject, key_id)
        except (CloudError, SealError) as exc:
            failed.append(subject)
            say(f"  {subject}: sealed template unusable: {exc}")
    if failed:
        raise RekeyError(
            f"{len(failed)} of {len(subjects)} subject(s) have no sealed template that opens ({', '.join(failed)}): "
            "enroll them again or remove them, then run rekey again. Nothing was changed."
        )
    return opened


def rekey(state: DeviceState, client: CloudClient, site: str, say: Callable[[str], None] = print) -> RekeyResult:
    """Renew the site's keys as the module doc says; returns the old and new key ids and the new gallery version."""
    resume(state, client, say)
    keys, link = state.load_keys(), state.load_cloud()
    if link.key_id != keys.key_id:
        raise RekeyError(f"{state.cloud_path} names key {link.key_id} but {state.keys_path} holds {keys.key_id}")
    sealer = TemplateSealer.load(state.dir, site)
    labels = LabelCipher.load(state.dir, site)
    listing = client.subjects()
    version = int(listing["gallery_version"])
    subjects = [str(item["subject"]) for item in listing["subjects"]]
    say(f"rekey of site {site!r}: {len(subjects)} subject(s), gallery version {version}, key id {keys.key_id}")
    opened = open_all(client, sealer, subjects, keys.key_id, say)

    new_keys = generate_site_keys(keys.params.dim)
    nxt = state.dir / NEXT_KEYS
    nxt.unlink(missing_ok=True)
    write_private(nxt, new_keys.to_bytes())
    say(f"new key id {new_keys.key_id}")
    try:
        client.stage_rekey(new_keys.evaluation_bytes, version)
        for n, subject in enumerate(subjects, 1):
            sealed = opened[subject]
            enrollment = encrypt_enrollment(new_keys, sealed.template)
            resealed = sealer.seal(
                subject, new_keys.key_id, sealed.template, sealed.label, version=sealed.version, photos=sealed.photos
            )
            client.stage_rekey_subject(subject, new_keys.key_id, enrollment, labels.encrypt(sealed.label), resealed)
            say(f"  [{n}/{len(subjects)}] {subject}  {sealed.label}: re-encrypted")
    except CloudError as exc:  # nothing is switched before the commit
        nxt.unlink(missing_ok=True)
        _abort(client)
        raise RekeyError(f"{exc}. Nothing was switched: the device keeps its keys ({keys.key_id}).") from None
    # The cloud rebuilds every block (about 0.35 s per subject on one core): wait long enough.
    client.timeout = max(client.timeout, COMMIT_SECONDS_BASE + COMMIT_SECONDS_PER_SUBJECT * len(subjects))
    try:
        answer = client.commit_rekey(new_keys.key_id, version)
    except CloudError as exc:
        on = _cloud_key_id(client)  # a lost answer is not a refusal: ask which keys the cloud is on
        if on == keys.key_id:
            nxt.unlink(missing_ok=True)
            _abort(client)
            raise RekeyError(f"{exc}. The cloud keeps its gallery and this device its keys ({keys.key_id}).") from None
        if on != new_keys.key_id:
            raise RekeyError(f"{exc}; the switch may or may not have happened: run rekey again to finish it") from None
        answer = {"gallery_version": version + 1}
    switch_keys(state, new_keys, link)
    say(f"switched to key id {new_keys.key_id}; gallery version {answer.get('gallery_version')}; restart the door agent")
    return RekeyResult(keys.key_id, new_keys.key_id, int(answer.get("gallery_version", 0)), len(subjects))


__all__ = ["NEXT_KEYS", "OLD_KEYS", "RekeyError", "RekeyResult", "rekey", "resume", "switch_keys"]
