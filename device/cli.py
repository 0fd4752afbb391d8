"""`blindgate-device`: provision, enroll and run a door device.

    blindgate-device [--config device.toml] init [--provision-token T]
    blindgate-device enroll NAME IMAGE...          # or: enroll NAME --camera [--frames N]; [--face N] [--add-to SUBJECT]
    blindgate-device list
    blindgate-device remove SUBJECT                # subject id, or a name enrolled once
    blindgate-device status
    blindgate-device refresh-cloud-key             # accept the cloud's next signing key, endorsed by the pinned one
    blindgate-device rotate-door-key               # new request-signing key for this door; nobody re-enrolls
    blindgate-device rekey                         # new CKKS keys; templates re-encrypted from their sealed copies
    blindgate-device run
    blindgate-device threshold --enrolled N [--mode identify|verify]   # the operating point, as JSON
    blindgate-device calibrate IMAGES --out FILE   # refit the calibration (offline tooling)
    blindgate-device evaluate ...                  # LFW reports (offline tooling)
    blindgate-device credentials SUBJECT --badge ID --pin -   # claimed-identity mode: device/claim_cli.py
    blindgate-device claim-source add|list|remove NAME
    blindgate-device claim --source NAME --key-file F (--badge ID | --pin -)
    blindgate-device access show|disable|enable|group|window ...   # who may enter when: device/access_cli.py
    blindgate-device export-site --door DOOR --out FILE   # add a door to this site; on it: init --join FILE
    blindgate-device doors | remove-door DOOR             # several doors per site: device/site_cli.py

Configuration: --config TOML, then BLINDGATE_* environment variables (blindgate.shared.config).

Enrollment from several images or frames: every image must show one good face (size and
sharpness checks of FaceAnalyzer; `--face` picks one in a photo with several); every pair of
embeddings must agree, the face must not be enrolled already (device/enrollment.py), and their
MEAN is enrolled as one template. Averaging several views gives a template closer to the
person's typical face than any single photo, and it costs one gallery slot.
`enroll NAME IMAGE... --add-to SUBJECT` adds photos to an enrolled person's template.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
import signal
import sys
from dataclasses import replace

from blindgate.shared.config import ConfigError, DeviceConfig, config_option, load_config
from blindgate.shared.engine import EngineError, generate_site_keys
from blindgate.shared.errors import BlindgateError
from blindgate.shared.logs import setup_logging
from blindgate.shared.os_errors import explain
from blindgate.shared.protocol import ProtocolError

from .access_cli import add_access_commands
from .admin_cli import start_admin, via_agent, wants_agent
from .admin_socket import AdminError
from .build import build_agent, face_config, open_configured_camera
from .claim_cli import add_claim_commands, add_claim_options, read_secret
from .cloud_client import CloudClient, CloudError
from .console.auth import AdminPassword
from .console.password_cli import add_console_password_command
from .door_key import ensure_door_key, public_text, rotate_door_key
from .endpoint import EndpointError, start_endpoint
from .enrollment import faces_from_frames, faces_from_photos, parse_face_choice
from .faces import FaceAnalyzer, load_image
from .labels import LabelCipher, LabelError
from .notify import Notifier
from .operating_point import CalibrationError, Enrollment, check_decision_config, operating_point
from .optional_imports import MissingDependency
from .people import People, cloud_client
from .provision import check_cloud_url, confirm_cloud_key, fingerprint, progress, refresh_cloud_key, step, tls_context
from .record_cli import RecordError, add_record_command
from .rekey import RekeyError, rekey
from .sealing import KEY_FILE as TEMPLATE_KEY_FILE
from .sealing import TemplateSealer
from .site_cli import add_site_commands, cmd_join
from .state import CloudLink, DeviceState, StateError

log = logging.getLogger("blindgate.device.cli")


class UsageError(BlindgateError, RuntimeError):
    pass


SUBJECT_ID = re.compile(r"[0-9a-f]{32}")


def new_subject_id() -> str:
    """A fresh random subject id (128 bits, hex), as the cloud would make one; chosen here to seal with it."""
    return secrets.token_hex(16)


_client = cloud_client


# -- init --------------------------------------------------------------------------------------


def cmd_init(config: DeviceConfig, args) -> int:
    if getattr(args, "join", None):  # a further door of an existing site (device/site_cli.py)
        return cmd_join(config, args)
    check_cloud_url(config.cloud_url, args.cloud_key)  # before any key is made or byte is sent
    state = DeviceState(config.state_dir)
    state.ensure_dir()
    if state.cloud_path.exists():
        raise UsageError(f"already registered ({state.cloud_path}); remove the state directory to start over")
    if state.keys_path.exists():
        keys = state.load_keys()
        progress(f"using existing site keys {state.keys_path} (key id {keys.key_id})")
    else:
        with step("generating the site's CKKS keys"):
            keys = generate_site_keys()
        state.save_keys(keys)
        progress(f"created site keys {state.keys_path} (key id {keys.key_id})")
    if not (state.dir / "label.key").exists():
        LabelCipher.create_key(state.dir)
        progress(f"created label key {state.dir / 'label.key'}")
    if not (state.dir / TEMPLATE_KEY_FILE).exists():
        TemplateSealer.create_key(state.dir)
        progress(f"created template key {state.dir / TEMPLATE_KEY_FILE}")
    client = CloudClient(config.cloud_url, config.site, tls=tls_context(config.cloud_ca_file))
    token = args.provision_token or os.environ.get("BLINDGATE_PROVISION_TOKEN") or None
    door_key, created = ensure_door_key(state)
    if created:
        progress(f"created door key {state.door_key_path}")
    door = (config.device_id, public_text(door_key))
    upload = f"registering with {config.cloud_url}: uploading {len(keys.evaluation_bytes) / 1e6:.1f} MB of evaluation keys"
    try:
        with step(upload):
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


def cmd_enroll(config: DeviceConfig, args) -> int:
    """Checks and enrollment live in device/enrollment.py (through device/people.py); here only the arguments and the camera."""
    people = People(config)
    people.site()  # unprovisioned: fail before the camera or photos are read
    analyzer = _analyzer(config)
    if args.camera:
        with open_configured_camera(config) as camera:
            faces = faces_from_frames(analyzer, (frame.rgb for frame in camera), args.frames)
    else:
        if not args.images:
            raise UsageError("give one or more IMAGE files, or --camera")
        faces = faces_from_photos(analyzer, ((p, load_image(p)) for p in args.images), parse_face_choice(args.face))
    pin = read_secret(args.pin)  # claimed-identity mode (device/claim_cli.py)
    result = people.enroll(args.name, faces, add_to=args.add_to, badge=args.badge, pin=pin)
    print(json.dumps(result))
    return 0


# -- list / remove / status ----------------------------------------------------------------------


def cmd_list(config: DeviceConfig, args) -> int:
    version, people = People(config).listing()
    rows = [p.as_row() for p in people]
    if args.json:
        print(json.dumps({"gallery_version": version, "subjects": rows}))
        return 0
    print(f"gallery version {version}, {len(rows)} subject(s)")
    for r in rows:
        print(f"  {r['subject']}  {r['name'] if r['name'] is not None else '<unreadable label>'}  created {r['created']}")
    names = [r["name"] for r in rows if r["name"] is not None]
    for name in sorted({n for n in names if names.count(n) > 1}):  # e.g. an `enroll --add-to` cut short
        print(f"  note: {names.count(name)} subjects are named {name!r}: remove the older one (`blindgate-device remove ID`)")
    return 0


def cmd_remove(config: DeviceConfig, args) -> int:
    """Denied on the device first (a failing or lying cloud cannot bring them back in), then removed in the cloud."""
    answer = People(config).remove(args.subject, say=print)
    print(f"removed {answer['subject']}; gallery version {answer['gallery_version']}")
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
        else:  # the door itself counts the templates in each reply it decodes; this is the listing's count
            point = operating_point(config.decision, int(out["cloud"].get("subjects", 0)))
            out["operating_point"] = point.as_dict() | {"max_false_open": config.decision.max_false_open}
    except StateError as exc:
        out["registered"] = False
        out["problem"] = str(exc)
    print(json.dumps(out, indent=2))
    return 0 if out.get("registered") and "cloud_error" not in out else 1


def cmd_threshold(config: DeviceConfig, args) -> int:
    """The operating point for a gallery of `--enrolled` templates, as JSON (needs no state or cloud)."""
    if args.enrolled < 0:
        raise UsageError("--enrolled must be 0 or more")
    check_decision_config(config.decision)
    point = operating_point(config.decision, args.enrolled, args.mode, Enrollment(args.enrollment))
    print(json.dumps(point.as_dict()))
    return 0


# -- run ---------------------------------------------------------------------------------------


def cmd_run(config: DeviceConfig, args) -> int:
    agent = build_agent(config)
    notifier = Notifier()

    def on_signal(signum, frame):
        log.info("signal %s: stopping", signum)
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    endpoint = start_endpoint(config, agent)  # /metrics, /healthz, the console: None unless [endpoint] or [console] enabled
    if endpoint is not None and config.console.enabled:
        print(f"door console: {endpoint.url}/", file=sys.stderr, flush=True)
    admin = None
    try:
        admin = start_admin(config)  # `--via-agent` commands: None unless RuntimeDirectory= or [admin] socket
        agent.connect()
        with open_configured_camera(config) as camera:
            agent.run(camera, notifier=notifier, max_frames=args.max_frames)
    finally:
        if admin is not None:
            admin.stop()
        if endpoint is not None:
            endpoint.stop()
        agent.close()
        timings = list(agent.timings)
        if timings:
            log.info("frames judged", extra={"frames": len(timings), "counters": agent.counters})
    return 0


def cmd_console(config: DeviceConfig, args) -> int:
    """`run` with the web console on (for trying it out; a service sets `[console] enabled = true`)."""
    config = replace(config, console=replace(config.console, enabled=True))
    if AdminPassword.load(config.state_dir) is None:
        print("no console password is set: run `blindgate-device console-password` first", file=sys.stderr)
        return 1
    return cmd_run(config, args)


def cmd_rotate_door_key(config: DeviceConfig, args) -> int:
    """New door key, registered with the cloud, then current (a running agent uses it from its next probe)."""
    state = DeviceState(config.state_dir)
    key = rotate_door_key(state, _client(config, state), config.device_id)
    print(f"door {config.device_id!r} now signs with key {public_text(key)}")
    return 0


# -- entry point -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = config_option()
    common.add_argument("--via-agent", action="store_true", default=argparse.SUPPRESS, help="run it in the running door agent")
    parser = argparse.ArgumentParser(prog="blindgate-device", description="blindgate door device", parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", parents=[common], help="create site keys, label and template keys, register with the cloud")
    p.add_argument("--provision-token", help="bearer token the cloud requires to register a site")
    p.add_argument("--cloud-key", help="expected cloud public key (64 hex), to pin it at provisioning")
    p.add_argument("--join", metavar="FILE", help="join the site of a file from `export-site` (passphrase: prompt or stdin)")
    p = sub.add_parser("enroll", parents=[common], help="enroll a person from images or the camera")
    p.add_argument("name")
    p.add_argument("images", nargs="*")
    p.add_argument("--camera", action="store_true", help="use frames from the configured camera")
    p.add_argument("--frames", type=int, default=5, help="good camera frames to average (default 5)")
    p.add_argument("--face", help="in photos with several faces, the one to enroll: N (1 = leftmost) or 'largest'")
    p.add_argument("--add-to", metavar="SUBJECT", help="add the photos to this enrolled subject (id or unique name)")
    add_claim_options(p)
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
    p = sub.add_parser("console", parents=[common], help="run the door agent with its web console on (see [console])")
    p.add_argument("--max-frames", type=int, default=None, help=argparse.SUPPRESS)
    p = sub.add_parser("threshold", parents=[common], help="the threshold max_false_open gives, and its expected rates")
    p.add_argument("--enrolled", type=int, required=True, help="templates compared against (people enrolled)")
    p.add_argument("--mode", choices=("identify", "verify"), default="identify")
    p.add_argument("--enrollment", choices=[e.value for e in Enrollment], default=Enrollment.MEAN.value)
    sub.add_parser(
        "calibrate",
        parents=[common],
        add_help=False,
        help="fit the operating-point calibration on an LFW-format folder (see calibrate --help)",
    )
    sub.add_parser(
        "evaluate",
        parents=[common],
        add_help=False,
        help="accuracy and cost of encrypted matching on LFW pairs (see evaluate --help)",
    )
    COMMANDS.update(add_claim_commands(sub, common))
    COMMANDS.update(add_access_commands(sub, common))
    COMMANDS.update(add_site_commands(sub, common))
    COMMANDS.update(add_console_password_command(sub, common))
    COMMANDS.update(add_record_command(sub, common))
    return parser


COMMANDS = {"init": cmd_init, "enroll": cmd_enroll, "list": cmd_list, "remove": cmd_remove, "status": cmd_status, "run": cmd_run}
COMMANDS["rekey"] = cmd_rekey
COMMANDS["console"] = cmd_console
COMMANDS["threshold"] = cmd_threshold
COMMANDS["refresh-cloud-key"] = cmd_refresh_cloud_key
COMMANDS["rotate-door-key"] = cmd_rotate_door_key


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["evaluate"]:  # offline tooling with its own options; needs no config
        from blindgate.device.evaluate import main as evaluate

        return evaluate(argv[1:])
    if argv[:1] == ["calibrate"]:
        from blindgate.device.evaluation.calibrate import main as calibrate

        return calibrate(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        config = load_config(DeviceConfig, getattr(args, "config", None))
    except ConfigError as exc:
        print(f"blindgate-device: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a config file only root may read
        if not getattr(args, "via_agent", False):
            print(f"blindgate-device: {explain(exc, 'blindgate-device', getattr(args, 'config', None))}", file=sys.stderr)
            return 1
        config = DeviceConfig()  # the agent runs it with its own config: only the default socket is needed here
    setup_logging(config.log_level, config.log_format)
    if wants_agent(config, args):  # a door service's state directory: the agent runs it (device/admin_cli.py)
        return dispatch(config, args, lambda: via_agent(config, args, argv))
    return dispatch(config, args)


def dispatch(config: DeviceConfig, args, command=None) -> int:
    """Run `args.command` (or `command`), its errors as one line and exit 1: here, and in the agent for `--via-agent`."""
    try:
        return command() if command is not None else COMMANDS[args.command](config, args)
    except (
        UsageError,
        CloudError,
        StateError,
        LabelError,
        EngineError,
        ProtocolError,
        ValueError,
        EndpointError,
        CalibrationError,
        AdminError,
        RecordError,
        MissingDependency,  # picamera2/OpenCV absent, or a venv whose numpy picamera2 cannot load
    ) as exc:
        print(f"blindgate-device {args.command}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. a service's state directory: one line naming the path and the fix
        print(f"blindgate-device {args.command}: {explain(exc, 'blindgate-device')}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
