"""`blindgate-device`: provision, enroll and run a door device.

    blindgate-device [--config device.toml] init [--provision-token T]
    blindgate-device enroll NAME IMAGE...          # or: enroll NAME --camera [--frames N]
    blindgate-device list
    blindgate-device remove SUBJECT                # subject id, or a name enrolled once
    blindgate-device status
    blindgate-device refresh-cloud-key             # accept the cloud's next signing key, endorsed by the pinned one
    blindgate-device rotate-door-key               # new request-signing key for this door; nobody re-enrolls
    blindgate-device rekey                         # new CKKS keys; templates re-encrypted from their sealed copies
    blindgate-device run

Configuration: --config TOML, then BLINDGATE_* environment variables (blindgate.shared.config).

Enrollment from several images or frames: every image must show one good face (size and
sharpness checks of FaceAnalyzer); the embeddings must agree (each within the match threshold
of their mean, else the images are refused as not one person) and their MEAN is enrolled as
one template. Averaging several views gives a template closer to the person's typical face
than any single photo, and it costs one gallery slot.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import re
import secrets
import signal
import sys

import numpy as np

from blindgate.shared.config import ConfigError, DecisionConfig, DeviceConfig, config_option, load_config
from blindgate.shared.engine import EngineError, encrypt_enrollment, generate_site_keys
from blindgate.shared.errors import BlindgateError
from blindgate.shared.logs import setup_logging
from blindgate.shared.protocol import ProtocolError

from .build import build_agent, face_config, open_configured_camera
from .cloud_client import CloudClient, CloudError
from .door_key import ensure_door_key, public_text, rotate_door_key
from .endpoint import EndpointError, start_endpoint
from .faces import FaceAnalyzer, load_image
from .labels import LabelCipher, LabelError
from .notify import Notifier
from .provision import check_cloud_url, confirm_cloud_key, fingerprint, refresh_cloud_key, tls_context
from .rekey import RekeyError, rekey
from .sealing import KEY_FILE as TEMPLATE_KEY_FILE
from .sealing import TemplateSealer
from .site_state import SiteState
from .state import CloudLink, DeviceState, StateError

log = logging.getLogger("blindgate.device.cli")


class UsageError(BlindgateError, RuntimeError):
    pass


SUBJECT_ID = re.compile(r"[0-9a-f]{32}")


def new_subject_id() -> str:
    """A fresh random subject id (128 bits, hex), as the cloud would make one; chosen here to seal with it."""
    return secrets.token_hex(16)


def _client(config: DeviceConfig, state: DeviceState) -> CloudClient:
    link = state.load_cloud()
    return CloudClient(config.cloud_url, config.site, token=link.token, tls=tls_context(config.cloud_ca_file))


# -- init --------------------------------------------------------------------------------------


def cmd_init(config: DeviceConfig, args) -> int:
    check_cloud_url(config.cloud_url, args.cloud_key)  # before any key is made or byte is sent
    state = DeviceState(config.state_dir)
    state.ensure_dir()
    if state.cloud_path.exists():
        raise UsageError(f"already registered ({state.cloud_path}); remove the state directory to start over")
    if state.keys_path.exists():
        keys = state.load_keys()
        print(f"using existing site keys {state.keys_path} (key id {keys.key_id})")
    else:
        keys = generate_site_keys()
        state.save_keys(keys)
        print(f"created site keys {state.keys_path} (key id {keys.key_id})")
    if not (state.dir / "label.key").exists():
        LabelCipher.create_key(state.dir)
        print(f"created label key {state.dir / 'label.key'}")
    if not (state.dir / TEMPLATE_KEY_FILE).exists():
        TemplateSealer.create_key(state.dir)
        print(f"created template key {state.dir / TEMPLATE_KEY_FILE}")
    client = CloudClient(config.cloud_url, config.site, tls=tls_context(config.cloud_ca_file))
    token = args.provision_token or os.environ.get("BLINDGATE_PROVISION_TOKEN") or None
    door_key, created = ensure_door_key(state)
    if created:
        print(f"created door key {state.door_key_path}")
    door = (config.device_id, public_text(door_key))
    try:
        answer = client.register_site(keys.evaluation_bytes, provision_token=token, door=door)
    except CloudError as exc:
        if exc.status != 401:
            raise
        raise UsageError(
            f"the cloud refused registration: {'wrong' if token else 'no'} provision token. Pass the one in the "
            "cloud's state directory (file provision-token, or its configured provision_token) with "
            "`init --provision-token TOKEN` or BLINDGATE_PROVISION_TOKEN"
        ) from None
    if answer["key_id"] != keys.key_id:
        raise UsageError(f"cloud registered key {answer['key_id']}, expected {keys.key_id}")
    cloud_key = confirm_cloud_key(answer["cloud_public_key"], args.cloud_key)  # constant time against the pin
    state.save_cloud(CloudLink(config.site, keys.key_id, answer["token"], cloud_key, config.cloud_url))
    print(f"registered site {config.site!r} with {config.cloud_url}; cloud key {cloud_key}")
    print(f"cloud key fingerprint {fingerprint(cloud_key)} (compare with `blindgate-cloud public-key` on the cloud host)")
    return 0


def cmd_refresh_cloud_key(config: DeviceConfig, args) -> int:
    """Follow a rotation of the cloud's reply-signing key (only keys endorsed by a trusted one)."""
    state = DeviceState(config.state_dir)
    print(refresh_cloud_key(state, _client(config, state)))
    return 0


# -- enroll ------------------------------------------------------------------------------------


def _analyzer(config: DeviceConfig) -> FaceAnalyzer:
    return FaceAnalyzer(face_config(config))


def collect_embeddings(analyzer, images) -> list[np.ndarray]:
    """Embeddings of good faces; `images` yields (name, rgb). Poor ones are reported and skipped."""
    found = []
    for name, rgb in images:
        result = analyzer.analyze(rgb)
        if hasattr(result, "embedding"):
            found.append(result.embedding)
        else:
            print(f"skipped {name}: {result.reason}", file=sys.stderr)
    return found


def template_from(embeddings: list[np.ndarray], threshold: float = DecisionConfig.threshold) -> np.ndarray:
    """The mean embedding, after checking every input is within `threshold` (the access rule's, from config) of it."""
    if not embeddings:
        raise UsageError("no usable face: need a sharp, frontal face of at least the minimum size")
    stack = np.stack(embeddings)
    mean = stack.mean(axis=0)
    spread = np.linalg.norm(stack - mean, axis=1)
    if float(spread.max()) > threshold:
        raise UsageError("the images do not look like one person: enroll them separately")
    return mean


def cmd_enroll(config: DeviceConfig, args) -> int:
    state = DeviceState(config.state_dir)
    keys = state.load_keys()
    labels = LabelCipher.load(state.dir, config.site)
    analyzer = _analyzer(config)
    if args.camera:

        def frames():
            with open_configured_camera(config) as camera:
                wanted, seen = args.frames, 0
                for frame in camera:
                    seen += 1
                    result = analyzer.analyze(frame.rgb)
                    if hasattr(result, "embedding"):
                        yield result.embedding
                        wanted -= 1
                        if wanted == 0:
                            return
                    if seen >= args.frames * 20:
                        return

        embeddings = list(frames())
        if len(embeddings) < args.frames:
            raise UsageError(f"only {len(embeddings)} of {args.frames} good frames: look at the camera, better light")
    else:
        if not args.images:
            raise UsageError("give one or more IMAGE files, or --camera")
        embeddings = collect_embeddings(analyzer, ((p, load_image(p)) for p in args.images))
    template = template_from(embeddings, config.decision.threshold)
    enrollment = encrypt_enrollment(keys, template)
    subject = new_subject_id()  # chosen here, so the sealed template is bound to it
    sealed = TemplateSealer.load(state.dir, config.site).seal(subject, keys.key_id, template, args.name)
    answer = _client(config, state).enroll(enrollment, labels.encrypt(args.name), keys.key_id, subject=subject, sealed=sealed)
    if answer.get("subject") != subject:
        raise UsageError(f"the cloud enrolled subject {answer.get('subject')!r}, not {subject!r}: its template cannot be checked")
    print(
        json.dumps(
            {
                "subject": answer.get("subject"),
                "name": args.name,
                "faces": len(embeddings),
                "block": answer.get("block"),
                "slot": answer.get("slot"),
                "gallery_version": answer.get("gallery_version"),
            }
        )
    )
    return 0


# -- list / remove / status ----------------------------------------------------------------------


def _subjects(config: DeviceConfig, state: DeviceState) -> tuple[int, list[dict]]:
    labels = LabelCipher.load(state.dir, config.site)
    answer = _client(config, state).subjects()
    rows = []
    for item in answer.get("subjects", []):
        try:
            name = labels.decrypt(base64.b64decode(item["label"]))
        except (LabelError, ValueError, TypeError):
            name = None
        rows.append(
            {
                "subject": item["subject"],
                "name": name,
                "block": item.get("block"),
                "slot": item.get("slot"),
                "created": item.get("created"),
            }
        )
    return int(answer.get("gallery_version", 0)), rows


def cmd_list(config: DeviceConfig, args) -> int:
    version, rows = _subjects(config, DeviceState(config.state_dir))
    if args.json:
        print(json.dumps({"gallery_version": version, "subjects": rows}))
        return 0
    print(f"gallery version {version}, {len(rows)} subject(s)")
    for r in rows:
        print(f"  {r['subject']}  {r['name'] if r['name'] is not None else '<unreadable label>'}  created {r['created']}")
    return 0


def cmd_remove(config: DeviceConfig, args) -> int:
    state = DeviceState(config.state_dir)
    if SUBJECT_ID.fullmatch(args.subject):
        ids = [args.subject]  # an id needs no cloud to be denied (the cloud may be down, or hide it)
    else:
        _, rows = _subjects(config, state)
        ids = [r["subject"] for r in rows if r["name"] == args.subject]
        if len(ids) > 1:
            raise UsageError(f"{len(ids)} subjects are named {args.subject!r}: give the subject id ({', '.join(ids)})")
    if not ids:
        raise UsageError(f"no subject {args.subject!r} (see `blindgate-device list`)")
    # Denied on the device FIRST (site_state.json): a failing or lying cloud cannot bring them back in.
    denied = SiteState(state.dir, config.site).deny([ids[0]])
    print(f"denied {ids[0]} at this site (site state version {denied.version})")
    answer = _client(config, state).remove(ids[0])
    print(f"removed {ids[0]}; gallery version {answer.get('gallery_version')}")
    return 0


def cmd_rekey(config: DeviceConfig, args) -> int:
    state = DeviceState(config.state_dir)
    try:
        rekey(state, _client(config, state), config.site)
    except RekeyError as exc:
        print(f"blindgate-device rekey: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_status(config: DeviceConfig, args) -> int:
    state = DeviceState(config.state_dir)
    out: dict = {"site": config.site, "device": config.device_id, "state_dir": str(state.dir)}
    try:
        keys = state.load_keys()
        out["key_id"] = keys.key_id
        state.load_cloud()  # raises StateError when not registered
        out["registered"] = True
        out["cloud_url"] = config.cloud_url
        try:
            out["cloud"] = _client(config, state).stats()
        except CloudError as exc:
            out["cloud_error"] = str(exc)
    except StateError as exc:
        out["registered"] = False
        out["problem"] = str(exc)
    print(json.dumps(out, indent=2))
    return 0 if out.get("registered") and "cloud_error" not in out else 1


# -- run ---------------------------------------------------------------------------------------


def cmd_run(config: DeviceConfig, args) -> int:
    agent = build_agent(config)
    notifier = Notifier()

    def on_signal(signum, frame):
        log.info("signal %s: stopping", signum)
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    endpoint = start_endpoint(config, agent)  # /metrics, /healthz: None unless [endpoint] enabled
    try:
        agent.connect()
        with open_configured_camera(config) as camera:
            agent.run(camera, notifier=notifier, max_frames=args.max_frames)
    finally:
        if endpoint is not None:
            endpoint.stop()
        agent.close()
        timings = list(agent.timings)
        if timings:
            log.info("frames judged", extra={"frames": len(timings), "counters": agent.counters})
    return 0


def cmd_rotate_door_key(config: DeviceConfig, args) -> int:
    """New door key, registered with the cloud, then current (a running agent uses it from its next probe)."""
    state = DeviceState(config.state_dir)
    key = rotate_door_key(state, _client(config, state), config.device_id)
    print(f"door {config.device_id!r} now signs with key {public_text(key)}")
    return 0


# -- entry point -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = config_option()
    parser = argparse.ArgumentParser(prog="blindgate-device", description="blindgate door device", parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", parents=[common], help="create site keys, label and template keys, register with the cloud")
    p.add_argument("--provision-token", help="bearer token the cloud requires to register a site")
    p.add_argument("--cloud-key", help="expected cloud public key (64 hex), to pin it at provisioning")
    p = sub.add_parser("enroll", parents=[common], help="enroll a person from images or the camera")
    p.add_argument("name")
    p.add_argument("images", nargs="*")
    p.add_argument("--camera", action="store_true", help="use frames from the configured camera")
    p.add_argument("--frames", type=int, default=5, help="good camera frames to average (default 5)")
    p = sub.add_parser("list", parents=[common], help="list enrolled subjects (names decrypted here)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("remove", parents=[common], help="remove a subject by id (or by a unique name)")
    p.add_argument("subject")
    sub.add_parser("status", parents=[common], help="local state and cloud stats")
    sub.add_parser("refresh-cloud-key", parents=[common], help="follow the cloud's endorsed reply-signing key rotation")
    sub.add_parser("rotate-door-key", parents=[common], help="replace this door's request-signing key (no re-enrollment)")
    sub.add_parser("rekey", parents=[common], help="renew the site's CKKS keys; nobody needs to enroll again")
    p = sub.add_parser("run", parents=[common], help="run the door agent")
    p.add_argument("--max-frames", type=int, default=None, help=argparse.SUPPRESS)
    sub.add_parser(
        "evaluate",
        parents=[common],
        add_help=False,
        help="accuracy and cost of encrypted matching on LFW pairs (see evaluate --help)",
    )
    return parser


COMMANDS = {"init": cmd_init, "enroll": cmd_enroll, "list": cmd_list, "remove": cmd_remove, "status": cmd_status, "run": cmd_run}
COMMANDS["rekey"] = cmd_rekey
COMMANDS["refresh-cloud-key"] = cmd_refresh_cloud_key
COMMANDS["rotate-door-key"] = cmd_rotate_door_key


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["evaluate"]:  # offline tooling with its own options; needs no config
        from blindgate.device.evaluate import main as evaluate

        return evaluate(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        config = load_config(DeviceConfig, getattr(args, "config", None))
    except ConfigError as exc:
        print(f"blindgate-device: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format)
    try:
        return COMMANDS[args.command](config, args)
    except (
        UsageError,
        CloudError,
        StateError,
        LabelError,
        EngineError,
        ProtocolError,
        FileNotFoundError,
        ValueError,
        EndpointError,
    ) as exc:
        print(f"blindgate-device {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
