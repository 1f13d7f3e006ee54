"""`vlm-operator inspect` against a real Prometheus scraping signals-contract exporters.

Two exporters stand in for two gates of one VLMService with chosen values; a
third belongs to another service and must not leak into the answer. The
table, the PNG and the exit statuses are checked through the real command line.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import socket
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from vlm_operator.cli import main
from vlm_operator.inspection import (
    Inspection,
    PrometheusRefused,
    ServiceRef,
    check_points,
    connect,
    default_step,
    format_table,
    inspect_service,
    parse_service_ref,
    plot_png,
)

from e2e.exporters import Exporter
from e2e.prometheus import PrometheusServer

SERVICE = ServiceRef("team-a", "demo")
DEMO_B = {"namespace": "team-a", "vlmservice": "demo", "pod": "demo-b"}
P95_QUERY = (
    "histogram_quantile(0.95, sum by (le) "
    '(rate(vlm_request_duration_seconds_bucket{namespace="team-a",vlmservice="demo"}[30s])))'
)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """Prometheus scraping gates demo-a (3 in flight), demo-b (4 in flight, 2 queued)
    of team-a/demo, and one gate of another service, every second. demo-b is scraped
    twice (two jobs would): it must count once in every figure."""
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
                (pod_b.host_port, DEMO_B),
                (pod_b.host_port, {**DEMO_B, "scraper": "second"}),
                (other.host_port, {"namespace": "team-a", "vlmservice": "other", "pod": "other"}),
            ]
        )
        server.wait_for_series("vlm_gate_max_in_flight", count=4)
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


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("prometheus:9090", "must be an http(s) URL, got 'prometheus:9090'"),
        ("http://[::1", "Invalid IPv6 URL"),
        ("http://prometheus:99999", "Port out of range"),
        ("http://:9090", "must be an http(s) URL with a host"),
    ],
)
def test_bad_url_exits_2(url: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "a/b", "--prometheus-url", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlm-operator inspect: error: --prometheus-url: ")
    assert message in err


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


class _RecordingClient:
    """A RangeClient that answers nothing and keeps the ``step`` of every query."""

    def __init__(self) -> None:
        self.steps: list[str] = []

    def custom_query_range(
        self,
        query: str,
        start_time: datetime,
        end_time: datetime,
        step: str,
        params: dict[str, Any] | None = None,
        timeout: int | None = None,
    ) -> Any:
        self.steps.append(step)
        return []


class _AnsweringClient(_RecordingClient):
    """A RangeClient that answers every query with ``result``."""

    def __init__(self, result: Any) -> None:
        super().__init__()
        self.result = result

    def custom_query_range(self, *args: Any, **kwargs: Any) -> Any:
        return self.result


@pytest.mark.parametrize(
    "result",
    [
        [{"metric": {}, "values": [[1_700_000_000, "oops"]]}],
        [{"metric": {}, "values": [[1_700_000_000]]}],
        [{"metric": {}, "values": 5}],
        [{"metric": "a", "values": []}],
        ["a"],
    ],
)
def test_series_of_another_shape_are_no_prometheus_answer(result: Any) -> None:
    # A proxy's or a broken store's 200: named as such with its query, no traceback.
    with pytest.raises(PrometheusRefused, match=r"^not a Prometheus answer: .*\(query: "):
        inspect_service(_AnsweringClient(result), SERVICE, minutes=30, step_seconds=15)


@pytest.mark.parametrize(
    ("step", "sent"), [(2.5, "2.5"), (1234567.0, "1234567.0"), (60.0, "60.0"), (0.25, "0.25")]
)
def test_the_step_is_sent_as_plain_seconds(step: float, sent: str) -> None:
    # A duration must be whole units ("2.5s" is refused) and :g wrote "1.23457e+06s".
    client = _RecordingClient()
    inspect_service(client, SERVICE, minutes=30, step_seconds=step, now=lambda: 1_700_000_000.0)
    assert set(client.steps) == {sent}


def test_a_fractional_step_is_answered_by_prometheus(
    prometheus: PrometheusServer, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["inspect", "team-a/demo", "--prometheus-url", prometheus.url, "--minutes", "1"]
    assert main([*argv, "--step", "2.5"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("team-a/demo: last 1 min, step 2.5 s,")
    assert captured.err == ""


def test_more_points_than_prometheus_answers_are_refused_up_front(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Port 9 is never queried: the check comes first.
    argv = ["inspect", "a/b", "--prometheus-url", "http://127.0.0.1:9"]
    assert main([*argv, "--step", "1", "--minutes", "1440"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "vlm-operator inspect: error: --step/--minutes: 1440 minutes at a 1 s step are 86401 "
        "steps, and Prometheus answers at most 11000 per series: take a step of 8 s or more, "
        "or fewer minutes\n"
    )
    check_points(1440, 8)  # the step it suggests is enough
    # At the edge, as Prometheus counts (whole steps of the range): 66,001 s at 6 s is
    # 11,000 steps, which it answers.
    check_points(1100, 6)
    with pytest.raises(ValueError, match="11001 steps"):
        check_points(1100.1, 6)
    with pytest.raises(ValueError, match="11000"):
        inspect_service(_RecordingClient(), SERVICE, minutes=1440, step_seconds=1)


@contextlib.contextmanager
def _answering(status: int, answer: dict[str, Any]) -> Iterator[str]:
    """A server on 127.0.0.1 answering every GET with ``status`` and ``answer`` as JSON."""
    body = json.dumps(answer).encode()

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def refusing_prometheus() -> Iterator[str]:
    """A server answering every query as Prometheus answers a bad one: 400."""
    refusal = {"status": "error", "errorType": "bad_data", "error": "exceeded maximum"}
    with _answering(400, refusal) as url:
        yield url


def test_warnings_that_series_may_be_missing_are_shown(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A Thanos or Mimir querier whose store did not answer: the operator reads such an
    # answer as partial; inspect says so above the table (once, not once per query).
    # Prometheus's own annotations of a complete answer are no such warning.
    series = {"metric": {"pod": "demo-a"}, "values": [[1_700_000_000, "2"]]}
    answer = {
        "status": "success",
        "data": {"resultType": "matrix", "result": [series]},
        "warnings": [
            "store 10.0.0.1:10901 unavailable",
            "PromQL info: input to histogram_quantile needed to be fixed for monotonicity",
        ],
    }
    with _answering(200, answer) as url:
        assert main(["inspect", "team-a/demo", "--prometheus-url", url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert (
        out[1] == "warning: Prometheus says series may be missing: store 10.0.0.1:10901 unavailable"
    )
    assert sum("warning" in line for line in out) == 1
    assert not any("PromQL info" in line for line in out)


def test_an_http_error_is_a_refusal_with_prometheus_error_text(
    refusing_prometheus: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", "a/b", "--prometheus-url", refusing_prometheus]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"vlm-operator inspect: error: --prometheus-url: Prometheus at {refusing_prometheus} "
        "refused the query: HTTP 400: bad_data: exceeded maximum (query: "
    )
    assert "no answer" not in err
    assert err.count("\n") == 1


def test_a_missing_ca_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "ca.pem"
    argv = ["inspect", "a/b", "--prometheus-url", "https://127.0.0.1:9", "--ca-file", str(missing)]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"vlm-operator inspect: error: --ca-file: no such file: {missing}\n"
    )


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--minutes", "inf"),
        ("--minutes", "1e300"),
        ("--minutes", "nan"),
        ("--step", "inf"),
        ("--step", "1e300"),
        ("--step", "0.0001"),
        ("--timeout", "inf"),
        ("--timeout", "1e9"),
        ("--p95-target", "inf"),
        ("--minutes", "0"),
        ("--step", "-1"),
    ],
)
def test_numbers_must_be_finite_and_bounded(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", "a/b", "--prometheus-url", "http://127.0.0.1:9", flag, value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith(f"vlm-operator inspect: error: argument {flag}: must be a number ")
    assert f"got '{value}'" in error


@pytest.mark.parametrize(
    ("value", "message"),
    [("4", "must be from 5 to 3600 seconds"), ("3601", "must be from 5 to 3600"),
     ("1.5", "expected whole seconds")],
)  # fmt: skip
def test_the_window_is_a_window_the_spec_takes(
    value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", "a/b", "--prometheus-url", "http://127.0.0.1:9", "--window", value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_window_reaches_the_queries(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A service whose spec.metrics.windowSeconds is 120 is shown over the window its
    # operator read, not the default 30 s.
    from vlm_operator.commands import inspect as command

    seen: dict[str, Any] = {}

    def inspected(client: Any, service: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        raise command.PrometheusUnreachable("stop here")

    monkeypatch.setattr(command, "inspect_service", inspected)
    main(["inspect", "a/b", "--prometheus-url", "http://127.0.0.1:9", "--window", "120"])
    assert seen["window_seconds"] == 120


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\xff\xfe\x00binary", "not a token (bytes that are not ASCII text)"),
        (b"  \n", "empty"),
        (b"abc\x00def", "not a token (spaces or control characters inside)"),
        (b"abc def\n", "not a token (spaces or control characters inside)"),
    ],
)
def test_a_bearer_token_file_that_holds_no_token_is_named(
    content: bytes, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token"
    token.write_bytes(content)
    argv = ["inspect", "a/b", "--prometheus-url", "http://127.0.0.1:9"]
    assert main([*argv, "--bearer-token-file", str(token)]) == 2
    assert capsys.readouterr().err == (
        f"vlm-operator inspect: error: --bearer-token-file: {token}: {reason}\n"
    )


def test_the_png_file_is_checked_before_any_query(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    # Port 9 refuses: a query would fail with "Connection refused" instead.
    argv = ["inspect", "a/b", "--prometheus-url", "http://127.0.0.1:9", "--png"]
    for target, message in (
        (tmp_path / "noext", "the file name must end in .png"),
        (tmp_path / "out.jpgx", "the file name must end in .png"),
        (tmp_path / "out.pgf", "the file name must end in .png"),
        (tmp_path, "is a directory, not a file name"),
        (tmp_path / "missing" / "x.png", "no directory"),
    ):
        assert main([*argv, str(target)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("vlm-operator inspect: error: --png: "), target
        assert message in err, target
    assert list(tmp_path.iterdir()) == []


def test_a_png_is_png_whatever_its_name_and_empty_draws_without_warnings(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    # pytest turns warnings into errors here: matplotlib's "No artists with labels" would fail.
    empty = Inspection(SERVICE, 0, 60, 1, 12.0)
    target = tmp_path / "empty.jpg"
    plot_png(empty, target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jpg"]
