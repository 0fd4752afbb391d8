"""What the device keeps in its state directory (all files 0600, the directory 0700).

- `site.keys`   the site's CKKS keys, SECRET key included (never leaves the device);
- `label.key`   AES-GCM key for subject labels (see blindgate.device.labels);
- `template.key` AES-GCM key sealing enrolled templates (blindgate.device.sealing; the site's, never the cloud's);
- `site_state.json` the site's versioned state: the deny list of removed subjects (blindgate.device.site_state);
- `cloud.json`  what registration returned: site token, key id, the cloud's Ed25519 public key;
- `door.key`    this door's Ed25519 request-signing key (PEM); its public half is registered with the cloud;
- `claim_sources.json` the claim sources (keypad, badge reader, HA) and their AES keys (blindgate.device.claim_sources);
- `credentials.json` badge ids and PINs as salted scrypt hashes, per subject (blindgate.device.credentials);
- `access_rules.json` who may enter when: disabled people, groups, time windows (blindgate.device.access_store);
- `snapshots/`  unknown-face JPEGs, when `[snapshots]` is enabled (blindgate.device.snapshots);
- `audit.jsonl` the local event history (no images, no scores).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blindgate.shared.engine import SiteKeys
from blindgate.shared.errors import BlindgateError
from blindgate.shared.protocol import (
    ProtocolError,
    new_signing_key,
    signing_key_from_pem,
    signing_key_to_pem,
)
from blindgate.shared.protocol.cloud_keys import KeyRing

from .keyfiles import write_private

KEYS_FILE = "site.keys"
CLOUD_FILE = "cloud.json"
AUDIT_FILE = "audit.jsonl"
DOOR_KEY_FILE = "door.key"


class StateError(BlindgateError, RuntimeError):
    """The state directory is missing something `init` creates."""


@dataclass
class CloudLink:
    """What registration with a cloud returned: the device needs it to talk to and trust that cloud."""

    site: str
    key_id: str
    token: str
    cloud_public_key: str  # 64 hex chars (Ed25519)
    cloud_url: str = ""
    # keys the pinned one endorsed during a rotation (refresh-cloud-key): accepted as well
    next_cloud_keys: list[str] = field(default_factory=list)

    def verify_key(self) -> KeyRing:
        """The keys that check the cloud's signed replies: the pinned one and any it endorsed."""
        return KeyRing([self.cloud_public_key, *self.next_cloud_keys])


class DeviceState:
    """The device's state directory: where each file lives, and reading/writing them owner-only."""

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir)

    def ensure_dir(self) -> None:
        """Create the directory 0700, or tighten an existing one to 0700 (on `init` and on every start)."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            os.chmod(self.dir, 0o700)
        except PermissionError:
            pass  # e.g. StateDirectory= owned by systemd with its own mode

    @property
    def keys_path(self) -> Path:
        return self.dir / KEYS_FILE

    @property
    def cloud_path(self) -> Path:
        return self.dir / CLOUD_FILE

    @property
    def audit_path(self) -> Path:
        return self.dir / AUDIT_FILE

    @property
    def door_key_path(self) -> Path:
        return self.dir / DOOR_KEY_FILE

    @property
    def next_door_key_path(self) -> Path:
        """A rotation's new key, until the cloud has registered it (device/door_key.py)."""
        return self.dir / f"{DOOR_KEY_FILE}.next"

    def create_door_key(self, path: Path | None = None) -> Ed25519PrivateKey:
        """A new door key in `door.key` (or `path`), 0600; refuses to replace an existing file."""
        key = new_signing_key()
        write_private(path or self.door_key_path, signing_key_to_pem(key))
        return key

    def load_door_key(self, path: Path | None = None) -> Ed25519PrivateKey:
        path = path or self.door_key_path
        try:
            return signing_key_from_pem(path.read_bytes())
        except FileNotFoundError:
            raise StateError(f"no door key at {path}: run `blindgate-device init` first") from None
        except (ValueError, ProtocolError) as exc:
            raise StateError(f"{path} is corrupted: {exc}") from None

    def save_keys(self, keys: SiteKeys) -> None:
        write_private(self.keys_path, keys.to_bytes())

    def load_keys(self) -> SiteKeys:
        try:
            data = self.keys_path.read_bytes()
        except FileNotFoundError:
            raise StateError(f"no site keys at {self.keys_path}: run `blindgate-device init` first") from None
        return SiteKeys.from_bytes(data)

    def save_cloud(self, link: CloudLink) -> None:
        data = json.dumps(dataclasses.asdict(link), indent=2).encode()
        write_private(self.cloud_path, data, exclusive=False)

    def load_cloud(self) -> CloudLink:
        try:
            data = json.loads(self.cloud_path.read_text())
            return CloudLink(**data)
        except FileNotFoundError:
            raise StateError(f"not registered with a cloud ({self.cloud_path} missing): run `blindgate-device init`") from None
        except (ValueError, TypeError) as exc:
            raise StateError(f"{self.cloud_path} is corrupted: {exc}") from None
