"""Why the matcher refuses a request: one error type with a kind, safe to cross processes and reach a device."""

from __future__ import annotations

from enum import StrEnum

from blindgate.shared.errors import BlindgateError


class MatchErrorKind(StrEnum):
    """Why the matcher refused a request; the values are what logs and tests have always seen."""

    BUSY = "busy"
    BAD_REQUEST = "bad_request"  # malformed probe or enrollment: the device's fault
    UNKNOWN_SITE = "unknown_site"
    WRONG_KEY = "wrong_key"
    UNKNOWN_SUBJECT = "unknown_subject"
    UNAVAILABLE = "unavailable"  # shutting down, or the store cannot be read


class MatchError(BlindgateError):
    """A request the matcher refuses; `kind` says which refusal, `message` says why.

    Picklable (it crosses the process boundary) and safe to send to a device: it never holds
    probe bytes or anything derived from them.
    """

    def __init__(self, kind: MatchErrorKind, message: str) -> None:
        super().__init__(kind, message)
        self.kind = MatchErrorKind(kind)
        self.message = message

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"
