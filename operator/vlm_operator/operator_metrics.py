"""The operator's own Prometheus metrics.

The operator is itself a control loop that can fall behind, lose Prometheus or
flap; these metrics make that visible: how long one autoscaling cycle of one
VLMService takes, which way decisions go, how often and how slowly the signal
queries run. They live in their own registry (not the process-global one) so
that tests can build several operators in one process and read each one's
numbers without cross-talk.
"""

from __future__ import annotations

import contextlib
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_CYCLE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A query's whole answer may take twice --prometheus-timeout (5 s by default): the
# slow ones get buckets of their own, not the +Inf that histogram_quantile reads
# as the highest finite bound.
_QUERY_BUCKETS = (
    *(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    *(7.5, 10.0, 20.0, 30.0, 60.0),
)
#: The ``direction`` of a scaling decision, and the ``reason`` of a failed query.
DECISION_DIRECTIONS = ("up", "down", "hold", "failed")
QUERY_ERROR_REASONS = ("connect", "timeout", "status", "json", "promql")
QUERY_SOURCES = ("operator", "service")


class OperatorMetrics:
    """Counters and histograms of one operator instance, in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.cycle_seconds = Histogram(
            "vlm_operator_cycle_duration_seconds",
            "Wall time of one autoscaling cycle of one VLMService.",
            buckets=_CYCLE_BUCKETS,
            registry=self.registry,
        )
        self.decisions = Counter(
            "vlm_operator_scaling_decisions",
            "Autoscaling decisions by direction (up, down, hold; failed: a scale the API "
            "server refused or left unanswered).",
            ["direction"],
            registry=self.registry,
        )
        # `source`: "operator" for the queries of the operator's own --prometheus-url,
        # "service" for those a VLMService chose (metrics.prometheusUrl or
        # metrics.queries), so one service's broken override is not read as the
        # operator losing its Prometheus.
        self.query_errors = Counter(
            "vlm_operator_prometheus_query_errors",
            "Failed Prometheus queries by reason (connect, timeout, status, json, promql) "
            "and by whose the query was (operator, service).",
            ["reason", "source"],
            registry=self.registry,
        )
        # The queries sent, by the same `source`: the share of the operator's own that
        # fail is what tells its Prometheus gone (the services' may be many more).
        self.queries = Counter(
            "vlm_operator_prometheus_queries",
            "PromQL instant queries sent to Prometheus, by whose the query was "
            "(operator, service).",
            ["source"],
            registry=self.registry,
        )
        # Every series from 0: a rate counts no series' first sample, so the first
        # failed scale or burst of query errors would not show.
        for direction in DECISION_DIRECTIONS:
            self.decisions.labels(direction)
        for source in QUERY_SOURCES:
            self.queries.labels(source)
            for reason in QUERY_ERROR_REASONS:
                self.query_errors.labels(reason, source)
        self.query_seconds = Histogram(
            "vlm_operator_prometheus_query_duration_seconds",
            "Latency of the PromQL instant queries sent to Prometheus.",
            buckets=_QUERY_BUCKETS,
            registry=self.registry,
        )
        self.crd_drift = Gauge(
            "vlm_operator_crd_drift_fields",
            "Fields the installed VLMService CRD lacks (missing), has beyond this "
            "operator's (unknown), or types, defaults or bounds otherwise (changed); all 0 "
            "when they match, absent until the CRD is seen.",
            ["direction"],
            registry=self.registry,
        )
        self.services = Gauge(
            "vlm_operator_services",
            "VLMServices the operator currently autoscales.",
            registry=self.registry,
        )
        # Per service, labelled as the gates' series are (namespace, vlmservice), so a
        # query can set them against each other: the P95 against its target, the pods
        # against their ceiling. Scrape the operator with honor_labels (the chart's
        # PodMonitor does), or these namespaces become exported_namespace.
        service = ["namespace", "vlmservice"]
        self.desired_replicas = Gauge(
            "vlm_operator_desired_replicas",
            "Replicas the last autoscaling decision asked for.",
            service,
            registry=self.registry,
        )
        self.max_replicas = Gauge(
            "vlm_operator_max_replicas",
            "The service's spec.autoscaling.maxReplicas.",
            service,
            registry=self.registry,
        )
        self.p95_target_seconds = Gauge(
            "vlm_operator_p95_target_seconds",
            "The service's spec.autoscaling.p95LatencyTargetSeconds.",
            service,
            registry=self.registry,
        )
        self.signals_available = Gauge(
            "vlm_operator_signals_available",
            "1 if the last cycle read the service's signals (its MetricsAvailable "
            "condition True), 0 if they were missing or unreadable (replicas held).",
            service,
            registry=self.registry,
        )

    def observe_service(
        self,
        namespace: str,
        name: str,
        *,
        desired: int,
        max_replicas: int,
        p95_target: float,
        signals_available: bool,
    ) -> None:
        """One service's decision, bounds and whether its signals were read, after its cycle."""
        self.desired_replicas.labels(namespace, name).set(desired)
        self.max_replicas.labels(namespace, name).set(max_replicas)
        self.p95_target_seconds.labels(namespace, name).set(p95_target)
        self.signals_available.labels(namespace, name).set(1 if signals_available else 0)

    def forget_service(self, namespace: str, name: str) -> None:
        """Drop a service's series (its loop ended): no stale target outlives it."""
        gauges = (
            self.desired_replicas,
            self.max_replicas,
            self.p95_target_seconds,
            self.signals_available,
        )
        for gauge in gauges:
            # KeyError: never observed (its spec was invalid from the start).
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name)

    def serve(self, port: int, address: str = "0.0.0.0") -> tuple[WSGIServer, threading.Thread]:
        """Serve ``/metrics`` from a daemon thread; returns the server and its thread."""
        return start_http_server(port, addr=address, registry=self.registry)
