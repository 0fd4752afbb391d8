"""The door's local HTTP endpoint (device/endpoint.py) and its metrics (device/metrics.py).

Off by default, loopback by default; serves Prometheus text and health; what it serves moves with
decisions (positive control) and never names or carries a distance, a score or a label.
"""

import json
import re
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest

from blindgate.device.endpoint import DoorEndpoint, is_loopback, make_app, start_endpoint
from blindgate.device.metrics import DoorMetrics, RejectKind, reject_kind
from blindgate.shared.config import DecisionConfig, DeviceConfig, EndpointConfig, load_config

from .test_agent_replies import DEVICE, SITE, RecordingLink, request, sealed
from .test_agent_replies import world as world  # noqa: F401  (the module-scoped fixture)
from .test_agent_robustness import AnsweringClient, make_agent


@pytest.fixture
def agent(world, tmp_path):
    config = DeviceConfig(
        site=SITE,
        device_id=DEVICE,
        decision=DecisionConfig(frames_required=2, reply_timeout=2.0),
        endpoint=EndpointConfig(enabled=True, port=0),
    )
    link = RecordingLink(config)
    a = make_agent(world, tmp_path, link)
    link.client = AnsweringClient(link, lambda req: sealed(world, req))
    link.on_connect(link.client, None, None, SimpleNamespace(is_failure=False), None)
    yield a
    a.close()


def get(endpoint, path):
    url = f"http://{endpoint.config.host}:{endpoint.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.headers.get("Content-Type", ""), answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def sample(text, name, **labels):
    """The value of one series in Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series == (f"{name}{{{want}}}" if labels else name):
            return float(value)
    return 0.0


def test_off_by_default_and_loopback_by_default(tmp_path):
    config = load_config(DeviceConfig, env={})
    assert config.endpoint.enabled is False and config.endpoint.host == "127.0.0.1" and config.endpoint.port == 9610
    assert start_endpoint(config, agent=None) is None  # type: ignore[arg-type]  (nothing is built when off)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")


def test_the_endpoint_serves_metrics_that_move_with_decisions_and_carry_no_decrypted_value(agent, world):
    endpoint = start_endpoint(agent.config, agent)
    assert endpoint is not None
    try:
        (sock,) = endpoint._runner.addresses if endpoint._runner else [None]  # bound where configured
        assert sock[0] == "127.0.0.1"
        status, kind, before = get(endpoint, "/metrics")
        assert status == 200 and kind.startswith("text/plain")
        assert "process_resident_memory_bytes" in before and sample(before, "blindgate_door_locked") == 1
        # positive control: two honest frames open the door, and the counters follow
        for _ in range(2):
            verdict = agent.probe(world.alice)
            agent.apply(verdict)
        req = request(agent)
        agent.link.on_message(None, None, SimpleNamespace(topic=agent.link.topics.reply, payload=b"junk", retain=False))
        assert agent.wait_reply(req, world.alice, 0.1).kind == "doubt"  # the junk was rejected, then time ran out
        _, _, after = get(endpoint, "/metrics")
        assert sample(after, "blindgate_door_decisions_total", verdict="match", event="none") == 1
        assert sample(after, "blindgate_door_decisions_total", verdict="match", event="recognized") == 1
        assert sample(after, "blindgate_door_stage_seconds_count", stage="decrypt") == 2
        assert sample(after, "blindgate_door_replies_rejected_total", reason="malformed") == 1
        assert sample(after, "blindgate_door_locked") == 0  # open now
        assert "blindgate_door_reply_queue_dropped_total" in after and "blindgate_door_cloud_integrity_alarms_total" in after
        # never a distance, a score, a label or a name: not as a metric, a label name or a label value
        door_lines = [line for line in after.splitlines() if "blindgate_door" in line]
        assert not re.search(r"distance|score|similarity|Alice|s-alice", "\n".join(door_lines), re.IGNORECASE)
        label_names = set(re.findall(r"[{,](\w+)=", "\n".join(door_lines)))
        assert label_names <= {"verdict", "event", "reason", "stage", "le"}
        status, _, body = get(endpoint, "/healthz")
        assert status == 503 and json.loads(body) == {"healthy": False}  # no camera frame yet
        assert get(endpoint, "/admin")[0] == 404  # only what is routed
    finally:
        endpoint.stop()


def test_rejected_reasons_map_to_a_bounded_set_of_kinds():
    assert reject_kind("reply: bad signature — not from this site's cloud, or altered") is RejectKind.SIGNATURE
    assert reject_kind("reply to no pending request (duplicate, replayed or too late)") is RejectKind.UNSOLICITED
    assert reject_kind("stale reply: past its request's or its own expiry") is RejectKind.STALE
    assert reject_kind("reply addressed to x/y, not this device") is RejectKind.MISMATCH
    assert reject_kind("retained message ignored") is RejectKind.RETAINED
    assert reject_kind('attacker-chosen text {le="1"}') is RejectKind.OTHER


def test_a_taken_port_is_an_error_not_a_silent_door(agent):
    first = DoorEndpoint(EndpointConfig(enabled=True, port=0), make_app(agent, DoorMetrics()))
    first.start()
    try:
        second = DoorEndpoint(EndpointConfig(enabled=True, port=first.port or 0), make_app(agent, DoorMetrics()))
        with pytest.raises(Exception, match="did not start"):
            second.start()
    finally:
        first.stop()
