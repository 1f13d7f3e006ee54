"""The chart's RBAC grants exactly what the operator uses: nothing missing, nothing extra.

The real operator (``vlm-operator run``, a subprocess) runs a short life
against the emulated Kubernetes API, which records every request by RBAC
verb: a VLMService is created (children with a PodMonitor and a
NetworkPolicy), scaled up by a queue building in its gate, scaled down when
the load is gone (deletion costs on its pods), and deleted; then the operator
is stopped. The recorded (verb, group, resource[/subresource]) set must equal
what the chart's rules grant, both ways, in both of the chart's modes: a Role
per watched namespace (plus the cluster-scoped reads in a ClusterRole), and one
ClusterRole when watching all namespaces.

The recording includes the authorization checks of the
OwnerReferencesPermissionEnforcement admission plugin (on by default on
OpenShift): the children carry a blocking controller reference to their
VLMService, and a user stripping those references by hand has the operator's
next apply restore them, which that plugin allows only to who may delete the
child.

The test plays the kubelet and the Deployment controller, and the user's hand
edits, by writing straight into the emulated API's store, not over HTTP, so
that every recorded request is one the operator made.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from vlm_operator.models import GROUP, PLURAL, SERVICE_LABEL, VERSION

from e2e.cluster import chart
from e2e.cluster.polling import Periodic, terminate, wait_for
from e2e.exporters import Exporter
from e2e.kubeapi import PODMONITOR_CRD, RecordedRequest, ThreadedKubeAPI, run_in_thread
from e2e.kubeapi.store import Store
from e2e.prometheus import PrometheusServer

pytestmark = pytest.mark.slow

Permission = tuple[str, str, str]  # (verb, apiGroup, resource[/subresource])

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
SERVICE = "demo"
#: (group, version, plural) of every child of a VLMService with a PodMonitor and a NetworkPolicy.
CHILDREN = (
    ("apps", "v1", "deployments"),
    ("", "v1", "services"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("monitoring.coreos.com", "v1", "podmonitors"),
    ("networking.k8s.io", "v1", "networkpolicies"),
)


# ------------------------------------------------------------ the stand-ins


def _kinds(store: Store) -> dict[str, Any]:
    return {
        "namespaces": store.kind("", "v1", "namespaces"),
        "pods": store.kind("", "v1", "pods"),
        "deployments": store.kind("apps", "v1", "deployments"),
        "vlmservices": store.kind(GROUP, VERSION, PLURAL),
    }


class Kubelet(Periodic):
    """Keeps ``spec.replicas`` Ready pods per Deployment of one namespace, in the store.

    Scale-down removes the cheapest pods first (deletion cost), as the
    ReplicaSet controller does. It steps every 0.1 s while in ``with``.
    """

    def __init__(self, api: ThreadedKubeAPI, namespace: str) -> None:
        super().__init__(lambda: api.call(self._step), interval=0.1)
        self.api = api
        self.namespace = namespace
        self._serial = 0

    def _step(self) -> None:
        store = self.api.server.store
        kinds = _kinds(store)
        for deployment in store.list_objects(kinds["deployments"], self.namespace, bool):
            name = deployment["metadata"]["name"]
            want = int(deployment["spec"].get("replicas", 1))

            def mine(obj: dict[str, Any], service: str = name) -> bool:
                labels = obj["metadata"].get("labels") or {}
                return bool(labels.get(SERVICE_LABEL) == service)

            pods = store.list_objects(kinds["pods"], self.namespace, mine)
            if len(pods) > want:
                pods.sort(
                    key=lambda p: int(
                        (p["metadata"].get("annotations") or {}).get(DELETION_COST, "0")
                    )
                )
                for pod in pods[: len(pods) - want]:
                    store.delete(kinds["pods"], self.namespace, pod["metadata"]["name"])
            for _ in range(want - len(pods)):
                self._serial += 1
                self._create_ready_pod(store, deployment, f"{name}-{self._serial}")
            # Every pod is Ready at once: start-up delays are not what this test is about.
            status = {"replicas": want, "readyReplicas": want, "availableReplicas": want}
            if {k: deployment.get("status", {}).get(k) for k in status} != status:
                store.update(
                    kinds["deployments"],
                    self.namespace,
                    name,
                    {**deployment, "status": {**deployment.get("status", {}), **status}},
                    subresource="status",
                )

    def _create_ready_pod(self, store: Store, deployment: dict[str, Any], name: str) -> None:
        kind = _kinds(store)["pods"]
        template = deployment["spec"]["template"]
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": dict(template["metadata"]["labels"])},
            "spec": {**template["spec"], "nodeName": "node-1"},
        }
        created, _ = store.create(kind, self.namespace, body)
        conditions = [
            {"type": t, "status": "True"}
            for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ]
        created["status"] = {"phase": "Running", "podIP": "127.0.0.1", "conditions": conditions}
        store.update(kind, self.namespace, name, created, subresource="status")


def _traffic(exporter: Exporter) -> Periodic:
    """Requests finishing on a gate exporter (so P95 and rates exist) while in ``with``."""
    return Periodic(lambda: exporter.set(durations=[3.0], codes={200: 1}), interval=0.2)


# ---------------------------------------------------------------- the scenario


@dataclass
class Scenario:
    mode: str
    namespace: str
    values: dict[str, Any]
    recorded: list[RecordedRequest]
    operator_log: str


def _vlmservice(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VLMService",
        "metadata": {"name": SERVICE, "namespace": namespace},
        "spec": {
            "model": {"id": "Qwen/Qwen3-VL-2B-Instruct", "runtime": "fake"},
            "autoscaling": {
                "minReplicas": 1,
                "maxReplicas": 4,
                "syncPeriodSeconds": 1,
                "scaleDown": {"stabilizationWindowSeconds": 2},
            },
            "metrics": {"windowSeconds": 5},
            "monitoring": {"podMonitor": True, "interval": "1s"},  # 5 scrapes in the window
            "networkPolicy": {"enabled": True},
        },
    }


def _replicas(api: ThreadedKubeAPI, namespace: str) -> int | None:
    def read() -> int | None:
        store = api.server.store
        found = store.list_objects(
            _kinds(store)["deployments"], namespace, lambda o: o["metadata"]["name"] == SERVICE
        )
        return int(found[0]["spec"].get("replicas", 1)) if found else None

    return api.call(read)


def _pods_with_cost(api: ThreadedKubeAPI, namespace: str) -> int:
    def read() -> int:
        store = api.server.store
        pods = store.list_objects(_kinds(store)["pods"], namespace, bool)
        return sum(1 for p in pods if DELETION_COST in (p["metadata"].get("annotations") or {}))

    return api.call(read)


def _status(api: ThreadedKubeAPI, namespace: str) -> dict[str, Any]:
    def read() -> dict[str, Any]:
        store = api.server.store
        found = store.list_objects(_kinds(store)["vlmservices"], namespace, bool)
        return dict(found[0].get("status") or {}) if found else {}

    return api.call(read)


def _unowned_children(api: ThreadedKubeAPI, namespace: str) -> list[str]:
    """The children without a controller reference to the VLMService."""

    def read() -> list[str]:
        store = api.server.store
        owner = store.get(_kinds(store)["vlmservices"], namespace, SERVICE)["metadata"]["uid"]
        unowned = []
        for group, version, plural in CHILDREN:
            child = store.get(store.kind(group, version, plural), namespace, SERVICE)
            refs = child["metadata"].get("ownerReferences") or []
            if not any(ref["uid"] == owner and ref.get("controller") for ref in refs):
                unowned.append(plural)
        return unowned

    return api.call(read)


def _vlmservice_exists(api: ThreadedKubeAPI, namespace: str) -> bool:
    def read() -> bool:
        store = api.server.store
        return bool(store.list_objects(_kinds(store)["vlmservices"], namespace, bool))

    return api.call(read)


def _run_scenario(
    mode: str, namespace: str, prometheus: PrometheusServer, gate: Exporter, workdir: Path
) -> Scenario:
    # The namespaced install runs with the chart's defaults; the other watches
    # PodMonitors too, which takes list and watch on them.
    scope = ["--namespace", namespace] if mode == "namespaced" else ["--all-namespaces"]
    values: dict[str, Any] = (
        {"watchNamespaces": [namespace]} if mode == "namespaced" else {"watchPodMonitors": True}
    )
    watch = [] if mode == "namespaced" else ["--watch-podmonitors"]
    log_path = workdir / f"operator-{mode}.log"
    with run_in_thread(crds=[chart.REPO_ROOT / "crds", PODMONITOR_CRD]) as api:

        def create_namespace() -> None:
            store = api.server.store
            store.create(_kinds(store)["namespaces"], None, {"metadata": {"name": namespace}})

        api.call(create_namespace)
        argv = [
            sys.executable,
            "-m",
            "vlm_operator",
            "run",
            *scope,
            "--kubeconfig",
            str(api.kubeconfig),
            "--prometheus-url",
            prometheus.url,
            "--prometheus-timeout",
            "2",
            "--metrics-port",
            "0",
            "--metrics-address",
            "127.0.0.1",
            *watch,
        ]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        try:
            with Kubelet(api, namespace):
                _live(api, namespace, gate)
        finally:
            terminate(process, grace_s=20)
        recorded = api.requests
    return Scenario(mode, namespace, values, recorded, log_path.read_text(errors="replace"))


def _live(api: ThreadedKubeAPI, namespace: str, gate: Exporter) -> None:
    """Create, scale up, scale down (with deletion costs), change the spec, delete."""

    def create() -> None:
        store = api.server.store
        store.create(_kinds(store)["vlmservices"], namespace, _vlmservice(namespace))

    api.call(create)
    wait_for("the Deployment", lambda: _replicas(api, namespace), 40)
    # A queue builds in the gate: 4 running, 8 waiting → 3 pods at 4 in flight each.
    gate.set(running=4, waiting=8)
    with _traffic(gate):
        wait_for(
            "a scale-up",
            lambda: (_replicas(api, namespace) or 0) >= 2,
            40,
            describe=lambda: _status(api, namespace),
        )
        gate.set(running=0, waiting=0)
    # No traffic: once the window has no finished request, the service is idle.
    wait_for(
        "a scale-down to 1",
        lambda: _replicas(api, namespace) == 1,
        40,
        describe=lambda: _status(api, namespace),
    )
    assert _pods_with_cost(api, namespace) >= 1

    def update_spec(change: dict[str, Any]) -> None:
        store = api.server.store
        kind = _kinds(store)["vlmservices"]
        current = store.get(kind, namespace, SERVICE)
        store.update(kind, namespace, SERVICE, {**current, "spec": {**current["spec"], **change}})

    def edit_by_hand() -> None:
        # Every child's owner references stripped, and a rendered label
        # changed on each child the spec change below leaves as it was: the
        # re-apply must patch both back (an unchanged child is not written).
        store = api.server.store
        for group, version, plural in CHILDREN:
            kind = store.kind(group, version, plural)
            child = store.get(kind, namespace, SERVICE)
            metadata = {k: v for k, v in child["metadata"].items() if k != "ownerReferences"}
            if plural != "deployments":
                metadata["labels"] = {**metadata["labels"], "app.kubernetes.io/part-of": "by-hand"}
            store.update(kind, namespace, SERVICE, {**child, "metadata": metadata})

    # A spec change patches every child in place (reverting the hand edits)...
    api.call(edit_by_hand)
    api.call(lambda: update_spec({"concurrency": {"queueSize": 12}}))
    wait_for(
        "the spec change applied",
        lambda: _status(api, namespace).get("observedGeneration") == 2,
        40,
        describe=lambda: _status(api, namespace),
    )
    assert _unowned_children(api, namespace) == []
    # ...and deletes the optional children the spec no longer asks for.
    api.call(
        lambda: update_spec(
            {"monitoring": {"podMonitor": False}, "networkPolicy": {"enabled": False}}
        )
    )
    wait_for(
        "the PodMonitor and NetworkPolicy gone",
        lambda: _status(api, namespace).get("observedGeneration") == 3,
        40,
        describe=lambda: _status(api, namespace),
    )

    def delete() -> None:
        store = api.server.store
        store.delete(_kinds(store)["vlmservices"], namespace, SERVICE)

    api.call(delete)
    wait_for("the VLMService gone", lambda: not _vlmservice_exists(api, namespace), 40)


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Scenario]]:
    workdir = tmp_path_factory.mktemp("rbac")
    namespaces = {"namespaced": "team-a", "all-namespaces": "team-b"}
    gates = {mode: Exporter(max_in_flight=4, queue_capacity=16).start() for mode in namespaces}
    try:
        with PrometheusServer(workdir / "prometheus") as prometheus:
            for gate in gates.values():
                # The requests counter exists from the start: zero arrivals read as idle.
                gate.set(running=0, waiting=0, codes={200: 1})
            prometheus.set_targets(
                [
                    (
                        gates[mode].host_port,
                        {"namespace": ns, "vlmservice": SERVICE, "pod": f"{SERVICE}-gate"},
                    )
                    for mode, ns in namespaces.items()
                ]
            )
            prometheus.wait_for_series("vlm_gate_max_in_flight", count=len(namespaces))
            # Both lives at once: each has its own emulated API and operator process.
            with ThreadPoolExecutor(max_workers=len(namespaces)) as pool:
                futures = {
                    mode: pool.submit(_run_scenario, mode, ns, prometheus, gates[mode], workdir)
                    for mode, ns in namespaces.items()
                }
                yield {mode: future.result() for mode, future in futures.items()}
    finally:
        for gate in gates.values():
            gate.stop()


# ---------------------------------------------------------------- comparison


def _permission(request: RecordedRequest) -> Permission:
    resource = request.resource + (f"/{request.subresource}" if request.subresource else "")
    return (request.verb, request.group, resource)


def _granted(rules: list[dict[str, Any]]) -> set[Permission]:
    return {
        (verb, group, resource)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _rules(
    objects: list[dict[str, Any]], kind: str, namespace: str | None = None
) -> set[Permission]:
    rules = [
        rule
        for obj in objects
        if obj["kind"] == kind
        and obj["metadata"].get("namespace") == namespace
        # The roles the cluster's admin, edit and view aggregate are the users', not ours.
        and not any(
            key.startswith("rbac.authorization.k8s.io/aggregate-to-")
            for key in obj["metadata"].get("labels", {})
        )
        for rule in obj["rules"]
    ]
    return _granted(rules)


def _compare(used: set[Permission], granted: set[Permission], where: str, log: str) -> None:
    missing = sorted(used - granted)
    unused = sorted(granted - used)
    assert (missing, unused) == ([], []), (
        f"{where}: the operator used but the chart does not grant: {missing}; "
        f"the chart grants but the operator never used: {unused}\n"
        f"operator log tail:\n{log[-3000:]}"
    )


def test_namespaced_install_grants_exactly_what_the_operator_uses(
    scenarios: dict[str, Scenario],
) -> None:
    scenario = scenarios["namespaced"]
    objects = chart.render(scenario.values)
    in_namespace = {_permission(r) for r in scenario.recorded if r.namespace is not None}
    cluster_wide = {_permission(r) for r in scenario.recorded if r.namespace is None}
    # Namespaced requests stay in the watched namespace.
    assert {r.namespace for r in scenario.recorded} <= {scenario.namespace, None}
    _compare(
        in_namespace,
        _rules(objects, "Role", scenario.namespace),
        f"Role in {scenario.namespace}",
        scenario.operator_log,
    )
    _compare(cluster_wide, _rules(objects, "ClusterRole"), "ClusterRole", scenario.operator_log)


def test_all_namespaces_install_grants_exactly_what_the_operator_uses(
    scenarios: dict[str, Scenario],
) -> None:
    scenario = scenarios["all-namespaces"]
    objects = chart.render(scenario.values)
    used = {_permission(r) for r in scenario.recorded}
    _compare(used, _rules(objects, "ClusterRole"), "ClusterRole", scenario.operator_log)


def test_scenario_exercised_every_child_kind(scenarios: dict[str, Scenario]) -> None:
    # The comparison means something only if the life touched every kind it should.
    for scenario in scenarios.values():
        resources = {r.resource for r in scenario.recorded if r.verb == "create"}
        assert {
            "deployments",
            "services",
            "poddisruptionbudgets",
            "podmonitors",
            "networkpolicies",
            "events",
        } <= resources, scenario.mode
        patched = {(r.resource, r.subresource) for r in scenario.recorded if r.verb == "patch"}
        assert {
            ("pods", ""),
            ("vlmservices", "status"),
            ("deployments", ""),
            ("services", ""),
            ("poddisruptionbudgets", ""),
            ("podmonitors", ""),
            ("networkpolicies", ""),
        } <= patched, scenario.mode
        deleted = {r.resource for r in scenario.recorded if r.verb == "delete" and not r.admission}
        assert {"podmonitors", "networkpolicies"} <= deleted, scenario.mode
        # Admission's checks: blocking references set on each create, and restored by a patch.
        checked = {(r.verb, r.resource, r.subresource) for r in scenario.recorded if r.admission}
        assert checked == {("update", PLURAL, "finalizers")} | {
            ("delete", plural, "") for _, _, plural in CHILDREN
        }, scenario.mode
