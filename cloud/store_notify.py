"""Gallery change notifications between cloud replicas sharing one PostgreSQL store.

Every gallery version bump (store.py `bump_version`, store_rekey.py `commit`) calls
`notify_change` in its own transaction; on PostgreSQL that is ``pg_notify('blindgate_gallery',
'<site>:<version>')``, delivered to listeners only when (and if) the transaction commits. Each
replica runs a `GalleryListener` (a `ChannelListener` on that channel) that calls
`on_change(site, version)` so it can drop or reload what it caches of that site. Door changes
travel the same way on their own channel (cloud/replica_sync.py).

On SQLite there is nothing to deliver: one process owns the file and already sees its own
changes, so `notify_change` does nothing and `GalleryListener` is a no-op object.

    listener = GalleryListener(config.store_url, lambda site, version: cache.invalidate(site))
    listener.start()
    ...
    listener.stop()
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg

from .store_schema import PG_SCHEMES, Dialect, Session, redact_url

CHANNEL = "blindgate_gallery"
# Seconds between reconnection attempts after the server went away: doubled up to the maximum.
RECONNECT_FIRST = 0.5
RECONNECT_MAX = 30.0
# How often the listening thread wakes up to see whether it was stopped.
POLL_SECONDS = 1.0

log = logging.getLogger(__name__)


def notify(db: Session, channel: str, payload: str) -> None:
    """`payload` on `channel` to every replica when the caller's transaction commits (PostgreSQL only)."""
    if db.dialect is Dialect.POSTGRESQL:
        db.execute("SELECT pg_notify(?, ?)", (channel, payload))


def notify_change(db: Session, site_id: str, version: int) -> None:
    """Announce `site_id`'s new gallery `version` to every replica when the caller's transaction commits."""
    notify(db, CHANNEL, f"{site_id}:{version}")


def parse_payload(payload: str) -> tuple[str, int] | None:
    """(site, version) from a notification's payload, or None if it is not one of ours."""
    site_id, sep, version = payload.rpartition(":")
    if not sep or not site_id or not version.isdigit():
        return None
    return site_id, int(version)


class ChannelListener:
    """Calls `on_payload(payload)` for each notification any replica commits on `channel` (PostgreSQL only).

    A daemon thread holds its own autocommit connection, LISTENs on `channel` and reconnects with
    backoff when the server goes away. Notifications committed while it was disconnected are not
    replayed: `on_reconnect` (if given) is called after each reconnection so the owner can reload
    everything. For a SQLite store (`url` not ``postgresql://``) start() and stop() do nothing.
    """

    def __init__(
        self,
        url: str,
        channel: str,
        on_payload: Callable[[str], None],
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        self.url = url
        self.channel = channel
        self.on_payload = on_payload
        self.on_reconnect = on_reconnect
        self.enabled = url.startswith(PG_SCHEMES)
        self.listening = threading.Event()  # set while a connection is LISTENing
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Begin listening in the background (no-op for SQLite, or when already started)."""
        if not self.enabled or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"blindgate-listen-{self.channel}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening and wait up to `timeout` seconds for the thread to end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        delay = RECONNECT_FIRST
        first = True
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {self.channel}")
                    self.listening.set()
                    delay = RECONNECT_FIRST
                    if not first and self.on_reconnect is not None:
                        self.on_reconnect()
                    first = False
                    self._listen(conn)
            except psycopg.Error as exc:
                log.warning(
                    "%s listener lost %s (%s); retrying in %.1f s", self.channel, redact_url(self.url), str(exc).strip(), delay
                )
            finally:
                self.listening.clear()
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, RECONNECT_MAX)

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        while not self._stop.is_set():
            for notification in conn.notifies(timeout=POLL_SECONDS):
                try:
                    self.on_payload(notification.payload)
                except Exception:  # a failing callback must not end the listener
                    log.exception("%s notification callback failed for %r", self.channel, notification.payload)


def GalleryListener(  # noqa: N802 - reads as the object it makes
    url: str, on_change: Callable[[str, int], None], on_reconnect: Callable[[], None] | None = None
) -> ChannelListener:
    """A `ChannelListener` on the gallery channel that calls `on_change(site, version)` per change."""

    def deliver(payload: str) -> None:
        change = parse_payload(payload)
        if change is not None:
            on_change(*change)

    return ChannelListener(url, CHANNEL, deliver, on_reconnect)


__all__ = ["CHANNEL", "ChannelListener", "GalleryListener", "notify", "notify_change", "parse_payload"]
