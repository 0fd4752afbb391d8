"""shared/protocol/topics.py: topic names, their parsing and the id rule."""

from __future__ import annotations

import pytest

from blindgate.shared.protocol.errors import ProtocolError
from blindgate.shared.protocol.topics import check_name, parse_probe_topic, probe_subscription, probe_topic, reply_topic


def test_topic_names():
    assert probe_topic("home", "door1") == "blindgate/home/door1/probe"
    assert reply_topic("home", "door1", prefix="x") == "x/home/door1/reply"
    assert probe_subscription() == "$share/blindgate-cloud/blindgate/+/+/probe"
    assert probe_subscription("g", prefix="p") == "$share/g/p/+/+/probe"


def test_parse_probe_topic_round_trips():
    assert parse_probe_topic(probe_topic("home", "door-1.a")) == ("home", "door-1.a")
    assert parse_probe_topic(probe_topic("s", "d", prefix="other"), prefix="other") == ("s", "d")


@pytest.mark.parametrize(
    "topic",
    [
        "blindgate/home/door1/reply",
        "other/home/door1/probe",
        "blindgate//door1/probe",
        "blindgate/home//probe",
        "blindgate/home/door1/probe/extra",
        "blindgate/home/probe",
        "",
    ],
)
def test_parse_probe_topic_refuses(topic):
    with pytest.raises(ProtocolError, match="not a probe topic"):
        parse_probe_topic(topic)


@pytest.mark.parametrize("name", ["a", "home", "door-1_x.y", "x" * 64, "a.", "a..b", "0", "_x", "-x"])
def test_check_name_accepts(name):
    assert check_name(name, "site") == name


@pytest.mark.parametrize("name", ["", "x" * 65, "a/b", "a+b", "#", "a b", None, 7])
def test_check_name_refuses(name):
    with pytest.raises(ProtocolError, match="device must be 1-64 ASCII"):
        check_name(name, "device")


# Look-alikes and path-like ids: a Cyrillic "о", fullwidth letters, a superscript digit, "." and "..".
LOOKALIKES = ["h\u043eme", "\uff48\uff4f\uff4d\uff45", "home\u00b2", "\u00dcn\u00efcode1", ".", "..", ".hidden", "caf\u00e9"]


@pytest.mark.parametrize("name", LOOKALIKES)
def test_check_name_refuses_non_ascii_and_dot_leading_ids(name):
    with pytest.raises(ProtocolError, match="ASCII"):
        check_name(name, "site")


@pytest.mark.parametrize("name", LOOKALIKES)
def test_probe_topic_with_a_non_ascii_or_dot_leading_id_is_not_a_probe_topic(name):
    with pytest.raises(ProtocolError, match="not a probe topic"):
        parse_probe_topic(f"blindgate/{name}/door1/probe")
    with pytest.raises(ProtocolError, match="not a probe topic"):
        parse_probe_topic(f"blindgate/home/{name}/probe")
    assert parse_probe_topic("blindgate/home/door1/probe") == ("home", "door1")  # positive control
