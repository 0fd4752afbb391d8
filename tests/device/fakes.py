"""Test doubles shared by the agent's tests: the real MQTT link minus the broker."""

from __future__ import annotations

import json
from types import SimpleNamespace

from blindgate.device.link import MqttLink
from blindgate.shared.protocol import decode_probe_request


class RecordingLink(MqttLink):
    """The real link without a broker: what the agent publishes is kept in `published`."""

    def __init__(self, config):
        super().__init__(config)
        self.published = []

    def publish(self, topic, payload, retain=False):
        self.published.append((topic, payload, retain))

    def events(self):
        return [json.loads(p) for t, p, _ in self.published if t == self.topics.event]


class AnsweringClient:
    """A fake paho client: each published probe is answered at once by `answer(request)` on the reply topic.

    `answer` returning None leaves the probe unanswered (a silent cloud). With `record`, every
    publish through the client (the link's own and paho-level ones) lands in `link.published`.
    """

    def __init__(self, link, answer, record=False):
        self.link, self.answer, self.record = link, answer, record

    def publish(self, topic, payload, qos=0, retain=False, properties=None):
        if self.record:
            self.link.published.append((topic, payload, retain))
        if topic == self.link.topics.probe:
            reply = self.answer(decode_probe_request(payload))
            if reply is not None:
                self.link.on_message(None, None, SimpleNamespace(topic=self.link.topics.reply, payload=reply, retain=False))
        return SimpleNamespace(rc=0, wait_for_publish=lambda timeout=None: True)

    def subscribe(self, topics):
        pass

    def disconnect(self):
        pass

    def loop_stop(self):
        pass
