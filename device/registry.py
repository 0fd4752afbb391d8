"""A small private JSON registry in the door's state directory (credentials, claim sources, ...).

One shape for every such file: `{"format": N, "<entries>": {...}}`, written 0600 through a
temporary file and an atomic rename, so a reader (the running agent) sees the old or the new
registry, never half of one; a missing file is an empty registry, a corrupted or foreign one
is an error naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .keyfiles import write_private


def read_registry(path: Path, entries: str, version: int, error: type[Exception], what: str) -> dict[str, Any]:
    """The `entries` table of the registry at `path` ({} when the file does not exist)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise error(f"{path} is corrupted: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != version or not isinstance(data.get(entries), dict):
        raise error(f"{path} is not a {what} (format {version})")
    return data[entries]


def write_registry(path: Path, entries: str, version: int, table: dict[str, Any]) -> None:
    """Replace the registry at `path` atomically with `table` (0600)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    write_private(tmp, json.dumps({"format": version, entries: table}, indent=2).encode())
    os.replace(tmp, path)


__all__ = ["read_registry", "write_registry"]
