"""Mosquitto credentials: password-file lines and dynamic-security client passwords, made without mosquitto_passwd.

Both formats are Mosquitto 2.x's PBKDF2-HMAC-SHA512 (12-byte salt, 64-byte hash): the password file
holds `user:$7$<iterations>$<salt b64>$<hash b64>`; the dynamic-security JSON keeps `password`,
`salt` and `iterations` on each client. The sample broker (systemd/mosquitto-blindgate-dynsec.json)
ships without passwords; set them offline, before mosquitto starts, with
`python -m blindgate.shared.broker_auth passwd <json file> <username>` (password on stdin).
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from blindgate.shared.errors import BlindgateError

ITERATIONS = 101  # mosquitto_passwd's default in 2.0; the password itself is the secret (random, 32 bytes)


class BrokerAuthError(BlindgateError, ValueError):
    """A broker user or credentials file that cannot be written."""


def _pbkdf2(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)


def new_password() -> str:
    return secrets.token_urlsafe(32)


def password_line(username: str, password: str, iterations: int = ITERATIONS) -> str:
    """One line of a Mosquitto `password_file`."""
    if not username or ":" in username or "\n" in username:
        raise BrokerAuthError(f"invalid MQTT username {username!r}")
    salt = os.urandom(12)
    digest = _pbkdf2(password, salt, iterations)
    return f"{username}:$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}\n"


def write_password_file(path: Path, users: dict[str, str]) -> Path:
    """A Mosquitto password file (0600) holding `users` (name -> password)."""
    text = "".join(password_line(name, password) for name, password in users.items())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return path


def set_dynsec_password(config: dict[str, Any], username: str, password: str, iterations: int = ITERATIONS) -> None:
    """Set `username`'s password in a dynamic-security config (dict); the client must exist."""
    for client in config.get("clients", []):
        if client.get("username") == username:
            salt = os.urandom(12)
            client.update(
                password=base64.b64encode(_pbkdf2(password, salt, iterations)).decode(),
                salt=base64.b64encode(salt).decode(),
                iterations=iterations,
            )
            return
    raise BrokerAuthError(f"no client {username!r} in the dynamic-security config")


def _main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "passwd":
        print("usage: python -m blindgate.shared.broker_auth passwd <dynsec json> <username> (stdin: password)", file=sys.stderr)
        return 2
    path, username = Path(argv[1]), argv[2]
    password = getpass.getpass(f"password for {username}: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if len(password) < 16:
        print("refusing a password shorter than 16 characters", file=sys.stderr)
        return 1
    config = json.loads(path.read_text())
    try:
        set_dynsec_password(config, username, password)
    except BrokerAuthError as exc:
        print(exc, file=sys.stderr)
        return 1
    path.write_text(json.dumps(config, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))


__all__ = ["ITERATIONS", "BrokerAuthError", "new_password", "password_line", "set_dynsec_password", "write_password_file"]
