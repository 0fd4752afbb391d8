"""`blindgate-device` commands for several doors at one site (device/site_doors.py).

    blindgate-device export-site --door DOOR --out FILE   # on a door of the site: adds DOOR, writes its file
    blindgate-device init --join FILE                     # on the new door (its config: same site, device_id DOOR)
    blindgate-device doors                                # the site's doors at the cloud
    blindgate-device remove-door DOOR                     # from any door: DOOR's token and key stop working

The passphrase is typed at a prompt (twice for `export-site`) or given as the first line of
stdin; never on the command line, where other local users could read it in `ps`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from blindgate.shared.config import DeviceConfig

from .provision import fingerprint, progress
from .site_doors import export_site, join_site, list_doors, read_export_file, remove_door
from .site_export import MIN_PASSPHRASE, read_header, read_passphrase


def cmd_export_site(config: DeviceConfig, args: argparse.Namespace) -> int:
    passphrase = read_passphrase(confirm=True, prompt=f"passphrase for {args.out} (at least {MIN_PASSPHRASE} characters)")
    export_site(config, args.door, passphrase, Path(args.out), progress)
    print(f"door {args.door!r} added to site {config.site!r}; its file is {args.out}")
    print(
        f"on the new door (config: site = {config.site!r}, device_id = {args.door!r}): "
        f"blindgate-device init --join {args.out}   then delete the file"
    )
    return 0


def cmd_join(config: DeviceConfig, args: argparse.Namespace) -> int:
    """`init --join FILE`: this door joins the site the file was exported from."""
    data = read_export_file(Path(args.join))
    header = read_header(data)  # a foreign file is named before the passphrase is asked
    passphrase = read_passphrase(confirm=False, prompt=f"passphrase of {args.join} (door {header['door']!r})")
    link = join_site(config, data, passphrase, progress, cloud_key=getattr(args, "cloud_key", None))
    print(f"door {config.device_id!r} joined site {config.site!r} at {config.cloud_url}; cloud key {link.cloud_public_key}")
    print(f"cloud key fingerprint {fingerprint(link.cloud_public_key)}; delete {args.join} now")
    return 0


def cmd_doors(config: DeviceConfig, args: argparse.Namespace) -> int:
    doors = list_doors(config)
    if args.json:
        print(json.dumps({"site": config.site, "doors": doors}))
        return 0
    for door in doors:
        shared = "" if door.get("own_token") else "  (shares the site's token: re-add it with export-site)"
        print(f"  {door['door']}{'  (this door)' if door.get('you') else ''}{shared}")
    return 0


def cmd_remove_door(config: DeviceConfig, args: argparse.Namespace) -> int:
    answer = remove_door(config, args.door)
    print(f"door {args.door!r} removed from site {config.site!r}: its token and request key no longer work")
    print(f"doors left: {', '.join(answer.get('doors', []))}")
    if args.door == config.device_id:
        print("this was this door: it can no longer reach the cloud", file=sys.stderr)
    return 0


def add_site_commands(sub, common: argparse.ArgumentParser) -> dict[str, Callable[[DeviceConfig, argparse.Namespace], int]]:
    """Add the parsers (init's --join is added by the init parser); returns the command table entries."""
    p = sub.add_parser("export-site", parents=[common], help="add a door to this site: its passphrase-encrypted file")
    p.add_argument("--door", required=True, help="the new door's device_id")
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the file (never overwritten)")
    p = sub.add_parser("doors", parents=[common], help="the site's doors at the cloud")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("remove-door", parents=[common], help="revoke a door of this site (its token and key)")
    p.add_argument("door")
    return {"export-site": cmd_export_site, "doors": cmd_doors, "remove-door": cmd_remove_door}


__all__ = ["add_site_commands", "cmd_join"]
