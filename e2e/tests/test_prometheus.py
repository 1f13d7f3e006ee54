"""Real Prometheus scraping exporters through file_sd, queried the way the operator queries it."""

from __future__ import annotations

import math
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e import prometheus as prometheus_module
from e2e.exporters import Exporter
from e2e.prometheus import PROMETHEUS_BINARY, PrometheusError, PrometheusServer

pytestmark = pytest.mark.skipif(
    not Path(PROMETHEUS_BINARY).exists(), reason="Debian prometheus is not installed"
)

RUNNING = "sum by (namespace, vlmservice) (vlm_requests_running)"
P95 = (
    "histogram_quantile(0.95, sum by (namespace, vlmservice, le) "
    "(rate(vlm_request_duration_seconds_bucket[30s])))"
)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[PrometheusServer]:
    with PrometheusServer(tmp_path / "prometheus", scrape_interval="200ms") as server:
        yield server


def _by_service(result: list[dict[str, object]]) -> dict[tuple[str, str], float]:
    values = {}
    for series in result:
        metric = series["metric"]
        value = series["value"]
        assert isinstance(metric, dict)
        assert isinstance(value, list)
        values[(metric["namespace"], metric["vlmservice"])] = float(value[1])
    return values


def test_batched_queries_return_one_series_per_service(prometheus: PrometheusServer) -> None:
    with Exporter() as a0, Exporter() as a1, Exporter() as b0:
        a0.set(running=3, waiting=1)
        a1.set(running=4, waiting=5)
        b0.set(running=1, waiting=0)
        prometheus.set_targets([
            (a0.host_port, {"namespace": "team-a", "vlmservice": "chat", "pod": "chat-0"}),
            (a1.host_port, {"namespace": "team-a", "vlmservice": "chat", "pod": "chat-1"}),
            (b0.host_port, {"namespace": "team-b", "vlmservice": "ocr", "pod": "ocr-0"}),
        ])  # fmt: skip
        prometheus.wait_for_series("count(up == 1) >= 3", timeout=20)
        running = _by_service(prometheus.wait_for_series(RUNNING, timeout=20, count=2))
        assert running == {("team-a", "chat"): 7.0, ("team-b", "ocr"): 1.0}

        # Requests of ~6.5 s for chat, ~2.5 s for ocr, observed continuously while Prometheus
        # scrapes: rate() needs an increase between two samples inside its window.
        stop = threading.Event()

        def feed() -> None:
            while not stop.wait(0.1):
                a0.set(durations=[6.5] * 5)
                a1.set(durations=[6.5] * 5)
                b0.set(durations=[2.5] * 5)

        feeder = threading.Thread(target=feed)
        feeder.start()
        try:
            result = prometheus.wait_for_series(
                P95, timeout=20, count=2, where=lambda v: not any(map(math.isnan, v.values()))
            )
        finally:
            stop.set()
            feeder.join()
        p95 = _by_service(result)
        assert 6.0 < p95[("team-a", "chat")] <= 7.0  # inside the 6-7 s bucket
        assert 2.0 < p95[("team-b", "ocr")] <= 3.0


def test_targets_can_be_replaced_atomically(prometheus: PrometheusServer) -> None:
    with Exporter() as first, Exporter() as second:
        first.set(running=2)
        second.set(running=5)
        labels = {"namespace": "ns", "vlmservice": "svc", "pod": "p"}
        prometheus.set_targets([(first.host_port, labels)])
        assert _by_service(prometheus.wait_for_series(RUNNING, timeout=20)) == {("ns", "svc"): 2.0}
        prometheus.set_targets([(second.host_port, labels)])
        prometheus.wait_for_series(RUNNING, timeout=20, where=lambda v: list(v.values()) == [5.0])
        assert not any(f.name.startswith("targets.tmp") for f in prometheus.workdir.iterdir())


def test_stop_leaves_no_process_and_bad_queries_raise(tmp_path: Path) -> None:
    server = PrometheusServer(tmp_path / "p").start()
    process = server._process
    assert process is not None
    with pytest.raises(PrometheusError, match="parse error"):
        server.query("sum by (")
    server.stop()
    assert process.poll() is not None
    assert not server.running
    server.stop()  # idempotent


def test_wait_for_series_gives_up_at_its_deadline(prometheus: PrometheusServer) -> None:
    with pytest.raises(PrometheusError, match="returned 0 series"):
        prometheus.wait_for_series("vlm_requests_running{vlmservice='absent'}", timeout=0.5)


def test_start_retries_when_its_port_was_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = iter([busy])
        real_free_port = prometheus_module.free_port
        monkeypatch.setattr(prometheus_module, "free_port", lambda: next(ports, real_free_port()))
        with PrometheusServer(tmp_path / "p") as server:
            assert server.port != busy
            assert server.query("vector(1)")[0]["value"][1] == "1"
        assert "address already in use" in server.log_file.read_text()
