"""The door's MQTT link: topics, the reply queue, callbacks, probe properties, reconnection.

Most tests drive the paho callbacks directly with a recording fake client; the last one uses a
real Mosquitto (broker restart, Last Will).
"""

import threading
import time
from types import SimpleNamespace

import pytest

from blindgate.device.link import DeviceTopics, Incoming, LinkLost, MqttLink
from blindgate.shared.config import DeviceConfig
from blindgate.shared.errors import BlindgateError
from blindgate.shared.protocol import decode_probe_request, new_probe_request, new_signing_key, verify_probe_request

CONFIG = DeviceConfig(site="home", device_id="door1")


class FakeClient:
    """Records what the link asks paho to do."""

    def __init__(self, rc=0):
        self.published, self.subscribed, self.rc = [], [], rc

    def publish(self, topic, payload, qos=0, retain=False, properties=None):
        self.published.append(SimpleNamespace(topic=topic, payload=payload, qos=qos, retain=retain, properties=properties))
        return SimpleNamespace(rc=self.rc, wait_for_publish=lambda timeout=None: True)

    def subscribe(self, topics):
        self.subscribed.extend(topics)

    def will_set(self, *args, **kwargs):
        self.will = (args, kwargs)

    def connect_async(self, *args, **kwargs):
        pass

    def loop_start(self):
        pass

    def loop_stop(self):
        pass

    def disconnect(self):
        self.disconnected = True


def message(topic, payload, retain=False):
    return SimpleNamespace(topic=topic, payload=payload, retain=retain)


@pytest.fixture
def link():
    return MqttLink(CONFIG)


def test_topics_follow_the_protocol_layout():
    topics = DeviceTopics.of(CONFIG)
    assert topics.reply == "blindgate/home/door1/reply"
    assert topics.probe == "blindgate/home/door1/probe"
    assert (topics.lock, topics.event, topics.availability) == (
        "blindgate/home/door1/lock",
        "blindgate/home/door1/event",
        "blindgate/home/door1/availability",
    )
    assert topics.ha_status == "homeassistant/status" and topics.object_id == "home_door1"


def test_replies_are_queued_and_retained_ones_never(link):
    ignored = []
    link.when_retained_ignored = ignored.append
    link.on_message(None, None, message(link.topics.reply, b"old", retain=True))
    link.on_message(None, None, message(link.topics.reply, b"new"))
    assert link.next_reply(0) == Incoming(b"new", False)
    assert link.next_reply(0) is None
    assert ignored == [link.topics.reply]


def test_home_assistant_birth_calls_back_unless_retained(link):
    births = []
    link.when_ha_online = lambda: births.append(1)
    link.on_message(None, None, message("homeassistant/status", b"online", retain=True))
    link.on_message(None, None, message("homeassistant/status", b"offline"))
    assert births == []
    link.on_message(None, None, message("homeassistant/status", b"online"))
    assert births == [1]


def test_disconnect_wakes_a_waiting_reader(link):
    link.on_disconnect(None, None, None, "gone", None)
    with pytest.raises(LinkLost):
        link.next_reply(5)
    assert issubclass(LinkLost, BlindgateError) and issubclass(LinkLost, ConnectionError)


def test_a_flood_on_the_reply_topic_is_bounded_and_reported_once_per_burst(link):
    """300 junk 256 KB messages while idle: at most `reply_queue` kept, one report before the next probe."""
    junk = b"\x00" * (256 * 1024)
    for _ in range(300):
        link.on_message(None, None, message(link.topics.reply, junk))
    assert len(link.replies) == CONFIG.reply_queue == 16
    reports = []
    link.when_replies_dropped = reports.append
    client = FakeClient()
    link.connect(client, wait=None)
    request = new_probe_request("home", "door1", "k1", b"ciphertext", ttl=1.0)
    assert link.publish_probe(request, 1.0, new_signing_key()) == 0
    assert reports == [300] and len(link.replies) == 0  # nothing queued before a request can answer it
    assert link.publish_probe(request, 1.0, new_signing_key()) == 0
    assert reports == [300]  # no new burst, no new report


def test_reconnect_clears_a_stale_disconnect_marker(link):
    """An outage while idle must not fail the first frame after the broker is back."""
    client = FakeClient()
    link.connect(client, wait=None)
    link.on_connect(client, None, None, SimpleNamespace(is_failure=False), None)
    link.on_disconnect(None, None, None, "gone", None)
    link.on_connect(client, None, None, SimpleNamespace(is_failure=False), None)
    assert link.next_reply(0.05) is None  # not LinkLost
    link.on_message(None, None, message(link.topics.reply, b"answer"))
    assert link.next_reply(0) == Incoming(b"answer", False)


def test_next_reply_waits_no_longer_than_asked(link):
    start = time.monotonic()
    assert link.next_reply(0.1) is None
    assert time.monotonic() - start < 1


def test_connect_subscribes_announces_online_then_calls_back(link):
    client = FakeClient()
    connected = []
    link.when_connected = lambda: connected.append(link.is_connected)
    link.connect(client, wait=None)
    assert client.will == (("blindgate/home/door1/availability", "offline"), {"qos": 1, "retain": True})
    link.on_connect(client, None, None, SimpleNamespace(is_failure=False), None)
    assert set(client.subscribed) == {
        ("blindgate/home/door1/reply", 1),
        ("homeassistant/status", 1),
        ("blindgate/home/door1/claim", 1),
    }
    assert [(p.topic, p.payload, p.retain) for p in client.published] == [("blindgate/home/door1/availability", "online", True)]
    assert connected == [True]


def test_refused_connection_is_not_connected(link):
    client = FakeClient()
    link.connect(client, wait=None)
    link.on_connect(client, None, None, SimpleNamespace(is_failure=True), None)
    assert not link.is_connected and client.subscribed == []


def test_probe_is_an_mqtt5_request(link):
    client = FakeClient()
    link.connect(client, wait=None)
    request = new_probe_request("home", "door1", "k1", b"ciphertext", ttl=2.5)
    door_key = new_signing_key()
    assert link.publish_probe(request, 2.5, door_key) == 0
    (sent,) = client.published
    assert sent.topic == "blindgate/home/door1/probe" and not sent.retain and sent.qos == 1
    assert decode_probe_request(sent.payload).request_id == request.request_id
    signed = verify_probe_request(sent.payload, door_key.public_key())  # signed by the door's key
    assert signed.topic == sent.topic and signed.probe_sha256 == request.probe_sha256
    assert sent.properties.ResponseTopic == "blindgate/home/door1/reply"
    assert sent.properties.CorrelationData == bytes.fromhex(request.request_id)
    assert sent.properties.MessageExpiryInterval == 3


def test_probe_without_a_client_fails(link):
    request = new_probe_request("home", "door1", "k1", b"ciphertext", ttl=1.0)
    assert link.publish_probe(request, 1.0, new_signing_key()) != 0


def test_close_says_last_words_then_offline(link):
    client = FakeClient()
    link.connect(client, wait=None)
    link.close(last_words=[(link.topics.lock, "LOCKED")])
    assert [(p.topic, p.payload, p.retain) for p in client.published] == [
        ("blindgate/home/door1/lock", "LOCKED", True),
        ("blindgate/home/door1/availability", "offline", True),
    ]
    assert client.disconnected and link.client is None
    link.close()  # a second close does nothing


@pytest.mark.timeout(120)
def test_reconnects_after_broker_restart_and_last_will(broker):
    config = DeviceConfig(site="home", device_id="door1", mqtt=broker.mqtt_config("door", keepalive=5))
    link = MqttLink(config)
    connects, online, offline = [], threading.Event(), threading.Event()
    reconnected = threading.Event()

    def on_availability(client, userdata, msg):
        (online if msg.payload == b"online" else offline).set()

    def on_connected():
        connects.append(1)
        if len(connects) >= 2:
            reconnected.set()

    link.when_connected = on_connected
    watcher = broker.client()
    watcher.on_message = on_availability
    watcher.on_connect = lambda c, u, f, rc, p: c.subscribe([("blindgate/home/door1/availability", 1)])
    try:
        link.connect(wait=10)
        assert link.is_connected
        broker.restart()
        assert reconnected.wait(20), "link did not reconnect"
        watcher.connect(broker.host, broker.port)
        watcher.loop_start()
        assert online.wait(10)
        # an unclean loss of the device: the broker publishes the Last Will
        link.client._sock.close()
        assert offline.wait(15)
    finally:
        link.close()
        watcher.disconnect()
        try:
            watcher.loop_stop()
        except AttributeError:  # paho race when the thread ends by itself
            pass


def test_claims_go_to_their_callback_retained_flag_included(link):
    """Claims never enter the reply queue; the claim gate gets them (and audits retained ones itself)."""
    got = []
    link.when_claim = lambda payload, retained: got.append((payload, retained))
    link.on_message(None, None, SimpleNamespace(topic="blindgate/home/door1/claim", payload=b"sealed", retain=False))
    link.on_message(None, None, SimpleNamespace(topic="blindgate/home/door1/claim", payload=b"old", retain=True))
    assert got == [(b"sealed", False), (b"old", True)]
    assert link.next_reply(0.05) is None
