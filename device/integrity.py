"""The device-side check a lying cloud cannot satisfy, run before any match may open the door.

The cloud holds the evaluation keys, so it can answer any probe Enc(x) with Enc(-|x|^2) and
make every slot decode to distance 0 under a valid signature. So after the encrypted verdict
says MATCH, `TemplateCheck` fetches the matched subject's sealed template (device/sealing.py;
cached per gallery version and subject), opens it with the site's template key (the cloud never
holds it), recomputes the distance to the live embedding in plaintext and runs the same access
rule on it. The match stands only if that also matches AND the two distances agree within the
encryption error (`AGREEMENT`). A missing or unopenable blob, a disagreement, or a subject on
the site's deny list (device/site_state.py) is an integrity failure: the door stays locked and
the agent raises the `cloud_integrity` alarm (a cloud that cannot be reached at all only keeps the
door locked: that is a network fault, not a lie). The label shown is the sealed blob's (authenticated),
never the cloud's directory's.

Cost: the first match of a subject per gallery version is one HTTP GET (~1.1 KB for dlib) plus
an AES-GCM open and one 128-value distance (measured on loopback: ~1.5 ms median, 1080 bytes;
the open ~0.02 ms); later frames use the cache (~15 us).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from blindgate.shared.config import DecisionConfig

from .decision import VerdictKind, access_verdict
from .sealing import SealedTemplate, SealError, TemplateSealer, plaintext_distance
from .site_state import SiteState

# CKKS error on a decrypted distance is ~1e-6; anything beyond this is a lie, not noise.
AGREEMENT = 1e-3
# ... except near distance 0, where the square root magnifies the error of the decrypted squared
# distance (~1e-6 becomes 1e-3): there the squared distances are compared instead. A site's first
# block lays each template out 4 times (shared/engine), and the door adds the 4 decrypted partial
# sums, so their errors add: 1.5e-5 was seen for a probe identical to its template (decrypted
# distance 0.0039 for 0.0), which the former bound (1e-5) called a lie about once in two fresh
# runs of tests/device/test_integrity_attacks.py. 1e-4 keeps a margin over that and is still
# 0.05% of the squared threshold (~0.22): no lie this small can turn a non-match into a match.
SQUARED_AGREEMENT = 1e-4
CACHE_LIMIT = 256


@dataclass(frozen=True)
class CheckResult:
    """Whether the match stands; `label` is the sealed (authenticated) name when it does; `alarm` when it is a lie."""

    ok: bool
    reason: str = ""
    label: str | None = None
    alarm: bool = True  # a failure that means the cloud lied (or lost the proof), not noise


class Unavailable(SealError):
    """The cloud did not hand over the sealed template; `unreachable` when it could not be asked at all."""

    def __init__(self, message: str, unreachable: bool) -> None:
        super().__init__(message)
        self.unreachable = unreachable


def agree(plaintext: float, decrypted: float) -> bool:
    """Do the recomputed and the decrypted distance agree within the encryption error? (NaN: no)"""
    return abs(plaintext - decrypted) <= AGREEMENT or abs(plaintext**2 - decrypted**2) <= SQUARED_AGREEMENT


class TemplateCheck:
    """Recompute a claimed match in plaintext from the subject's sealed template."""

    def __init__(
        self,
        fetch_sealed: Callable[[str], bytes],
        sealer: TemplateSealer,
        key_id: str,
        config: DecisionConfig,
        site_state: SiteState | None = None,
    ) -> None:
        self._fetch = fetch_sealed
        self.sealer = sealer
        self.key_id = key_id
        self.config = config
        self.site_state = site_state
        self._cache: dict[tuple[int, str], SealedTemplate] = {}
        self._guard = threading.Lock()

    def template(self, gallery_version: int, subject: str) -> SealedTemplate:
        """The opened sealed template of `subject` (cached per gallery version); SealError if none opens."""
        key = (gallery_version, subject)
        with self._guard:
            found = self._cache.get(key)
        if found is not None:
            return found
        try:
            blob = self._fetch(subject)
        except Exception as exc:  # network, HTTP 404, ...: no blob is no proof
            raise Unavailable(f"sealed template of {subject!r} unavailable: {exc}", getattr(exc, "status", None) == 0) from None
        opened = self.sealer.open(blob, subject, self.key_id)
        with self._guard:
            if len(self._cache) >= CACHE_LIMIT or any(v != gallery_version for v, _ in self._cache):
                self._cache.clear()  # a new gallery version: the old entries will not be asked for again
            self._cache[key] = opened
        return opened

    def confirm(
        self, gallery_version: int, subject: str, decrypted: float, embedding: np.ndarray, threshold: float
    ) -> CheckResult:
        """Does the plaintext recomputation confirm the cloud's claimed match of `subject` at `threshold`?"""
        if self.site_state is not None and self.site_state.is_denied(subject):
            return CheckResult(False, f"subject {subject} was removed at this site (deny list)")
        try:
            sealed = self.template(gallery_version, subject)
        except Unavailable as exc:  # unreachable is a network fault; a refusal (404...) is the cloud's doing
            return CheckResult(False, str(exc), alarm=not exc.unreachable)
        except SealError as exc:
            return CheckResult(False, str(exc))
        try:
            distance = plaintext_distance(sealed.template, embedding)
        except ValueError as exc:
            return CheckResult(False, f"sealed template of {subject} does not fit the embedding: {exc}")
        if not agree(distance, decrypted):
            return CheckResult(False, f"cloud's distance disagrees with the sealed template of {subject}")
        if access_verdict(distance, threshold, self.config.doubt_margin) is not VerdictKind.MATCH:
            # Agreeing within the encryption error but just over the threshold: borderline, no lie.
            return CheckResult(False, "borderline face (plaintext check)", alarm=False)
        return CheckResult(True, "confirmed", sealed.label, alarm=False)


__all__ = ["AGREEMENT", "SQUARED_AGREEMENT", "CheckResult", "TemplateCheck", "Unavailable", "agree"]
