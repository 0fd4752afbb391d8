"""Home Assistant discovery: every payload valid for its platform (tests/device/ha_schema.py, written from
Home Assistant's documentation and MQTT schemas), entities that read what the door really publishes,
no unlock button, and availability that follows the door's health."""

import json
from types import SimpleNamespace

import pytest

from blindgate.device.activity import DoorActivity
from blindgate.device.agent import Agent
from blindgate.device.decision import DoorEvent
from blindgate.device.discovery import LOCKED, STATUS_SENSORS, UNLOCKED, discovery_configs, publish_discovery
from blindgate.device.health import DoorHealth
from blindgate.device.link import DeviceTopics
from blindgate.device.operating_point import operating_point
from blindgate.shared.config import DecisionConfig, DeviceConfig

from . import ha_schema
from .fakes import RecordingLink

CONFIG = DeviceConfig(site="home", device_id="door1")
TOPICS = DeviceTopics.of(CONFIG)
HA = "homeassistant"
EXPECTED = {
    f"{HA}/binary_sensor/home_door1/lock/config",
    f"{HA}/binary_sensor/home_door1/problem/config",
    f"{HA}/event/home_door1/config",
    *(f"{HA}/sensor/home_door1/{key}/config" for key in [*STATUS_SENSORS, "last_recognized", "last_decision"]),
}


def door_publications():
    """What a door publishes through the real code paths: lock state, status, health, events and activity."""
    link = RecordingLink(CONFIG)
    link.publish(TOPICS.availability, "online", retain=True)  # the link's on_connect
    link.publish(TOPICS.lock, LOCKED, retain=True)
    Agent.publish_status(SimpleNamespace(current_point=operating_point(DecisionConfig(), 2), config=CONFIG, link=link))
    health = DoorHealth(link)
    health.publish()
    door = SimpleNamespace(link=link, activity=DoorActivity(link))
    Agent.publish_event(door, DoorEvent.RECOGNIZED, "Alice")
    Agent.publish_event(door, DoorEvent.DENIED, "Bob", reason="outside the hours of Bob")
    return link, health


def retained(link):
    """The broker's retained message per topic (an empty payload clears it)."""
    kept = {}
    for topic, payload, retain in link.published:
        if retain:
            data = payload if isinstance(payload, bytes) else payload.encode()
            kept.pop(topic, None) if data == b"" else kept.__setitem__(topic, data)
    return kept


def test_every_payload_is_valid_for_its_platform():
    configs = discovery_configs(TOPICS)
    assert set(configs) == EXPECTED
    for topic, config in configs.items():
        ha_schema.validate(ha_schema.platform_of(topic), config)
    ids = [c["unique_id"] for c in configs.values()]
    assert len(set(ids)) == len(ids)
    assert all(c["device"] == configs[f"{HA}/event/home_door1/config"]["device"] for c in configs.values())
    assert configs[f"{HA}/event/home_door1/config"]["device"]["identifiers"] == ["blindgate_home_door1"]


@pytest.mark.parametrize(
    ("platform", "change"),
    [
        ("binary_sensor", lambda c: c.pop("state_topic")),
        ("binary_sensor", lambda c: c.update(device_class="deadbolt")),
        ("binary_sensor", lambda c: c.update(payload_onn="UNLOCKED")),  # a typo HA would drop silently
        ("binary_sensor", lambda c: c.update(availability_topic="x")),  # with `availability`
        ("binary_sensor", lambda c: c.update(availability_mode="every")),
        ("binary_sensor", lambda c: c["availability"][0].pop("topic")),
        ("binary_sensor", lambda c: c.update(device={"name": "no identifiers"})),
        ("binary_sensor", lambda c: c.update(qos=True)),
        ("event", lambda c: c.pop("event_types")),
        ("event", lambda c: c.update(event_types="recognized")),
        ("sensor", lambda c: c.update(state_class="measurement")),  # on the timestamp sensor
        ("sensor", lambda c: c.update(entity_category="primary")),
        ("sensor", lambda c: c.update(options=["a"])),
    ],
)
def test_the_schema_refuses_what_home_assistant_would(platform, change):
    configs = discovery_configs(TOPICS)
    topic = {
        "binary_sensor": f"{HA}/binary_sensor/home_door1/lock/config",
        "event": f"{HA}/event/home_door1/config",
        "sensor": f"{HA}/sensor/home_door1/last_decision/config",
    }[platform]
    config = json.loads(json.dumps(configs[topic]))
    ha_schema.validate(platform, config)  # positive control: the real payload passes
    change(config)
    with pytest.raises(ha_schema.Invalid):
        ha_schema.validate(platform, config)


def test_no_lock_entity_and_the_old_one_is_cleared_first():
    """A `lock` entity offers Unlock buttons the door never obeys: it is gone, and its retained config cleared."""
    link = RecordingLink(CONFIG)
    publish_discovery(link)
    assert link.published[0] == (f"{HA}/lock/home_door1/config", "", True)
    assert [(t, json.loads(p), r) for t, p, r in link.published[1:]] == [
        (t, c, True) for t, c in discovery_configs(TOPICS).items()
    ]
    assert not any(t.startswith(f"{HA}/lock/") for t in discovery_configs(TOPICS))
    assert not any("command_topic" in c for c in discovery_configs(TOPICS).values())  # nothing to press


def test_the_lock_state_binary_sensor_is_on_when_unlocked():
    lock = discovery_configs(TOPICS)[f"{HA}/binary_sensor/home_door1/lock/config"]
    assert lock["device_class"] == "lock" and lock["state_topic"] == "blindgate/home/door1/lock"
    # Home Assistant's lock device class: on means unlocked, off means locked
    assert (lock["payload_on"], lock["payload_off"]) == (UNLOCKED, LOCKED)


def test_entities_read_what_the_door_publishes():
    """Each entity's template, evaluated as Home Assistant does, on the door's real payloads."""
    link, _ = door_publications()
    kept = retained(link)
    configs = discovery_configs(TOPICS)
    values = {}
    for topic, config in configs.items():
        platform = ha_schema.platform_of(topic)
        if platform == "event":
            continue
        payload = kept[config["state_topic"]]
        value = ha_schema.render(config["value_template"], payload) if "value_template" in config else payload.decode()
        values[config["unique_id"].removeprefix("blindgate_home_door1_")] = value
        if platform == "binary_sensor":
            assert value in (config["payload_on"], config["payload_off"]), (topic, value)
        elif config.get("state_class"):
            float(value)  # a measurement must be a number
        if "json_attributes_topic" in config:
            assert isinstance(json.loads(kept[config["json_attributes_topic"]]), dict)
    assert values["lock_state"] == LOCKED and values["problem"] == "online"  # locked; no problem (off)
    assert values["enrolled"] == "2" and values["last_recognized"] == "Alice"
    assert float(values["expected_false_open"]) <= DecisionConfig().max_false_open
    from datetime import datetime

    assert datetime.fromisoformat(values["last_decision"]).tzinfo is not None  # a timestamp sensor needs a zone
    assert json.loads(kept[TOPICS.last_decision])["reason"] == "outside the hours of Bob"


def test_the_event_entity_gets_an_event_type_it_declares():
    link, _ = door_publications()
    event = discovery_configs(TOPICS)[f"{HA}/event/home_door1/config"]
    sent = [(json.loads(p), r) for t, p, r in link.published if t == event["state_topic"]]
    assert [e["event_type"] for e, _ in sent] == ["recognized", "denied"]
    assert all(e["event_type"] in event["event_types"] and not r for e, r in sent)  # HA ignores retained events
    assert "value_template" not in event  # the payload itself carries event_type; label and reason become attributes
    assert set(event["event_types"]) == {str(kind) for kind in DoorEvent}


def test_availability_follows_the_process_and_the_doors_health():
    link, health = door_publications()
    configs = discovery_configs(TOPICS)
    problem = configs[f"{HA}/binary_sensor/home_door1/problem/config"]
    others = [c for c in configs.values() if c is not problem]
    assert all(ha_schema.available(c, retained(link)) for c in configs.values())  # positive control
    for _ in range(3):
        health.cloud_missed()
    kept = retained(link)
    assert not any(ha_schema.available(c, kept) for c in others)
    assert ha_schema.available(problem, kept)  # still there to say why
    assert ha_schema.render(problem["value_template"], kept[TOPICS.health]) == problem["payload_on"]
    assert json.loads(kept[TOPICS.health])["problems"] == ["cloud"]
    health.cloud_answered()
    assert all(ha_schema.available(c, retained(link)) for c in configs.values())
    link.publish(TOPICS.availability, "offline", retain=True)  # the Last Will
    assert not any(ha_schema.available(c, retained(link)) for c in configs.values())


def test_discovery_prefix_comes_from_config():
    topics = DeviceTopics.of(DeviceConfig(site="lab", device_id="d2", ha_discovery_prefix="ha"))
    assert all(
        t.startswith(("ha/binary_sensor/lab_d2/", "ha/event/lab_d2/", "ha/sensor/lab_d2/")) for t in discovery_configs(topics)
    )
    assert len(discovery_configs(topics)) == len(EXPECTED)


def test_nothing_home_assistant_sees_names_a_distance():
    link, _ = door_publications()
    seen = json.dumps(discovery_configs(TOPICS)) + "".join(p if isinstance(p, str) else p.decode() for _, p, _ in link.published)
    assert not any(word in seen for word in ("distance", "score"))
