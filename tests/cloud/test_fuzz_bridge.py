"""Fuzzing the bridge's MQTT message handler (paho's `on_message`, called as the network thread does).

Mutated probe requests (some re-signed by the door, so parsing goes past the signature), hostile
topics, ResponseTopics and CorrelationData: the handler must never raise (an exception there
stops paho's network loop: the cloud would go deaf), and every message ends either in one signed
error reply to the device's own reply topic or in one counted drop. No broker is needed: the
handler runs before any network I/O, and the client's publish is recorded.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from blindgate.cloud.bridge import MQTTBridge
from blindgate.cloud.metrics import Metrics
from blindgate.shared.protocol import (
    ReplyStatus,
    encode_probe_request,
    new_probe_request,
    new_signing_key,
    open_reply,
    parse_probe_topic,
    probe_topic,
    reply_topic,
)
from tests.shared.fuzzing import frame_mutation, fuzz_settings, join_frame, split_frame

from .conftest import cloud_config

DOOR_KEY = new_signing_key()
CLOUD_KEY = new_signing_key()
TOPIC = probe_topic("home", "door")
REPLIES = reply_topic("home", "door")
MESSAGE_HEAD = 9


@dataclass
class Published:
    rc: int = mqtt.MQTT_ERR_SUCCESS
    sent: list[tuple[str, bytes, Any]] = field(default_factory=list)


class RecordingClient:
    """Stands in for the paho client: publishes are recorded, never sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, Any]] = []

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, properties: Any = None) -> Published:
        self.sent.append((topic, payload, properties))
        return Published()


@pytest.fixture(scope="module")
def bridge(tmp_path_factory) -> MQTTBridge:
    async def no_site(site: str) -> None:
        return None

    made = MQTTBridge(
        cloud_config(tmp_path_factory.mktemp("state")), pool=None, signing_key=CLOUD_KEY, site_lookup=no_site, metrics=Metrics()
    )  # type: ignore[arg-type]
    made.client = RecordingClient()  # type: ignore[assignment]
    return made


def fresh_request(ttl: float = 30.0) -> bytes:
    """A valid signed request issued now (a whole second, so every seed has the same length)."""
    req = new_probe_request("home", "door", "k" * 32, b"\x00" * 256, ttl=ttl, now=float(int(time.time())))
    return encode_probe_request(req, DOOR_KEY)


FRESH_MUTATIONS = st.builds(fresh_request).flatmap(lambda seed: frame_mutation([seed], MESSAGE_HEAD))


def message(topic: str, payload: bytes, response: str | None, correlation: bytes | None) -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(topic=topic.encode())
    msg.payload = payload
    props = Properties(PacketTypes.PUBLISH)
    if response is not None:
        props.ResponseTopic = response
    if correlation is not None:
        props.CorrelationData = correlation
    msg.properties = props
    return msg


def outcome_count(bridge: MQTTBridge) -> float:
    """Messages the bridge has finished with: refusals replied plus drops, all reasons."""
    drops = sum(bridge.metrics._counters.get("blindgate_probes_dropped_total", {}).values())
    return len(bridge.client.sent) + drops  # type: ignore[attr-defined]


@fuzz_settings(1000)
@given(
    payload=FRESH_MUTATIONS | st.binary(max_size=300),
    resign=st.booleans(),
    topic=st.sampled_from([TOPIC, TOPIC, "blindgate/home/door", "blindgate/+/door/probe", "blindgate/home/other/probe", "x"]),
    response=st.sampled_from([REPLIES, REPLIES, None, "blindgate/home/other/reply", "", "a/#"]),
    correlation=st.one_of(st.none(), st.binary(max_size=40)),
)
def test_on_message_never_raises_and_answers_or_counts_every_message(bridge, payload, resign, topic, response, correlation):
    if resign and len(payload) > 64:
        payload = payload[:-64] + DOOR_KEY.sign(payload[:-64])
    before, sent = outcome_count(bridge), len(bridge.client.sent)  # type: ignore[attr-defined]
    bridge._on_message(bridge.client, None, message(topic, payload, response, correlation))  # type: ignore[arg-type]
    assert outcome_count(bridge) == before + 1  # exactly one outcome: one error reply or one counted drop
    for reply_to, body, _props in bridge.client.sent[sent:]:  # type: ignore[attr-defined]
        assert reply_to == response == reply_topic(*parse_probe_topic(topic))  # only the topic's own device listens there
        assert open_reply(body, CLOUD_KEY.public_key()).status in (ReplyStatus.ERROR, ReplyStatus.BUSY)


def test_a_probe_with_a_400_digit_expiry_gets_an_error_reply(bridge):
    """Was: OverflowError raised out of `on_message` (paho's network loop stops: the cloud goes deaf)."""
    prefix, header, rest = split_frame(fresh_request()[:-64], MESSAGE_HEAD)
    text = json.dumps(header).replace(f'"expires_at": {json.dumps(header["expires_at"])}', '"expires_at": 1' + "0" * 400)
    body = join_frame(prefix, text, rest)
    sent = len(bridge.client.sent)
    bridge._on_message(bridge.client, None, message(TOPIC, body + DOOR_KEY.sign(body), REPLIES, None))
    ((to, payload, _),) = bridge.client.sent[sent:]
    reply = open_reply(payload, CLOUD_KEY.public_key())
    assert to == REPLIES and reply.status == ReplyStatus.ERROR and "expires_at" in reply.message
    # positive control: the honest request passes every check the handler makes (then waits for the loop)
    dropped = bridge.metrics.get("blindgate_probes_dropped_total", reason="not_started")
    bridge._on_message(bridge.client, None, message(TOPIC, fresh_request(), REPLIES, None))
    assert bridge.metrics.get("blindgate_probes_dropped_total", reason="not_started") == dropped + 1
