"""Child manifests: golden files, Kubernetes schemas, and the choices they encode."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from vlm_operator.commands import model_server
from vlm_operator.models import SERVICE_LABEL, VLMServiceSpec
from vlm_operator.render import (
    DEFAULT_OPERATOR_IMAGE,
    drain_seconds,
    initial_replicas,
    render_children,
    selector_labels,
    selector_string,
)
from vlm_operator.runtimes import LLAMACPP_IMAGE, model_container
from vlm_operator.validation import load_services
from vlm_operator.yamlio import dump_documents

from tests.crd_check import example_files

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden"
EXAMPLES = example_files(REPO / "manifests")
EXAMPLE_IDS = [p.stem for p in EXAMPLES]
KUBERNETES_VERSIONS = ["1.30", kubernetes_validate.latest_version()]
OPERATOR_IMAGE = "registry.example/vlm-operator:test"


def _example(path: Path) -> Any:
    (service,) = load_services(path.read_text())
    return service


def _spec(**fields: Any) -> VLMServiceSpec:
    data: dict[str, Any] = {"model": {"id": "Qwen/Qwen3-VL-2B-Instruct"}}
    data.update(fields)
    return VLMServiceSpec.model_validate(data)


def _by_kind(children: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {child["kind"]: child for child in children}


def _containers(children: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The containers that run together: the main ones and the sidecars (the model)."""
    pod = _by_kind(children)["Deployment"]["spec"]["template"]["spec"]
    sidecars = [c for c in pod.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    return {c["name"]: c for c in [*sidecars, *pod["containers"]]}


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


# ---------------------------------------------------------------------- golden


@pytest.mark.parametrize("example", EXAMPLES, ids=EXAMPLE_IDS)
def test_golden(example: Path, update_golden: bool) -> None:
    service = _example(example)
    rendered = dump_documents(render_children(service.name, service.namespace, service.spec))
    golden = GOLDEN / f"{example.stem}.yaml"
    if update_golden:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(rendered)
    assert golden.exists(), f"{golden} is missing; create it with `make golden`"
    assert rendered == golden.read_text(), (
        f"rendering of {example.name} changed; review the diff and run `make golden`"
    )


# --------------------------------------------------------- Kubernetes schemas


def _variants() -> list[tuple[str, str, str, VLMServiceSpec]]:
    cases = []
    for path in EXAMPLES:
        service = _example(path)
        cases.append((path.stem, service.name, service.namespace, service.spec))
        everything = service.spec.model_copy(
            update={
                "monitoring": service.spec.monitoring.model_copy(update={"pod_monitor": True}),
                "network_policy": service.spec.network_policy.model_copy(
                    update={"enabled": True, "allow_from_pods": {"app": "client"}}
                ),
            }
        )
        cases.append((f"{path.stem}+extras", service.name, service.namespace, everything))
    cases.append(
        (
            "download+placement",
            "with-download",
            "models",
            _spec(
                model={
                    "id": "m",
                    "runtime": "transformers",
                    "storage": {
                        "emptyDir": {"sizeLimit": "30Gi"},
                        "download": {
                            "image": "python:3.11",
                            "command": ["sh", "-c"],
                            "args": ["pip install huggingface_hub && hf download x"],
                            "env": [{"name": "HF_TOKEN", "value": "t"}],
                        },
                    },
                },
                placement={
                    "nodeSelector": {"node.kubernetes.io/instance-type": "c7i.4xlarge"},
                    "tolerations": [{"key": "cpu-inference", "operator": "Exists"}],
                    "priorityClassName": "inference",
                    "serviceAccountName": "models",
                    "imagePullSecrets": ["ghcr"],
                },
                networkPolicy={"enabled": True, "allowFromNamespaces": {"team": "a"}},
            ),
        )
    )
    cases.append(
        (
            "custom+hostPath",
            "custom",
            "default",
            _spec(
                model={
                    "id": "m",
                    "runtime": "custom",
                    "image": "vllm/vllm-openai:latest",
                    "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
                    "args": ["--port", "9000"],
                    "port": 9000,
                    "healthPath": "/v1/models",
                    "storage": {"hostPath": {"path": "/srv/models"}},
                },
                autoscaling={"enabled": False},
                replicas=3,
            ),
        )
    )
    return cases


VARIANTS = _variants()


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    ("name", "namespace", "spec"), [v[1:] for v in VARIANTS], ids=[v[0] for v in VARIANTS]
)
def test_every_child_passes_kubernetes_validation(
    name: str, namespace: str, spec: VLMServiceSpec, version: str
) -> None:
    checked = 0
    for child in render_children(name, namespace, spec, operator_image=OPERATOR_IMAGE):
        if child["apiVersion"].startswith("monitoring.coreos.com/"):
            # A prometheus-operator CRD kind: kubernetes-validate has no schema for it;
            # test_pod_monitor_follows_the_prometheus_operator_schema checks it.
            continue
        kubernetes_validate.validate(child, version, strict=True)
        checked += 1
    assert checked >= 3


# The parts of prometheus-operator's PodMonitor (monitoring.coreos.com/v1) that
# the renderer uses, strict about unknown fields.
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_POD_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {"labels": _STRING_MAP},
        },
        "spec": {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": _STRING_MAP},
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {
                                "type": "string",
                                "pattern": "^(0|(([0-9]+)(ms|s|m|h)))+$",
                            },
                            "relabelings": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "action": {"enum": ["replace", "Replace"]},
                                        "sourceLabels": {
                                            "type": "array",
                                            "items": {
                                                "type": "string",
                                                "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$",
                                            },
                                        },
                                        "targetLabel": {"type": "string"},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def test_pod_monitor_follows_the_prometheus_operator_schema() -> None:
    spec = _spec(monitoring={"podMonitor": True, "interval": "2s", "labels": {"release": "kps"}})
    monitor = _by_kind(render_children("svc", "ns", spec))["PodMonitor"]
    jsonschema.validate(monitor, _POD_MONITOR_SCHEMA)
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["selector"]["matchLabels"] == selector_labels("svc")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ns"]}
    assert monitor["spec"]["podTargetLabels"] == [SERVICE_LABEL]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == ("http", "/metrics", "2s")
    targets = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    # The signals contract: namespace, vlmservice and pod on every series.
    assert targets == {
        "vlmservice": ["__meta_kubernetes_pod_label_vlm_operator_io_service"],
        "namespace": ["__meta_kubernetes_namespace"],
        "pod": ["__meta_kubernetes_pod_name"],
    }
    gate = _containers(render_children("svc", "ns", spec))["gate"]
    assert gate["ports"][0]["name"] == endpoint["port"]


def test_optional_children_only_when_asked() -> None:
    kinds = [c["kind"] for c in render_children("svc", "ns", _spec())]
    assert kinds == ["Deployment", "Service", "PodDisruptionBudget"]
    spec = _spec(monitoring={"podMonitor": True}, networkPolicy={"enabled": True})
    kinds = [c["kind"] for c in render_children("svc", "ns", spec)]
    assert kinds == ["Deployment", "Service", "PodDisruptionBudget", "PodMonitor", "NetworkPolicy"]


# ---------------------------------------------------------------- behaviour


def test_names_labels_and_selectors() -> None:
    children = render_children("qwen", "inference", _spec())
    for child in children:
        assert child["metadata"]["name"] == "qwen"
        assert child["metadata"]["namespace"] == "inference"
        labels = child["metadata"]["labels"]
        assert labels[SERVICE_LABEL] == "qwen"
        for key in ("name", "instance", "component", "managed-by", "part-of"):
            assert f"app.kubernetes.io/{key}" in labels
    deployment = _by_kind(children)["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector == selector_labels("qwen")
    assert selector.items() <= pod_labels.items()
    assert _by_kind(children)["Service"]["spec"]["selector"] == selector
    assert _by_kind(children)["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector
    assert (
        selector_string("qwen") == "app.kubernetes.io/name=vlmservice,vlm-operator.io/service=qwen"
    )


@pytest.mark.parametrize(
    ("fields", "replicas"),
    [
        ({}, 1),
        ({"autoscaling": {"minReplicas": 3}}, 3),
        ({"autoscaling": {"enabled": False}, "replicas": 5}, 5),
        ({"autoscaling": {"enabled": False, "minReplicas": 3}}, 1),
    ],
)
def test_initial_replicas(fields: dict[str, Any], replicas: int) -> None:
    spec = _spec(**fields)
    assert initial_replicas(spec) == replicas
    assert _by_kind(render_children("s", "n", spec))["Deployment"]["spec"]["replicas"] == replicas


def test_gate_is_the_only_way_in() -> None:
    spec = _spec(gate={"port": 9000}, concurrency={"maxInFlight": 3, "queueSize": 5})
    children = render_children("s", "n", spec, operator_image=OPERATOR_IMAGE)
    containers = _containers(children)
    assert "ports" not in containers["model"]
    assert containers["gate"]["ports"] == [
        {"name": "http", "containerPort": 9000, "protocol": "TCP"}
    ]
    assert containers["gate"]["image"] == OPERATOR_IMAGE
    assert containers["gate"]["command"] == ["vlm-operator", "gate"]
    env = _env(containers["gate"])
    assert env["VLM_GATE_LISTEN"] == "[::]:9000"
    assert env["VLM_GATE_UPSTREAM"] == "http://127.0.0.1:8080"
    assert env["VLM_GATE_MAX_IN_FLIGHT"] == "3"
    assert env["VLM_GATE_QUEUE_SIZE"] == "5"
    assert env["VLM_GATE_QUEUE_TIMEOUT"] == "20"
    assert env["VLM_GATE_RESPONSE_TIMEOUT"] == "600"
    assert env["VLM_GATE_MAX_BODY_BYTES"] == str(20 * 1024 * 1024)
    assert env["VLM_GATE_HEALTH_PATH"] == "/health"
    # The Service targets the port by name: while a changed gate.port rolls out, each pod
    # is reached on its own port, the old pods' 8000 as the new pods' 9000.
    service_port = _by_kind(children)["Service"]["spec"]["ports"][0]
    assert (service_port["port"], service_port["targetPort"]) == (80, "http")
    assert containers["gate"]["readinessProbe"]["httpGet"]["port"] == "http"
    # Ports of 1024 and above need no sysctl.
    pod = _by_kind(children)["Deployment"]["spec"]["template"]["spec"]
    assert "sysctls" not in pod["securityContext"]
    # The model server is bound to loopback: nothing bypasses the in-flight limit.
    assert "127.0.0.1" in containers["model"]["args"]


def test_llamacpp_preset() -> None:
    spec = _spec(
        model={
            "id": "Qwen/Qwen3-VL-2B-Instruct",
            "storage": {"pvc": {"claimName": "gguf"}, "mountPath": "/weights"},
            "args": ["--temp", "0.7"],
        },
        concurrency={"maxInFlight": 6},
        resources={"requests": {"cpu": "7500m"}},
    )
    model = _containers(render_children("s", "n", spec))["model"]
    assert model["image"] == LLAMACPP_IMAGE
    args = model["args"]

    def value(flag: str) -> str:
        return str(args[args.index(flag) + 1])

    assert value("-m").startswith("/weights/")
    assert value("-m").endswith(".gguf")
    assert value("--mmproj").startswith("/weights/mmproj")
    assert value("--host") == "127.0.0.1"
    assert value("--port") == "8080"
    assert value("--parallel") == "6"
    assert int(value("--ctx-size")) == 6 * 4096
    # One large image leaves room in its slot's 4096 for the prompt and the answer.
    assert int(value("--image-max-tokens")) == 2048
    assert value("--threads") == "7"
    assert value("--alias") == "Qwen/Qwen3-VL-2B-Instruct"
    # Listening on 127.0.0.1 behind a gate that answers /metrics itself, its own
    # metrics could reach no one.
    assert "--metrics" not in args
    assert args[-2:] == ["--temp", "0.7"]
    assert model["securityContext"]["readOnlyRootFilesystem"] is True


def test_threads_follow_the_cpu_limit_when_no_request_is_set() -> None:
    # Kubernetes makes the limit the request; left alone, llama.cpp and torch would
    # size their pools to the node's cores.
    for runtime in ("llamacpp", "transformers"):
        spec = _spec(
            model={"id": "m", "runtime": runtime, "storage": {"pvc": {"claimName": "w"}}},
            resources={"requests": {"cpu": None}, "limits": {"cpu": "3", "memory": "16Gi"}},
        )
        model = _containers(render_children("s", "n", spec))["model"]
        if runtime == "llamacpp":
            assert model["args"][model["args"].index("--threads") + 1] == "3"
        else:
            assert _env(model)["OMP_NUM_THREADS"] == "3"


@pytest.mark.parametrize(
    ("cpu", "threads"), [("+2", "2"), ("2e0", "2"), ("0.002k", "2"), ("2500m", "2"), ("100m", "1")]
)
def test_threads_follow_any_spelling_of_the_cpu_quantity(cpu: str, threads: str) -> None:
    spec = _spec(
        model={"id": "m", "runtime": "llamacpp", "storage": {"pvc": {"claimName": "w"}}},
        resources={"requests": {"cpu": cpu}},
    )
    model = _containers(render_children("s", "n", spec))["model"]
    assert model["args"][model["args"].index("--threads") + 1] == threads


def test_transformers_preset_waits_minutes_for_the_model() -> None:
    spec = _spec(
        model={
            "id": "Qwen/Qwen3-VL-2B-Instruct",
            "runtime": "transformers",
            "storage": {"pvc": {"claimName": "hf"}},
        }
    )
    containers = _containers(render_children("s", "n", spec))
    assert containers["model"]["command"] == ["vlm-operator", "model-server"]
    assert containers["model"]["args"] == [
        "--model",
        "/models/Qwen3-VL-2B-Instruct",
        "--host",
        "127.0.0.1",
        "--port",
        "8080",
        "--model-id=Qwen/Qwen3-VL-2B-Instruct",
        "--max-concurrent",
        "4",
        "--max-body-bytes",
        str(20 * 1024 * 1024),  # the gate's limit: what it lets through is read whole
    ]
    assert _env(containers["model"])["OMP_NUM_THREADS"] == "8"
    assert containers["model"]["livenessProbe"]["initialDelaySeconds"] >= 600


def test_transformers_server_reads_an_id_that_starts_with_a_dash_as_the_id() -> None:
    spec = _spec(
        model={
            "id": "-my-model",
            "runtime": "transformers",
            "storage": {"pvc": {"claimName": "hf"}},
        }
    )
    model = _containers(render_children("s", "n", spec))["model"]
    parser = argparse.ArgumentParser()
    model_server.add_arguments(parser)
    assert parser.parse_args(model["args"]).model_id == "-my-model"


def test_fake_preset_is_configured_by_environment() -> None:
    spec = _spec(
        model={
            "id": "fake-vl",
            "runtime": "fake",
            "fake": {"baseSeconds": 6.2, "alpha": 0.185, "startupSeconds": 60, "timeScale": 20},
        }
    )
    containers = _containers(render_children("s", "n", spec, operator_image=OPERATOR_IMAGE))
    model = containers["model"]
    assert model["image"] == OPERATOR_IMAGE
    assert model["command"] == ["vlm-operator", "fake-model"]
    env = _env(model)
    assert env["VLM_FAKE_LISTEN"] == "127.0.0.1:8080"
    assert env["VLM_FAKE_MODEL_ID"] == "fake-vl"
    assert float(env["VLM_FAKE_BASE_SECONDS"]) == 6.2
    assert float(env["VLM_FAKE_ALPHA"]) == 0.185
    assert float(env["VLM_FAKE_TIME_SCALE"]) == 20
    assert float(env["VLM_FAKE_STARTUP_SECONDS"]) == 60
    # The fake needs no model files: no model volume.
    volumes = _by_kind(render_children("s", "n", spec))["Deployment"]["spec"]["template"]["spec"]
    assert [v["name"] for v in volumes["volumes"]] == ["tmp"]
    # Start-up budget follows the scaled load time, with slack.
    assert model["livenessProbe"]["initialDelaySeconds"] >= 60 / 20


def test_custom_runtime_takes_everything_from_the_spec() -> None:
    spec = _spec(
        model={
            "id": "m",
            "runtime": "custom",
            "image": "vllm/vllm-openai:v0.9",
            "command": ["serve"],
            "args": ["--port", "9000"],
            "port": 9000,
            "healthPath": "/v1/models",
            "env": [{"name": "HOME", "value": "/data"}, {"name": "X", "value": "1"}],
        }
    )
    containers = _containers(render_children("s", "n", spec))
    model = containers["model"]
    assert (model["image"], model["command"], model["args"]) == (
        "vllm/vllm-openai:v0.9",
        ["serve"],
        ["--port", "9000"],
    )
    # A spec variable replaces the preset's instead of being listed twice.
    assert [e for e in model["env"] if e["name"] == "HOME"] == [{"name": "HOME", "value": "/data"}]
    assert model["securityContext"]["readOnlyRootFilesystem"] is False
    gate_env = _env(containers["gate"])
    assert gate_env["VLM_GATE_UPSTREAM"] == "http://127.0.0.1:9000"
    assert gate_env["VLM_GATE_HEALTH_PATH"] == "/v1/models"


def test_shutdown_drains_a_full_queue_and_the_longest_request_the_gate_allows() -> None:
    spec = _spec(
        model={"id": "m", "runtime": "fake", "fake": {"timeScale": 1}},
        concurrency={"queueTimeoutSeconds": 30, "responseTimeoutSeconds": 900},
    )
    children = render_children("s", "n", spec)
    pod = _by_kind(children)["Deployment"]["spec"]["template"]["spec"]
    containers = _containers(children)
    # A request waits 30 s at most, and the gate answers 504 for one the model holds
    # past 900 s: the drain covers both, so no request the gate let in is cut.
    drain = drain_seconds(spec)
    assert drain == 30 + 900
    assert int(_env(containers["gate"])["VLM_GATE_DRAIN_TIMEOUT"]) == drain
    gate_stop = containers["gate"]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > gate_stop + drain
    # The model is a native sidecar: the kubelet starts it before the gate and stops
    # it once the gate has exited, however long the drain, with no sleep of its own
    # (which would hold an idle pod for the whole bound).
    (gate,) = pod["containers"]
    assert gate["name"] == "gate"
    (model,) = pod["initContainers"]
    assert model["name"] == "model"
    assert model["restartPolicy"] == "Always"
    assert "lifecycle" not in model


def test_pods_are_locked_down() -> None:
    children = render_children("s", "n", _spec())
    pod = _by_kind(children)["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    spread = pod["topologySpreadConstraints"][0]
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    pdb = _by_kind(children)["PodDisruptionBudget"]
    assert pdb["spec"]["maxUnavailable"] == 1
    strategy = _by_kind(children)["Deployment"]["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def test_probes() -> None:
    containers = _containers(render_children("s", "n", _spec()))
    gate, model = containers["gate"], containers["model"]
    assert gate["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert gate["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # A model that never loads, or hangs, restarts the model, not the gate: the probe is
    # the model's, asked of the gate (the model listens on 127.0.0.1), after the budget.
    assert "startupProbe" not in gate
    liveness = model["livenessProbe"]
    assert liveness["httpGet"] == {"path": "/modelz", "port": 8000}
    assert liveness["initialDelaySeconds"] >= 300  # llama.cpp's budget
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 30  # a busy spell


@pytest.mark.parametrize(
    ("storage", "volume"),
    [
        (
            {"pvc": {"claimName": "weights"}},
            {
                "name": "model-storage",
                "persistentVolumeClaim": {"claimName": "weights", "readOnly": True},
            },
        ),
        (
            {"hostPath": {"path": "/srv/models"}},
            {"name": "model-storage", "hostPath": {"path": "/srv/models", "type": "Directory"}},
        ),
        (
            {"emptyDir": {"sizeLimit": "9Gi"}, "download": {"image": "d"}},
            {"name": "model-storage", "emptyDir": {"sizeLimit": "9Gi"}},
        ),
    ],
)
def test_model_storage(storage: dict[str, Any], volume: dict[str, Any]) -> None:
    spec = _spec(model={"id": "m", "storage": {**storage, "mountPath": "/w"}})
    pod = _by_kind(render_children("s", "n", spec))["Deployment"]["spec"]["template"]["spec"]
    assert volume in pod["volumes"]
    model = {c["name"]: c for c in pod["initContainers"]}["model"]
    assert {"name": "model-storage", "mountPath": "/w", "readOnly": True} in model["volumeMounts"]
    if "download" in storage:
        # The download runs to its end before the model (a sidecar) starts.
        init, model_sidecar = pod["initContainers"]
        assert init["image"] == "d"
        assert "restartPolicy" not in init
        assert {"name": "model-storage", "mountPath": "/w"} in init["volumeMounts"]
        assert model_sidecar is model
        # Bounded, and below the model's request, so it adds nothing to the pod's.
        assert init["resources"] == {
            "requests": {"cpu": "1", "memory": "512Mi"},
            "limits": {"memory": "2Gi"},
        }
    else:
        assert [c["name"] for c in pod["initContainers"]] == ["model"]
    # The disk a per-pod copy fills is asked of the scheduler, by the model, which lives
    # as long as the volume; other storage is not the pod's to ask for.
    expected = {"cpu": "8", "memory": "12Gi"}
    if "emptyDir" in storage:
        expected["ephemeral-storage"] = storage["emptyDir"]["sizeLimit"]
    assert model["resources"]["requests"] == expected


def test_model_storage_request_keeps_the_users_resources() -> None:
    spec = _spec(
        model={
            "id": "m",
            "storage": {
                "emptyDir": {"sizeLimit": None},
                "download": {"image": "d", "resources": {"requests": {"cpu": "2"}}},
            },
        },
        resources={"requests": {"cpu": "4"}, "limits": {"cpu": "6", "memory": "9Gi"}},
    )
    pod = _by_kind(render_children("s", "n", spec))["Deployment"]["spec"]["template"]["spec"]
    download, model = pod["initContainers"]
    # No size limit: nothing to reserve; the user's resources are rendered as written.
    assert model["resources"] == {"requests": {"cpu": "4"}, "limits": {"cpu": "6", "memory": "9Gi"}}
    assert download["resources"] == {"requests": {"cpu": "2"}}


@pytest.mark.parametrize(("gate_port", "model_port"), [(80, None), (8000, 443), (1023, 8080)])
def test_a_port_below_1024_gets_the_sysctl_that_lets_non_root_bind_it(
    gate_port: int, model_port: int | None
) -> None:
    # Every container runs as a non-root user with no capabilities: without the sysctl
    # (a safe one), binding a port below 1024 fails on runtimes that do not lower it.
    model: dict[str, Any] = {"id": "m", "runtime": "custom", "image": "srv:1"}
    model["port"] = model_port or 8080
    spec = _spec(model=model, gate={"port": gate_port})
    pod = _by_kind(render_children("s", "n", spec))["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["sysctls"] == [
        {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}
    ]


def test_network_policy_peers() -> None:
    spec = _spec(networkPolicy={"enabled": True})
    policy = _by_kind(render_children("s", "n", spec))["NetworkPolicy"]
    clients, prometheus = policy["spec"]["ingress"]
    assert clients["from"] == [{"podSelector": {}}]
    assert prometheus["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    # Named, as the Service's target: old and new pods of a changed gate.port alike.
    assert clients["ports"] == [{"protocol": "TCP", "port": "http"}]
    assert prometheus["ports"] == clients["ports"]
    spec = _spec(
        networkPolicy={
            "enabled": True,
            "allowFromNamespaces": {"team": "a"},
            "allowFromPods": {"app": "web"},
            "prometheusNamespaceLabels": {},
        }
    )
    policy = _by_kind(render_children("s", "n", spec))["NetworkPolicy"]
    (clients,) = policy["spec"]["ingress"]
    assert clients["from"] == [
        {"namespaceSelector": {"matchLabels": {"team": "a"}}},
        {"podSelector": {"matchLabels": {"app": "web"}}},
    ]


def test_render_is_deterministic_and_json_safe() -> None:
    spec = _spec(monitoring={"podMonitor": True}, networkPolicy={"enabled": True})
    first = render_children("s", "n", spec)
    assert first == render_children("s", "n", spec)
    assert json.loads(json.dumps(first)) == first
    assert yaml.safe_load_all(dump_documents(first)) is not None
    assert DEFAULT_OPERATOR_IMAGE.startswith("ghcr.io/vlm-operator/vlm-operator:")


def test_model_container_budget_per_runtime() -> None:
    llama = model_container(_spec(), operator_image=OPERATOR_IMAGE)
    transformers = model_container(
        _spec(model={"id": "m", "runtime": "transformers"}), operator_image=OPERATOR_IMAGE
    )
    assert transformers.startup_budget_seconds > llama.startup_budget_seconds
    fake = model_container(
        _spec(
            model={"id": "m", "runtime": "fake", "fake": {"startupSeconds": 90, "timeScale": 10}}
        ),
        operator_image=OPERATOR_IMAGE,
    )
    assert fake.startup_budget_seconds >= math.ceil(90 / 10)
    assert fake.startup_budget_seconds < llama.startup_budget_seconds


# --------------------------------------------------------------------- purity

PURE_MODULES = [
    "vlm_operator.models",
    "vlm_operator.render",
    "vlm_operator.runtimes",
    "vlm_operator.crd",
    "vlm_operator.validation",
    "vlm_operator.yamlio",
    "vlm_operator.latency",
    "vlm_operator.policy",
    "vlm_operator.simulator",
]


def test_pure_modules_import_no_kubernetes_client() -> None:
    code = (
        "import importlib, importlib.util, json, sys\n"
        f"names = {PURE_MODULES!r}\n"
        "present = [n for n in names if importlib.util.find_spec(n) is not None]\n"
        "for n in present: importlib.import_module(n)\n"
        "roots = {m.split('.')[0] for m in sys.modules}\n"
        "banned = sorted(roots & {'kubernetes', 'kopf', 'httpx'})\n"
        "print(json.dumps({'present': present, 'banned': banned}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    report = json.loads(result.stdout)
    assert {"vlm_operator.models", "vlm_operator.render", "vlm_operator.crd"} <= set(
        report["present"]
    )
    assert report["banned"] == [], f"pure modules pulled in {report['banned']}"


# ------------------------------------------------ contract with the servers


def _parse(command: str, argv: list[str], env: dict[str, str], monkeypatch: Any) -> Any:
    """Parse a rendered container's command line and environment with the real CLI."""
    from vlm_operator.cli import build_parser

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # Flags read their environment when the parser is built.
    return build_parser().parse_args([command, *argv])


def test_gate_and_fake_model_accept_the_rendered_configuration(monkeypatch: Any) -> None:
    spec = _spec(
        model={"id": "fake-vl", "runtime": "fake", "fake": {"timeScale": 10, "alpha": 0.2}},
        concurrency={"maxInFlight": 3, "queueSize": 7, "queueTimeoutSeconds": 2.5},
        gate={"port": 8100},
    )
    containers = _containers(render_children("s", "n", spec))
    gate = _parse("gate", containers["gate"]["command"][2:], _env(containers["gate"]), monkeypatch)
    assert gate.upstream == "http://127.0.0.1:8080"
    assert gate.listen == ("::", 8100)  # every address, IPv6 and IPv4
    assert (gate.max_in_flight, gate.queue_size, gate.queue_timeout) == (3, 7, 2.5)
    assert gate.health_path == "/health"
    assert gate.drain_timeout == drain_seconds(spec)
    model = containers["model"]
    fake = _parse("fake-model", model["command"][2:], _env(model), monkeypatch)
    assert fake.listen == ("127.0.0.1", 8080)
    assert (fake.model_id, fake.time_scale, fake.alpha) == ("fake-vl", 10, 0.2)


def test_model_server_accepts_the_rendered_command_line(monkeypatch: Any) -> None:
    spec = _spec(
        model={"id": "q", "runtime": "transformers", "storage": {"pvc": {"claimName": "c"}}},
        concurrency={"maxInFlight": 2},
    )
    model = _containers(render_children("s", "n", spec))["model"]
    assert model["command"][:2] == ["vlm-operator", "model-server"]
    args = _parse("model-server", model["args"], {}, monkeypatch)
    assert (args.model, args.host, args.port) == ("/models/Qwen3-VL-2B-Instruct", "127.0.0.1", 8080)
    assert (args.model_id, args.max_concurrent) == ("q", 2)


def test_a_cpu_request_too_large_for_a_float_still_renders() -> None:
    # The quantity pattern has no length limit: a request of 400 digits parses as infinity,
    # which must not crash the render (the operator would retry it forever, saying nothing).
    huge = "1" + "0" * 400
    spec = VLMServiceSpec.model_validate(
        {"model": {"id": "m", "runtime": "llamacpp"}, "resources": {"requests": {"cpu": huge}}}
    )
    deployment = render_children("x", "d", spec)[0]
    assert deployment["kind"] == "Deployment"
