"""The protocol's one error: a message the device or the cloud must not act on."""

from __future__ import annotations

from blindgate.shared.errors import BlindgateError


class ProtocolError(BlindgateError, ValueError):
    """A malformed, unauthenticated, stale or unexpected message; the door stays locked."""
