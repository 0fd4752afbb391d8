"""`blindgate-cloud`: run the cloud service and small admin commands.

    blindgate-cloud [serve] [--config cloud.toml]     run HTTP + MQTT until SIGTERM/SIGINT
    blindgate-cloud public-key [--config ...]         print the reply-signing public key (hex)
    blindgate-cloud check-store [--config ...]        integrity check and per-site sizes (JSON)
    blindgate-cloud rotate-signing-key [--config ...]   next reply-signing key + its endorsement
    blindgate-cloud activate-signing-key [--config ...] sign with the endorsed next key (restart serve)

Every setting comes from the TOML file with `BLINDGATE_*` environment overrides
(shared/config.py). On SIGTERM/SIGINT the service stops taking probes (unsubscribes; late
arrivals are answered busy), lets in-flight scans finish (up to 10 s), disconnects from MQTT
cleanly and closes the store.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blindgate.shared.config import CloudConfig, ConfigError, config_option, load_config
from blindgate.shared.errors import BlindgateError
from blindgate.shared.logs import setup_logging
from blindgate.shared.os_errors import explain
from blindgate.shared.protocol import public_key_to_text
from blindgate.shared.protocol.cloud_keys import fingerprint

from .app import DB_NAME, create_app, load_or_create_signing_key
from .http_guard import serve
from .key_rotation import activate, rotate
from .resources import load_signing_key, secret_place, shared_store
from .store import GalleryStore
from .store_schema import store_location
from .store_settings import FileSecrets, SecretPlace

log = logging.getLogger("blindgate.cloud")

Command = Callable[[argparse.Namespace], int]


def cmd_serve(args: argparse.Namespace) -> int:
    """Run HTTP + MQTT until SIGTERM/SIGINT."""
    config = load_config(CloudConfig, args.config)
    setup_logging(config.log_level, config.log_format)
    app = create_app(config)
    log.info(
        "starting blindgate cloud",
        extra={
            "http": f"{config.http_host}:{config.http_port}",
            "mqtt": f"{config.mqtt.host}:{config.mqtt.port}",
            "workers": config.workers,
            "state_dir": config.state_dir,
        },
    )
    # serve turns SIGINT/SIGTERM into a graceful shutdown: cleanup_ctx closes the MQTT bridge
    # (draining in-flight probes), then the matcher pool, then the store.
    serve(app, config)  # like web.run_app, with header/body timeouts and a connection cap (http_guard.py)
    log.info("blindgate cloud stopped")
    return 0


def _signing_key(place: SecretPlace, legacy: FileSecrets | None) -> Ed25519PrivateKey:
    """The reply-signing key from the command's secret place (created on first use)."""
    if isinstance(place, FileSecrets):
        return load_or_create_signing_key(place.state_dir)
    return load_signing_key(place, legacy)


@contextmanager
def _secret_place(args: argparse.Namespace) -> Iterator[tuple[SecretPlace, FileSecrets | None]]:
    """The cloud's secrets: in the shared PostgreSQL store (opened for the command), else in state_dir.

    Also the state dir whose files a PostgreSQL-backed cloud copies in the first time (else None).
    """
    config = load_config(CloudConfig, args.config)
    state_dir = Path(config.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not shared_store(config):
        yield secret_place(config, None), None
        return
    with GalleryStore(store_location(config.store_url, state_dir, DB_NAME)) as store:
        yield secret_place(config, store), FileSecrets(state_dir)


def cmd_public_key(args: argparse.Namespace) -> int:
    """Print the reply-signing public key (hex), creating the key on first use."""
    with _secret_place(args) as (place, legacy):
        key = public_key_to_text(_signing_key(place, legacy).public_key())
    print(key)  # alone on stdout, for `--cloud-key $(blindgate-cloud public-key)`
    print(f"fingerprint {fingerprint(key)} (`blindgate-device init` prints it too: compare them)", file=sys.stderr)
    return 0


def cmd_rotate_signing_key(args: argparse.Namespace) -> int:
    """Create the next reply-signing key, endorsed by the current one (served by GET /v1/cloud-key)."""
    with _secret_place(args) as (place, legacy):
        endorsement = rotate(place, _signing_key(place, legacy))
    print(endorsement.endorsed)
    print(
        f"next key {fingerprint(endorsement.endorsed)} endorsed by {fingerprint(endorsement.endorser)}; run "
        "`blindgate-device refresh-cloud-key` on every door, then `blindgate-cloud activate-signing-key`",
        file=sys.stderr,
    )
    return 0


def cmd_activate_signing_key(args: argparse.Namespace) -> int:
    """Sign with the endorsed next key from now on (restart `serve`, every replica, to pick it up)."""
    with _secret_place(args) as (place, _):
        key = activate(place)
    print(key)
    print(f"now signing with {fingerprint(key)}: restart `blindgate-cloud serve` (every replica)", file=sys.stderr)
    return 0


def cmd_check_store(args: argparse.Namespace) -> int:
    """Integrity check and per-site sizes of the gallery store, as JSON; 1 if anything is wrong."""
    config = load_config(CloudConfig, args.config)
    path = store_location(config.store_url, config.state_dir, DB_NAME)
    if isinstance(path, Path) and not path.exists():
        print(f"blindgate-cloud: no gallery store at {path}", file=sys.stderr)
        return 1
    with GalleryStore(path) as store:
        problems = store.integrity_check()
        sites: dict[str, dict[str, Any]] = {}
        for record in store.sites():
            stats = store.stats(record.site_id)
            sites[record.site_id] = {
                "key_id": record.key_id,
                "gallery_version": record.version,
                "subjects": stats["subjects"],
                "blocks": stats["blocks"],
                "bytes": stats["bytes"],
            }
    print(json.dumps({"store": str(path), "ok": not problems, "problems": problems, "sites": sites}, indent=2))
    return 0 if not problems else 1


COMMANDS: dict[str, tuple[Command, str]] = {
    "serve": (cmd_serve, "run the HTTP API and the MQTT matcher (default)"),
    "public-key": (cmd_public_key, "print the cloud's reply-signing public key (64 hex characters)"),
    "check-store": (cmd_check_store, "check the gallery store's integrity and print per-site sizes"),
    "rotate-signing-key": (cmd_rotate_signing_key, "create the next reply-signing key, endorsed by the current one"),
    "activate-signing-key": (cmd_activate_signing_key, "switch reply signing to the endorsed next key"),
}


def main(argv: list[str] | None = None) -> int:
    """Run one command; a blindgate error is printed as one line (no traceback) and exits non-zero."""
    common = config_option()
    parser = argparse.ArgumentParser(
        prog="blindgate-cloud", description="blindgate cloud: encrypted face matching service", parents=[common]
    )
    sub = parser.add_subparsers(dest="command")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, parents=[common])
    args = parser.parse_args(argv)
    args.config = getattr(args, "config", None)
    command, _ = COMMANDS[args.command or "serve"]
    try:
        return command(args)
    except BlindgateError as exc:
        print(f"blindgate-cloud: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1  # 2, like argparse: the command line or config is wrong
    except OSError as exc:  # e.g. the service's state directory or a root-only config: the path and the fix
        print(f"blindgate-cloud: {explain(exc, 'blindgate-cloud', args.config)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
