"""Home Assistant discovery payloads: the keys HA requires, one device, topics that match the door's."""

import json

from blindgate.device.discovery import STATUS_SENSORS, discovery_configs, publish_discovery
from blindgate.device.link import DeviceTopics, MqttLink
from blindgate.shared.config import DeviceConfig

CONFIG = DeviceConfig(site="home", device_id="door1")
TOPICS = DeviceTopics.of(CONFIG)
REQUIRED = {"name", "unique_id", "state_topic", "device", "availability_topic", "payload_available", "payload_not_available"}


SENSORS = {f"homeassistant/sensor/home_door1/{key}/config" for key in STATUS_SENSORS}


def test_one_lock_one_event_entity_and_the_status_sensors_of_one_device():
    configs = discovery_configs(TOPICS)
    assert set(configs) == {"homeassistant/lock/home_door1/config", "homeassistant/event/home_door1/config"} | SENSORS
    for topic in SENSORS:
        sensor = configs[topic]
        assert REQUIRED <= set(sensor) and sensor["state_topic"] == "blindgate/home/door1/status"
        assert sensor["device"] == configs["homeassistant/lock/home_door1/config"]["device"]
    assert {configs[t]["value_template"] for t in SENSORS} == {f"{{{{ value_json.{k} }}}}" for k in STATUS_SENSORS}
    lock = configs["homeassistant/lock/home_door1/config"]
    event = configs["homeassistant/event/home_door1/config"]
    for entity in (lock, event):
        assert REQUIRED <= set(entity), REQUIRED - set(entity)
    assert lock["unique_id"] != event["unique_id"]
    assert lock["device"] == event["device"] and lock["device"]["identifiers"] == ["blindgate_home_door1"]


def test_topics_are_the_doors():
    configs = discovery_configs(TOPICS)
    lock = configs["homeassistant/lock/home_door1/config"]
    event = configs["homeassistant/event/home_door1/config"]
    assert lock["state_topic"] == "blindgate/home/door1/lock"
    assert (lock["state_locked"], lock["state_unlocked"]) == ("LOCKED", "UNLOCKED")
    assert lock["availability_topic"] == "blindgate/home/door1/availability"
    assert lock["command_topic"] == "blindgate/home/door1/lock/set" and lock["optimistic"] is False
    assert event["state_topic"] == "blindgate/home/door1/event"
    assert event["event_types"] == ["recognized", "unknown", "denied", "cloud_integrity"]


def test_discovery_prefix_comes_from_config():
    topics = DeviceTopics.of(DeviceConfig(site="lab", device_id="d2", ha_discovery_prefix="ha"))
    expected = {"ha/lock/lab_d2/config", "ha/event/lab_d2/config"} | {f"ha/sensor/lab_d2/{k}/config" for k in STATUS_SENSORS}
    assert set(discovery_configs(topics)) == expected


def test_payloads_are_json_and_published_retained():
    sent = []

    class Recording(MqttLink):
        def publish(self, topic, payload, retain=False):
            sent.append((topic, json.loads(payload), retain))

    publish_discovery(Recording(CONFIG))
    assert [(t, p, r) for t, p, r in sent] == [(t, p, True) for t, p in discovery_configs(TOPICS).items()]
