"""The door's latest decision and latest recognised person, retained for Home Assistant's sensors.

Events (`.../event`) are never retained: they are things that happened, and Home Assistant's
event entity ignores retained ones. "Who came in last, and when did the door last decide" are
states, so each door event is also published retained on `.../activity/decision`
(`{"event", "label", "ts", "reason"}`) and a recognition on `.../activity/recognized`
(`{"label", "ts"}`), which a restarted Home Assistant reads back. Nothing here carries more than
the event itself: no distance, score or snapshot.
"""

from __future__ import annotations

import json
from typing import Any

from .decision import DoorEvent
from .link import MqttLink

DECISION_KEYS = ("event", "label", "ts", "reason")


class DoorActivity:
    """Publishes the retained activity topics from each event body the agent publishes."""

    def __init__(self, link: MqttLink) -> None:
        self.link = link

    def record(self, body: dict[str, Any]) -> None:
        """One door event (`{"event", "label", "ts", ...}`, as published on the event topic)."""
        decision = {key: body.get(key) for key in DECISION_KEYS}
        self.link.publish(self.link.topics.last_decision, json.dumps(decision), retain=True)
        if body.get("event") == DoorEvent.RECOGNIZED:
            recognized = {"label": body.get("label"), "ts": body.get("ts")}
            self.link.publish(self.link.topics.last_recognized, json.dumps(recognized), retain=True)


__all__ = ["DECISION_KEYS", "DoorActivity"]
