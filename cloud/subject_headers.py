"""The enrollment headers that carry the device's own subject id and its sealed template.

The device chooses the subject id (random 128-bit hex) so it can bind its sealed template to it
(device/sealing.py); the cloud checks the id's form and the blob's size and stores both as given.
Both headers are optional for older devices (the cloud then makes the id; no sealed blob, which a
checking device treats as no proof: its door will not open for that subject).
"""

from __future__ import annotations

import base64
import binascii
import re

from aiohttp import web

from blindgate.shared.limits import MAX_SEALED_BYTES

from .http_errors import json_error

SUBJECT_HEADER = "X-Blindgate-Subject"
SEALED_HEADER = "X-Blindgate-Sealed"
SUBJECT_ID = re.compile(r"[0-9a-f]{32}")


def requested_subject(request: web.Request) -> str | None:
    """The subject id the device chose (32 lowercase hex), None if absent; 400 if malformed."""
    subject = request.headers.get(SUBJECT_HEADER)
    if subject is None:
        return None
    if not SUBJECT_ID.fullmatch(subject):
        raise json_error(400, f"{SUBJECT_HEADER} must be 32 lowercase hex characters (a random 128-bit id)")
    return subject


def sealed_template(request: web.Request) -> bytes:
    """The decoded sealed template (empty if absent); 400 if not base64, 413 if over MAX_SEALED_BYTES."""
    text = request.headers.get(SEALED_HEADER)
    if text is None:
        return b""
    if len(text) > 4 * (MAX_SEALED_BYTES // 3 + 1):
        raise json_error(413, f"sealed template is more than the {MAX_SEALED_BYTES} bytes allowed")
    try:
        sealed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise json_error(400, f"{SEALED_HEADER} is not valid base64") from None
    if len(sealed) > MAX_SEALED_BYTES:
        raise json_error(413, f"sealed template is {len(sealed)} bytes; the limit is {MAX_SEALED_BYTES}")
    return sealed


__all__ = ["SEALED_HEADER", "SUBJECT_HEADER", "requested_subject", "sealed_template"]
