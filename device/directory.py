"""The subject directory: which enrolled subject sits in a gallery (block, slot).

The cloud's subject list maps slots to subject ids and encrypted labels; the device decrypts
the labels itself and caches the list per gallery version, so a reply naming another version
refreshes it (and a gallery that changed mid-scan is refused rather than guessed).
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from typing import Any

from blindgate.shared.errors import BlindgateError

from .labels import LabelCipher, LabelError


class DirectoryError(BlindgateError, RuntimeError):
    """The subject list could not be fetched or does not match the reply's gallery."""


class SubjectDirectory:
    """(block, slot) -> (subject id, decrypted label), cached per gallery version."""

    def __init__(self, fetch: Callable[[], dict[str, Any]], labels: LabelCipher) -> None:
        self._fetch = fetch
        self._labels = labels
        self._guard = threading.Lock()
        self.version: int | None = None
        self._slots: dict[tuple[int, int], tuple[str, str | None]] = {}

    def refresh(self) -> int:
        """Fetch the subject list again; returns its gallery version."""
        try:
            answer = self._fetch()
            version = int(answer["gallery_version"])
            slots = {}
            for item in answer["subjects"]:
                try:
                    label = self._labels.decrypt(base64.b64decode(item["label"], validate=True))
                except (LabelError, ValueError, TypeError):
                    label = None  # shown as null; never trust a name we cannot authenticate
                slots[(int(item["block"]), int(item["slot"]))] = (str(item["subject"]), label)
        except DirectoryError:
            raise
        except Exception as exc:  # network, HTTP error, malformed answer
            raise DirectoryError(f"subject list unavailable: {exc}") from None
        with self._guard:
            self.version, self._slots = version, slots
        return version

    def lookup(self, gallery_version: int, block: int, slot: int) -> tuple[str, str | None]:
        """(subject id, label) at (block, slot) of that gallery version; DirectoryError if none."""
        with self._guard:
            current = self.version
        if current != gallery_version:
            current = self.refresh()
            if current != gallery_version:
                raise DirectoryError(f"gallery changed during the scan (reply v{gallery_version}, list v{current})")
        with self._guard:
            found = self._slots.get((block, slot))
        if found is None:
            raise DirectoryError(f"no subject at block {block} slot {slot} in gallery v{gallery_version}")
        return found


__all__ = ["DirectoryError", "SubjectDirectory"]
