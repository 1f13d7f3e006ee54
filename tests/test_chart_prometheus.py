"""The Prometheus integration examples in manifests/prometheus/.

Debian's Prometheus is built without Kubernetes service discovery, so the
plain ``prometheus.yml`` jobs run here with their discovery swapped for a file
whose targets carry the ``__meta_kubernetes_*`` labels Kubernetes discovery
would give: the gates' job's own relabelling then keeps the gate port of
VLMService pods only, and writes the ``namespace``, ``vlmservice`` and ``pod``
labels of the signals contract, in a real Prometheus; the operator's job keeps
the operator's metrics port, its per-service series keeping their namespace.
The PodMonitor is checked against the same relabelling and against the
operator's own per-service PodMonitor.
"""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from vlm_operator.models import SERVICE_LABEL, VLMServiceSpec
from vlm_operator.operator_metrics import OperatorMetrics
from vlm_operator.render import GATE_PORT_NAME, render_children

from e2e.cluster import chart
from e2e.exporters import Exporter
from e2e.prometheus import PrometheusServer

EXAMPLES = chart.REPO_ROOT / "manifests" / "prometheus"
SERVICE_META = "__meta_kubernetes_pod_label_" + SERVICE_LABEL.replace(".", "_").replace(
    "/", "_"
).replace("-", "_")


def _plain_jobs() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load((EXAMPLES / "prometheus.yml").read_text())
    return {str(job["job_name"]): job for job in config["scrape_configs"]}


def _plain_job() -> dict[str, Any]:
    return _plain_jobs()["vlm-gates"]


def _pod_monitor() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((EXAMPLES / "podmonitor.yaml").read_text())
    return loaded


class _FileDiscoveryPrometheus(PrometheusServer):
    """The example jobs with Kubernetes discovery replaced by the test's target file."""

    def _write_config(self) -> Path:
        jobs = []
        for example in _plain_jobs().values():
            job = copy.deepcopy(example)
            del job["kubernetes_sd_configs"]
            job["file_sd_configs"] = [{"files": [str(self.targets_file)], "refresh_interval": "1s"}]
            job["scrape_interval"] = job["scrape_timeout"] = "1s"
            jobs.append(job)
        config = {"global": {"scrape_interval": "1s"}, "scrape_configs": jobs}
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        checked = subprocess.run(
            ["promtool", "check", "config", str(path)], capture_output=True, text=True, check=False
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        return path


def _pod(
    exporter: Exporter, *, port: str = "http", phase: str = "Running", service: str | None = "demo"
) -> tuple[str, dict[str, str]]:
    labels = {
        "__meta_kubernetes_namespace": "team-a",
        "__meta_kubernetes_pod_name": f"demo-{port}-{phase.lower()}",
        "__meta_kubernetes_pod_container_port_name": port,
        "__meta_kubernetes_pod_phase": phase,
    }
    if service is not None:
        labels[SERVICE_META] = service
    return exporter.host_port, labels


def _operator_pod(host_port: str, *, port: str = "metrics") -> tuple[str, dict[str, str]]:
    labels = {
        "__meta_kubernetes_namespace": "vlm-operator",
        "__meta_kubernetes_pod_name": f"vlm-operator-{port}",
        "__meta_kubernetes_pod_container_port_name": port,
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": "vlm-operator",
    }
    return host_port, labels


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    gate = Exporter().start()
    other = Exporter().start()
    operator = OperatorMetrics()
    operator.observe_service(
        "team-a", "demo", desired=3, max_replicas=8, p95_target=12.0, signals_available=True
    )
    operator_server, _ = operator.serve(0, "127.0.0.1")
    operator_target = f"127.0.0.1:{operator_server.server_port}"
    server = _FileDiscoveryPrometheus(tmp_path_factory.mktemp("prometheus")).start()
    try:
        server.set_targets(
            [
                _pod(gate),  # the only one to keep
                _pod(gate, port="metrics"),  # another port of the pod
                _pod(gate, phase="Succeeded"),  # a finished pod
                _pod(other, service=None),  # not a VLMService pod
                _operator_pod(operator_target),  # the operator's job keeps this one only
                _operator_pod(operator_target, port="health"),
            ]
        )
        yield server
    finally:
        server.stop()
        gate.stop()
        other.stop()
        operator_server.shutdown()
        operator_server.server_close()


def test_plain_job_keeps_only_gate_ports_with_the_contract_labels(
    prometheus: PrometheusServer,
) -> None:
    result = prometheus.wait_for_series("vlm_gate_max_in_flight", timeout=30)
    assert len(result) == 1
    labels = result[0]["metric"]
    assert labels["namespace"] == "team-a"
    assert labels["vlmservice"] == "demo"
    assert labels["pod"] == "demo-http-running"
    gates = [t for t in prometheus.targets() if t["labels"]["job"] == "vlm-gates"]
    assert [t["labels"]["pod"] for t in gates] == ["demo-http-running"]


def test_plain_operator_job_keeps_the_service_namespace_of_its_series(
    prometheus: PrometheusServer,
) -> None:
    # The alerts set the operator's per-service series against the gates': their namespace
    # must be the service's, not the operator pod's (honor_labels).
    result = prometheus.wait_for_series("vlm_operator_desired_replicas", timeout=30)
    assert len(result) == 1
    labels = result[0]["metric"]
    assert (labels["namespace"], labels["vlmservice"]) == ("team-a", "demo")
    assert labels["job"] == "vlm-operator"
    assert labels["pod"] == "vlm-operator-metrics"
    operator = [t for t in prometheus.targets() if t["labels"]["job"] == "vlm-operator"]
    assert [t["labels"]["pod"] for t in operator] == ["vlm-operator-metrics"]


def test_plain_job_scrapes_every_5_seconds() -> None:
    job = _plain_job()
    assert job["scrape_interval"] == "5s"
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    port_rule = next(
        r
        for r in job["relabel_configs"]
        if r["source_labels"] == ["__meta_kubernetes_pod_container_port_name"]
    )
    assert port_rule == {
        "action": "keep",
        "source_labels": ["__meta_kubernetes_pod_container_port_name"],
        "regex": GATE_PORT_NAME,
    }


def _contract_relabelings(rules: list[dict[str, Any]]) -> dict[str, list[str]]:
    """target label → source labels, for the replace rules (either spelling)."""
    found = {}
    for rule in rules:
        if rule.get("action", "replace") != "replace":
            continue
        target = rule.get("targetLabel", rule.get("target_label"))
        sources = rule.get("sourceLabels", rule.get("source_labels"))
        found[str(target)] = list(sources)
    return found


def test_pod_monitor_scrapes_gates_everywhere_every_5_seconds() -> None:
    monitor = _pod_monitor()
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"any": True}
    assert spec["selector"]["matchExpressions"] == [{"key": SERVICE_LABEL, "operator": "Exists"}]
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["port"] == GATE_PORT_NAME
    assert endpoint["interval"] == "5s"
    assert "release" in monitor["metadata"]["labels"]
    text = (EXAMPLES / "podmonitor.yaml").read_text()
    assert "podMonitorSelector" in text


def test_pod_monitor_relabels_like_the_plain_job_and_the_operators_own() -> None:
    (endpoint,) = _pod_monitor()["spec"]["podMetricsEndpoints"]
    mine = _contract_relabelings(endpoint["relabelings"])
    assert mine == _contract_relabelings(_plain_job()["relabel_configs"])
    assert mine == {
        "vlmservice": [SERVICE_META],
        "namespace": ["__meta_kubernetes_namespace"],
        "pod": ["__meta_kubernetes_pod_name"],
    }
    spec = VLMServiceSpec.model_validate(
        {"model": {"id": "m", "runtime": "fake"}, "monitoring": {"podMonitor": True}}
    )
    (per_service,) = [
        o for o in render_children("demo", "team-a", spec) if o["kind"] == "PodMonitor"
    ]
    (operators,) = per_service["spec"]["podMetricsEndpoints"]
    assert _contract_relabelings(operators["relabelings"]) == mine
    assert operators["port"] == endpoint["port"]
