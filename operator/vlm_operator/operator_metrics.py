"""The operator's own Prometheus metrics.

The operator is itself a control loop that can fall behind, lose Prometheus or
flap; these metrics make that visible: how long one autoscaling cycle of one
VLMService takes, which way decisions go, how often and how slowly the signal
queries run. They live in their own registry (not the process-global one) so
that tests can build several operators in one process and read each one's
numbers without cross-talk.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_CYCLE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_QUERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


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
            "Autoscaling decisions by direction (up, down, hold).",
            ["direction"],
            registry=self.registry,
        )
        self.query_errors = Counter(
            "vlm_operator_prometheus_query_errors",
            "Failed Prometheus queries by reason (connect, timeout, status, json, promql).",
            ["reason"],
            registry=self.registry,
        )
        self.query_seconds = Histogram(
            "vlm_operator_prometheus_query_duration_seconds",
            "Latency of the PromQL instant queries sent to Prometheus.",
            buckets=_QUERY_BUCKETS,
            registry=self.registry,
        )
        self.crd_drift = Gauge(
            "vlm_operator_crd_drift_fields",
            "Fields the installed VLMService CRD lacks (missing) or has beyond this "
            "operator's (unknown); both 0 when they match, absent until the CRD is seen.",
            ["direction"],
            registry=self.registry,
        )
        self.services = Gauge(
            "vlm_operator_services",
            "VLMServices the operator currently autoscales.",
            registry=self.registry,
        )

    def serve(self, port: int, address: str = "0.0.0.0") -> tuple[WSGIServer, threading.Thread]:
        """Serve ``/metrics`` from a daemon thread; returns the server and its thread."""
        return start_http_server(port, addr=address, registry=self.registry)
