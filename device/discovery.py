"""Home Assistant MQTT discovery for one door: a state-only lock, a face event entity, and
diagnostic sensors for the operating point in force (how likely a stranger's frame is matched).

`discovery_configs` is pure (topics in, retained config payloads out), so what Home Assistant
is told can be checked without a broker; `publish_discovery` sends them over the link, on every
connect and whenever Home Assistant announces itself online again.
"""

from __future__ import annotations

import json
from typing import Any

from .decision import DoorEvent
from .link import OFFLINE, ONLINE, DeviceTopics, MqttLink

SW_VERSION = "0.1.0"
LOCKED, UNLOCKED = "LOCKED", "UNLOCKED"


# The door's status topic (its operating point) as Home Assistant sensors: key -> (name, unit).
STATUS_SENSORS = {
    "expected_false_open": ("Stranger match chance per frame", None),
    "expected_true_open": ("Resident match chance per frame", None),
    "threshold": ("Match threshold", None),
    "enrolled": ("Templates compared", None),
}


def discovery_configs(topics: DeviceTopics) -> dict[str, dict[str, Any]]:
    """Discovery topic -> config payload: one device with a lock, an event entity and status sensors."""
    device = {
        "identifiers": [f"blindgate_{topics.object_id}"],
        "name": f"blindgate {topics.site} {topics.device}",
        "manufacturer": "blindgate",
        "model": "door agent",
        "sw_version": SW_VERSION,
    }
    availability = {
        "availability_topic": topics.availability,
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
    }
    lock = {
        "name": "Door",
        "unique_id": f"blindgate_{topics.object_id}_lock",
        "state_topic": topics.lock,
        "state_locked": LOCKED,
        "state_unlocked": UNLOCKED,
        # Home Assistant's MQTT lock requires a command topic. The device never subscribes
        # to it: the door opens for recognised faces only, never by MQTT command.
        "command_topic": topics.leaf("lock/set"),
        "optimistic": False,
        "device": device,
        **availability,
    }
    event = {
        "name": "Face",
        "unique_id": f"blindgate_{topics.object_id}_event",
        "state_topic": topics.event,
        "event_types": [str(kind) for kind in DoorEvent],
        "value_template": "{{ {'event_type': value_json.event, 'label': value_json.label} | tojson }}",
        "device": device,
        **availability,
    }
    configs: dict[str, dict[str, Any]] = {
        f"{topics.ha_prefix}/lock/{topics.object_id}/config": lock,
        f"{topics.ha_prefix}/event/{topics.object_id}/config": event,
    }
    for key, (name, unit) in STATUS_SENSORS.items():
        configs[f"{topics.ha_prefix}/sensor/{topics.object_id}/{key}/config"] = {
            "name": name,
            "unique_id": f"blindgate_{topics.object_id}_{key}",
            "state_topic": topics.status,
            "value_template": f"{{{{ value_json.{key} }}}}",
            "entity_category": "diagnostic",
            "state_class": "measurement",
            **({"unit_of_measurement": unit} if unit else {}),
            "device": device,
            **availability,
        }
    return configs


def publish_discovery(link: MqttLink) -> None:
    """Publish every discovery config, retained, so Home Assistant finds the door after restarts."""
    for topic, config in discovery_configs(link.topics).items():
        link.publish(topic, json.dumps(config), retain=True)


__all__ = ["LOCKED", "STATUS_SENSORS", "SW_VERSION", "UNLOCKED", "discovery_configs", "publish_discovery"]
