"""`blindgate-device` commands of the claimed-identity (1:1) mode.

    blindgate-device credentials SUBJECT [--badge ID] [--pin PIN|-] [--clear]
    blindgate-device claim-source add|list|remove [NAME]
    blindgate-device claim --source NAME --key-file F (--badge ID | --pin -)

`claim-source add` prints the new source's key ONCE (base64): put it in the keypad's or Home
Assistant's configuration (e.g. a file for `claim --key-file`); the door keeps its own copy in
`claim_sources.json`. `claim` seals and publishes a claim exactly as a keypad would (for a Home
Assistant shell_command, and tests); it connects with the [mqtt] settings of its config, so run
it with a broker user allowed to publish claims (the sample ACL: `homeassistant`). `--pin -` reads
the PIN from stdin (a PIN given on the command line is visible to other local users in `ps`).
"""

from __future__ import annotations

import argparse
import base64
import getpass
import json
import re
import secrets
import sys
from collections.abc import Callable

from blindgate.shared.config import DeviceConfig
from blindgate.shared.errors import BlindgateError
from blindgate.shared.mqtt import make_client

from .claim_sources import ClaimSources, read_key_file
from .claims import CredentialKind, seal_claim
from .credentials import CredentialStore
from .link import DeviceTopics

SUBJECT_ID = re.compile(r"[0-9a-f]{32}")
PUBLISH_WAIT_S = 10.0


class ClaimCommandError(BlindgateError, ValueError):
    """A claim command that cannot be carried out as asked."""


def read_secret(value: str | None, what: str = "PIN") -> str | None:
    """`value`, or for "-" one line from stdin (prompted without echo on a terminal)."""
    if value != "-":
        return value
    if sys.stdin.isatty():
        return getpass.getpass(f"{what}: ")
    return sys.stdin.readline().strip()


def add_claim_options(parser: argparse.ArgumentParser) -> None:
    """`--badge` and `--pin` on `enroll` (and `credentials`)."""
    parser.add_argument("--badge", metavar="ID", help="badge id that claims this person (kept here, hashed)")
    parser.add_argument("--pin", metavar="PIN", help="PIN that claims this person (kept here, hashed); '-' reads stdin")


def add_claim_commands(sub, common: argparse.ArgumentParser) -> dict[str, Callable[[DeviceConfig, argparse.Namespace], int]]:
    """Add the parsers; returns the command table entries."""
    p = sub.add_parser("credentials", parents=[common], help="set or clear an enrolled person's badge and PIN")
    p.add_argument("subject", help="subject id, or a name enrolled once")
    add_claim_options(p)
    p.add_argument("--clear", action="store_true", help="drop the person's badge and PIN (before setting new ones)")
    p = sub.add_parser("claim-source", parents=[common], help="register, list or remove a keypad/badge reader/HA as claim source")
    p.add_argument("action", choices=("add", "list", "remove"))
    p.add_argument("name", nargs="?")
    p = sub.add_parser("claim", parents=[common], help="publish a sealed claim as a registered source would")
    p.add_argument("--source", required=True, help="the claim source's registered name")
    p.add_argument("--key-file", required=True, help="file holding the source's key as `claim-source add` printed it")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--badge", metavar="ID")
    what.add_argument("--pin", metavar="PIN", help="'-' reads it from stdin")
    return {"credentials": cmd_credentials, "claim-source": cmd_claim_source, "claim": cmd_claim}


def _subject_id(config: DeviceConfig, subject: str) -> str:
    from .people import People  # late: people imports the enrollment code, which this module must not need

    return People(config).resolve(subject)


def cmd_credentials(config: DeviceConfig, args: argparse.Namespace) -> int:
    store = CredentialStore(config.state_dir)
    subject = _subject_id(config, args.subject)
    pin = read_secret(args.pin)
    if not (args.clear or args.badge is not None or pin is not None):
        print(json.dumps({"subject": subject, "credentials": store.kinds().get(subject, [])}))
        return 0
    store.check_available(subject, badge=args.badge, pin=pin)  # before anything is cleared
    if args.clear:
        store.clear(subject)
    store.set(subject, badge=args.badge, pin=pin)
    print(json.dumps({"subject": subject, "credentials": store.kinds().get(subject, [])}))
    return 0


def cmd_claim_source(config: DeviceConfig, args: argparse.Namespace) -> int:
    sources = ClaimSources(config.state_dir)
    if args.action == "list":
        print(json.dumps(sources.list()))
        return 0
    if not args.name:
        raise ClaimCommandError(f"claim-source {args.action} needs a NAME")
    if args.action == "remove":
        sources.remove(args.name)
        print(f"removed claim source {args.name!r}: its claims are refused from now on")
        return 0
    key = sources.add(args.name)
    print(f"claim source {args.name!r} added; its key (shown only now; keep it secret, e.g. in a 0600 file):")
    print(base64.b64encode(key).decode())
    print(f"claims go to MQTT topic {DeviceTopics.of(config).claim}", file=sys.stderr)
    return 0


def cmd_claim(config: DeviceConfig, args: argparse.Namespace) -> int:
    key = read_key_file(args.key_file)
    if args.badge is not None:
        kind, value = CredentialKind.BADGE, args.badge
    else:
        kind, value = CredentialKind.PIN, read_secret(args.pin) or ""
    topic = DeviceTopics.of(config).claim
    payload = seal_claim(key, topic, args.source, kind, value)
    client = make_client(config.mqtt, client_id=f"blindgate-claim-{secrets.token_hex(6)}")  # never the door's own id
    try:
        client.connect(config.mqtt.host, config.mqtt.port, keepalive=config.mqtt.keepalive)
    except OSError as exc:
        raise ClaimCommandError(f"cannot reach the broker {config.mqtt.host}:{config.mqtt.port}: {exc}") from None
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1, retain=False)
        try:
            info.wait_for_publish(PUBLISH_WAIT_S)
        except (RuntimeError, ValueError) as exc:
            raise ClaimCommandError(f"the claim was not sent: {exc}") from None
        if not info.is_published():
            raise ClaimCommandError(f"the broker did not acknowledge the claim within {PUBLISH_WAIT_S:g} s")
    finally:
        client.disconnect()
        client.loop_stop()
    print(f"claim ({kind}) sent to {topic}")
    return 0


__all__ = ["add_claim_commands", "add_claim_options", "read_secret"]
