"""Home Assistant MQTT discovery for one door: what a Home Assistant user expects to see of it.

One device with:
- the lock state as a `binary_sensor` (`device_class: lock`; on = unlocked). Not a `lock`
  entity: that offers Unlock buttons, and the door never listens to MQTT commands. The config of
  the `lock` entity older versions announced is cleared (an empty retained payload) every time;
- the `event` entity (recognized / unknown / denied / cloud_integrity; the event payload carries
  `event_type`, a denial its `reason`);
- sensors: enrolled people and the operating point in force (the status topic), who was
  recognised last and when the door last decided (device/activity.py);
- a diagnostic `binary_sensor` (`device_class: problem`) saying why the door cannot recognise
  anyone now (device/health.py).
Every entity but the problem sensor is available only while the process is up (Last Will) AND the
door is healthy (cloud answering, camera delivering): `availability_mode: all`. The problem
sensor follows the Last Will only, so it stays visible while it has something to say.

`discovery_configs` is pure (topics in, retained config payloads out), so what Home Assistant is
told is checked without a broker (tests/device/test_discovery.py validates each payload against
Home Assistant's documented schema); `publish_discovery` sends them over the link, on every
connect and whenever Home Assistant announces itself online again. No payload names a distance.
"""

from __future__ import annotations

import json
from typing import Any

from .decision import DoorEvent
from .link import OFFLINE, ONLINE, DeviceTopics, MqttLink

SW_VERSION = "0.1.0"
LOCKED, UNLOCKED = "LOCKED", "UNLOCKED"

# The status topic's keys as sensors: key -> (name, diagnostic?). `enrolled` counts the templates
# the door decoded from its latest reply: one per enrolled person (an enrollment is one mean template).
STATUS_SENSORS = {
    "enrolled": ("Enrolled people", False),
    "expected_false_open": ("Stranger match chance per frame", True),
    "expected_true_open": ("Resident match chance per frame", True),
    "threshold": ("Match threshold", True),
}


def _device(topics: DeviceTopics) -> dict[str, Any]:
    return {
        "identifiers": [f"blindgate_{topics.object_id}"],
        "name": f"blindgate {topics.site} {topics.device}",
        "manufacturer": "blindgate",
        "model": "door agent",
        "sw_version": SW_VERSION,
    }


def _healthy(topics: DeviceTopics) -> dict[str, Any]:
    """Available while the process runs (Last Will) and the door can recognise (health topic)."""
    return {
        "availability": [
            {"topic": topics.availability, "payload_available": ONLINE, "payload_not_available": OFFLINE},
            {
                "topic": topics.health,
                "value_template": "{{ value_json.state }}",
                "payload_available": ONLINE,
                "payload_not_available": OFFLINE,
            },
        ],
        "availability_mode": "all",
    }


def _entity(topics: DeviceTopics, key: str, name: str, **config: Any) -> dict[str, Any]:
    """The keys every entity of the door shares (the default availability: process up and healthy)."""
    base = {
        "name": name,
        "unique_id": f"blindgate_{topics.object_id}_{key}",
        "qos": 1,
        "device": _device(topics),
        "origin": {"name": "blindgate", "sw_version": SW_VERSION},
    }
    return base | (config if "availability_topic" in config else _healthy(topics) | config)


def discovery_configs(topics: DeviceTopics) -> dict[str, dict[str, Any]]:
    """Discovery topic -> config payload, for every entity of the door."""
    ha, obj = topics.ha_prefix, topics.object_id
    configs: dict[str, dict[str, Any]] = {
        f"{ha}/binary_sensor/{obj}/lock/config": _entity(
            topics,
            "lock_state",
            "Door",
            device_class="lock",  # on means unlocked
            state_topic=topics.lock,
            payload_on=UNLOCKED,
            payload_off=LOCKED,
        ),
        f"{ha}/binary_sensor/{obj}/problem/config": _entity(
            topics,
            "problem",
            "Recognition problem",
            device_class="problem",
            entity_category="diagnostic",
            state_topic=topics.health,
            value_template="{{ value_json.state }}",
            payload_on=OFFLINE,
            payload_off=ONLINE,
            json_attributes_topic=topics.health,
            availability_topic=topics.availability,
            payload_available=ONLINE,
            payload_not_available=OFFLINE,
        ),
        f"{ha}/event/{obj}/config": _entity(
            topics, "event", "Face", state_topic=topics.event, event_types=[str(kind) for kind in DoorEvent]
        ),
    }
    for key, (name, diagnostic) in STATUS_SENSORS.items():
        configs[f"{ha}/sensor/{obj}/{key}/config"] = _entity(
            topics,
            key,
            name,
            state_topic=topics.status,
            value_template=f"{{{{ value_json.{key} }}}}",
            state_class="measurement",
            **({"entity_category": "diagnostic"} if diagnostic else {}),
        )
    configs[f"{ha}/sensor/{obj}/last_recognized/config"] = _entity(
        topics,
        "last_recognized",
        "Last recognised",
        icon="mdi:account-check",
        state_topic=topics.last_recognized,
        value_template="{{ value_json.label }}",
        json_attributes_topic=topics.last_recognized,
    )
    configs[f"{ha}/sensor/{obj}/last_decision/config"] = _entity(
        topics,
        "last_decision",
        "Last decision",
        device_class="timestamp",
        state_topic=topics.last_decision,
        value_template="{{ value_json.ts }}",
        json_attributes_topic=topics.last_decision,
    )
    return configs


def retired_configs(topics: DeviceTopics) -> list[str]:
    """Discovery topics of entities this version no longer has: cleared with an empty retained payload."""
    return [f"{topics.ha_prefix}/lock/{topics.object_id}/config"]


def publish_discovery(link: MqttLink) -> None:
    """Clear the retired configs, then publish every config, retained, so Home Assistant finds the door after restarts."""
    for topic in retired_configs(link.topics):
        link.publish(topic, "", retain=True)
    for topic, config in discovery_configs(link.topics).items():
        link.publish(topic, json.dumps(config), retain=True)


__all__ = ["LOCKED", "STATUS_SENSORS", "SW_VERSION", "UNLOCKED", "discovery_configs", "publish_discovery", "retired_configs"]
