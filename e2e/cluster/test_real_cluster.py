"""End to end on a real Kubernetes cluster: the chart, a real Prometheus, the operator, load.

Runs only when a cluster is configured, so that a plain ``pytest`` never
touches whatever cluster a shell happens to point at:

* ``VLM_E2E_KUBECONFIG=/path/to/kubeconfig``, or ``VLM_E2E=1`` with ``KUBECONFIG``;
* ``e2e/cluster/run.sh`` does it all: creates a kind or k3d cluster when a
  Docker engine answers, builds and loads the operator image, runs this suite
  and deletes the cluster.

The image under test is ``VLM_E2E_IMAGE`` (default: the release image of this
version); on an existing cluster it must be pullable by the nodes.

What it does, in two namespaces of its own (``vlm-e2e-system`` for Prometheus
and the operator, ``vlm-e2e`` for the workload), all deleted afterwards:

1. deploys Prometheus (upstream image) configured with the example job of
   ``manifests/prometheus/prometheus.yml`` verbatim (Kubernetes pod discovery,
   5 s scrapes), so the example is exercised on a real API server;
2. installs the chart (``helm install`` when the helm command exists,
   otherwise the chart rendered by the Helm library and ``kubectl apply``),
   watching the workload namespace only;
3. applies ``manifests/fake-demo.yaml`` (the fake runtime, 10x time scale);
4. drives 16 closed-loop users with :mod:`vlm_operator.loadgen` and asserts
   that it scaled up and that no gate ever held more than 4 requests in flight
   (Prometheus' max over the run); then one user while it scales back down to
   one pod, asserting that not one request failed.

The load reaches the Service through the API server's service proxy (``kubectl
proxy``), which spreads requests over the Service's ready endpoints; ``kubectl
port-forward`` to a Service pins every connection to one pod, so it would load
one gate only and break when that pod is scaled away. Prometheus is reached
through ``kubectl port-forward``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from vlm_operator.loadgen import chat_payload, closed_loop, summarize
from vlm_operator.render import DEFAULT_OPERATOR_IMAGE

from e2e.cluster import chart
from e2e.cluster.polling import Periodic, terminate, wait_for


def _configured_kubeconfig() -> str | None:
    explicit = os.environ.get("VLM_E2E_KUBECONFIG")
    if explicit:
        return explicit
    if os.environ.get("VLM_E2E") == "1":
        return os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    return None


KUBECONFIG = _configured_kubeconfig()

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(
        KUBECONFIG is None,
        reason="no real cluster configured: set VLM_E2E_KUBECONFIG (or VLM_E2E=1 with "
        "KUBECONFIG), or run e2e/cluster/run.sh",
    ),
    pytest.mark.timeout(900),
]

SYSTEM_NS = "vlm-e2e-system"
WORKLOAD_NS = "vlm-e2e"
RELEASE = "vlm-e2e"
IMAGE = os.environ.get("VLM_E2E_IMAGE", DEFAULT_OPERATOR_IMAGE)
PULL_POLICY = os.environ.get("VLM_E2E_IMAGE_PULL_POLICY", "IfNotPresent")
PROMETHEUS_IMAGE = os.environ.get(
    "VLM_E2E_PROMETHEUS_IMAGE", "quay.io/prometheus/prometheus:v2.53.0"
)
DEMO = chart.REPO_ROOT / "manifests" / "fake-demo.yaml"
SCRAPE_EXAMPLE = chart.REPO_ROOT / "manifests" / "prometheus" / "prometheus.yml"
MAX_IN_FLIGHT = 4


class Kubectl:
    """kubectl with the suite's kubeconfig; every call bounded in time."""

    def __init__(self, kubeconfig: str) -> None:
        self.kubeconfig = kubeconfig

    def argv(self, *args: str) -> list[str]:
        return ["kubectl", "--kubeconfig", self.kubeconfig, *args]

    def __call__(self, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
        done = subprocess.run(
            self.argv(*args), input=stdin, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def apply(self, objects: list[dict[str, Any]]) -> None:
        self("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=_yaml(objects))

    def json(self, *args: str) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self(*args, "-o", "json"))
        return loaded

    @contextlib.contextmanager
    def background(self, *args: str, ready: str) -> Iterator[int]:
        """A long-running kubectl (proxy, port-forward); yields the local port it printed."""
        process = subprocess.Popen(
            self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            port = self._port(process, ready)
            yield port
        finally:
            terminate(process, grace_s=10)

    @staticmethod
    def _port(process: subprocess.Popen[str], ready: str) -> int:
        found: list[int] = []

        def read() -> None:
            # Keeps reading to the end, so that the pipe never fills and blocks kubectl.
            assert process.stdout is not None
            for line in process.stdout:
                match = re.search(ready, line)
                if match and not found:
                    found.append(int(match.group(1)))

        threading.Thread(target=read, daemon=True).start()
        wait_for(f"kubectl to print {ready!r}", lambda: found, 30)
        return found[0]


def _yaml(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False)


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def kubectl() -> Kubectl:
    assert KUBECONFIG is not None
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not on PATH")
    kube = Kubectl(KUBECONFIG)
    try:
        kube("get", "--raw", "/readyz", "--request-timeout=10s", timeout=20)
    except (AssertionError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"the cluster of {KUBECONFIG} is not reachable: {error}")
    for namespace in (SYSTEM_NS, WORKLOAD_NS):
        kube.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}])
    return kube


def _prometheus_objects() -> list[dict[str, Any]]:
    """Prometheus scraping the gates with the example job from manifests/prometheus/."""
    labels = {"app.kubernetes.io/name": "prometheus", "app.kubernetes.io/part-of": "vlm-e2e"}
    meta = {"name": "prometheus", "namespace": SYSTEM_NS, "labels": labels}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "vlm-e2e-prometheus", "labels": labels},
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "vlm-e2e-prometheus", "labels": labels},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "vlm-e2e-prometheus",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": SYSTEM_NS}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta,
            "data": {"prometheus.yml": SCRAPE_EXAMPLE.read_text()},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta,
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "prometheus",
                        "containers": [
                            {
                                "name": "prometheus",
                                "image": PROMETHEUS_IMAGE,
                                "args": [
                                    "--config.file=/etc/prometheus/prometheus.yml",
                                    "--storage.tsdb.path=/prometheus",
                                    "--storage.tsdb.retention.time=1h",
                                ],
                                "ports": [{"name": "web", "containerPort": 9090}],
                                "readinessProbe": {"httpGet": {"path": "/-/ready", "port": "web"}},
                                "volumeMounts": [
                                    {"name": "config", "mountPath": "/etc/prometheus"},
                                    {"name": "data", "mountPath": "/prometheus"},
                                ],
                            }
                        ],
                        "volumes": [
                            {"name": "config", "configMap": {"name": "prometheus"}},
                            {"name": "data", "emptyDir": {}},
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": {"selector": labels, "ports": [{"name": "web", "port": 9090}]},
        },
    ]


@pytest.fixture(scope="module")
def prometheus(kubectl: Kubectl) -> Iterator[str]:
    """Prometheus in the cluster; yields its in-cluster URL."""
    objects = _prometheus_objects()
    kubectl.apply(objects)
    try:
        kubectl("-n", SYSTEM_NS, "rollout", "status", "deployment/prometheus", "--timeout=300s",
                timeout=320)  # fmt: skip
        yield f"http://prometheus.{SYSTEM_NS}.svc:9090"
    finally:
        kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", stdin=_yaml(objects))


def _chart_values(prometheus_url: str) -> dict[str, Any]:
    repository, _, tag = IMAGE.rpartition(":")
    return {
        "image": {"repository": repository, "tag": tag, "pullPolicy": PULL_POLICY},
        "prometheus": {"url": prometheus_url},
        "watchNamespaces": [WORKLOAD_NS],
    }


@pytest.fixture(scope="module")
def operator(kubectl: Kubectl, prometheus: str) -> Iterator[None]:
    """The chart installed with helm when available, else rendered and applied."""
    values = _chart_values(prometheus)
    helm = shutil.which("helm")
    rendered: list[dict[str, Any]] = []
    if helm is not None:
        done = subprocess.run(
            [helm, "upgrade", "--install", RELEASE, str(chart.CHART_DIR), "--kubeconfig",
             kubectl.kubeconfig, "--namespace", SYSTEM_NS, "--values", "-", "--wait",
             "--timeout", "5m"],
            input=json.dumps(values), capture_output=True, text=True, timeout=330, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    else:
        rendered = chart.render(values, name=RELEASE, namespace=SYSTEM_NS, include_crds=True)
        kubectl.apply(rendered)
        kubectl("wait", "--for=condition=Established", "crd/vlmservices.vlm-operator.io",
                "--timeout=60s", timeout=80)  # fmt: skip
    try:
        kubectl("-n", SYSTEM_NS, "rollout", "status", f"deployment/{RELEASE}-vlm-operator",
                "--timeout=300s", timeout=320)  # fmt: skip
        yield
    finally:
        if helm is not None:
            subprocess.run(
                [helm, "uninstall", RELEASE, "--kubeconfig", kubectl.kubeconfig,
                 "--namespace", SYSTEM_NS, "--wait", "--timeout", "2m"],
                capture_output=True, timeout=150, check=False,
            )  # fmt: skip
        else:
            namespaced = [o for o in rendered if o["kind"] != "CustomResourceDefinition"]
            kubectl("delete", "--ignore-not-found", "-f", "-", stdin=_yaml(namespaced))


def _demo() -> dict[str, Any]:
    demo: dict[str, Any] = yaml.safe_load(DEMO.read_text())
    demo["metadata"]["namespace"] = WORKLOAD_NS
    return demo


def _replicas(kubectl: Kubectl, name: str) -> int:
    deployment = kubectl.json("-n", WORKLOAD_NS, "get", "deployment", name)
    return int(deployment["spec"].get("replicas", 0))


def _ready(kubectl: Kubectl, name: str) -> bool:
    obj = kubectl.json("-n", WORKLOAD_NS, "get", "vlmservice", name)
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


@pytest.fixture(scope="module")
def demo(kubectl: Kubectl, operator: None) -> Iterator[str]:
    service = _demo()
    name = str(service["metadata"]["name"])
    kubectl.apply([service])
    try:
        wait_for(f"{name} Ready", lambda: _ready(kubectl, name), 300, interval=2.0)
        yield name
    finally:
        kubectl("-n", WORKLOAD_NS, "delete", "vlmservice", name, "--ignore-not-found",
                "--timeout=120s", timeout=150)  # fmt: skip


class _ReplicaWatch(Periodic):
    """Samples the Deployment's replicas every two seconds while in ``with``."""

    def __init__(self, kubectl: Kubectl, name: str) -> None:
        super().__init__(self._sample, interval=2.0)
        self.kubectl, self.name = kubectl, name
        self.seen: list[int] = []

    def _sample(self) -> None:
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            self.seen.append(_replicas(self.kubectl, self.name))


# --------------------------------------------------------------------- the test


def test_scales_up_within_the_limit_and_down_without_failures(kubectl: Kubectl, demo: str) -> None:
    spec = _demo()["spec"]
    model = spec["model"]["id"]
    max_replicas = spec["autoscaling"]["maxReplicas"]
    payload = chat_payload(model)
    with (
        kubectl.background("proxy", "--port=0", ready=r"127\.0\.0\.1:(\d+)") as proxy_port,
        kubectl.background(
            "-n", SYSTEM_NS, "port-forward", "svc/prometheus", ":9090",
            ready=r"Forwarding from 127\.0\.0\.1:(\d+)",
        ) as prometheus_port,
    ):  # fmt: skip
        url = (
            f"http://127.0.0.1:{proxy_port}/api/v1/namespaces/{WORKLOAD_NS}/services/"
            f"{demo}:80/proxy/v1/chat/completions"
        )
        # 16 users on one pod of 4 in flight: a queue builds, the operator adds pods.
        with _ReplicaWatch(kubectl, demo) as watch:
            burst = asyncio.run(closed_loop(url, 16, duration_s=90, timeout_s=30, payload=payload))
        assert summarize(burst).ok > 0, summarize(burst)
        assert max(watch.seen, default=0) >= 3, f"replicas seen under load: {watch.seen}"
        assert max(watch.seen) <= max_replicas

        query = (
            "max(max_over_time(vlm_requests_running"
            f'{{namespace="{WORKLOAD_NS}",vlmservice="{demo}"}}[10m]))'
        )
        answer = httpx.get(
            f"http://127.0.0.1:{prometheus_port}/api/v1/query", params={"query": query}, timeout=10
        ).json()
        (sample,) = answer["data"]["result"]
        peak = float(sample["value"][1])
        assert 0 < peak <= MAX_IN_FLIGHT, f"peak in flight in one gate: {peak}"

        # One user while the fleet shrinks to one pod: draining pods fail nothing.
        async def trickle() -> list[Any]:
            stop = asyncio.Event()

            async def until_one_pod() -> None:
                deadline = time.monotonic() + 240
                while time.monotonic() < deadline:
                    if await asyncio.to_thread(_replicas, kubectl, demo) == 1:
                        break
                    await asyncio.sleep(2)
                stop.set()

            watcher = asyncio.create_task(until_one_pod())
            records = []
            while not stop.is_set():
                records += await closed_loop(url, 1, duration_s=5, timeout_s=30, payload=payload)
            await watcher
            return records

        calm = asyncio.run(trickle())
        assert _replicas(kubectl, demo) == 1
        summary = summarize(calm)
        assert summary.count > 0
        assert summary.errors == 0, f"requests failed during scale-down: {summary.statuses}"
