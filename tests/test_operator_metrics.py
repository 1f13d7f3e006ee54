"""The operator's own metrics: every series a rate or an alert reads exists from 0."""

from __future__ import annotations

from prometheus_client import generate_latest
from vlm_operator.operator_metrics import (
    DECISION_DIRECTIONS,
    QUERY_ERROR_REASONS,
    QUERY_SOURCES,
    OperatorMetrics,
)


def _samples(metrics: OperatorMetrics) -> set[str]:
    return set(generate_latest(metrics.registry).decode().splitlines())


def test_counters_start_at_zero_for_every_label() -> None:
    # A rate counts no series' first sample: a series born at the first failure
    # would hide that failure from rate() and the alerts.
    samples = _samples(OperatorMetrics())
    for direction in DECISION_DIRECTIONS:
        assert f'vlm_operator_scaling_decisions_total{{direction="{direction}"}} 0.0' in samples
    for source in QUERY_SOURCES:
        assert f'vlm_operator_prometheus_queries_total{{source="{source}"}} 0.0' in samples
        for reason in QUERY_ERROR_REASONS:
            assert (
                "vlm_operator_prometheus_query_errors_total"
                f'{{reason="{reason}",source="{source}"}} 0.0'
            ) in samples


def test_a_query_as_slow_as_its_deadline_has_a_bucket_of_its_own() -> None:
    # The whole answer may take twice --prometheus-timeout (10 s by default).
    metrics = OperatorMetrics()
    metrics.query_seconds.observe(8.0)
    samples = _samples(metrics)
    assert 'vlm_operator_prometheus_query_duration_seconds_bucket{le="5.0"} 0.0' in samples
    assert 'vlm_operator_prometheus_query_duration_seconds_bucket{le="10.0"} 1.0' in samples
