"""The wire protocol between door devices and the cloud: topics, signing keys, messages.

Pure bytes in, bytes out: no MQTT, no HTTP, no engine. MQTT v5 carries these payloads with
`ResponseTopic`, `CorrelationData` (= the request id) and `MessageExpiryInterval`; nothing is
ever retained. The contract is shared/protocol.md.

- `topics`: probe/reply topic names, the cloud's shared subscription, the id rule (`check_name`).
- `signing`: the cloud's Ed25519 reply-signing key and its public text form.
- `messages`: `ProbeRequest`, `Reply`, `BlockResult` and their encoding, signing and checking.

The device's request guard lives with the device: `blindgate.device.requests.PendingRequests`.
"""

from __future__ import annotations

from blindgate.shared.limits import MAX_HEADER_BYTES, MAX_PROBE_BYTES

from .errors import ProtocolError
from .messages import (
    REPLY_LAYOUT_VERSION,
    VERSION,
    BlockResult,
    Mode,
    ProbeRequest,
    Reply,
    ReplyStatus,
    decode_probe_request,
    encode_probe_request,
    error_reply,
    new_probe_request,
    ok_reply,
    open_reply,
    probe_digest,
    results_digest,
    seal_reply,
    verify_probe_request,
)
from .signing import (
    new_signing_key,
    public_key_from_text,
    public_key_to_text,
    signing_key_from_pem,
    signing_key_to_pem,
)
from .topics import DEFAULT_TOPIC_PREFIX, check_name, parse_probe_topic, probe_subscription, probe_topic, reply_topic

__all__ = [
    "DEFAULT_TOPIC_PREFIX",
    "MAX_HEADER_BYTES",
    "MAX_PROBE_BYTES",
    "REPLY_LAYOUT_VERSION",
    "VERSION",
    "BlockResult",
    "Mode",
    "ProbeRequest",
    "ProtocolError",
    "Reply",
    "ReplyStatus",
    "check_name",
    "decode_probe_request",
    "encode_probe_request",
    "error_reply",
    "new_probe_request",
    "new_signing_key",
    "ok_reply",
    "open_reply",
    "parse_probe_topic",
    "probe_digest",
    "probe_subscription",
    "probe_topic",
    "public_key_from_text",
    "public_key_to_text",
    "reply_topic",
    "results_digest",
    "seal_reply",
    "signing_key_from_pem",
    "signing_key_to_pem",
    "verify_probe_request",
]
