"""`blindgate-cloud`: run the cloud service and small admin commands.

    blindgate-cloud [serve] [--config cloud.toml]     run HTTP + MQTT until SIGTERM/SIGINT
    blindgate-cloud public-key [--config ...]         print the reply-signing public key (hex)
    blindgate-cloud check-store [--config ...]        integrity check and per-site sizes (JSON)

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
from pathlib import Path

from blindgate.shared.config import CloudConfig, ConfigError, config_option, load_config
from blindgate.shared.logs import setup_logging

log = logging.getLogger("blindgate.cloud")


def _config(args) -> CloudConfig:
    try:
        return load_config(CloudConfig, args.config)
    except ConfigError as exc:
        print(f"blindgate-cloud: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args) -> int:
    from aiohttp import web

    from .app import create_app

    config = _config(args)
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
    # run_app turns SIGINT/SIGTERM into a graceful shutdown: cleanup_ctx closes the MQTT bridge
    # (draining in-flight probes), then the matcher pool, then the store.
    web.run_app(
        app,
        host=config.http_host,
        port=config.http_port,
        print=None,
        access_log=None,
        handle_signals=True,
        shutdown_timeout=15.0,
    )
    log.info("blindgate cloud stopped")
    return 0


def cmd_public_key(args) -> int:
    from blindgate.shared.protocol import public_key_to_text

    from .app import load_or_create_signing_key

    config = _config(args)
    state_dir = Path(config.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    print(public_key_to_text(load_or_create_signing_key(state_dir).public_key()))
    return 0


def cmd_check_store(args) -> int:
    from .app import DB_NAME
    from .store import GalleryStore, StoreError

    config = _config(args)
    path = Path(config.state_dir) / DB_NAME
    if not path.exists():
        print(f"blindgate-cloud: no gallery store at {path}", file=sys.stderr)
        return 1
    try:
        with GalleryStore(path) as store:
            problems = store.integrity_check()
            sites = {}
            for record in store.sites():
                stats = store.stats(record.site_id)
                sites[record.site_id] = {
                    "key_id": record.key_id,
                    "gallery_version": record.version,
                    "subjects": stats["subjects"],
                    "blocks": stats["blocks"],
                    "bytes": stats["bytes"],
                }
    except StoreError as exc:
        print(f"blindgate-cloud: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"store": str(path), "ok": not problems, "problems": problems, "sites": sites}, indent=2))
    return 0 if not problems else 1


def main(argv: list[str] | None = None) -> int:
    common = config_option()
    parser = argparse.ArgumentParser(
        prog="blindgate-cloud", description="blindgate cloud: encrypted face matching service", parents=[common]
    )
    sub = parser.add_subparsers(dest="command")
    for name, help_text in (
        ("serve", "run the HTTP API and the MQTT matcher (default)"),
        ("public-key", "print the cloud's reply-signing public key (64 hex characters)"),
        ("check-store", "check the gallery store's integrity and print per-site sizes"),
    ):
        sub.add_parser(name, help=help_text, parents=[common])
    args = parser.parse_args(argv)
    args.config = getattr(args, "config", None)
    command = args.command or "serve"
    return {"serve": cmd_serve, "public-key": cmd_public_key, "check-store": cmd_check_store}[command](args)


if __name__ == "__main__":
    raise SystemExit(main())
