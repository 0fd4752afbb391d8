"""The device's memory of the probes it sent, so that each signed reply counts at most once.

`open_reply` proves a reply comes from the site's cloud; this guard proves it answers a request
this device still waits for. Together they stop replayed, duplicated, foreign and stale replies,
and (through the signed probe hash, mode and subject) replies that scanned some other probe.
"""

from __future__ import annotations

import time

from blindgate.shared.protocol.errors import ProtocolError
from blindgate.shared.protocol.messages import ProbeRequest, Reply, ReplyStatus


class PendingRequests:
    """A reply counts once, for its own fresh request.

    A reply is accepted only if it answers a request this device sent and still waits for, with
    the same device id and nonce, before both the request's and the reply's expiry. An `ok`
    reply must also name the SHA-256 of this request's own probe, its mode and subject: a relay
    that swapped in a recorded probe gets a reply that is refused. Replies without results may
    leave the hash empty (they can only keep the door locked). Accepting forgets the request, so
    a duplicated or replayed reply is refused.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self._waiting: dict[str, ProbeRequest] = {}

    def add(self, req: ProbeRequest) -> None:
        """Remember a request just sent."""
        self._waiting[req.request_id] = req

    def discard(self, request_id: str) -> None:
        """Forget a request (its publish failed, or the agent gave up on it)."""
        self._waiting.pop(request_id, None)

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._waiting

    def expire(self, now: float | None = None) -> None:
        """Forget every request past its expiry: no reply can be accepted for it any more."""
        now = time.time() if now is None else now
        for rid in [rid for rid, req in self._waiting.items() if req.expired(now)]:
            del self._waiting[rid]

    def accept(self, reply: Reply, now: float | None = None) -> ProbeRequest:
        """Return the request `reply` answers, or raise ProtocolError (stale, duplicate, foreign)."""
        now = time.time() if now is None else now
        req = self._waiting.get(reply.request_id)
        if req is None:
            raise ProtocolError("reply to no pending request (duplicate, replayed or too late)")
        if reply.device != self.device or reply.site != req.site:
            raise ProtocolError(f"reply addressed to {reply.site}/{reply.device}, not this device")
        if reply.nonce != req.nonce:
            raise ProtocolError("reply nonce does not match the request's")
        if reply.probe_sha256 or reply.status == ReplyStatus.OK or reply.results:
            if reply.probe_sha256 != req.probe_sha256:
                raise ProtocolError("reply scanned another probe than this request's (probe hash mismatch)")
            if reply.mode != req.mode or reply.subject != req.subject:
                raise ProtocolError("reply is for another mode or subject than this request's")
        if req.expired(now) or now > reply.expires_at:
            del self._waiting[reply.request_id]
            raise ProtocolError("stale reply: past its request's or its own expiry")
        del self._waiting[reply.request_id]
        return req
