"""Claimed-identity (1:1) mode end to end: real Mosquitto, the real cloud service, real faces.

The door runs in `mode = "verify"`: nothing is probed until a registered claim source (a keypad
here, through `blindgate-device claim`, over the broker) says who is at the door. Positive
control: Lin-Manuel Miranda's PIN and his face (the Hamilton clip) open the door. Attacks: no
claim, Biden's PIN with Lin's face, forged / replayed / retained claims, wrong PINs toward the
lockout; and neither the broker nor the cloud ever sees a PIN or a name.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

from blindgate.device.build import build_agent, open_configured_camera
from blindgate.device.claims import seal_claim
from blindgate.device.cli import main as device_main
from blindgate.device.credentials import CredentialStore
from blindgate.device.lock import Lock
from blindgate.shared.config import DeviceConfig, load_config
from blindgate.shared.launch import write_device_config
from blindgate.shared.protocol import decode_probe_request

pytestmark = pytest.mark.timeout(300)

LIN_PIN, BIDEN_PIN = "48151623", "90210377"  # long: no accidental hit when grepping ciphertexts
LIN, BIDEN = "Lin-Manuel Miranda", "Joe Biden"
CLAIM_TOPIC = "blindgate/claims/door1/claim"


class Watcher:
    """Everything published under the site's topics (the broker's view)."""

    def __init__(self, broker) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.client = broker.client()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload), bool(m.retain)))
        self.client.connect(broker.host, broker.port)
        self.client.subscribe([("blindgate/#", 1)])
        self.client.loop_start()
        time.sleep(0.3)

    def close(self) -> None:
        self.client.disconnect()
        try:
            self.client.loop_stop()
        except AttributeError:
            pass


@pytest.fixture(scope="module")
def door(tmp_path_factory, cloud, mqtt_broker, faces_dir):
    """A door in verify mode with Lin (PIN) and Biden (PIN from stdin) enrolled and a keypad registered."""
    tmp = tmp_path_factory.mktemp("claims")
    video = faces_dir / "video" / "short_hamilton_clip.mp4"
    config = write_device_config(
        tmp / "claims.toml", site="claims", cloud_url=cloud.url, broker=mqtt_broker, state_dir=tmp / "state", camera=str(video),
        decision={"lockout_failures": 3},
    )  # fmt: skip
    config.write_text(config.read_text().replace("[decision]\n", '[decision]\nmode = "verify"\nclaim_ttl = 60.0\n'))
    run = ["--config", str(config)]
    assert device_main([*run, *cloud.init_args()]) == 0
    people = faces_dir / "people"
    assert device_main([*run, "enroll", LIN, str(people / "lin_manuel_miranda/lin1.png"), "--pin", LIN_PIN]) == 0
    return config, run, people, tmp


def register_keypad(door, capsys) -> Path:
    config, run, _, tmp = door
    key_file = tmp / "keypad.key"
    if not key_file.exists():
        capsys.readouterr()
        assert device_main([*run, "claim-source", "add", "keypad"]) == 0
        key_file.write_text(capsys.readouterr().out.strip().splitlines()[-1] + "\n")
    return key_file


def send_claim(door, key_file, pin, monkeypatch) -> None:
    _, run, _, _ = door
    monkeypatch.setattr("sys.stdin", io.StringIO(pin + "\n"))
    assert device_main([*run, "claim", "--source", "keypad", "--key-file", str(key_file), "--pin", "-"]) == 0


def start_agent(config_path: Path):
    config = load_config(DeviceConfig, config_path, env={})
    agent = build_agent(config, lock=Lock("GPIO17", pin_factory="mock"))
    agent.seen = []
    agent.when_decided = lambda verdict, decision: agent.seen.append((verdict, decision))
    agent.connect(wait=10)
    time.sleep(0.3)  # subscribed
    return agent, config


def run_clip(agent, config, max_frames=None) -> None:
    with open_configured_camera(config) as camera:
        agent.run(camera, max_frames=max_frames)


def wait_for(predicate, timeout=5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_verify_mode_opens_only_for_the_claimed_face(door, mqtt_broker, cloud, capsys, monkeypatch):
    config_path, run, people, tmp = door
    key_file = register_keypad(door, capsys)
    watcher = Watcher(mqtt_broker)
    agent, config = start_agent(config_path)
    try:
        run_clip(agent, config, max_frames=8)  # no claim: nothing is probed, nothing opens
        assert agent.counters.get("skipped_no_claim", 0) == 8 and not agent.seen
        send_claim(door, key_file, LIN_PIN, monkeypatch)
        wait_for(lambda: len(agent.claims._queue) == 1)
        run_clip(agent, config)
        opened = [d for _, d in agent.seen if d.unlock]
        assert len(opened) == 1, f"counters {agent.counters}"  # one claim opens once
        verdicts = [v for v, _ in agent.seen]
        assert any(v.kind == "match" and v.label == LIN for v in verdicts)
        assert agent.claims.subject() is None
    finally:
        agent.close()
        watcher.close()
    probes = [p for t, p, _ in watcher.messages if t.endswith("/probe")]
    claims = [p for t, p, _ in watcher.messages if t == CLAIM_TOPIC]
    assert probes and len(claims) == 1
    # the broker never sees the PIN; the name only in the door's own events and their retained copies for HA
    for topic, payload, _ in watcher.messages:
        assert LIN_PIN.encode() not in payload, topic
        assert LIN.encode() not in payload or topic.endswith(("/event", "/activity/decision", "/activity/recognized")), topic
    assert all(LIN.encode() not in p and LIN_PIN.encode() not in p for p in probes)  # what the cloud is sent
    assert {decode_probe_request(p).mode for p in probes} == {"verify"}  # never a 1:N probe in verify mode
    for path in [*Path(cloud.state_dir).rglob("*"), Path(cloud.log_path)]:  # nor does the cloud keep one
        if path.is_file():
            data = path.read_bytes()
            assert LIN_PIN.encode() not in data and LIN.encode() not in data, path


def test_right_claim_with_a_strangers_face_stays_locked(door, capsys, monkeypatch):
    config_path, run, people, tmp = door
    key_file = register_keypad(door, capsys)
    assert device_main([*run, "enroll", BIDEN, str(people / "biden/biden.jpg"), str(people / "biden/biden2.jpg")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    monkeypatch.setattr("sys.stdin", io.StringIO(BIDEN_PIN + "\n"))
    assert device_main([*run, "credentials", out["subject"], "--pin", "-"]) == 0
    agent, config = start_agent(config_path)
    try:
        send_claim(door, key_file, BIDEN_PIN, monkeypatch)  # Biden's PIN, Lin's face in the clip
        wait_for(lambda: len(agent.claims._queue) == 1)
        run_clip(agent, config)
        assert not [d for _, d in agent.seen if d.unlock], agent.counters
        assert agent.counters.get("verdict_match", 0) == 0 and agent.counters.get("verdict_unknown", 0) > 0
        assert agent.lock.is_locked
    finally:
        agent.close()
    store = CredentialStore(Path(tmp) / "state")
    assert store.resolve("pin", BIDEN_PIN) == out["subject"]
    assert device_main([*run, "remove", out["subject"]]) == 0  # a removed person's PIN claims nobody
    assert store.resolve("pin", BIDEN_PIN) is None and store.resolve("pin", LIN_PIN) is not None


def test_forged_replayed_retained_claims_are_dropped_and_wrong_pins_lock_out(door, mqtt_broker, capsys, monkeypatch):
    config_path, run, _, tmp = door
    key_file = register_keypad(door, capsys)
    attacker = mqtt_broker.client()
    attacker.connect(mqtt_broker.host, mqtt_broker.port)
    attacker.loop_start()
    recorder = Watcher(mqtt_broker)  # records an honest claim, to keep it retained on the broker
    send_claim(door, key_file, LIN_PIN, monkeypatch)
    wait_for(lambda: any(t == CLAIM_TOPIC for t, _, _ in recorder.messages))
    recorder.close()
    honest = next(p for t, p, _ in recorder.messages if t == CLAIM_TOPIC)
    attacker.publish(CLAIM_TOPIC, honest, qos=1, retain=True).wait_for_publish(5)  # delivered retained on subscribe
    agent, config = start_agent(config_path)
    try:
        wait_for(lambda: agent.counters.get("claims_rejected_retained", 0) == 1)
        attacker.publish(CLAIM_TOPIC, b"", qos=1, retain=True).wait_for_publish(5)  # clear it (an empty claim: malformed)
        forged = seal_claim(b"\x01" * 32, CLAIM_TOPIC, "keypad", "pin", LIN_PIN)
        unknown = seal_claim(b"\x01" * 32, CLAIM_TOPIC, "garage", "pin", LIN_PIN)
        for payload in (forged, unknown, b"garbage"):
            attacker.publish(CLAIM_TOPIC, payload, qos=1).wait_for_publish(5)
        recorder = Watcher(mqtt_broker)
        send_claim(door, key_file, LIN_PIN, monkeypatch)  # honest, live
        wait_for(lambda: any(t == CLAIM_TOPIC for t, _, _ in recorder.messages))
        recorder.close()
        live = next(p for t, p, _ in recorder.messages if t == CLAIM_TOPIC)
        attacker.publish(CLAIM_TOPIC, live, qos=1).wait_for_publish(5)  # replayed
        wait_for(lambda: agent.counters.get("claims_rejected", 0) >= 6)
        time.sleep(0.2)
        c = agent.counters
        assert (c["claims_rejected_retained"], c["claims_rejected_forged"], c["claims_rejected_unknown_source"]) == (1, 1, 1)
        assert (c["claims_rejected_malformed"], c["claims_rejected_replayed"], c["claims_rejected"]) == (2, 1, 6)
        agent.claims.poll()
        assert agent.claims.subject() is not None and not agent.decision.locked_out()  # the live honest one counts
        assert agent.decision.failures == 0
        agent.claims.consume()
        for _ in range(3):  # wrong PINs, honestly sealed: failed attempts
            send_claim(door, key_file, "11112222", monkeypatch)
        wait_for(lambda: len(agent.claims._queue) == 3)
        agent.claims.poll()
        assert agent.counters["claims_failed"] == 3 and agent.decision.locked_out()
    finally:
        attacker.disconnect()
        attacker.loop_stop()
        agent.close()
    audit = (Path(config.state_dir) / "audit.jsonl").read_text()
    assert LIN_PIN not in audit and "11112222" not in audit and '"reason": "forged"' in audit
