"""`vlm-operator inspect` against a real Prometheus scraping signals-contract exporters.

Two exporters stand in for two gates of one VLMService with chosen values; a
third belongs to another service and must not leak into the answer. The
table, the PNG and the exit statuses are checked through the real command line.
"""

from __future__ import annotations

import itertools
import math
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from vlm_operator.cli import main
from vlm_operator.inspection import (
    ServiceRef,
    connect,
    default_step,
    format_table,
    inspect_service,
    parse_service_ref,
)

from e2e.exporters import Exporter
from e2e.prometheus import PrometheusServer

SERVICE = ServiceRef("team-a", "demo")
P95_QUERY = (
    "histogram_quantile(0.95, sum by (le) "
    '(rate(vlm_request_duration_seconds_bucket{namespace="team-a",vlmservice="demo"}[30s])))'
)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """Prometheus scraping gates demo-a (3 in flight), demo-b (4 in flight, 2 queued)
    of team-a/demo, and one gate of another service, every second."""
    pod_a = Exporter(max_in_flight=4, queue_capacity=8).start()
    pod_b = Exporter(max_in_flight=4, queue_capacity=8).start()
    other = Exporter(max_in_flight=2).start()
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus")).start()
    try:
        pod_a.set(running=3, waiting=0)
        pod_b.set(running=4, waiting=2)
        other.set(running=9, waiting=9)
        server.set_targets(
            [
                (pod_a.host_port, {"namespace": "team-a", "vlmservice": "demo", "pod": "demo-a"}),
                (pod_b.host_port, {"namespace": "team-a", "vlmservice": "demo", "pod": "demo-b"}),
                (other.host_port, {"namespace": "team-a", "vlmservice": "other", "pod": "other"}),
            ]
        )
        server.wait_for_series("vlm_gate_max_in_flight", count=3)
        # Traffic after the first scrape, so that rates over the window are positive.
        pod_a.set(durations=[9.5] * 40, codes={200: 40})
        pod_b.set(durations=[9.5] * 40, codes={200: 38, 429: 2}, rejected={"queue_full": 2})
        server.wait_for_series(P95_QUERY, where=lambda v: all(math.isfinite(x) for x in v.values()))
        _wait_for_history(server)
        yield server
    finally:
        server.stop()
        for exporter in (pod_a, pod_b, other):
            exporter.stop()


def _wait_for_history(server: PrometheusServer, timeout: float = 30.0) -> None:
    """Until a one-minute range at 1 s steps has a few steps of pods and of P95.

    An instant query sees a sample scraped a moment ago; a range query ends on
    a whole second, so its last step can still precede it.
    """
    client = connect(server.url, timeout_seconds=5)
    deadline = time.monotonic() + timeout
    while True:
        got = inspect_service(client, SERVICE, minutes=1, step_seconds=1)
        p95_steps = len(got.p95.points) if got.p95 is not None else 0
        pods_steps = len(got.pods.points) if got.pods is not None else 0
        if p95_steps >= 2 and pods_steps >= 3:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"no history after {timeout}s: {got}")
        time.sleep(0.2)


def test_inspection_returns_the_services_series_only(prometheus: PrometheusServer) -> None:
    client = connect(prometheus.url, timeout_seconds=5)
    inspection = inspect_service(client, SERVICE, minutes=1, step_seconds=1)
    assert not inspection.empty
    last = inspection.timestamps()[-1]
    assert inspection.pods is not None
    assert inspection.pods.at(last) == 2
    assert inspection.limit is not None
    assert inspection.limit.at(last) == 4
    assert [series.label for series in inspection.in_flight] == ["demo-a", "demo-b"]
    assert sorted(inspection.in_flight_at(last)) == [3.0, 4.0]
    assert inspection.waiting is not None
    assert inspection.waiting.at(last) == 2
    assert inspection.p95 is not None
    p95 = inspection.p95.at(last)
    # Every observation was 9.5 s: the quantile interpolates inside the 9-10 s bucket.
    assert p95 is not None
    assert 9.0 <= p95 <= 10.0
    assert inspection.rejected_rate is not None
    assert (inspection.rejected_rate.at(last) or 0) > 0
    steps = inspection.timestamps()
    assert all(b - a >= 1 for a, b in itertools.pairwise(steps))


def test_table_shows_pods_in_flight_queue_and_p95_against_the_target(
    prometheus: PrometheusServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    png = tmp_path / "demo.png"
    status = main(
        [
            "inspect",
            "team-a/demo",
            "--prometheus-url",
            prometheus.url,
            "--minutes",
            "1",
            "--step",
            "1",
            "--p95-target",
            "8",
            "--png",
            str(png),
            "--timeout",
            "5",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("team-a/demo: last 1 min, step 1 s, P95 target 8 s; pods ")
    header = lines[1].split()
    assert header[:6] == ["TIME(UTC)", "PODS", "LIMIT", "IN-FLIGHT/POD", "MAX-POD", "QUEUE"]
    rows = [line.split() for line in lines[2:] if line.strip()[:2].isdigit()]
    assert len(rows) >= 2
    last = dict(zip(header, rows[-1], strict=True))
    assert last["PODS"] == "2"
    assert last["LIMIT"] == "4"
    assert last["IN-FLIGHT/POD"] == "3.5"
    assert last["MAX-POD"] == "4"
    assert last["QUEUE"] == "2"
    # Above the 8 s target: marked.
    assert last["P95(s)"].endswith("!")
    assert 9.0 <= float(last["P95(s)"].rstrip("!")) <= 10.0
    assert last["TARGET"] == "8.0"
    assert f"wrote {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_service_without_series_says_so_and_exits_1(
    prometheus: PrometheusServer, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["inspect", "team-a/absent", "--prometheus-url", prometheus.url])
    assert status == 1
    assert "no gate series for team-a/absent" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("demo", "expected NAMESPACE/NAME, got 'demo'"),
        ("a/b/c", "expected NAMESPACE/NAME"),
        ("Team/demo", "namespace 'Team' is not a valid namespace name"),
        ("team/Demo_1", "name 'Demo_1' is not a valid VLMService name"),
        ("/demo", "namespace '' is not a valid"),
    ],
)
def test_bad_name_exits_2_naming_the_part(
    ref: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["inspect", ref, "--prometheus-url", "http://127.0.0.1:9"])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("vlm-operator inspect: error: NAMESPACE/NAME: ")
    assert message in err


def test_bad_url_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "a/b", "--prometheus-url", "prometheus:9090"]) == 2
    assert "--prometheus-url: expected an http:// or https:// URL" in capsys.readouterr().err


def test_unreachable_prometheus_exits_2_after_the_timeout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A socket that listens but never answers: the request must give up at the timeout.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        status = main(["inspect", "a/b", "--prometheus-url", url, "--timeout", "0.5"])
        elapsed = time.monotonic() - started
    assert status == 2
    err = capsys.readouterr().err
    assert f"--prometheus-url: no answer from {url} within 0.5 s" in err
    assert "Traceback" not in err
    assert 0.4 <= elapsed < 3.0


def test_refused_connection_exits_2_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    started = time.monotonic()
    status = main(["inspect", "a/b", "--prometheus-url", f"http://127.0.0.1:{port}"])
    assert status == 2
    assert time.monotonic() - started < 2.0
    assert "Connection refused" in capsys.readouterr().err


def test_missing_inspect_extra_exits_2_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_api_client", None)
    assert main(["inspect", "a/b", "--prometheus-url", "http://127.0.0.1:9"]) == 2
    assert "pip install '.[inspect]'" in capsys.readouterr().err


def test_missing_plot_extra_exits_2_with_the_install_command(
    prometheus: PrometheusServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    argv = ["inspect", "team-a/demo", "--prometheus-url", prometheus.url, "--minutes", "1"]
    assert main([*argv, "--png", str(tmp_path / "x.png")]) == 2
    assert "--png: matplotlib is not installed" in capsys.readouterr().err


def test_parse_and_step() -> None:
    assert parse_service_ref("ns/a.b-c") == ServiceRef("ns", "a.b-c")
    assert str(ServiceRef("ns", "x")) == "ns/x"
    assert default_step(30) == 60
    assert default_step(0.1) == 1


def test_empty_inspection_formats_a_hint() -> None:
    from vlm_operator.inspection import Inspection

    text = format_table(Inspection(SERVICE, 0, 60, 1, 12.0))
    assert "no gate series for team-a/demo" in text
    assert "manifests/prometheus/" in text
