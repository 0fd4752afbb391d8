"""The enrollment headers: the device's own subject id, its encrypted name and its sealed template.

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

from blindgate.shared.limits import MAX_LABEL_BYTES, MAX_SEALED_BYTES

from .http_errors import json_error

SUBJECT_HEADER = "X-Blindgate-Subject"
SEALED_HEADER = "X-Blindgate-Sealed"
LABEL_HEADER = "X-Blindgate-Label"
SUBJECT_ID = re.compile(r"[0-9a-f]{32}")


def requested_subject(request: web.Request) -> str | None:
    """The subject id the device chose (32 lowercase hex), None if absent; 400 if malformed."""
    subject = request.headers.get(SUBJECT_HEADER)
    if subject is None:
        return None
    if not SUBJECT_ID.fullmatch(subject):
        raise json_error(400, f"{SUBJECT_HEADER} must be 32 lowercase hex characters (a random 128-bit id)")
    return subject


def base64_header(request: web.Request, name: str, limit: int, what: str, *, required: bool = True) -> bytes:
    """A base64 header, decoded: 400 if missing (when `required`) or not base64, 413 if over `limit` bytes.

    The encoded length is checked first, so an oversized header is refused before it is decoded.
    """
    text = request.headers.get(name)
    if text is None:
        if required:
            raise json_error(400, f"missing {name} header (base64 of the {what})")
        return b""
    if len(text) > 4 * (limit // 3 + 1):
        raise json_error(413, f"{what} is more than the {limit} bytes allowed")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise json_error(400, f"{name} is not valid base64") from None
    if len(data) > limit:
        raise json_error(413, f"{what} is {len(data)} bytes; the limit is {limit}")
    return data


def label(request: web.Request) -> bytes:
    """The device-encrypted name (required)."""
    return base64_header(request, LABEL_HEADER, MAX_LABEL_BYTES, "device-encrypted label")


def sealed_template(request: web.Request, *, required: bool = False) -> bytes:
    """The decoded sealed template (empty if absent and not required)."""
    return base64_header(request, SEALED_HEADER, MAX_SEALED_BYTES, "sealed template", required=required)


__all__ = ["LABEL_HEADER", "SEALED_HEADER", "SUBJECT_HEADER", "base64_header", "label", "requested_subject", "sealed_template"]
