"""The bounded reply queue (device/reply_queue.py): drop-oldest, counted drops, a clearable lost flag."""

import threading
import time

import pytest

from blindgate.device.reply_queue import ReplyQueue


def test_a_flood_keeps_the_bound_and_drops_the_oldest():
    q: ReplyQueue[int] = ReplyQueue(4)
    dropped = [q.put(i) for i in range(300)]
    assert len(q) == 4 and sum(dropped) == 296 and q.dropped_total == 296
    assert [q.get(0) for _ in range(4)] == [296, 297, 298, 299]  # the newest survive
    assert q.get(0) is None


def test_flush_drops_what_is_queued_and_reports_each_burst_once():
    q: ReplyQueue[int] = ReplyQueue(4)
    for i in range(10):
        q.put(i)
    assert q.flush() == 10 and len(q) == 0  # 6 overflowed + 4 stale
    assert q.flush() == 0  # the burst was reported already
    q.put(1)
    assert q.flush() == 1 and q.dropped_total == 11


def test_lost_wakes_a_waiter_once():
    q: ReplyQueue[int] = ReplyQueue()
    threading.Timer(0.05, q.mark_lost).start()
    start = time.monotonic()
    with pytest.raises(ConnectionError):
        q.get(5)
    assert time.monotonic() - start < 2
    assert q.get(0) is None  # consumed


def test_a_reconnect_clears_a_stale_lost_flag():
    q: ReplyQueue[int] = ReplyQueue()
    q.mark_lost()  # an outage while nobody waited
    q.clear_lost()  # ... then the connection came back
    q.put(7)
    assert q.get(0) == 7


def test_the_bound_must_be_positive():
    with pytest.raises(ValueError):
        ReplyQueue(0)
