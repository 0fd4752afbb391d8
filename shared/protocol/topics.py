"""MQTT topic names for probes and replies, and the rule for the ids that appear in them.

A device publishes to `<prefix>/<site>/<device>/probe` and hears its answer on `.../reply`; the
cloud's processes share one subscription so each probe reaches exactly one of them.
"""

from __future__ import annotations

from .errors import ProtocolError

DEFAULT_TOPIC_PREFIX = "blindgate"
_NAME_PUNCTUATION = frozenset("-_.")


def probe_topic(site: str, device: str, prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
    """Where `device` of `site` publishes its probe requests."""
    return f"{prefix}/{site}/{device}/probe"


def reply_topic(site: str, device: str, prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
    """Where `device` of `site` hears replies; requests name it as their MQTT ResponseTopic."""
    return f"{prefix}/{site}/{device}/reply"


def probe_subscription(group: str = "blindgate-cloud", prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
    """Shared subscription: each probe reaches exactly one of the cloud processes in `group`."""
    return f"$share/{group}/{prefix}/+/+/probe"


def parse_probe_topic(topic: str, prefix: str = DEFAULT_TOPIC_PREFIX) -> tuple[str, str]:
    """The (site, device) a probe topic names, so the cloud can check them against the header."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != prefix or parts[3] != "probe" or not parts[1] or not parts[2]:
        raise ProtocolError(f"not a probe topic: {topic!r}")
    return parts[1], parts[2]


def check_name(value: str, what: str) -> str:
    """Site and device ids appear in topics: keep them to safe characters."""
    if not isinstance(value, str) or not 1 <= len(value) <= 64 or not all(c.isalnum() or c in _NAME_PUNCTUATION for c in value):
        raise ProtocolError(f"{what} must be 1-64 characters of letters, digits, '-', '_' or '.', got {value!r}")
    return value
