"""Templates sealed by the device: the check a lying cloud cannot pass.

The cloud holds the evaluation keys, so from a probe Enc(x) it can compute Enc(-|x|^2) and make
any slot decode to distance 0; a signature only says who sent that. So at enrollment the device
also seals the template it enrolls, with the person's name, under AES-256-GCM with the site's
template key (`template.key`, 0600 in the state directory; the site's doors hold it, the cloud
never does). The cloud stores the sealed blob beside the encrypted enrollment and hands it back
on request. Before unlocking, the device opens the matched subject's blob and recomputes the
distance to the live face in plaintext (`plaintext_distance`): a cloud that lies about the scan
cannot make a stranger close to a template it cannot forge.

The associated data binds a blob to its site, subject id, CKKS key id and template version, so
a blob moved to another subject, another site or another key set does not open. Layout:
`BGT2 | template version (u32) | nonce (12) | AES-GCM(dim (u16) | photos (u16) | float64 x dim | name utf-8)`.
`photos` is how many photos or frames were averaged into the template (0: not recorded), so
`enroll --add-to` can weigh new photos against the old mean. Blobs of the first layout (`BGT1`,
no photo count) still open, with `photos` 0; each layout has its own associated-data context, so
a BGT1 blob relabelled BGT2 (or back) does not open.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from blindgate.shared.errors import BlindgateError
from blindgate.shared.limits import MAX_SEALED_BYTES

from .keyfiles import create_aes_key, load_aes_key

KEY_FILE = "template.key"
MAGIC = b"BGT2"
MAGIC_V1 = b"BGT1"  # no photo count: still opened, never written
MAX_PHOTOS = 2**16 - 1
NONCE_BYTES = 12
_HEAD = struct.Struct("<4sI")
_AD_CONTEXT = {MAGIC_V1: b"blindgate-sealed-template-v1\x00", MAGIC: b"blindgate-sealed-template-v2\x00"}


class SealError(BlindgateError, ValueError):
    """A sealed template that cannot be made or opened: altered, moved, or sealed with another key."""


@dataclass(frozen=True)
class SealedTemplate:
    """An opened sealed template: whose it is, under which keys, and the enrolled values."""

    subject: str
    key_id: str
    version: int
    label: str
    template: np.ndarray = field(repr=False)
    photos: int = 0  # photos or frames averaged into the template; 0: not recorded (a BGT1 blob)


def plaintext_distance(template: np.ndarray, embedding: np.ndarray) -> float:
    """The Euclidean distance the encrypted scan claims to have computed, recomputed on the device."""
    return float(np.linalg.norm(np.asarray(template, dtype=np.float64) - np.asarray(embedding, dtype=np.float64)))


class TemplateSealer:
    """Seals and opens one site's templates with the site's template key."""

    def __init__(self, key: bytes, site: str) -> None:
        if len(key) != 32:
            raise SealError(f"template key must be 32 bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self.site = site

    @staticmethod
    def create_key(state_dir: str | Path) -> Path:
        """A new template key in `state_dir` (0600); refuses to replace one (its blobs would not open)."""
        return create_aes_key(Path(state_dir) / KEY_FILE, SealError, "templates sealed with it")

    @classmethod
    def load(cls, state_dir: str | Path, site: str) -> TemplateSealer:
        return cls(load_aes_key(Path(state_dir) / KEY_FILE, SealError, "template key"), site)

    def _ad(self, subject: str, key_id: str, version: int, magic: bytes = MAGIC) -> bytes:
        record = {"site": self.site, "subject": subject, "key_id": key_id, "version": version}
        return _AD_CONTEXT[magic] + json.dumps(record, sort_keys=True, separators=(",", ":")).encode()

    def seal(self, subject: str, key_id: str, template: np.ndarray, label: str, version: int = 1, photos: int = 0) -> bytes:
        """The blob the cloud keeps for `subject`: template, photos averaged into it and name, readable only by the site."""
        values = np.asarray(template, dtype="<f8")
        if values.ndim != 1 or not 2 <= values.size <= 4096 or not np.all(np.isfinite(values)):
            raise SealError(f"a template is a finite vector of 2 to 4096 values, got shape {values.shape}")
        if not 1 <= version < 2**32:
            raise SealError(f"template version must be 1 to 2^32-1, got {version}")
        if not 0 <= photos <= MAX_PHOTOS:
            raise SealError(f"photo count must be 0 to {MAX_PHOTOS}, got {photos}")
        plain = struct.pack("<HH", values.size, photos) + values.tobytes() + label.encode("utf-8")
        nonce = os.urandom(NONCE_BYTES)
        blob = _HEAD.pack(MAGIC, version) + nonce + self._aead.encrypt(nonce, plain, self._ad(subject, key_id, version))
        if len(blob) > MAX_SEALED_BYTES:
            raise SealError(f"sealed template is {len(blob)} bytes, more than the {MAX_SEALED_BYTES} allowed (name too long?)")
        return blob

    def open(self, blob: bytes, subject: str, key_id: str) -> SealedTemplate:
        """Open `subject`'s blob sealed under `key_id`; SealError if it was altered, moved or forged."""
        if not isinstance(blob, (bytes, bytearray)) or not _HEAD.size + NONCE_BYTES + 16 <= len(blob) <= MAX_SEALED_BYTES:
            raise SealError("not a sealed template (wrong size)")
        magic, version = _HEAD.unpack_from(blob)
        if magic not in _AD_CONTEXT:
            raise SealError("not a sealed template (bad magic)")
        nonce = bytes(blob[_HEAD.size : _HEAD.size + NONCE_BYTES])
        try:
            plain = self._aead.decrypt(nonce, bytes(blob[_HEAD.size + NONCE_BYTES :]), self._ad(subject, key_id, version, magic))
        except InvalidTag:
            raise SealError(f"sealed template of {subject!r} does not open: altered, moved, or not sealed by this site") from None
        # Authentic but malformed (a buggy or older sealer): refuse rather than misread it.
        layout = "<H" if magic == MAGIC_V1 else "<HH"
        start = struct.calcsize(layout)
        dim, photos = (struct.unpack_from(layout, plain) + (0,))[:2] if len(plain) >= start else (0, 0)
        end = start + 8 * dim
        if not 2 <= dim <= 4096 or len(plain) < end:
            raise SealError(f"sealed template of {subject!r} is malformed (dimension {dim}, {len(plain)} bytes)")
        template = np.frombuffer(plain[start:end], dtype="<f8").astype(np.float64)
        if not np.all(np.isfinite(template)):
            raise SealError(f"sealed template of {subject!r} holds non-finite values")
        try:
            label = plain[end:].decode("utf-8")
        except UnicodeDecodeError:
            raise SealError(f"sealed template of {subject!r} has a name that is not UTF-8") from None
        return SealedTemplate(subject=subject, key_id=key_id, version=version, label=label, template=template, photos=photos)
