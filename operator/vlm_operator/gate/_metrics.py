"""The gate's Prometheus metrics: the signals contract the operator reads.

Names, labels and buckets are fixed by the signals contract (DESIGN.md); the
operator's queries and the dashboards depend on them, so they live in one
place. The registry is the gate's own (never the process-global default), and
``_created`` series are disabled: they double the series count and nothing
reads them. The two gauges that describe the live state are read from the
admission controller at scrape time, so serving a request costs no gauge
updates.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import disable_created_metrics as _disable_created_metrics

#: Dense around the multi-second range and the decision thresholds; the default
#: client_python buckets stop at 10 s and would put most model traffic in +Inf.
DURATION_BUCKETS: tuple[float, ...] = (
    0.5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 18, 20, 25, 30, 40, 60, 90, 120, 300,
)  # fmt: skip

#: Why the gate answered a request itself instead of passing it on.
REJECTION_REASONS: tuple[str, ...] = (
    "queue_full",
    "deadline",
    "draining",
    "too_large",
    "not_ready",
)

#: Status recorded for a request whose client went away before its answer.
CLIENT_CLOSED = 499


class GateMetrics:
    """Every series the gate exports, in its own registry."""

    def __init__(
        self,
        *,
        max_in_flight: int,
        queue_capacity: int,
        running: Callable[[], float],
        waiting: Callable[[], float],
    ) -> None:
        _disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.running = Gauge("vlm_requests_running", "Requests inside the model now.", registry=r)
        self.running.set_function(running)
        self.waiting = Gauge("vlm_requests_waiting", "Requests queued in the gate now.", registry=r)
        self.waiting.set_function(waiting)
        self.duration = Histogram(
            "vlm_request_duration_seconds",
            "End-to-end time of requests the gate admitted or queued, queue included.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.queue = Histogram(
            "vlm_request_queue_seconds",
            "Time requests spent queued in the gate (0 when admitted at once).",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.total = Counter(
            "vlm_requests", "Finished requests by HTTP status.", ["code"], registry=r
        )
        self.rejected = Counter(
            "vlm_requests_rejected",
            "Requests the gate answered itself, by reason.",
            ["reason"],
            registry=r,
        )
        for reason in REJECTION_REASONS:
            self.rejected.labels(reason)  # export zeros: "none yet" is not "no signal"
        self.cache_hits = Counter(
            "vlm_cache_hits", "Requests answered from the response cache.", registry=r
        )
        Gauge(
            "vlm_gate_max_in_flight", "Configured limit of requests in the model.", registry=r
        ).set(max_in_flight)
        Gauge("vlm_gate_queue_capacity", "Configured size of the gate's queue.", registry=r).set(
            queue_capacity
        )
        self._codes: dict[int, Counter] = {}

    def finished(self, code: int) -> None:
        """Count one answered request under its HTTP status."""
        counter = self._codes.get(code)
        if counter is None:
            counter = self._codes[code] = self.total.labels(str(code))
        counter.inc()

    def render(self) -> bytes:
        """The exposition text for a scrape."""
        return generate_latest(self.registry)
