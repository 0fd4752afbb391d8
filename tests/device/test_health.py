"""The door's health: offline after CLOUD_MISSES unanswered probes or a camera stall, online again when it recovers."""

import json

from blindgate.device.health import CLOUD_MISSES, DoorHealth, Problem
from blindgate.shared.config import DeviceConfig

from .fakes import RecordingLink


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def make():
    link, clock = RecordingLink(DeviceConfig(site="home", device_id="door1")), Clock()
    health = DoorHealth(link, clock, frame_stall_s=10.0)
    changes = []
    health.when_changed = changes.append
    return health, link, clock, changes


def states(link):
    return [(json.loads(p)["state"], json.loads(p)["problems"], r) for t, p, r in link.published if t == link.topics.health]


def test_starts_online_and_publishes_retained_json():
    health, link, _, _ = make()
    health.publish()
    assert link.published[-1][0] == "blindgate/home/door1/health"
    body = json.loads(link.published[-1][1])
    assert body["state"] == "online" and body["problems"] == [] and body["since"].endswith("Z")
    assert states(link) == [("online", [], True)]


def test_the_cloud_counts_as_unreachable_after_consecutive_misses_only():
    health, link, _, changes = make()
    for _ in range(CLOUD_MISSES - 1):
        health.cloud_missed()
    health.cloud_answered()  # an answer in between: the count starts over
    for _ in range(CLOUD_MISSES - 1):
        health.cloud_missed()
    assert health.current.state == "online" and not states(link) and not changes  # positive control: not too eager
    health.cloud_missed()
    assert health.current.problems == {Problem.CLOUD} and health.current.state == "offline"
    assert states(link) == [("offline", ["cloud"], True)] and len(changes) == 1
    health.cloud_missed()  # still down: nothing new to say
    assert len(states(link)) == 1
    health.cloud_answered()
    assert states(link)[-1] == ("online", [], True) and changes[-1].state == "online"


def test_a_camera_stall_is_noticed_from_start_and_ends_with_the_next_frame():
    health, link, clock, _ = make()
    clock.now += 60
    health.check()
    assert health.current.state == "online"  # not watched before start(): no frame is expected yet
    health.start()
    clock.now += 9.9
    health.check()
    assert health.current.state == "online"  # positive control: within FRAME_STALL_S
    clock.now += 0.2
    health.check()
    assert health.current.problems == {Problem.CAMERA}
    health.frame_seen()
    assert health.current.state == "online"
    clock.now += 10.0
    health.check()
    assert states(link) == [("offline", ["camera"], True), ("online", [], True), ("offline", ["camera"], True)]


def test_both_problems_are_listed_and_each_clears_on_its_own():
    health, link, clock, _ = make()
    health.start()
    for _ in range(CLOUD_MISSES):
        health.cloud_missed()
    clock.now += 11
    health.check()
    assert states(link)[-1] == ("offline", ["camera", "cloud"], True)
    health.frame_seen()
    assert states(link)[-1] == ("offline", ["cloud"], True)  # the camera is back, the cloud is not
    health.cloud_answered()
    assert states(link)[-1] == ("online", [], True)


def test_an_observer_may_read_the_health_back():
    """`when_changed` runs outside the lock: an observer calling back does not deadlock."""
    health, link, _, _ = make()
    seen = []
    health.when_changed = lambda h: (seen.append(h.state), health.publish())
    for _ in range(CLOUD_MISSES):
        health.cloud_missed()
    assert seen == ["offline"] and states(link)[-1] == ("offline", ["cloud"], True)
