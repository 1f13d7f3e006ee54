"""The gate's Prometheus metrics: the signals contract the operator reads.

Names, labels and buckets are fixed by the signals contract (docs/design.md) and
come from :mod:`vlm_operator.contract`, which the operator's queries, the
simulator and the test exporters share. The registry is the gate's own
(never the process-global default), and ``_created`` series are disabled:
they double the series count and nothing reads them. The two gauges that
describe the live state are read from the admission controller at scrape
time, so serving a request costs no gauge updates.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import disable_created_metrics as _disable_created_metrics

from vlm_operator import contract
from vlm_operator.contract import REJECTION_REASONS

#: Status recorded for a request whose client went away before its answer.
CLIENT_CLOSED = 499


#: Status codes exported at 0 from the start: success, and every failure the
#: error rate (5xx and 429) sees from the gate or a model server.
PRECREATED_CODES = (200, 429, 500, 502, 503, 504)


class GateMetrics:
    """Every series the gate exports, in its own registry."""

    def __init__(
        self,
        *,
        max_in_flight: int,
        queue_capacity: int,
        running: Callable[[], float],
        waiting: Callable[[], float],
        bucket_scale: float = 1.0,
    ) -> None:
        buckets = contract.scaled_buckets(bucket_scale)
        _disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.running = Gauge(contract.RUNNING, "Requests inside the model now.", registry=r)
        self.running.set_function(running)
        self.waiting = Gauge(contract.WAITING, "Requests queued in the gate now.", registry=r)
        self.waiting.set_function(waiting)
        self.duration = Histogram(
            contract.DURATION,
            "Time of requests the gate admitted or queued, from the request read whole to "
            "the answer's last byte, queue included.",
            buckets=buckets,
            registry=r,
        )
        self.queue = Histogram(
            contract.QUEUE_TIME,
            "Time requests spent queued in the gate (0 when admitted at once).",
            buckets=buckets,
            registry=r,
        )
        self.total = Counter(
            contract.REQUESTS,
            "Finished requests by HTTP status.",
            [contract.CODE_LABEL],
            registry=r,
        )
        self.rejected = Counter(
            contract.REJECTED,
            "Requests the gate answered itself, by reason.",
            [contract.REASON_LABEL],
            registry=r,
        )
        for reason in REJECTION_REASONS:
            self.rejected.labels(reason)  # export zeros: "none yet" is not "no signal"
        self.cache_hits = Counter(
            contract.CACHE_HITS, "Requests answered from the response cache.", registry=r
        )
        Gauge(contract.MAX_IN_FLIGHT, "Configured limit of requests in the model.", registry=r).set(
            max_in_flight
        )
        Gauge(contract.QUEUE_CAPACITY, "Configured size of the gate's queue.", registry=r).set(
            queue_capacity
        )
        # The 200s are exported from start, at 0: a gate that has answered
        # nothing yet is an idle pod (arrival rate 0), not a missing signal,
        # which would hold a fresh service at its replicas for ever. So are the
        # codes the error rate counts: a series born at its first increase
        # loses that increase to rate(), and a burst of failures inside one
        # scrape interval (a model that died) would never show.
        self._codes: dict[int, Counter] = {
            code: self.total.labels(str(code)) for code in PRECREATED_CODES
        }

    def finished(self, code: int) -> None:
        """Count one answered request under its HTTP status."""
        counter = self._codes.get(code)
        if counter is None:
            counter = self._codes[code] = self.total.labels(str(code))
        counter.inc()

    def render(self) -> bytes:
        """The exposition text for a scrape."""
        return generate_latest(self.registry)
