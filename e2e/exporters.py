"""A tiny metrics exporter speaking the gate's signals contract with values chosen by a test.

It reuses the gate's own ``GateMetrics`` (so names, types and buckets cannot drift from what the
gate exports) and serves it from prometheus_client's threaded HTTP server on 127.0.0.1. Tests set
``running``/``waiting`` directly and feed request durations into the histogram, so contract
tests of the operator's queries can drive every signal precisely without running model traffic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from threading import Lock, Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from vlm_operator.contract import DURATION_BUCKETS
from vlm_operator.gate._metrics import GateMetrics

__all__ = ["DURATION_BUCKETS", "Exporter"]


class Exporter:
    """One fake gate's /metrics endpoint; ``host_port`` is what Prometheus should scrape."""

    def __init__(self, *, max_in_flight: int = 4, queue_capacity: int = 16) -> None:
        self._lock = Lock()
        self._running = 0.0
        self._waiting = 0.0
        self.metrics = GateMetrics(
            max_in_flight=max_in_flight,
            queue_capacity=queue_capacity,
            running=self._read_running,
            waiting=self._read_waiting,
        )
        self._server: WSGIServer | None = None
        self._thread: Thread | None = None
        self.host_port = ""

    def _read_running(self) -> float:
        with self._lock:
            return self._running

    def _read_waiting(self) -> float:
        with self._lock:
            return self._waiting

    def set(
        self,
        *,
        running: float | None = None,
        waiting: float | None = None,
        durations: Iterable[float] = (),
        queue_seconds: Iterable[float] = (),
        codes: Mapping[int, int] | None = None,
        rejected: Mapping[str, int] | None = None,
    ) -> None:
        """Set the gauges; observe durations; count finished requests and rejections."""
        with self._lock:
            if running is not None:
                self._running = float(running)
            if waiting is not None:
                self._waiting = float(waiting)
        for seconds in durations:
            self.metrics.duration.observe(seconds)
        for seconds in queue_seconds:
            self.metrics.queue.observe(seconds)
        for code, count in (codes or {}).items():
            for _ in range(count):
                self.metrics.finished(code)
        for reason, count in (rejected or {}).items():
            self.metrics.rejected.labels(reason).inc(count)

    def start(self, host: str = "127.0.0.1", port: int = 0) -> Exporter:
        server, thread = start_http_server(port, host, registry=self.metrics.registry)
        self._server, self._thread = server, thread
        self.host_port = f"{host}:{server.server_port}"
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host_port}/metrics"

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Exporter:
        return self.start() if self._server is None else self

    def __exit__(self, *_: object) -> None:
        self.stop()
