"""Service metrics and their Prometheus text exposition, plus the process's own metrics.

Counters and histograms live in the event-loop process; callers on other threads (the MQTT
network thread) update them under a lock. Nothing here ever holds a probe, a ciphertext or any
value derived from one: only counts and durations. Numbers print exactly (`_num`): a counter at
1,234,568 reads `1234568`, never `1.23457e+06`. Process metrics (CPU, memory, open files, Python)
come from prometheus_client's collectors in a registry of this instance's own (no global state).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest

# Scan latency buckets in seconds (a scan is ~70 ms per 4096-template block on one core).
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)

LabelKey = tuple[tuple[str, str], ...]  # sorted (label, value) pairs of one series
# A gauge's reading: one number, or a number per label set.
GaugeValue = float | dict[LabelKey, float]


class Histogram:
    """Cumulative latency buckets in Prometheus' sense: a value counts in every bucket it fits."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1


def _num(value: float) -> str:
    """A sample value exactly: integers as integers (up to 2**53), anything else as Python's repr."""
    number = float(value)
    if number.is_integer() and abs(number) < 2**53:
        return str(int(number))
    return repr(number)  # shortest exact text; inf/nan print as Prometheus reads them below


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """The service's counters; `render()` gives the Prometheus exposition text."""

    HELP = {
        "blindgate_probes_received_total": ("counter", "Probe requests received over MQTT."),
        "blindgate_probes_answered_total": ("counter", "Replies published, by status (ok, busy, error)."),
        "blindgate_probes_dropped_total": ("counter", "Probe requests dropped without a reply, by reason."),
        "blindgate_probes_refused_total": ("counter", "Probe requests answered with an error or busy before a scan, by reason."),
        "blindgate_probes_busy_total": ("counter", "Probe requests refused because the matcher queue was full."),
        "blindgate_enrollments_total": ("counter", "Committed enrollments."),
        "blindgate_removals_total": ("counter", "Committed subject removals."),
        "blindgate_rekeys_total": ("counter", "Committed key renewals (rekeys) of a site."),
        "blindgate_sites_registered_total": ("counter", "Sites registered by this process."),
        "blindgate_door_keys_registered_total": ("counter", "Door request keys added or replaced by this process."),
        "blindgate_doors_added_total": ("counter", "Doors added to a site by one of its doors (own key and token)."),
        "blindgate_doors_removed_total": ("counter", "Doors removed from a site: their key and token revoked."),
        "blindgate_http_errors_total": ("counter", "HTTP error answers, by status."),
    }

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[LabelKey, float]] = defaultdict(lambda: defaultdict(float))
        self.scan_seconds = Histogram()
        self.enroll_seconds = Histogram()
        # Gauges are read at render time from these callables (set by the app).
        self.gauges: dict[str, tuple[str, Callable[[], GaugeValue]]] = {}
        self.process = CollectorRegistry(auto_describe=True)  # this instance's own, not the global one
        ProcessCollector(registry=self.process)
        PlatformCollector(registry=self.process)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add `amount` to the counter series `name{labels}` (callable from any thread)."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._counters[name][key] += amount

    def get(self, name: str, **labels: str) -> float:
        """The current value of one counter series (0 if never incremented)."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            return self._counters.get(name, {}).get(key, 0.0)

    def observe_scan(self, seconds: float) -> None:
        with self._lock:
            self.scan_seconds.observe(seconds)

    def observe_enroll(self, seconds: float) -> None:
        with self._lock:
            self.enroll_seconds.observe(seconds)

    def gauge(self, name: str, help_text: str, read: Callable[[], GaugeValue]) -> None:
        """Register a gauge whose value `read()` returns at scrape time (a number or {labels: value})."""
        self.gauges[name] = (help_text, read)

    def render(self) -> str:
        """The Prometheus text exposition of every counter, histogram and gauge."""
        lines: list[str] = []
        with self._lock:
            names = sorted(set(self.HELP) | set(self._counters))
            for name in names:
                kind, help_text = self.HELP.get(name, ("counter", name))
                lines.append(f"# HELP {name} {help_text}")
                lines.append(f"# TYPE {name} {kind}")
                series = self._counters.get(name) or {(): 0.0}
                for key, value in sorted(series.items()):
                    lines.append(f"{name}{_labels(dict(key))} {_num(value)}")
            for name, help_text, hist in (
                ("blindgate_scan_seconds", "Matcher time per probe (queue wait included).", self.scan_seconds),
                ("blindgate_enroll_seconds", "Enrollment time (engine work and commit).", self.enroll_seconds),
            ):
                lines.append(f"# HELP {name} {help_text}")
                lines.append(f"# TYPE {name} histogram")
                for bound, count in zip(hist.buckets, hist.counts):
                    lines.append(f'{name}_bucket{{le="{bound:g}"}} {count}')
                lines.append(f'{name}_bucket{{le="+Inf"}} {hist.count}')
                lines.append(f"{name}_sum {hist.sum:.6f}")
                lines.append(f"{name}_count {hist.count}")
        for name, (help_text, read) in sorted(self.gauges.items()):
            try:
                reading = read()
            except Exception:  # a gauge must never break the scrape
                continue
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} gauge")
            if isinstance(reading, dict):
                for labels, v in sorted(reading.items()):
                    lines.append(f"{name}{_labels(dict(labels))} {_num(v)}")
            else:
                lines.append(f"{name} {_num(reading)}")
        return "\n".join(lines) + "\n" + generate_latest(self.process).decode()
