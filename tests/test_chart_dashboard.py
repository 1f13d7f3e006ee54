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
