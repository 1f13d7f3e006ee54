"""The Grafana dashboard: valid JSON whose every PromQL expression runs and finds its series.

Each expression (Grafana variables replaced by values) is sent to a real
Prometheus that scrapes a signals-contract exporter (the gate's own metric
definitions) and the operator's own metrics registry. An expression that does
not parse fails at once; one naming a metric or label that nothing exports
returns no series and fails at the deadline.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from vlm_operator.operator_metrics import OperatorMetrics

from e2e.cluster import chart
from e2e.exporters import Exporter
from e2e.prometheus import PrometheusServer

DASHBOARD = chart.CHART_DIR / "dashboards" / "vlm-operator.json"

#: Values for the dashboard's variables and Grafana's built-ins.
VARIABLES = {
    "namespace": "team-a",
    "vlmservice": "demo",
    "__rate_interval": "30s",
    "__interval": "5s",
}
_VARIABLE = re.compile(r"\$\{?(\w+)\}?")


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _panels() -> list[dict[str, Any]]:
    return [panel for panel in _dashboard()["panels"] if panel["type"] != "row"]


def _expressions() -> list[tuple[str, str]]:
    return [
        (f"{panel['title']} / {target['refId']}", target["expr"])
        for panel in _panels()
        for target in panel["targets"]
    ]


def _substitute(expr: str) -> str:
    return _VARIABLE.sub(lambda m: VARIABLES[m.group(1)], expr)


def test_dashboard_is_valid_and_complete() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "vlm-operator"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    defined = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "vlmservice"} <= defined
    for panel in _panels():
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
        assert panel["description"], panel["title"]
    used = {name for _, expr in _expressions() for name in _VARIABLE.findall(expr)}
    builtins = {name for name in VARIABLES if name.startswith("__")}
    assert used <= defined | builtins
    titles = " | ".join(panel["title"] for panel in _panels())
    for subject in (
        "Pods serving",
        "In flight per pod vs the limit",
        "Queue depth",
        "P95 latency vs target",
        "Requests by status code",
        "Rejections by reason",
        "Scaling decisions",
        "cycle duration",
        "Prometheus queries",
    ):
        assert subject in titles


def test_panels_do_not_overlap() -> None:
    cells: set[tuple[int, int]] = set()
    for panel in _dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & mine, panel["title"]
        cells |= mine


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """Prometheus scraping one gate of team-a/demo and the operator's metrics every second."""
    gate = Exporter(max_in_flight=4, queue_capacity=8).start()
    operator_metrics = OperatorMetrics()
    operator_server, operator_thread = operator_metrics.serve(0, "127.0.0.1")
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus"), honor_labels=True).start()
    try:
        labels = {"namespace": "team-a", "vlmservice": "demo", "pod": "demo-0"}
        gate.set(running=4, waiting=3, codes={200: 1, 503: 1}, rejected={"queue_full": 1})
        server.set_targets(
            [
                (gate.host_port, labels),
                (
                    f"127.0.0.1:{operator_server.server_port}",
                    {"namespace": "vlm-operator", "pod": "vlm-operator-0"},
                ),
            ]
        )
        server.wait_for_series("vlm_gate_max_in_flight", count=1)
        server.wait_for_series("vlm_operator_services", count=1)
        # Traffic and decisions after the first scrape, so rates over the window are positive.
        gate.set(
            durations=[9.5] * 20,
            queue_seconds=[1.5] * 20,
            codes={200: 18, 503: 1, 429: 1},
            rejected={"queue_full": 1},
        )
        operator_metrics.observe_service(
            "team-a", "demo", desired=3, max_replicas=10, p95_target=12, signals_available=True
        )
        operator_metrics.cycle_seconds.observe(0.02)
        operator_metrics.decisions.labels("up").inc()
        operator_metrics.query_errors.labels("timeout", "operator").inc()
        operator_metrics.query_seconds.observe(0.002)
        yield server
    finally:
        server.stop()
        gate.stop()
        operator_server.shutdown()
        operator_server.server_close()
        operator_thread.join(timeout=5)


@pytest.mark.parametrize(("where", "expr"), _expressions(), ids=[w for w, _ in _expressions()])
def test_every_expression_runs_and_finds_its_series(
    prometheus: PrometheusServer, where: str, expr: str
) -> None:
    promql = _substitute(expr)
    assert "$" not in promql
    # Raises at once on a PromQL error; at the deadline when no series answers.
    result = prometheus.wait_for_series(promql, timeout=20)
    assert result, where


def test_variable_queries_find_the_labels(prometheus: PrometheusServer) -> None:
    for variable in _dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"])
        assert match, variable["definition"]
        selector, label = match.groups()
        result = prometheus.query(_substitute(selector))
        assert VARIABLES[label] in {series["metric"].get(label) for series in result}


def _expr(title: str, ref: str, **variables: str) -> str:
    panel = next(panel for panel in _panels() if panel["title"] == title)
    expr = next(target["expr"] for target in panel["targets"] if target["refId"] == ref)
    values = {**VARIABLES, **variables}
    return _VARIABLE.sub(lambda m: values[m.group(1)], str(expr))


def _by(result: list[dict[str, Any]], *labels: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(series["metric"].get(label, "") for label in labels): float(series["value"][1])
        for series in result
    }


def test_a_gate_scraped_twice_counts_once_and_services_apart(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Two scrapes of one gate (two PodMonitors, or one and a scrape config of one's
    # own) give two series of each of its metrics: the panels take each target once,
    # as the operator's queries do. And under "All" services, the traffic panels
    # show each service apart, not the sum of them.
    demo = {"namespace": "team-a", "vlmservice": "demo"}
    twice, once, chat = (Exporter(max_in_flight=4, queue_capacity=8) for _ in range(3))
    server = PrometheusServer(tmp_path_factory.mktemp("twice"), scrape_interval="500ms")
    with twice, once, chat, server:
        twice.set(running=3, waiting=2)
        once.set(running=1, waiting=0)
        chat.set(running=0, waiting=0)
        server.set_targets(
            [
                (twice.host_port, {**demo, "pod": "demo-0", "scraper": "first"}),
                (twice.host_port, {**demo, "pod": "demo-0", "scraper": "second"}),
                (once.host_port, {**demo, "pod": "demo-1"}),
                (chat.host_port, {"namespace": "team-a", "vlmservice": "chat", "pod": "chat-0"}),
            ]
        )
        server.wait_for_series("vlm_gate_max_in_flight", count=4)
        pods = _by(
            server.query(_expr("Pods serving vs pods needed at the limit", "A")), "vlmservice"
        )
        assert pods == {("demo",): 2.0}  # not 3
        needed = server.query(_expr("Pods serving vs pods needed at the limit", "B"))
        assert _by(needed, "vlmservice") == {("demo",): 2.0}  # 6 requests of 4 a pod, not 11
        queued = _by(server.query(_expr("Queue depth", "A")), "vlmservice")
        assert queued == {("demo",): 2.0}
        capacity = _by(server.query(_expr("Queue depth", "B")), "vlmservice")
        assert capacity == {("demo",): 16.0}
        in_flight = server.query(_expr("In flight per pod vs the limit", "A"))
        assert _by(in_flight, "pod") == {("demo-0",): 3.0, ("demo-1",): 1.0}
        # Requests after the first scrape, so that their rates over the window are positive.
        twice.set(codes={200: 30, 429: 10}, rejected={"queue_full": 10})
        chat.set(codes={200: 20})
        # Until every scrape has seen them: both series of the gate scraped twice, and chat's.
        server.wait_for_series('rate(vlm_requests_total{code="200"}[60s]) > 0', count=3)
        series = server.wait_for_series(
            _expr("Requests by status code", "A", __rate_interval="60s", vlmservice=".+"),
            where=lambda values: sum(value > 0 for value in values.values()) >= 3,
        )
        # Each service apart, each code apart; the gate scraped twice counted once.
        codes = {key: rate for key, rate in _by(series, "vlmservice", "code").items() if rate}
        assert set(codes) == {("demo", "200"), ("demo", "429"), ("chat", "200")}
        # Against the sum of every series, at the same instant: half (each of the two
        # series of the gate scraped twice has about its rate; max takes the higher).
        panel = _expr("Requests by status code", "A", __rate_interval="60s")
        every_series = (
            "sum by (namespace, vlmservice, code) "
            '(rate(vlm_requests_total{vlmservice="demo"}[60s]))'
        )
        halves = _by(server.query(f"({panel}) / ({every_series}) > 0"), "vlmservice", "code")
        assert set(halves) == {("demo", "200"), ("demo", "429")}
        assert all(0.45 < half < 0.75 for half in halves.values()), halves
        ratio = _by(server.query(_expr("Error ratio", "A", __rate_interval="60s")), "vlmservice")
        assert ratio[("demo",)] == pytest.approx(0.25, rel=0.2)
        rejected = server.query(_expr("Rejections by reason", "A", __rate_interval="60s"))
        reasons = {key for key, rate in _by(rejected, "vlmservice", "reason").items() if rate}
        assert reasons == {("demo", "queue_full")}
