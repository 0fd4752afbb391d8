"""The site's people as this door manages them: one set of operations for the CLI and the web console.

`blindgate-device enroll/list/remove/access ...` and the console's People page call the same
methods here, so both check, order and refuse things the same way:
- names live only on the device: the cloud lists subjects with encrypted labels, decrypted here;
- `remove` denies the subject on this device FIRST (site_state.json), then asks the cloud, so a
  failing or lying cloud cannot bring a removed person back in;
- enable/disable and access hours are local rules (access_rules.json), never sent anywhere.
A person is named by subject id or by a name exactly one enrolled subject has.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass

from blindgate.shared.config import DeviceConfig
from blindgate.shared.errors import BlindgateError

from .access_rules import AccessRules, Window, windows_for
from .access_store import AccessRuleFile
from .cloud_client import CloudClient
from .credentials import CredentialStore, drop_credentials, set_credentials
from .enrollment import EnrollFace, Say, Site, _stderr, enroll
from .labels import LabelCipher, LabelError
from .operating_point import check_decision_config
from .provision import tls_context
from .sealing import TemplateSealer
from .site_state import SiteState
from .state import DeviceState

SUBJECT_ID = re.compile(r"[0-9a-f]{32}")


class PersonError(BlindgateError, ValueError):
    """A person could not be found, or the name is ambiguous; the message says what to give instead."""


@dataclass(frozen=True)
class Person:
    """One enrolled subject as the door sees it: the name decrypted here and the local access rules."""

    subject: str
    name: str | None  # None: the label does not decrypt with this site's key
    created: object
    block: object = None
    slot: object = None
    enabled: bool = True
    windows: tuple[str, ...] = ()  # the person's own access hours
    effective: tuple[str, ...] = ()  # own and group hours together; empty = any time

    def as_row(self) -> dict:
        """The CLI's `list --json` row."""
        return {"subject": self.subject, "name": self.name, "block": self.block, "slot": self.slot, "created": self.created}


class People:
    """The enrolled people of `config`'s site; every method reads the state directory afresh."""

    def __init__(self, config: DeviceConfig) -> None:
        self.config = config
        self.state = DeviceState(config.state_dir)

    def client(self) -> CloudClient:
        return cloud_client(self.config, self.state)

    def site(self) -> Site:
        """What enrolling needs; fails (unprovisioned) before any camera or photo is read."""
        check_decision_config(self.config.decision)
        return Site(
            keys=self.state.load_keys(),
            sealer=TemplateSealer.load(self.state.dir, self.config.site),
            labels=LabelCipher.load(self.state.dir, self.config.site),
            client=self.client(),
            site_state=SiteState(self.state.dir, self.config.site),
            decision=self.config.decision,
        )

    # -- reading ------------------------------------------------------------------------------

    def listing(self) -> tuple[int, list[Person]]:
        """The cloud's gallery version and its subjects, names decrypted here, with the local access rules."""
        labels = LabelCipher.load(self.state.dir, self.config.site)
        answer = self.client().subjects()
        rules = self.rules()
        people = []
        for item in answer.get("subjects", []):
            try:
                name: str | None = labels.decrypt(base64.b64decode(item["label"]))
            except (LabelError, ValueError, TypeError):
                name = None
            subject = str(item["subject"])
            rule = rules.people.get(subject)
            people.append(
                Person(
                    subject=subject,
                    name=name,
                    created=item.get("created"),
                    block=item.get("block"),
                    slot=item.get("slot"),
                    enabled=rule.enabled if rule is not None else True,
                    windows=tuple(str(w) for w in rule.windows) if rule is not None else (),
                    effective=tuple(str(w) for w in windows_for(rules, subject)),
                )
            )
        return int(answer.get("gallery_version", 0)), people

    def resolve(self, text: str) -> str:
        """A subject id as given (no cloud needed), or the id of the one subject with this name."""
        if SUBJECT_ID.fullmatch(text):
            return text
        ids = [p.subject for p in self.listing()[1] if p.name == text]
        if len(ids) > 1:
            raise PersonError(f"{len(ids)} subjects are named {text!r}: give the subject id ({', '.join(ids)})")
        if not ids:
            raise PersonError(f"no subject {text!r} (see `blindgate-device list`)")
        return ids[0]

    def rules(self) -> AccessRules:
        return AccessRuleFile(self.config.state_dir).read()

    # -- changing -----------------------------------------------------------------------------

    def enroll(
        self,
        name: str,
        faces: list[EnrollFace],
        add_to: str | None = None,
        badge: str | None = None,
        pin: str | None = None,
        say: Say = _stderr,
    ) -> dict:
        """Check and enroll `faces` as `name` (or add them to `add_to`); badge/PIN for the claimed-identity mode."""
        name = check_name(name)
        site = self.site()
        credentials = CredentialStore(self.state.dir)
        if add_to is None:
            credentials.check_available(None, badge=badge, pin=pin)  # refused before anything is enrolled
        result = enroll(site, name, faces, add_to=add_to, carry_over=credentials.move, say=say)
        set_credentials(self.state.dir, result["subject"], badge, pin)
        return result

    def remove(self, text: str, say: Say = _stderr) -> dict:
        """Deny the subject on this device first, drop its badge/PIN, then remove it from the cloud."""
        subject = self.resolve(text)
        denied = SiteState(self.state.dir, self.config.site).deny([subject])
        drop_credentials(self.state.dir, subject)  # their badge and PIN claim nobody any more
        say(f"denied {subject} at this site (site state version {denied.version})")
        answer = self.client().remove(subject)
        return {"subject": subject, "gallery_version": answer.get("gallery_version")}

    def set_enabled(self, text: str, enabled: bool) -> str:
        """Allow or refuse a person at any time (they stay enrolled); returns the subject id."""
        subject = self.resolve(text)
        store = AccessRuleFile(self.config.state_dir)
        rules = store.read()
        rules.person(subject).enabled = enabled
        store.write(rules)
        return subject

    def set_windows(self, text: str, windows: Sequence[str]) -> tuple[str, list[Window]]:
        """A person's own access hours ('DAYS HH:MM-HH:MM' each; none: no hours of their own)."""
        parsed = [Window.parse(w) for w in windows]  # every window checked before anything is written
        subject = self.resolve(text)
        store = AccessRuleFile(self.config.state_dir)
        rules = store.read()
        rules.person(subject).windows = parsed
        store.write(rules)
        return subject, parsed


def cloud_client(config: DeviceConfig, state: DeviceState) -> CloudClient:
    """The cloud's HTTP API as this registered door (StateError when it is not registered)."""
    link = state.load_cloud()
    return CloudClient(config.cloud_url, config.site, token=link.token, tls=tls_context(config.cloud_ca_file))


MAX_NAME = 200


def check_name(name: str) -> str:
    """A person's name as enrolled: printable, 1 to MAX_NAME characters, outer spaces dropped."""
    name = name.strip()
    if not name:
        raise PersonError("a name is needed")
    if len(name) > MAX_NAME:
        raise PersonError(f"the name is longer than {MAX_NAME} characters")
    if not name.isprintable():
        raise PersonError("the name contains control characters")
    return name


__all__ = ["SUBJECT_ID", "cloud_client", "People", "Person", "PersonError", "check_name"]
