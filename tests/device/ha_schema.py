"""Home Assistant's MQTT discovery schema, written down for the door's tests (no `homeassistant` package).

Sources (read while writing this; the `homeassistant` package pins older aiohttp and
cryptography, so it is never installed into the project's environment):
- https://www.home-assistant.io/integrations/binary_sensor.mqtt/ , /integrations/event.mqtt/ ,
  /integrations/sensor.mqtt/ (home-assistant/home-assistant.io, source/_integrations/*.mqtt.markdown):
  the configuration variables, which are required, and their types;
- home-assistant/core, homeassistant/components/mqtt/schemas.py (MQTT_AVAILABILITY_SINGLE_SCHEMA,
  MQTT_AVAILABILITY_LIST_SCHEMA: `topic` required per entry, `availability` and
  `availability_topic` mutually exclusive, `availability_mode` in all/any/latest;
  MQTT_ENTITY_DEVICE_INFO_SCHEMA: string fields, at least one of identifiers/connections;
  MQTT_ORIGIN_INFO_SCHEMA: `name` required), config.py (MQTT_RO_SCHEMA: `state_topic` required),
  event.py (`event_types` required, a list of strings; the JSON payload must carry `event_type`,
  one of them; retained event messages are ignored), sensor.py
  (validate_sensor_state_and_device_class_config: `options` only with device_class enum,
  `last_reset_value_template` only with state_class total), and the binary sensor / sensor
  device-class lists (developers.home-assistant.io/docs/core/entity/binary-sensor, .../sensor).
Discovery drops keys a platform does not know (vol.REMOVE_EXTRA), so a misspelt key would vanish
silently: `validate` refuses unknown keys instead.

`render` evaluates the only template form the door uses, `{{ value_json.KEY }}`, the way
Home Assistant's Jinja does for JSON payloads (None renders as "None", which HA's sensors treat
as unknown); any other template is refused, so a test never trusts a template it cannot evaluate.
"""

from __future__ import annotations

import json
import re
from typing import Any

DEVICE_KEYS = {
    "identifiers": (str, list),
    "connections": list,
    "manufacturer": str,
    "model": str,
    "model_id": str,
    "name": str,
    "hw_version": str,
    "serial_number": str,
    "sw_version": str,
    "via_device": str,
    "suggested_area": str,
    "configuration_url": str,
}
ORIGIN_KEYS = {"name": str, "sw_version": str, "support_url": str}
AVAILABILITY_ENTRY_KEYS = {"topic": str, "payload_available": str, "payload_not_available": str, "value_template": str}

# MQTT_ENTITY_COMMON_SCHEMA + MQTT_AVAILABILITY_SCHEMA + MQTT_RO_SCHEMA (every read-only platform)
COMMON = {
    "availability": list,
    "availability_mode": str,
    "availability_topic": str,
    "availability_template": str,
    "payload_available": str,
    "payload_not_available": str,
    "device": dict,
    "origin": dict,
    "enabled_by_default": bool,
    "entity_category": str,
    "icon": str,
    "json_attributes_topic": str,
    "json_attributes_template": str,
    "object_id": str,
    "unique_id": str,
    "name": (str, type(None)),
    "qos": int,
    "encoding": str,
    "state_topic": str,
    "value_template": str,
}
PLATFORMS: dict[str, dict[str, Any]] = {
    "binary_sensor": COMMON
    | {
        "device_class": str,
        "expire_after": int,
        "force_update": bool,
        "off_delay": int,
        "payload_on": str,
        "payload_off": str,
    },
    "event": COMMON | {"device_class": str, "event_types": list},
    "sensor": COMMON
    | {
        "device_class": str,
        "expire_after": int,
        "force_update": bool,
        "last_reset_value_template": str,
        "options": list,
        "suggested_display_precision": int,
        "state_class": str,
        "unit_of_measurement": (str, type(None)),
    },
}
REQUIRED = {"binary_sensor": {"state_topic"}, "event": {"state_topic", "event_types"}, "sensor": {"state_topic"}}
BINARY_SENSOR_CLASSES = {
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door", "garage_door", "gas",
    "heat", "light", "lock", "moisture", "motion", "moving", "occupancy", "opening", "plug", "power",
    "presence", "problem", "running", "safety", "smoke", "sound", "tamper", "update", "vibration", "window",
}  # fmt: skip
EVENT_CLASSES = {"button", "doorbell", "motion"}
SENSOR_NON_NUMERIC_CLASSES = {"date", "enum", "timestamp"}  # no state_class, no unit
STATE_CLASSES = {"measurement", "measurement_angle", "total", "total_increasing"}
ENTITY_CATEGORIES = {"config", "diagnostic"}
AVAILABILITY_MODES = {"all", "any", "latest"}
TEMPLATE = re.compile(r"^\{\{ value_json\.([a-z_]+) \}\}$")


class Invalid(AssertionError):
    """A discovery payload Home Assistant would refuse (or silently mangle)."""


def _types(where: str, config: dict[str, Any], known: dict[str, Any]) -> None:
    unknown = set(config) - set(known)
    if unknown:
        raise Invalid(f"{where}: keys Home Assistant does not know (dropped silently): {sorted(unknown)}")
    for key, value in config.items():
        expected = known[key]
        if isinstance(value, bool) and expected is not bool:  # bool is an int to isinstance, not to voluptuous
            raise Invalid(f"{where}: {key} should be {expected}, got a bool")
        if not isinstance(value, expected):
            raise Invalid(f"{where}: {key} should be {expected}, got {type(value).__name__}")


def validate(platform: str, config: dict[str, Any]) -> None:
    """Raise `Invalid` unless `config` is a valid discovery payload for `platform`."""
    if platform not in PLATFORMS:
        raise Invalid(f"unknown platform {platform}")
    _types(platform, config, PLATFORMS[platform])
    missing = REQUIRED[platform] - set(config)
    if missing:
        raise Invalid(f"{platform}: required keys missing: {sorted(missing)}")
    if "availability" in config and "availability_topic" in config:
        raise Invalid("availability and availability_topic are mutually exclusive")
    for entry in config.get("availability", []):
        _types("availability entry", entry, AVAILABILITY_ENTRY_KEYS)
        if "topic" not in entry:
            raise Invalid("an availability entry needs a topic")
    if config.get("availability_mode", "latest") not in AVAILABILITY_MODES:
        raise Invalid(f"availability_mode {config['availability_mode']!r}")
    if "device" in config:
        _types("device", config["device"], DEVICE_KEYS)
        if not (config["device"].get("identifiers") or config["device"].get("connections")):
            raise Invalid("device: at least one of identifiers or connections")
        if "unique_id" not in config:
            raise Invalid("device info only works when unique_id is set")
    if "origin" in config:
        _types("origin", config["origin"], ORIGIN_KEYS)
        if "name" not in config["origin"]:
            raise Invalid("origin: name is required")
    if config.get("entity_category", "diagnostic") not in ENTITY_CATEGORIES:
        raise Invalid(f"entity_category {config['entity_category']!r}")
    if config.get("qos", 0) not in (0, 1, 2):
        raise Invalid(f"qos {config['qos']!r}")
    if "icon" in config and not re.fullmatch(r"[a-z0-9-]+:[a-z0-9-]+", config["icon"]):
        raise Invalid(f"icon {config['icon']!r}")
    if platform == "binary_sensor" and config.get("device_class", "lock") not in BINARY_SENSOR_CLASSES:
        raise Invalid(f"binary_sensor device_class {config['device_class']!r}")
    if platform == "event":
        types = config["event_types"]
        if not types or not all(isinstance(t, str) for t in types):
            raise Invalid("event_types must be a non-empty list of strings")
        if config.get("device_class", "button") not in EVENT_CLASSES:
            raise Invalid(f"event device_class {config['device_class']!r}")
    if platform == "sensor":
        device_class, state_class = config.get("device_class"), config.get("state_class")
        if state_class is not None and state_class not in STATE_CLASSES:
            raise Invalid(f"state_class {state_class!r}")
        if device_class in SENSOR_NON_NUMERIC_CLASSES and (state_class or config.get("unit_of_measurement")):
            raise Invalid(f"a {device_class} sensor takes no state_class or unit")
        if "options" in config and device_class != "enum":
            raise Invalid("options only with device_class enum")
        if "last_reset_value_template" in config and state_class != "total":
            raise Invalid("last_reset_value_template only with state_class total")


def render(template: str, payload: bytes | str) -> str:
    """Home Assistant's value of `{{ value_json.KEY }}` for a JSON payload ('' when the key is missing)."""
    found = TEMPLATE.match(template)
    if found is None:
        raise Invalid(f"template {template!r} is not of the form {{{{ value_json.KEY }}}}")
    value = json.loads(payload).get(found.group(1), "")
    return "None" if value is None else str(value)


def platform_of(topic: str) -> str:
    """`<prefix>/<platform>/<node>[/<object>]/config` -> platform."""
    return topic.split("/")[1]


def available(config: dict[str, Any], retained: dict[str, bytes]) -> bool:
    """Whether Home Assistant shows the entity available, given the latest retained payload per topic."""
    if "availability_topic" in config:
        entries = [
            {
                "topic": config["availability_topic"],
                "payload_available": config.get("payload_available", "online"),
                "payload_not_available": config.get("payload_not_available", "offline"),
            }
        ]
    else:
        entries = config.get("availability", [])
    states = []
    for entry in entries:
        payload = retained.get(entry["topic"])
        if payload is None:
            states.append(False)  # nothing received yet: HA starts unavailable
            continue
        value = render(entry["value_template"], payload) if "value_template" in entry else payload.decode()
        states.append(value == entry.get("payload_available", "online"))
    mode = config.get("availability_mode", "latest")
    return all(states) if mode == "all" else any(states) if mode == "any" else bool(states) and states[-1]
