"""The one error tree: every error blindgate raises on purpose derives from `BlindgateError`.

Each subclass keeps the builtin it has always been (`ValueError` for bad input, `RuntimeError`
for a failed operation), so callers that catch those still work, while a CLI catches one type,
prints its message and exits non-zero. Messages say what was wrong and what to do.
"""

from __future__ import annotations


class BlindgateError(Exception):
    """Base of blindgate's own errors; its message is meant for the person running the command."""
