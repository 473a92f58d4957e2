"""pushd's metrics: names, labels and buckets as Prometheus reads them."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from pushd.metrics import Metrics


def exposition(m: Metrics) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> (sorted labels -> value), parsed by prometheus_client's own parser."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_every_metric_keeps_its_name_type_and_labels() -> None:
    m = Metrics()
    m.pushes_total.labels("apns", "delivered").inc()
    m.attempts_total.labels("apns", "retry").inc()
    m.config_errors_total.labels("fcm", "SENDER_ID_MISMATCH").inc()
    m.results_dropped_total.inc(3)
    m.push_seconds.labels("apns").observe(0.02)
    m.in_flight.set_function(lambda: 7)
    families = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    assert {name: f.type for name, f in families.items()} == {
        "pushd_pushes": "counter",
        "pushd_push_attempts": "counter",
        "pushd_config_errors": "counter",
        "pushd_results_dropped": "counter",
        "pushd_push_seconds": "histogram",
        "pushd_in_flight": "gauge",
    }
    samples = exposition(m)
    assert samples["pushd_pushes_total"] == {(("provider", "apns"), ("verdict", "delivered")): 1}
    assert samples["pushd_push_attempts_total"] == {(("provider", "apns"), ("verdict", "retry")): 1}
    assert samples["pushd_config_errors_total"] == {
        (("provider", "fcm"), ("reason", "SENDER_ID_MISMATCH")): 1
    }
    assert samples["pushd_results_dropped_total"] == {(): 3}
    assert samples["pushd_in_flight"] == {(): 7}
    assert not any(name.endswith("_created") for name in samples)


def test_latency_buckets() -> None:
    m = Metrics()
    for seconds in (0.02, 0.2, 100.0):
        m.push_seconds.labels("apns").observe(seconds)
    buckets = {
        dict(labels)["le"]: value
        for labels, value in exposition(m)["pushd_push_seconds_bucket"].items()
    }
    assert (buckets["0.025"], buckets["0.25"], buckets["30.0"], buckets["+Inf"]) == (1, 2, 2, 3)
    assert exposition(m)["pushd_push_seconds_count"] == {(("provider", "apns"),): 3}
    assert m.value("pushd_push_seconds_count", provider="apns") == 3


def test_label_values_are_escaped() -> None:
    m = Metrics()
    m.config_errors_total.labels("apns", 'bad "quote"\\').inc()
    assert b'reason="bad \\"quote\\"\\\\"' in m.render()
    assert m.value("pushd_config_errors_total", provider="apns", reason='bad "quote"\\') == 1


def test_two_daemons_in_one_process_count_apart() -> None:
    a, b = Metrics(), Metrics()
    a.pushes_total.labels("apns", "delivered").inc()
    assert b.value("pushd_pushes_total", provider="apns", verdict="delivered") == 0
