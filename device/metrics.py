"""The door's own metrics (Prometheus, served by device/endpoint.py): counts, durations, states.

Decisions by verdict kind and event, rejected replies by a few reason kinds (a bounded label set,
never the free-text reason), stage timings, reply-queue drops, the lock state, the broker
connection and `cloud_integrity` alarms, plus the process's CPU and memory. NEVER a distance, a
score or any decrypted number: the decrypted values handed back to whoever holds the
ciphertexts leak the secret key (README), and a metric is readable by whoever can scrape it.

Attached to an agent by its callbacks (`attach`), never by subclassing it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .agent import Agent, Verdict
    from .decision import Decision

# Stage timings in seconds: detection and embedding take ~0.1-0.5 s on a Pi, a round trip ~0.1 s.
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
STAGES = ("detect_ms", "embed_ms", "encrypt_ms", "round_trip_ms", "decrypt_ms", "total_ms")


class RejectKind(StrEnum):
    """Why a message on the reply topic was not an answer, in a handful of kinds (label values)."""

    RETAINED = "retained"
    SIGNATURE = "signature"
    STALE = "stale"  # past its expiry
    UNSOLICITED = "unsolicited"  # no pending request: duplicate, replayed or too late
    MISMATCH = "mismatch"  # another device, nonce, probe or mode than the request's
    MALFORMED = "malformed"
    OTHER = "other"


_REASON_WORDS: tuple[tuple[str, RejectKind], ...] = (
    ("retained", RejectKind.RETAINED),
    ("signature", RejectKind.SIGNATURE),
    ("stale", RejectKind.STALE),
    ("no pending request", RejectKind.UNSOLICITED),
    ("addressed to", RejectKind.MISMATCH),
    ("nonce", RejectKind.MISMATCH),
    ("another", RejectKind.MISMATCH),
    ("unreadable", RejectKind.MALFORMED),
    ("too short", RejectKind.MALFORMED),
    ("bytes is more", RejectKind.MALFORMED),
    ("field", RejectKind.MALFORMED),
    ("unknown", RejectKind.MALFORMED),
    ("unsupported", RejectKind.MALFORMED),
    ("mismatch", RejectKind.MALFORMED),
)


def reject_kind(reason: str) -> RejectKind:
    """The kind of a rejection's free-text reason (so a hostile payload cannot invent label values)."""
    text = reason.lower()
    for word, kind in _REASON_WORDS:
        if word in text:
            return kind
    return RejectKind.OTHER


class _AgentState(Collector):
    """What is read from the agent at scrape time: lock, connection, queue drops, alarms."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        agent = self.agent
        yield GaugeMetricFamily("blindgate_door_locked", "1 while the lock is locked.", value=int(agent.lock.is_locked))
        yield GaugeMetricFamily(
            "blindgate_door_broker_connected", "1 while connected to the broker.", value=int(agent.link.is_connected)
        )
        yield CounterMetricFamily(
            "blindgate_door_reply_queue_dropped",
            "Messages dropped from the bounded reply queue (overflow, or stale before a new request).",
            value=agent.link.replies.dropped_total,
        )
        yield CounterMetricFamily(
            "blindgate_door_cloud_integrity_alarms",
            "Matches the sealed-template re-check refused (the cloud lied; the door stayed locked).",
            value=agent.counters.get("cloud_integrity", 0),
        )


class DoorMetrics:
    """The door's registry (its own, not prometheus_client's global one) and its series."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.decisions = Counter(
            "blindgate_door_decisions",
            "Judged frames, by verdict kind and the decision's event (none when nothing happened).",
            ["verdict", "event"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "blindgate_door_replies_rejected",
            "Messages on the reply topic that were not an answer, by reason kind.",
            ["reason"],
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "blindgate_door_stage_seconds",
            "Time per frame stage (detect, embed, encrypt, round trip, decrypt, total).",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        for kind in RejectKind:  # every series present from the start
            self.rejected.labels(reason=kind.value)

    def decided(self, verdict: Verdict, decision: Decision) -> None:
        """`when_decided`: one frame's verdict kind and event, and its stage durations (never a distance)."""
        event = str(decision.event) if decision.event else "none"
        self.decisions.labels(verdict=str(verdict.kind), event=event).inc()
        for stage in STAGES:
            ms = verdict.timings.get(stage)
            if ms is not None:
                self.stage_seconds.labels(stage=stage.removesuffix("_ms")).observe(ms / 1000.0)

    def reply_rejected(self, reason: str) -> None:
        """`when_reply_rejected`: counted by kind; the free-text reason goes to the audit log only."""
        self.rejected.labels(reason=reject_kind(reason).value).inc()

    def attach(self, agent: Agent) -> None:
        """Follow `agent` through its callbacks, keeping any observer already attached."""
        self.registry.register(_AgentState(agent))
        agent.when_decided = chain(agent.when_decided, self.decided)
        agent.when_reply_rejected = chain(agent.when_reply_rejected, self.reply_rejected)

    def render(self) -> bytes:
        """The Prometheus text exposition (exact numbers)."""
        return generate_latest(self.registry)


def chain(first: Callable[..., None] | None, then: Callable[..., None]) -> Callable[..., None]:
    if first is None:
        return then

    def both(*args: object) -> None:
        first(*args)
        then(*args)

    return both


__all__ = ["DoorMetrics", "RejectKind", "chain", "reject_kind"]
