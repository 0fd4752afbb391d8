"""Attacks on the match itself, against the REAL cloud, a real Mosquitto broker and the real agent.

The cloud runs as `python -m blindgate.cloud.cli serve` (blindgate.shared.launch); the door is
provisioned and enrolled with `blindgate-device`; the agent (mock-pin lock, real dlib) judges
real photos with `process_frame`. Each attack has its positive control.

- A cloud that serves another subject's sealed template for the matched one: locked + alarm.
- A cloud that restores a subject removed with `blindgate-device remove` (same id, its old
  enrollment ciphertext, label and sealed blob, re-posted through the cloud's own API): locked
  + alarm, by the device's deny list alone; the other resident still opens.
- A lying cloud (or a thief of its signing key) answering Enc(-|x|^2) with a VALID signature,
  which decodes as distance ~0 to every slot: locked + alarm. The real cloud's MQTT bridge is
  moved to a decoy broker, and the test answers probes with the cloud's own signing key.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from blindgate.device.build import build_agent
from blindgate.device.cli import main as device_main
from blindgate.device.faces import load_image
from blindgate.device.lock import Lock
from blindgate.device.state import DeviceState
from blindgate.shared.config import DeviceConfig, load_config
from blindgate.shared.engine import EvaluationKeys
from blindgate.shared.launch import CloudService, LaunchError, write_device_config
from blindgate.shared.protocol import decode_probe_request, probe_topic, reply_topic, seal_reply, signing_key_from_pem
from tests.broker import start_broker

from .forge import forged_reply

pytestmark = pytest.mark.timeout(300)

SITE = "home"
LIN, BIDEN = "Lin-Manuel Miranda", "Joe Biden"


@pytest.fixture(scope="module")
def brokers(tmp_path_factory):
    main, decoy = start_broker(tmp_path_factory.mktemp("mosquitto")), start_broker(tmp_path_factory.mktemp("decoy"))
    yield main, decoy
    main.stop()
    decoy.stop()


@pytest.fixture(scope="module")
def world(brokers, tmp_path_factory, faces_dir):
    """The real cloud on the main broker; a door provisioned with two residents."""
    main_broker, _ = brokers
    root = tmp_path_factory.mktemp("world")
    service = CloudService(root / "cloud", main_broker, root / "cloud.log")
    try:
        service.start()
    except LaunchError as exc:
        pytest.fail(str(exc))
    config = write_device_config(
        root / "door.toml", site=SITE, cloud_url=service.url, broker=main_broker, state_dir=root / "door", camera="none"
    )
    people = faces_dir / "people"
    assert device_main(["--config", str(config), *service.init_args()]) == 0
    assert device_main(["--config", str(config), "enroll", LIN, str(people / "lin_manuel_miranda/lin1.png")]) == 0
    assert device_main(["--config", str(config), "enroll", BIDEN, str(people / "biden/biden.jpg")]) == 0
    photos = {
        LIN: load_image(people / "lin_manuel_miranda/lin1.png"),
        BIDEN: load_image(people / "biden/biden2.jpg"),
        "stranger": load_image(people / "obama/obama.jpg"),
    }
    yield service, config, root, photos
    service.stop(20)


def http(service: CloudService, config: Path, method: str, path: str, body: bytes | None = None, headers=None):
    token = DeviceState(load_config(DeviceConfig, config, env={}).state_dir).load_cloud().token
    req = urllib.request.Request(
        service.url + path, data=body, method=method, headers={"Authorization": f"Bearer {token}", **(headers or {})}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def subject_of(service, config, name_hint_slot: int) -> str:
    listing = http(service, config, "GET", f"/v1/sites/{SITE}/subjects")
    return next(s["subject"] for s in listing["subjects"] if s["slot"] == name_hint_slot)


def database(service: CloudService) -> sqlite3.Connection:
    return sqlite3.connect(service.state_dir / "gallery.db", timeout=10, isolation_level=None)


class Door:
    """A fresh agent (empty caches) on the door's state, connected to the broker; events recorded."""

    def __init__(self, config: Path) -> None:
        self.agent = build_agent(load_config(DeviceConfig, config, env={}), lock=Lock("GPIO17", pin_factory="mock"))
        self.events: list[str] = []
        self.labels: list[str | None] = []
        self.agent.when_decided = lambda v, d: (self.events.append(d.event), self.labels.append(v.label)) if d.event else None
        self.agent.connect(wait=10)

    def show(self, rgb: np.ndarray, frames: int = 2) -> bool:
        """Show a photo `frames` times; True if the door opened (the pin went high)."""
        opened = False
        for _ in range(frames):
            decision = self.agent.process_frame(rgb)
            opened = opened or bool(decision and decision.unlock and self.agent.lock.pin.state == 1)
        return opened

    def close(self) -> None:
        self.agent.close()


def alarms(config: Path) -> int:
    audit = Path(load_config(DeviceConfig, config, env={}).state_dir) / "audit.jsonl"
    return sum(1 for line in audit.read_text().splitlines() if json.loads(line).get("event") == "cloud_integrity")


def test_swapped_sealed_template_keeps_the_door_locked(world):
    service, config, _, photos = world
    door = Door(config)
    try:  # positive control: the resident opens, named from the sealed (authenticated) label
        assert door.show(photos[LIN]), door.agent.counters
        assert door.agent.counters.get("cloud_integrity", 0) == 0 and LIN in door.labels
    finally:
        door.close()
    lin, biden = subject_of(service, config, 0), subject_of(service, config, 1)
    with database(service) as db:
        (original,) = db.execute("SELECT sealed FROM subject WHERE subject_id = ?", (lin,)).fetchone()
        db.execute(
            "UPDATE subject SET sealed = (SELECT sealed FROM subject WHERE subject_id = ?) WHERE subject_id = ?", (biden, lin)
        )
    door = Door(config)
    try:
        before = alarms(config)
        assert not door.show(photos[LIN], frames=3)
        assert door.agent.lock.is_locked and door.agent.counters["cloud_integrity"] == 3
        assert alarms(config) == before + 3 and "recognized" not in door.events
    finally:
        door.close()
        with database(service) as db:
            db.execute("UPDATE subject SET sealed = ? WHERE subject_id = ?", (original, lin))


def test_a_restored_removed_subject_stays_out(world):
    service, config, _, photos = world
    lin = subject_of(service, config, 0)
    with database(service) as db:  # what a malicious cloud keeps before it obeys the removal
        label, enrollment, sealed = db.execute(
            "SELECT label, enrollment, sealed FROM subject WHERE subject_id = ?", (lin,)
        ).fetchone()
    assert device_main(["--config", str(config), "remove", lin]) == 0
    listing = http(service, config, "GET", f"/v1/sites/{SITE}/subjects")
    assert lin not in [s["subject"] for s in listing["subjects"]]
    key_id = DeviceState(load_config(DeviceConfig, config, env={}).state_dir).load_keys().key_id
    http(
        service,
        config,
        "POST",
        f"/v1/sites/{SITE}/subjects",
        bytes(enrollment),
        {
            "X-Blindgate-Key-Id": key_id,
            "X-Blindgate-Label": base64.b64encode(bytes(label)).decode(),
            "X-Blindgate-Subject": lin,
            "X-Blindgate-Sealed": base64.b64encode(bytes(sealed)).decode(),
            "Content-Type": "application/octet-stream",
        },
    )
    listing = http(service, config, "GET", f"/v1/sites/{SITE}/subjects")
    assert lin in [s["subject"] for s in listing["subjects"]]  # the cloud brought them back
    door = Door(config)
    try:
        assert not door.show(photos[LIN], frames=3)
        assert door.agent.lock.is_locked and door.agent.counters["cloud_integrity"] == 3
        assert door.show(photos[BIDEN]), door.agent.counters  # positive control: the other resident
        assert BIDEN in door.labels
    finally:
        door.close()


class Impostor:
    """Answers every probe on the main broker with a signed Enc(-|x|^2) for the current directory."""

    def __init__(self, broker, service: CloudService, config: Path) -> None:
        self.signer = signing_key_from_pem((service.state_dir / "reply-signing-key.pem").read_bytes())
        with database(service) as db:  # only what the cloud holds: the site's evaluation bundle
            (bundle,) = db.execute("SELECT bundle FROM site WHERE site_id = ?", (SITE,)).fetchone()
        self.keys = EvaluationKeys.from_bytes(bytes(bundle))
        listing = http(service, config, "GET", f"/v1/sites/{SITE}/subjects")
        self.version = int(listing["gallery_version"])
        occupied = np.zeros(self.keys.params.slots, dtype=bool)
        for s in listing["subjects"]:
            occupied[int(s["slot"])] = True
        self.occupied = [occupied]
        self.answered = 0
        self.client = broker.client()
        self.client.on_message = self.on_probe
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(probe_topic(SITE, "door1"), qos=1)
        self.client.loop_start()

    def on_probe(self, client, userdata, msg) -> None:
        req = decode_probe_request(bytes(msg.payload))
        payload = seal_reply(forged_reply(self.keys, req, self.version, self.occupied), self.signer)
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = bytes.fromhex(req.request_id)
        client.publish(reply_topic(SITE, "door1"), payload, qos=1, properties=props)
        self.answered += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_signed_minus_norm_forgery_keeps_the_door_locked(world, brokers):
    service, config, _, photos = world
    main_broker, decoy = brokers
    service.stop(20)
    service.broker = decoy  # the honest cloud answers nobody on the door's broker any more
    service.start()
    impostor = Impostor(main_broker, service, config)
    door = Door(config)
    try:
        before = alarms(config)
        assert not door.show(photos["stranger"], frames=3)
        assert impostor.answered >= 3
        assert door.agent.lock.is_locked and door.agent.lock.pin.state == 0
        assert door.agent.counters["cloud_integrity"] == 3 and door.agent.counters.get("verdict_match", 0) == 0
        assert "recognized" not in door.events and alarms(config) == before + 3
        audit = (Path(load_config(DeviceConfig, config, env={}).state_dir) / "audit.jsonl").read_text()
        assert 'distance"' not in audit
    finally:
        door.close()
        impostor.close()
        service.stop(20)
        service.broker = main_broker
        service.start()
