"""MQTT topic names for probes and replies, and the rule for the ids that appear in them.

A device publishes to `<prefix>/<site>/<device>/probe` and hears its answer on `.../reply`; the
cloud's processes share one subscription so each probe reaches exactly one of them.
"""

from __future__ import annotations

from .errors import ProtocolError

DEFAULT_TOPIC_PREFIX = "blindgate"
# ASCII only: `str.isalnum()` would accept look-alikes (a Cyrillic "о"), fullwidth letters and "²".
_NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


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
    try:
        return check_name(parts[1], "site"), check_name(parts[2], "device")
    except ProtocolError:
        raise ProtocolError(f"not a probe topic: {topic!r}") from None


def check_name(value: str, what: str) -> str:
    """Site and device ids appear in topics and URL paths: ASCII letters, digits, '-', '_', '.', no leading '.'.

    A leading '.' is refused so that '.' and '..' never name a site (path segments) or a topic level.
    """
    if not isinstance(value, str) or not 1 <= len(value) <= 64 or value.startswith(".") or not _NAME_CHARACTERS.issuperset(value):
        raise ProtocolError(f"{what} must be 1-64 ASCII letters, digits, '-', '_' or '.', not starting with '.', got {value!r}")
    return value
