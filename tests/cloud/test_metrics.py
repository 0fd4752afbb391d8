"""Service metrics (cloud/metrics.py): counters, histograms, gauges and their Prometheus text."""

from __future__ import annotations

import threading

from blindgate.cloud.metrics import Histogram, Metrics


def test_counters_by_label_and_their_exposition() -> None:
    metrics = Metrics()
    assert metrics.get("blindgate_probes_answered_total", status="ok") == 0
    metrics.inc("blindgate_probes_answered_total", status="ok")
    metrics.inc("blindgate_probes_answered_total", 2, status="busy")
    metrics.inc("blindgate_probes_answered_total", status="ok")
    assert metrics.get("blindgate_probes_answered_total", status="ok") == 2
    assert metrics.get("blindgate_probes_answered_total", status="busy") == 2
    text = metrics.render()
    assert "# TYPE blindgate_probes_answered_total counter" in text
    assert 'blindgate_probes_answered_total{status="ok"} 2' in text
    assert "blindgate_enrollments_total 0" in text  # known counters are exposed before their first event
    metrics.inc("blindgate_http_errors_total", reason='a "quoted"\nvalue\\')
    assert 'reason="a \\"quoted\\"\\nvalue\\\\"' in metrics.render()


def test_counters_are_safe_from_threads() -> None:
    metrics = Metrics()

    def bump() -> None:
        for _ in range(1000):
            metrics.inc("blindgate_probes_received_total")

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert metrics.get("blindgate_probes_received_total") == 4000


def test_histogram_buckets_are_cumulative() -> None:
    hist = Histogram((0.1, 1.0))
    for value in (0.05, 0.5, 5.0):
        hist.observe(value)
    assert hist.counts == [1, 2] and hist.count == 3 and abs(hist.sum - 5.55) < 1e-9
    metrics = Metrics()
    metrics.observe_scan(0.07)
    text = metrics.render()
    assert 'blindgate_scan_seconds_bucket{le="0.05"} 0' in text and 'blindgate_scan_seconds_bucket{le="0.1"} 1' in text
    assert 'blindgate_scan_seconds_bucket{le="+Inf"} 1' in text and "blindgate_enroll_seconds_count 0" in text


def test_gauges_are_read_at_scrape_time_and_never_break_it() -> None:
    metrics = Metrics()
    depth = [3]
    metrics.gauge("blindgate_queue_depth", "Probes in flight.", lambda: depth[0])
    metrics.gauge("blindgate_per_site", "By site.", lambda: {(("site", "home"),): 2.0})
    metrics.gauge("blindgate_broken", "Raises.", lambda: 1 / 0)
    assert "blindgate_queue_depth 3" in metrics.render()
    depth[0] = 5
    text = metrics.render()
    assert "blindgate_queue_depth 5" in text and 'blindgate_per_site{site="home"} 2' in text
    assert "blindgate_broken" not in text


def test_counters_print_exact_integers_and_process_metrics_are_included() -> None:
    """Before: `{value:g}` printed 1234568 as 1.23457e+06 (precision lost after ~14 h at 20 probes/s)."""
    metrics = Metrics()
    metrics.inc("blindgate_probes_received_total", 1234568)
    metrics.inc("blindgate_probes_answered_total", 2**40 + 1, status="ok")
    metrics.gauge("blindgate_gallery_templates", "Templates.", lambda: 7654321)
    text = metrics.render()
    assert "blindgate_probes_received_total 1234568\n" in text and "e+06" not in text.split("# HELP process")[0]
    assert f'blindgate_probes_answered_total{{status="ok"}} {2**40 + 1}\n' in text
    assert "blindgate_gallery_templates 7654321\n" in text
    assert "process_cpu_seconds_total" in text and "process_resident_memory_bytes" in text
    assert "python_info" in text
    assert Metrics().render().count("# TYPE process_cpu_seconds_total") == 1  # each app its own registry
