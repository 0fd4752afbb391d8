"""One accepted reply -> a verdict: decrypt, choose the operating point, apply the access rule,
name the subject, and confirm it against the sealed template.

Identify (1:N): `decode_scan` gives every occupied slot's distance; the threshold is the operating
point for the number of templates THIS device decoded (the occupied slots), not a count the
cloud asserts, so a cloud that lists fewer templates cannot loosen the per-frame bound. Verify
(1:1): the claimed subject's one distance (`decode_verify`) at the per-comparison operating point.
Either way a MATCH must be confirmed by `TemplateCheck` (device/integrity.py) at the same
threshold; a failed confirmation that means the cloud lied is reported through `when_alarm`.

Fail secure: anything unexpected (a busy or error status, a block listed twice, a reply for
another mode or subject, an undecodable result, an unknown slot) is DOUBT: the door stays locked.
Nothing decrypted leaves this module except as a verdict kind and a subject.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from blindgate.shared.config import DecisionConfig
from blindgate.shared.engine import EngineError, SiteKeys, decode_scan, decode_verify
from blindgate.shared.protocol import Mode, ProbeRequest, ProtocolError, Reply, ReplyStatus

from .decision import VerdictKind, access_verdict
from .directory import DirectoryError, SubjectDirectory
from .integrity import TemplateCheck
from .operating_point import OperatingPoint, operating_point


@dataclass(frozen=True)
class Verdict:
    """What one frame's reply means, and how long each step took (ms)."""

    kind: VerdictKind
    reason: str = ""
    subject: str | None = None
    label: str | None = None
    request_id: str | None = None
    gallery_version: int | None = None
    timings: dict[str, float] = field(default_factory=dict)


class ReplyJudge:
    """Judges replies for one door; `when_alarm(reason, request_id)` when the cloud's claim is a lie,
    `when_operating_point(point)` when the identify threshold changes (the gallery grew or shrank)."""

    def __init__(self, keys: SiteKeys, directory: SubjectDirectory, integrity: TemplateCheck, config: DecisionConfig) -> None:
        self.keys = keys
        self.directory = directory
        self.integrity = integrity
        self.config = config
        self.current_point: OperatingPoint | None = None  # the latest identify operating point
        self.when_alarm: Callable[[str, str], None] | None = None
        self.when_operating_point: Callable[[OperatingPoint], None] | None = None
        self._points: dict[tuple[str, int], OperatingPoint] = {}

    def judge(self, reply: Reply, request: ProbeRequest, embedding: np.ndarray) -> Verdict:
        """The verdict on `reply`, already authenticated and matched to `request` (PendingRequests)."""
        if request.mode == Mode.VERIFY:
            return self._verify(reply, request, embedding)
        return self._identify(reply, request, embedding)

    def _alarm(self, reason: str, request_id: str) -> None:
        if self.when_alarm is not None:
            self.when_alarm(reason, request_id)

    def _identify(self, reply: Reply, request: ProbeRequest, embedding: np.ndarray) -> Verdict:
        rid, version = request.request_id, reply.gallery_version
        if reply.status != ReplyStatus.OK:
            return Verdict(VerdictKind.DOUBT, f"cloud answered {reply.status}: {reply.message[:200]}", request_id=rid)
        slots = self.keys.params.slots
        blocks = [r.block for r in reply.results]
        if len(set(blocks)) != len(blocks) or any(b < 0 for b in blocks):
            return Verdict(VerdictKind.DOUBT, "reply lists a block twice", request_id=rid)
        try:
            occupancy = [r.occupancy(slots) for r in reply.results]
            layouts = [r.copies for r in reply.results]
            match = decode_scan(self.keys, embedding, [r.ciphertext for r in reply.results], occupancy, layouts)
        except (EngineError, ProtocolError, ValueError) as exc:
            return Verdict(VerdictKind.DOUBT, f"cannot decode the result: {exc}", request_id=rid)
        # The threshold for the templates this device itself compared against (the occupied slots it
        # decoded), not a count the cloud asserts: fewer templates cannot loosen the per-frame bound.
        point = self.operating_point(int(sum(int(np.count_nonzero(o)) for o in occupancy)))
        kind = access_verdict(match.distance, point.threshold, self.config.doubt_margin)
        if match.best is None:
            return Verdict(VerdictKind.UNKNOWN, "no enrolled subject", request_id=rid, gallery_version=version)
        if kind is VerdictKind.UNKNOWN:
            return Verdict(kind, "unknown face", request_id=rid, gallery_version=version)
        if kind is VerdictKind.DOUBT:
            return Verdict(kind, "borderline face", request_id=rid, gallery_version=version)
        block = reply.results[match.best.block].block
        try:
            subject, _directory_label = self.directory.lookup(version, block, match.best.slot)
        except DirectoryError as exc:
            return Verdict(VerdictKind.DOUBT, str(exc), request_id=rid, gallery_version=version)
        # The cloud's claim, recomputed from what only the site can seal; its label is authenticated.
        check = self.integrity.confirm(version, subject, match.distance, embedding, point.threshold)
        if not check.ok:
            if check.alarm:
                self._alarm(check.reason, rid)
            return Verdict(VerdictKind.DOUBT, check.reason, request_id=rid, gallery_version=version)
        return Verdict(kind, "match", subject=subject, label=check.label, request_id=rid, gallery_version=version)

    def _verify(self, reply: Reply, request: ProbeRequest, embedding: np.ndarray) -> Verdict:
        """A 1:1 reply: the claimed subject's one distance, then the same sealed-template check as identify."""
        rid, version, subject = request.request_id, reply.gallery_version, request.subject
        if reply.status != ReplyStatus.OK:
            return Verdict(VerdictKind.DOUBT, f"cloud answered {reply.status}: {reply.message[:200]}", request_id=rid)
        # PendingRequests binds mode and subject through the signed probe hash; this verdict names the subject, so again
        if subject is None or reply.mode != Mode.VERIFY or reply.subject != subject:
            return Verdict(VerdictKind.DOUBT, "reply is not the verification of the claimed subject", request_id=rid)
        if len(reply.results) != 1:
            return Verdict(VerdictKind.DOUBT, "a verification reply holds exactly one result", request_id=rid)
        try:
            distance = decode_verify(self.keys, reply.results[0].ciphertext)
        except (EngineError, ProtocolError, ValueError) as exc:
            return Verdict(VerdictKind.DOUBT, f"cannot decode the result: {exc}", request_id=rid)
        point = self.operating_point(1, "verify")  # per comparison: independent of the gallery size
        kind = access_verdict(distance, point.threshold, self.config.doubt_margin)
        if kind is VerdictKind.UNKNOWN:
            return Verdict(kind, "face does not match the claim", request_id=rid, gallery_version=version)
        if kind is VerdictKind.DOUBT:
            return Verdict(kind, "borderline face", request_id=rid, gallery_version=version)
        check = self.integrity.confirm(version, subject, distance, embedding, point.threshold)
        if not check.ok:
            if check.alarm:
                self._alarm(check.reason, rid)
            return Verdict(VerdictKind.DOUBT, check.reason, request_id=rid, gallery_version=version)
        return Verdict(kind, "claim verified", subject=subject, label=check.label, request_id=rid, gallery_version=version)

    def operating_point(self, templates: int, mode: str = "identify") -> OperatingPoint:
        """The operating point for one comparison with `templates` templates (cached; logged when it changes)."""
        key = (mode, templates)
        point = self._points.get(key)
        if point is None:
            point = operating_point(self.config, templates, mode)
            if len(self._points) > 64:
                self._points.clear()
            self._points[key] = point
        if mode == "identify" and point != self.current_point:
            self.current_point = point
            if self.when_operating_point is not None:
                self.when_operating_point(point)
        return point


__all__ = ["ReplyJudge", "Verdict"]
