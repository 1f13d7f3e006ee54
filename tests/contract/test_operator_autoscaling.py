"""The real operator (``vlm-operator run``, a subprocess) against the emulated Kubernetes API
and a real Prometheus scraping exporters that publish chosen signal values.

There is no kubelet here: the tests play its part where the operator depends on it (they
create Ready pods and set the Deployment's ``readyReplicas``). Everything else is real:
kopf's watches, the operator's own requests, PromQL over real scrapes, garbage collection of
owned children by the API server. Every wait polls with a deadline.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from vlm_operator.crd import CRD_NAME

from e2e.cluster.polling import terminate
from e2e.exporters import Exporter
from e2e.kubeapi import PODMONITOR_CRD, ThreadedKubeAPI, run_in_thread
from e2e.prometheus import PrometheusServer, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NS = "default"
VLMS = f"/apis/vlm-operator.io/v1alpha1/namespaces/{NS}/vlmservices"
DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NS}/deployments"
PODS = f"/api/v1/namespaces/{NS}/pods"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
T = TypeVar("T")


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.2
) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Api:
    """Plain REST on the emulated API, as a user with kubectl would do it."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=10.0)

    def get(self, path: str) -> dict[str, Any] | None:
        response = self.http.get(path)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self.http.post(path, json=body)

    def patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.http.patch(
            path, json=body, headers={"Content-Type": "application/merge-patch+json"}
        )
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def delete(self, path: str) -> None:
        self.http.delete(path).raise_for_status()

    def replicas(self, name: str) -> int | None:
        deployment = self.get(f"{DEPLOYMENTS}/{name}")
        return None if deployment is None else int(deployment["spec"].get("replicas", 1))

    def set_ready(self, name: str, ready: int) -> None:
        self.patch(
            f"{DEPLOYMENTS}/{name}/status",
            {"status": {"replicas": ready, "readyReplicas": ready, "availableReplicas": ready}},
        )

    def status(self, name: str) -> dict[str, Any]:
        obj = self.get(f"{VLMS}/{name}") or {}
        return dict(obj.get("status") or {})

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        for condition in self.status(name).get("conditions") or []:
            if condition.get("type") == type_:
                return dict(condition)
        return None

    def events(self, name: str, reason: str | None = None) -> list[dict[str, Any]]:
        items = (self.get(f"/api/v1/namespaces/{NS}/events") or {}).get("items") or []
        return [
            e
            for e in items
            if (e.get("involvedObject") or {}).get("name") == name
            and (e.get("involvedObject") or {}).get("kind") == "VLMService"
            and (reason is None or e.get("reason") == reason)
        ]

    def add_ready_pod(self, service: str, pod: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod, "labels": {"vlm-operator.io/service": service}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "gate", "image": "x"}]},
        }
        self.post(PODS, body).raise_for_status()
        ready = {"type": "Ready", "status": "True"}
        scheduled = {"type": "PodScheduled", "status": "True"}
        self.patch(
            f"{PODS}/{pod}/status",
            {"status": {"phase": "Running", "conditions": [scheduled, ready]}},
        )


def vlmservice(name: str, **overrides: Any) -> dict[str, Any]:
    autoscaling = {
        "minReplicas": 1,
        "maxReplicas": 5,
        "syncPeriodSeconds": 1,
        "targetUtilization": 1.0,  # 4 per pod: the expected replicas below are exact
        "scaleDown": {"stabilizationWindowSeconds": 6},
        **overrides.pop("autoscaling", {}),
    }
    spec = {
        "model": {"id": "Qwen/Qwen3-VL-2B-Instruct", "runtime": "fake"},
        "autoscaling": autoscaling,
        "metrics": {"windowSeconds": 5, **overrides.pop("metrics", {})},
        **overrides,
    }
    return {
        "apiVersion": "vlm-operator.io/v1alpha1",
        "kind": "VLMService",
        "metadata": {"name": name},
        "spec": spec,
    }


class Operator:
    """``vlm-operator run`` as a subprocess; restartable."""

    def __init__(self, kubeconfig: Path, prometheus_url: str, log: Path) -> None:
        self.metrics_port = free_port()
        self.argv = [
            sys.executable,
            "-m",
            "vlm_operator",
            "run",
            "--all-namespaces",
            "--kubeconfig",
            str(kubeconfig),
            "--prometheus-url",
            prometheus_url,
            "--prometheus-timeout",
            "2",
            "--metrics-port",
            str(self.metrics_port),
            "--metrics-address",
            "127.0.0.1",
            "--watch-podmonitors",  # the emulated API has the PodMonitor CRD
        ]
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        terminate(process, grace_s=20)

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-60:])


class Feeder:
    """Keeps requests finishing on an exporter (so P95 and rates exist) until stopped."""

    def __init__(
        self, exporter: Exporter, seconds: float = 6.0, codes: dict[int, int] | None = None
    ) -> None:
        self.exporter = exporter
        self.seconds = seconds
        self.codes = codes or {200: 1}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.exporter.set(durations=[self.seconds], codes=self.codes)

    def __enter__(self) -> Feeder:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclasses.dataclass
class Cluster:
    kube: ThreadedKubeAPI
    api: Api
    prometheus: PrometheusServer
    operator: Operator
    targets: dict[str, tuple[str, dict[str, str]]]

    def scrape(self, service: str, pod: str, exporter: Exporter) -> None:
        labels = {"namespace": NS, "vlmservice": service, "pod": pod}
        self.targets[pod] = (exporter.host_port, labels)
        self.prometheus.set_targets(list(self.targets.values()))

    def wait_for_signal(self, service: str, running: float) -> None:
        query = f'sum(vlm_requests_running{{vlmservice="{service}"}})'
        self.prometheus.wait_for_series(
            query, timeout=30, where=lambda values: running in values.values()
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("operator-contract")
    with (
        run_in_thread(crds=[ROOT / "crds", PODMONITOR_CRD]) as kube,
        PrometheusServer(workdir / "prometheus") as prometheus,
    ):
        operator = Operator(kube.kubeconfig, prometheus.url, workdir / "operator.log")
        operator.start()
        cluster = Cluster(kube, Api(kube.url), prometheus, operator, {})
        try:
            yield cluster
        finally:
            operator.stop()
            cluster.api.http.close()
            print(operator.tail())


def gate_env(api: Api, name: str, variable: str) -> str | None:
    deployment = api.get(f"{DEPLOYMENTS}/{name}") or {}
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        for env in container.get("env") or []:
            if env.get("name") == variable:
                return str(env.get("value"))
    return None


def without_cel(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: without_cel(v) for k, v in node.items() if k != "x-kubernetes-validations"}
    if isinstance(node, list):
        return [without_cel(v) for v in node]
    return node


def owned_by(obj: dict[str, Any] | None, uid: str) -> bool:
    refs = (obj or {}).get("metadata", {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def test_create_adopts_children_and_delete_collects_them(cluster: Cluster) -> None:
    api = cluster.api
    created = api.post(
        VLMS,
        vlmservice(
            "svc-create",
            networkPolicy={"enabled": True},
            monitoring={"podMonitor": True, "interval": "1s"},
        ),
    )
    assert created.status_code == 201, created.text
    uid = created.json()["metadata"]["uid"]
    children = [
        f"{DEPLOYMENTS}/svc-create",
        f"/api/v1/namespaces/{NS}/services/svc-create",
        f"/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/svc-create",
        f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/svc-create",
        f"/apis/monitoring.coreos.com/v1/namespaces/{NS}/podmonitors/svc-create",
    ]
    for path in children:
        wait_for(f"{path} owned by the VLMService", lambda p=path: owned_by(api.get(p), uid))
    status = wait_for("status.selector", lambda: api.status("svc-create").get("selector") and
                      api.status("svc-create"))  # fmt: skip
    assert "vlm-operator.io/service=svc-create" in status["selector"]
    assert status["observedGeneration"] == 1
    assert api.replicas("svc-create") == 1  # minReplicas

    # A Service, PDB, NetworkPolicy or PodMonitor deleted by hand is back within a few
    # 1 s cycles (watched), not at the 10-minute refresh of the children.
    for path in children[1:]:
        old_uid = api.get(path)["metadata"]["uid"]  # type: ignore[index]
        api.delete(path)
        back = wait_for(
            f"{path} recreated",
            lambda p=path, u=old_uid: (obj := api.get(p)) and obj["metadata"]["uid"] != u and obj,
            timeout=10,
        )
        assert owned_by(back, uid)

    api.delete(f"{VLMS}/svc-create")
    for path in children:
        wait_for(f"{path} garbage-collected", lambda p=path: api.get(p) is None)
    wait_for("the VLMService gone", lambda: api.get(f"{VLMS}/svc-create") is None)


def test_an_object_of_a_childs_name_that_is_anothers_is_left_alone(cluster: Cluster) -> None:
    api = cluster.api
    services = f"/api/v1/namespaces/{NS}/services"
    # Another app's Service, controlled by its own object (which exists: the garbage
    # collector deletes what an absent owner controlled).
    owner = api.post(
        f"/api/v1/namespaces/{NS}/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-frontend"}},
    )
    assert owner.status_code == 201, owner.text
    owner_uid = owner.json()["metadata"]["uid"]
    theirs = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "svc-taken",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "web-frontend",
                 "uid": owner_uid, "controller": True},
            ],
        },
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }  # fmt: skip
    assert api.post(services, theirs).status_code == 201
    created = api.post(VLMS, vlmservice("svc-taken"))
    assert created.status_code == 201, created.text
    uid = created.json()["metadata"]["uid"]
    condition = wait_for(
        "ChildRejected",
        lambda: (c := api.condition("svc-taken", "InvalidSpec")) and c["status"] == "True" and c,
    )
    assert condition["reason"] == "ChildRejected"
    assert (
        "Service svc-taken exists and is controlled by ConfigMap web-frontend"
        in (condition["message"])
    )
    wait_for("the other children", lambda: owned_by(api.get(f"{DEPLOYMENTS}/svc-taken"), uid))
    service = api.get(f"{services}/svc-taken")
    assert service is not None
    assert service["spec"]["selector"] == {"app": "web"}
    assert [r["uid"] for r in service["metadata"]["ownerReferences"]] == [owner_uid]

    api.delete(f"{VLMS}/svc-taken")
    wait_for("the Deployment collected", lambda: api.get(f"{DEPLOYMENTS}/svc-taken") is None)
    assert api.get(f"{services}/svc-taken") is not None  # not the VLMService's to collect
    api.delete(f"/api/v1/namespaces/{NS}/configmaps/web-frontend")
    wait_for(
        "their Service collected with its owner", lambda: api.get(f"{services}/svc-taken") is None
    )


def test_invalid_specs_are_rejected_or_reported(cluster: Cluster) -> None:
    api = cluster.api
    bad = vlmservice("svc-bad", autoscaling={"minReplicas": 6, "maxReplicas": 2})
    rejected = api.post(VLMS, bad)
    assert rejected.status_code == 422, rejected.text
    assert "minReplicas" in rejected.text

    # A cluster can still hold one: created before the CRD had its CEL rules (Kubernetes
    # before 1.25 ignores x-kubernetes-validations), then the full CRD applied. Validation
    # ratcheting lets its unchanged spec through later writes (status, metadata): the
    # operator must report it, not crash or create anything.
    crd = yaml.safe_load((ROOT / "crds" / "vlmservice.yaml").read_text())
    cluster.kube.register_crd(without_cel(crd))
    try:
        stored = api.post(VLMS, bad)
        assert stored.status_code == 201, stored.text
    finally:
        cluster.kube.register_crd(crd)
    # The full CRD is in force again: a new invalid object is rejected.
    again = api.post(
        VLMS, vlmservice("svc-bad-2", autoscaling={"minReplicas": 6, "maxReplicas": 2})
    )
    assert again.status_code == 422, again.text
    condition = wait_for(
        "InvalidSpec=True",
        lambda: (c := api.condition("svc-bad", "InvalidSpec")) and c["status"] == "True" and c,
    )
    assert "spec.autoscaling" in condition["message"]
    assert "minReplicas" in condition["message"]
    assert api.get(f"{DEPLOYMENTS}/svc-bad") is None
    wait_for("a Warning Event", lambda: api.events("svc-bad", "InvalidSpec"))

    api.patch(f"{VLMS}/svc-bad", {"spec": {"autoscaling": {"maxReplicas": 8}}})
    wait_for("the Deployment once the spec is fixed", lambda: api.replicas("svc-bad") == 6)
    wait_for(
        "InvalidSpec=False",
        lambda: (api.condition("svc-bad", "InvalidSpec") or {}).get("status") == "False",
    )


def test_scale_up_then_down_after_stabilization(cluster: Cluster) -> None:
    api = cluster.api
    with Exporter() as exporter, Feeder(exporter):
        exporter.set(running=4, waiting=8)
        for pod in ("svc-scale-a", "svc-scale-b", "svc-scale-c"):
            api.add_ready_pod("svc-scale", pod)
        cluster.scrape("svc-scale", "svc-scale-a", exporter)
        cluster.wait_for_signal("svc-scale", 4)
        assert api.post(VLMS, vlmservice("svc-scale")).status_code == 201

        # 4 running + 8 waiting at 4 per pod: 3 pods.
        wait_for("scale-up to 3", lambda: api.replicas("svc-scale") == 3)
        api.set_ready("svc-scale", 3)
        up = wait_for("a ScaledUp Event", lambda: api.events("svc-scale", "ScaledUp"))
        assert "1 → 3" in up[0]["message"]
        assert "waiting=8" in up[0]["message"]
        status = wait_for(
            "status after the scale-up",
            lambda: (s := api.status("svc-scale")).get("readyReplicas") == 3 and s,
        )
        assert status["desiredReplicas"] == 3
        assert status["lastScaleTime"]
        assert status["signals"]["inFlight"] == 4
        assert status["signals"]["inFlightPerPod"] == pytest.approx(4 / 3, abs=1e-3)
        assert api.condition("svc-scale", "MetricsAvailable")["status"] == "True"  # type: ignore[index]

        # A spec change rolls the pod template but keeps the replicas the autoscaler chose.
        api.patch(f"{VLMS}/svc-scale", {"spec": {"concurrency": {"queueSize": 9}}})
        wait_for(
            "the template rolled", lambda: gate_env(api, "svc-scale", "VLM_GATE_QUEUE_SIZE") == "9"
        )
        assert api.replicas("svc-scale") == 3

        # Load falls to one request: after the 6 s stabilization, down to 1 pod, idle pods first.
        exporter.set(running=1, waiting=0)
        fell_at = time.monotonic()
        wait_for("scale-down starts", lambda: (api.replicas("svc-scale") or 3) < 3, timeout=40)
        assert time.monotonic() - fell_at >= 6.0
        wait_for("scale-down to 1", lambda: api.replicas("svc-scale") == 1, timeout=30)
        costs = {
            pod: (api.get(f"{PODS}/{pod}") or {})["metadata"]
            .get("annotations", {})
            .get(DELETION_COST)
            for pod in ("svc-scale-a", "svc-scale-b", "svc-scale-c")
        }
        assert costs == {"svc-scale-a": "100", "svc-scale-b": "0", "svc-scale-c": "0"}
        down = wait_for(
            "ScaledDown Events for both steps",
            lambda: len(d := api.events("svc-scale", "ScaledDown")) >= 2 and d,
        )
        steps = sorted(e["message"].split(":")[0] for e in down)
        assert steps == ["2 → 1", "3 → 2"]  # at most half the pods per step


def test_requests_refused_while_queues_are_full_count_as_demand(cluster: Cluster) -> None:
    # 4 running and 8 waiting on one pod, as above, but every other answer is the
    # gate's 429: Prometheus's error rate (5xx + 429 over all) is 0.5, and the
    # policy adds the demand the full queue refused, 4 × 0.5 / 0.5 = 4 requests.
    api = cluster.api
    with Exporter() as exporter, Feeder(exporter, codes={200: 1, 429: 1}):
        exporter.set(running=4, waiting=8)
        api.add_ready_pod("svc-refused", "svc-refused-a")
        cluster.scrape("svc-refused", "svc-refused-a", exporter)
        cluster.wait_for_signal("svc-refused", 4)
        cluster.prometheus.wait_for_series(
            'sum(rate(vlm_requests_total{vlmservice="svc-refused",code="429"}[5s]))',
            timeout=30,
            where=lambda values: any(v > 0 for v in values.values()),
        )
        assert api.post(VLMS, vlmservice("svc-refused")).status_code == 201

        # 16 requests at 4 per pod: 4 pods, where what is seen alone asks for 3.
        wait_for("scale-up to 4", lambda: api.replicas("svc-refused") == 4)
        up = wait_for("a ScaledUp Event", lambda: api.events("svc-refused", "ScaledUp"))
        assert "1 → 4" in up[0]["message"]
        assert "refused=" in up[0]["message"]


def test_missing_signals_hold_replicas(cluster: Cluster, tmp_path: Path) -> None:
    api = cluster.api
    # No exporter publishes anything for this service: Prometheus answers, but empty.
    assert api.post(VLMS, vlmservice("svc-blind", autoscaling={"scaleDown": {
        "stabilizationWindowSeconds": 0}})).status_code == 201  # fmt: skip
    wait_for("the Deployment", lambda: api.replicas("svc-blind") == 1)
    api.patch(f"{DEPLOYMENTS}/svc-blind", {"spec": {"replicas": 3}})
    api.set_ready("svc-blind", 3)

    def metrics_reason() -> str | None:
        condition = api.condition("svc-blind", "MetricsAvailable") or {}
        return condition.get("reason") if condition.get("status") == "False" else None

    def held(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            assert api.replicas("svc-blind") == 3
            time.sleep(0.2)

    assert wait_for("MetricsAvailable=False", metrics_reason) == "NoSignal"
    held(3.0)

    # Prometheus answers with an error (a query it cannot parse).
    api.patch(f"{VLMS}/svc-blind", {"spec": {"metrics": {"queries": {"running": "sum("}}}})
    wait_for("a query error", lambda: metrics_reason() == "PrometheusUnavailable")
    held(3.0)

    # Prometheus stopped.
    with PrometheusServer(tmp_path / "doomed") as doomed:
        url = doomed.url
    api.patch(
        f"{VLMS}/svc-blind",
        {"spec": {"metrics": {"queries": {"running": None}, "prometheusUrl": url}}},
    )
    wait_for(
        "connection refused",
        lambda: (
            "cannot reach"
            in (api.condition("svc-blind", "MetricsAvailable") or {}).get("message", "")
        ),
    )
    held(3.0)
    assert len(api.events("svc-blind", "SignalsLost")) == 1  # on the transition only


def test_restart_mid_scale_down_does_not_flap(cluster: Cluster) -> None:
    api = cluster.api
    with Exporter() as exporter, Feeder(exporter):
        exporter.set(running=4, waiting=8)
        cluster.scrape("svc-restart", "svc-restart-a", exporter)
        cluster.wait_for_signal("svc-restart", 4)
        spec = vlmservice("svc-restart", autoscaling={"scaleDown": {
            "stabilizationWindowSeconds": 10}})  # fmt: skip
        assert api.post(VLMS, spec).status_code == 201
        wait_for("scale-up to 3", lambda: api.replicas("svc-restart") == 3)
        api.set_ready("svc-restart", 3)

        exporter.set(running=1, waiting=0)
        fell_at = time.monotonic()
        # Let the operator see the fall (and record it in status), then restart it.
        wait_for(
            "the fall in status",
            lambda: api.status("svc-restart").get("signals", {}).get("waiting") == 0,
        )
        # Restart late in the 10 s window: a restarted operator that forgot the window would
        # need a whole new one (no scale-down before ~19 s); one that kept it in status goes
        # down on the original schedule.
        time.sleep(max(0.0, 7.0 - (time.monotonic() - fell_at)))
        cluster.operator.stop()
        cluster.operator.start()

        history: list[tuple[float, int]] = []

        def down_to_one() -> bool:
            replicas = api.replicas("svc-restart") or 0
            history.append((time.monotonic() - fell_at, replicas))
            return replicas == 1

        wait_for("scale-down to 1 after the restart", down_to_one, timeout=45)
        first_drop = min(t for t, r in history if r < 3)
        assert first_drop >= 10.0, history  # the stabilization window was respected...
        assert first_drop <= 16.0, history  # ...and not restarted from scratch
        assert max(r for _, r in history) == 3, history  # never back up


def test_autoscaling_off_follows_spec_and_scale_subresource(cluster: Cluster) -> None:
    api = cluster.api
    spec = vlmservice("svc-manual", replicas=2, autoscaling={"enabled": False})
    assert api.post(VLMS, spec).status_code == 201
    wait_for("spec.replicas honoured", lambda: api.replicas("svc-manual") == 2)
    response = api.http.patch(
        f"{VLMS}/svc-manual/scale",
        json={"spec": {"replicas": 4}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert response.status_code == 200, response.text
    wait_for("the scale subresource honoured", lambda: api.replicas("svc-manual") == 4)
    # A spec change rolls the pod template and keeps the replicas.
    api.patch(f"{VLMS}/svc-manual", {"spec": {"concurrency": {"maxInFlight": 2}}})
    wait_for(
        "the template rolled",
        lambda: gate_env(api, "svc-manual", "VLM_GATE_MAX_IN_FLIGHT") == "2",
    )
    assert api.replicas("svc-manual") == 4


def operator_metrics_text(cluster: Cluster) -> str:
    """The operator's /metrics ("" until it has opened its metrics port)."""
    url = f"http://127.0.0.1:{cluster.operator.metrics_port}/metrics"
    try:
        return httpx.get(url, timeout=5).text
    except httpx.ConnectError:
        return ""


def test_operator_metrics(cluster: Cluster) -> None:
    """The operator's own /metrics: services, decisions, cycles, queries."""
    api = cluster.api
    assert api.post(VLMS, vlmservice("svc-metrics")).status_code == 201

    def sample(text: str, name: str) -> float:
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and not line.startswith("#")
        )

    def metrics() -> str:
        return operator_metrics_text(cluster)

    def scraped() -> str | None:
        text = metrics()
        return text if sample(text, "vlm_operator_scaling_decisions_total") > 0 else None

    text = wait_for("decisions counted", scraped)
    assert sample(text, "vlm_operator_services") >= 1
    assert sample(text, "vlm_operator_cycle_duration_seconds_count") > 0
    assert sample(text, "vlm_operator_prometheus_query_duration_seconds_count") > 0
    # Per service, labelled as its gates' series are.
    mine = f'{{namespace="{NS}",vlmservice="svc-metrics"}}'
    text = wait_for(
        "the service's series",
        lambda: (t := metrics()) and f"vlm_operator_max_replicas{mine}" in t and t,
    )
    assert sample(text, f"vlm_operator_max_replicas{mine}") == 5
    assert sample(text, f"vlm_operator_p95_target_seconds{mine}") == 12
    assert sample(text, f"vlm_operator_desired_replicas{mine}") == 1  # minReplicas, no load
    api.delete(f"{VLMS}/svc-metrics")  # its loop ends: its series go with it
    wait_for(
        "the service's series dropped",
        lambda: f"vlm_operator_max_replicas{mine}" not in metrics(),
    )


def test_one_unscraped_pod_blocks_scale_down_not_the_service(cluster: Cluster) -> None:
    """A pod whose scrape fails drops out of the sums; that must not read as less load."""
    api = cluster.api
    with Exporter() as busy, Exporter() as flaky, Feeder(busy), Feeder(flaky):
        busy.set(running=4, waiting=0)
        flaky.set(running=4, waiting=0)
        cluster.scrape("svc-partial", "svc-partial-a", busy)
        cluster.scrape("svc-partial", "svc-partial-b", flaky)
        cluster.wait_for_signal("svc-partial", 8)
        spec = vlmservice("svc-partial", autoscaling={"scaleDown": {
            "stabilizationWindowSeconds": 2}})  # fmt: skip
        assert api.post(VLMS, spec).status_code == 201
        wait_for("scale-up to 2", lambda: api.replicas("svc-partial") == 2)
        api.set_ready("svc-partial", 2)

        flaky.stop()  # its scrapes fail from now on: its requests vanish from the sums
        condition = wait_for(
            "PartialScrape",
            lambda: (
                (c := api.condition("svc-partial", "MetricsAvailable") or {}).get("reason")
                == "PartialScrape"
                and c
            ),
        )
        assert condition["status"] == "True"
        busy.set(running=1)  # what is seen now fits in one pod
        wait_for(
            "the drop seen",
            lambda: api.status("svc-partial").get("signals", {}).get("inFlight") == 1,
        )
        end = time.monotonic() + 5.0  # well past the 2 s stabilization
        while time.monotonic() < end:
            assert api.replicas("svc-partial") == 2
            time.sleep(0.2)

        def held_for_the_unscraped_pod() -> bool:
            assert api.replicas("svc-partial") == 2  # never down, while the reason is awaited
            return "not scraped" in api.status("svc-partial")["lastDecision"]["reason"]

        # A loaded machine may run the cycle that says so a little after the 5 s.
        wait_for("the hold explained", held_for_the_unscraped_pod, timeout=15)

        # A scale-up still goes through on what is seen.
        busy.set(running=4, waiting=8)
        wait_for("scale-up on the pods still seen", lambda: api.replicas("svc-partial") == 3)


def test_pods_pending_too_long_show_as_scaling_limited(cluster: Cluster) -> None:
    api = cluster.api
    spec = vlmservice("svc-stuck", autoscaling={"pendingTimeoutSeconds": 5})
    assert api.post(VLMS, spec).status_code == 201
    wait_for("the Deployment", lambda: api.replicas("svc-stuck") == 1)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "svc-stuck-x", "labels": {"vlm-operator.io/service": "svc-stuck"}},
        "spec": {"containers": [{"name": "gate", "image": "x"}]},
    }
    api.post(PODS, pod).raise_for_status()
    # No node fits it, and has not for ten minutes.
    unschedulable = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "lastTransitionTime": "2020-01-01T00:00:00Z",
    }
    api.patch(
        f"{PODS}/svc-stuck-x/status",
        {"status": {"phase": "Pending", "conditions": [unschedulable]}},
    )
    condition = wait_for(
        "ScalingLimited=True",
        lambda: (
            (c := api.condition("svc-stuck", "ScalingLimited") or {}).get("status") == "True" and c
        ),
    )
    assert condition["reason"] == "PodsPending"
    assert "1 pod(s) Pending longer than 5s" in condition["message"]
    wait_for("a Warning Event", lambda: api.events("svc-stuck", "ScalingLimited"))


CRD = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}"


def test_an_outdated_crd_is_named_field_by_field(cluster: Cluster) -> None:
    """An operator upgraded past its CRD (``helm upgrade`` leaves CRDs alone) says so."""
    api = cluster.api

    def drift(direction: str) -> float | None:
        prefix = f'vlm_operator_crd_drift_fields{{direction="{direction}"}} '
        for line in operator_metrics_text(cluster).splitlines():
            if line.startswith(prefix):
                return float(line.removeprefix(prefix))
        return None

    # As the API server stores and gives it back: nothing differs (its numbers, say).
    wait_for(
        "the CRD seen matching",
        lambda: drift("missing") == 0 and drift("unknown") == 0 and drift("changed") == 0,
    )
    current = api.get(CRD)
    assert current is not None
    older = copy.deepcopy(current)
    concurrency = older["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["concurrency"]
    del concurrency["properties"]["responseTimeoutSeconds"]
    concurrency["x-kubernetes-validations"] = [
        rule
        for rule in concurrency["x-kubernetes-validations"]
        if "responseTimeoutSeconds" not in rule["rule"]
    ]
    api.http.put(CRD, json=older).raise_for_status()
    try:
        wait_for("the missing field counted", lambda: drift("missing") == 1, timeout=10)
        assert drift("unknown") == 0
        assert drift("changed") == 1  # the rules of spec.concurrency
        wait_for(
            "the warning logged",
            lambda: "it lacks spec.concurrency.responseTimeoutSeconds" in cluster.operator.tail(),
            timeout=10,
        )
    finally:
        latest = api.get(CRD)
        assert latest is not None
        current["metadata"]["resourceVersion"] = latest["metadata"]["resourceVersion"]
        api.http.put(CRD, json=current).raise_for_status()
    wait_for("the CRD matching again", lambda: drift("missing") == 0, timeout=10)
