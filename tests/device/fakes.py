"""Test doubles shared by the agent's tests: the real MQTT link minus the broker."""

from __future__ import annotations

import json

from blindgate.device.link import MqttLink


class RecordingLink(MqttLink):
    """The real link without a broker: what the agent publishes is kept in `published`."""

    def __init__(self, config):
        super().__init__(config)
        self.published = []

    def publish(self, topic, payload, retain=False):
        self.published.append((topic, payload, retain))

    def events(self):
        return [json.loads(p) for t, p, _ in self.published if t == self.topics.event]
