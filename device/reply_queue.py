"""The door's bounded queue of messages received on its reply topic.

Anyone who can publish on the reply topic can fill it: unbounded, 300 junk 256 KB messages sent
while the door is idle cost 80 MB and 300 judged messages (and audit lines) on the next frame.
Here the queue keeps at most `bound` messages, dropping the OLDEST (the newest is the likeliest
answer), and counts every drop. A new request makes everything still queued stale (nothing can
answer a request before it is sent), so `flush()` empties the queue and returns how many messages
it dropped since the last flush: the agent writes ONE audit line per burst, not one per message.

A lost connection is a flag, not a queue entry: it wakes whoever waits (the request in flight
fails secure) and `clear_lost()` on reconnect removes it, so a stale marker of an earlier outage
never fails the first frame after a broker restart.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_BOUND = 16


class ReplyQueue(Generic[T]):
    """Bounded FIFO, drop-oldest, with a connection-lost flag; safe across threads."""

    def __init__(self, bound: int = DEFAULT_BOUND) -> None:
        if bound < 1:
            raise ValueError(f"reply queue bound must be at least 1, got {bound}")
        self.bound = bound
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._lost = False
        self._unreported = 0  # drops since the last flush
        self.dropped_total = 0  # every drop since start (a metric)

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, item: T) -> bool:
        """Queue `item`; True when the oldest message had to be dropped for it."""
        with self._cond:
            dropped = len(self._items) >= self.bound
            if dropped:
                self._items.popleft()
                self._count_drops(1)
            self._items.append(item)
            self._cond.notify_all()
            return dropped

    def mark_lost(self) -> None:
        """The connection dropped: wake a waiter, which raises."""
        with self._cond:
            self._lost = True
            self._cond.notify_all()

    def clear_lost(self) -> None:
        """The connection is back: an outage nobody waited through is not this frame's failure."""
        with self._cond:
            self._lost = False

    def flush(self) -> int:
        """Drop every queued message (stale before a new request); the drops since the last flush."""
        with self._cond:
            self._count_drops(len(self._items))
            self._items.clear()
            dropped, self._unreported = self._unreported, 0
            return dropped

    def get(self, timeout: float) -> T | None:
        """The oldest message, None after `timeout` s; `ConnectionError` if the connection was lost."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while True:
                if self._lost:
                    self._lost = False
                    raise ConnectionError("connection lost")
                if self._items:
                    return self._items.popleft()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def _count_drops(self, n: int) -> None:
        self._unreported += n
        self.dropped_total += n


__all__ = ["DEFAULT_BOUND", "ReplyQueue"]
