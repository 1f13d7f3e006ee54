"""Child manifests of a VLMService: spec in, Kubernetes objects out.

:func:`render_children` is a pure function of the VLMService's name,
namespace and spec, so that the operator, ``vlm-operator render``, the local
cluster and the golden-file tests all see the same objects. Owner references
are not set here: the operator adopts the children (it knows the owner's uid).

Every model pod has two containers:

* the **model** server, from the runtime preset (:mod:`vlm_operator.runtimes`),
  listening on 127.0.0.1 only, rendered as a native sidecar (an init
  container with ``restartPolicy: Always``, Kubernetes 1.29+): started before
  the gate and stopped after it;
* the **gate** (``vlm-operator gate``), the pod's main container and only
  port, which enforces ``maxInFlight``, queues up to ``queueSize`` requests
  and exports the signals the autoscaler reads.

Choices worth knowing:

* The model's liveness probe asks the gate's ``/modelz`` (the model's own
  health check, draining or not) once the runtime's whole start-up budget has
  passed since each start of the model: a model that hangs, or never loads,
  is restarted, and the gate is not (a startup probe on the gate restarted
  the wrong container). Readiness is the gate's ``/readyz``, the gate's own
  liveness its ``/healthz``, so a slow load is never mistaken for a hang.
* Shutdown drains: the gate waits a few seconds for the endpoints to forget
  the pod, then finishes its queue (``queueTimeout``) and the requests inside
  the model, which the gate itself lets run for ``responseTimeoutSeconds`` at
  most; ``terminationGracePeriodSeconds`` covers both with a margin. The
  kubelet stops a sidecar only once the main containers have exited, so the
  model outlives the gate's drain however long it is, and an idle pod stops
  as soon as its gate has (a fixed ``preStop`` sleep on the model held every
  pod for the whole bound, and a bound short enough for that cut long
  requests).
* Pods run as non-root with a read-only root filesystem where the runtime
  allows it (``/tmp`` is an emptyDir), no privilege escalation, no
  capabilities, the runtime's default seccomp profile. A gate or model port
  below 1024 brings the safe sysctl ``net.ipv4.ip_unprivileged_port_start=0``,
  without which such a server cannot bind it.
* The Service and the NetworkPolicy name the gate's port (``http``) rather
  than number it: while a changed ``gate.port`` rolls out, old and new pods
  are each reached on their own.
* Rolling updates surge one pod and never remove a ready one first: a model
  takes minutes to load, and capacity lost during a rollout is latency.

This module is pure: it imports neither ``kubernetes``, ``kopf`` nor ``httpx``.
"""

from __future__ import annotations

import math
from typing import Any

from vlm_operator import __version__
from vlm_operator.models import GROUP, SERVICE_LABEL, ResourceRequirements, VLMServiceSpec
from vlm_operator.runtimes import ModelContainer, model_container, plain_number

__all__ = [
    "APP_NAME",
    "DEFAULT_OPERATOR_IMAGE",
    "GATE_PORT_NAME",
    "MODEL_ANNOTATION",
    "common_labels",
    "drain_seconds",
    "initial_replicas",
    "render_children",
    "selector_labels",
    "selector_string",
]

DEFAULT_OPERATOR_IMAGE = f"ghcr.io/vlm-operator/vlm-operator:{__version__}"

#: ``app.kubernetes.io/name`` of every model pod.
APP_NAME = "vlmservice"
#: Name of the gate's container port (the Service, PodMonitor and probes use it).
GATE_PORT_NAME = "http"
#: Annotation carrying the model id (too long and too free-form for a label).
MODEL_ANNOTATION = f"{GROUP}/model"
RUNTIME_LABEL = f"{GROUP}/runtime"

_NON_ROOT_UID = 65532
_SERVICE_PORT = 80
_TMP_VOLUME = "tmp"
_MODEL_VOLUME = "model-storage"
# Endpoints take a moment to drop a terminating pod; until then traffic still comes.
_ENDPOINTS_GRACE_SECONDS = 5
_TERMINATION_MARGIN_SECONDS = 15
_PROBE_PERIOD_SECONDS = 5


def selector_labels(name: str) -> dict[str, str]:
    """Labels selecting the pods of the VLMService ``name`` (immutable once created)."""
    return {"app.kubernetes.io/name": APP_NAME, SERVICE_LABEL: name}


def selector_string(name: str) -> str:
    """:func:`selector_labels` as a label selector string (``status.selector``)."""
    return ",".join(f"{key}={value}" for key, value in sorted(selector_labels(name).items()))


def common_labels(name: str, component: str = "model-server") -> dict[str, str]:
    """Labels on every child object and pod of the VLMService ``name``."""
    return {
        **selector_labels(name),
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "vlm-operator",
        "app.kubernetes.io/part-of": "vlm-operator",
    }


def initial_replicas(spec: VLMServiceSpec) -> int:
    """Replicas of a new Deployment; the operator owns the count afterwards."""
    if spec.autoscaling.enabled:
        return spec.autoscaling.min_replicas
    return spec.replicas if spec.replicas is not None else 1


def drain_seconds(spec: VLMServiceSpec) -> int:
    """How long the gate may take to finish its queue and the requests inside the model:
    a request waits ``queueTimeoutSeconds`` at most, and the gate answers 504 for one
    the model holds longer than ``responseTimeoutSeconds``."""
    concurrency = spec.concurrency
    return math.ceil(concurrency.queue_timeout_seconds + concurrency.response_timeout_seconds)


def render_children(
    name: str,
    namespace: str,
    spec: VLMServiceSpec,
    *,
    operator_image: str = DEFAULT_OPERATOR_IMAGE,
) -> list[dict[str, Any]]:
    """Deployment, Service, PodDisruptionBudget, and the optional PodMonitor and NetworkPolicy."""
    container = model_container(spec, operator_image=operator_image)
    children = [
        _deployment(name, namespace, spec, container, operator_image),
        _service(name, namespace, spec),
        _pod_disruption_budget(name, namespace),
    ]
    if spec.monitoring.pod_monitor:
        children.append(_pod_monitor(name, namespace, spec))
    if spec.network_policy.enabled:
        children.append(_network_policy(name, namespace, spec))
    return children


# ------------------------------------------------------------------- Deployment


def _metadata(name: str, namespace: str, component: str = "model-server") -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": common_labels(name, component)}


def _deployment(
    name: str,
    namespace: str,
    spec: VLMServiceSpec,
    container: ModelContainer,
    operator_image: str,
) -> dict[str, Any]:
    drain = drain_seconds(spec)
    pod_labels = {**common_labels(name), RUNTIME_LABEL: container.runtime}
    metadata = _metadata(name, namespace)
    metadata["annotations"] = {MODEL_ANNOTATION: spec.model.id}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": initial_replicas(spec),
            "selector": {"matchLabels": selector_labels(name)},
            "revisionHistoryLimit": 3,
            # A rollout may wait for a whole model load before it counts as stuck.
            "progressDeadlineSeconds": container.startup_budget_seconds + 600,
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        MODEL_ANNOTATION: spec.model.id,
                        "kubectl.kubernetes.io/default-container": "model",
                        # For Prometheus set-ups that discover pods by annotation.
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(spec.gate.port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": _pod_spec(name, spec, container, operator_image, drain),
            },
        },
    }


def _pod_spec(
    name: str,
    spec: VLMServiceSpec,
    container: ModelContainer,
    operator_image: str,
    drain: int,
) -> dict[str, Any]:
    placement = spec.placement
    volumes: list[dict[str, Any]] = [{"name": _TMP_VOLUME, "emptyDir": {"sizeLimit": "1Gi"}}]
    model_volume = _model_volume(spec)
    if model_volume is not None:
        volumes.append(model_volume)
    model = _model_container(spec, container, with_storage=model_volume is not None)
    init = (
        []
        if spec.model.storage.download is None or model_volume is None
        else [_download_container(spec)]
    )
    pod: dict[str, Any] = {
        # The download (if any) runs to its end, then the model starts, then the gate.
        "initContainers": [*init, model],
        "containers": [_gate_container(spec, container, operator_image, drain)],
        "volumes": volumes,
        "securityContext": {
            "runAsNonRoot": True,
            # Numeric, so that images whose default user is root still start.
            "runAsUser": _NON_ROOT_UID,
            "runAsGroup": _NON_ROOT_UID,
            "fsGroup": _NON_ROOT_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
            **_low_port_sysctls(spec.gate.port, container.port),
        },
        "terminationGracePeriodSeconds": _ENDPOINTS_GRACE_SECONDS
        + drain
        + _TERMINATION_MARGIN_SECONDS,
        # Model pods never talk to the API server, and need no service env vars.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector_labels(name)},
                # Spread each rollout's pods on their own, not old and new together.
                "matchLabelKeys": ["pod-template-hash"],
            }
        ],
    }
    if placement.node_selector:
        pod["nodeSelector"] = dict(placement.node_selector)
    if placement.tolerations:
        pod["tolerations"] = [t.to_api() for t in placement.tolerations]
    if placement.priority_class_name:
        pod["priorityClassName"] = placement.priority_class_name
    if placement.service_account_name:
        pod["serviceAccountName"] = placement.service_account_name
    if placement.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": secret} for secret in placement.image_pull_secrets]
    return pod


def _low_port_sysctls(*ports: int) -> dict[str, Any]:
    """Lets the pod's non-root, capability-less servers listen below 1024.

    A safe sysctl (allowed by every kubelet and the baseline Pod Security level), set
    only when a port needs it: runtimes differ in whether they lower it themselves.
    """
    if min(ports) >= 1024:
        return {}
    return {"sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]}


def _security_context(*, read_only_root: bool) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": read_only_root,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _resources(resources: ResourceRequirements) -> dict[str, Any]:
    dumped = resources.to_api()
    return {section: values for section, values in dumped.items() if values}


def _model_container(
    spec: VLMServiceSpec, container: ModelContainer, *, with_storage: bool
) -> dict[str, Any]:
    mounts: list[dict[str, Any]] = [{"name": _TMP_VOLUME, "mountPath": "/tmp"}]
    if with_storage:
        mounts.append(
            {
                "name": _MODEL_VOLUME,
                "mountPath": spec.model.storage.mount_path,
                "readOnly": True,
            }
        )
    resources = _resources(spec.resources)
    empty_dir = spec.model.storage.empty_dir
    if with_storage and empty_dir is not None and empty_dir.size_limit is not None:
        # The scheduler places a pod by its requests: without this one a node's disk is
        # promised to more model copies than it holds, and the kubelet evicts pods once
        # their downloads fill it. Asked by the model, which lives as long as the volume.
        resources["requests"] = {
            **resources.get("requests", {}),
            "ephemeral-storage": empty_dir.size_limit,
        }
    rendered: dict[str, Any] = {
        "name": "model",
        "image": container.image,
        "imagePullPolicy": "IfNotPresent",
        "env": container.env,
        "resources": resources,
        "securityContext": _security_context(read_only_root=container.read_only_root),
        "volumeMounts": mounts,
        # A sidecar: restarted if it exits, stopped after the gate has drained.
        "restartPolicy": "Always",
        "livenessProbe": {
            # The gate's port (the model listens on 127.0.0.1 only); a number, as a
            # named port resolves among this container's own.
            "httpGet": {"path": "/modelz", "port": spec.gate.port},
            # From each start of the model: a load gets the runtime's whole budget.
            "initialDelaySeconds": container.startup_budget_seconds,
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if container.command:
        rendered["command"] = container.command
    if container.args:
        rendered["args"] = container.args
    return rendered


def _gate_container(
    spec: VLMServiceSpec, container: ModelContainer, operator_image: str, drain: int
) -> dict[str, Any]:
    concurrency = spec.concurrency
    env = {
        "VLM_GATE_UPSTREAM": container.upstream,
        # Every address of the pod, IPv6 and IPv4 (the gate's reading of "::").
        "VLM_GATE_LISTEN": f"[::]:{spec.gate.port}",
        "VLM_GATE_MAX_IN_FLIGHT": str(concurrency.max_in_flight),
        "VLM_GATE_QUEUE_SIZE": str(concurrency.queue_size),
        "VLM_GATE_QUEUE_TIMEOUT": plain_number(concurrency.queue_timeout_seconds),
        "VLM_GATE_RESPONSE_TIMEOUT": plain_number(concurrency.response_timeout_seconds),
        "VLM_GATE_MAX_BODY_BYTES": str(concurrency.max_request_bytes),
        "VLM_GATE_HEALTH_PATH": container.health_path,
        "VLM_GATE_DRAIN_TIMEOUT": str(drain),
    }
    if spec.model.runtime == "fake":
        # The fake model's time runs timeScale times faster: latency buckets ÷ timeScale keep
        # the P95 signal as fine-grained as with real-time requests.
        env["VLM_GATE_BUCKET_SCALE"] = plain_number(spec.model.fake.time_scale)
    port = GATE_PORT_NAME
    return {
        "name": "gate",
        "image": spec.gate.image or operator_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["vlm-operator", "gate"],
        "env": [{"name": key, "value": value} for key, value in env.items()],
        "ports": [{"name": port, "containerPort": spec.gate.port, "protocol": "TCP"}],
        "resources": _resources(spec.gate.resources),
        "securityContext": _security_context(read_only_root=True),
        "volumeMounts": [{"name": _TMP_VOLUME, "mountPath": "/tmp"}],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": port},
            "periodSeconds": _PROBE_PERIOD_SECONDS,
            "timeoutSeconds": 3,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": port},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
        # Let the endpoints forget the pod before the gate starts refusing work.
        "lifecycle": {"preStop": {"sleep": {"seconds": _ENDPOINTS_GRACE_SECONDS}}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _model_volume(spec: VLMServiceSpec) -> dict[str, Any] | None:
    storage = spec.model.storage
    if storage.pvc is not None:
        return {
            "name": _MODEL_VOLUME,
            "persistentVolumeClaim": {
                "claimName": storage.pvc.claim_name,
                "readOnly": storage.pvc.read_only,
            },
        }
    if storage.host_path is not None:
        return {
            "name": _MODEL_VOLUME,
            "hostPath": {"path": storage.host_path.path, "type": "Directory"},
        }
    if storage.empty_dir is not None:
        empty_dir: dict[str, Any] = {}
        if storage.empty_dir.size_limit is not None:
            empty_dir["sizeLimit"] = storage.empty_dir.size_limit
        return {"name": _MODEL_VOLUME, "emptyDir": empty_dir}
    return None


def _download_container(spec: VLMServiceSpec) -> dict[str, Any]:
    storage = spec.model.storage
    download = storage.download
    assert download is not None
    rendered: dict[str, Any] = {
        "name": "download",
        "image": download.image,
        "imagePullPolicy": "IfNotPresent",
        "env": [{"name": "HOME", "value": "/tmp"}] + [var.to_api() for var in download.env],
        "resources": _resources(download.resources),
        # The download image is not ours: it may need to write outside /tmp.
        "securityContext": _security_context(read_only_root=False),
        "volumeMounts": [
            {"name": _TMP_VOLUME, "mountPath": "/tmp"},
            {"name": _MODEL_VOLUME, "mountPath": storage.mount_path},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if download.command:
        rendered["command"] = list(download.command)
    if download.args:
        rendered["args"] = list(download.args)
    return rendered


# --------------------------------------------------------------- other children


def _service(name: str, namespace: str, spec: VLMServiceSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, namespace),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(name),
            "ports": [
                {
                    "name": GATE_PORT_NAME,
                    "port": _SERVICE_PORT,
                    # The name, not the number: while a changed gate.port rolls out,
                    # old pods still take traffic on their old port.
                    "targetPort": GATE_PORT_NAME,
                    "protocol": "TCP",
                    "appProtocol": "http",
                }
            ],
        },
    }


def _pod_disruption_budget(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(name, namespace),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(name)},
            # A pod still loading its model serves nothing: evicting it costs nothing
            # and must not block a node drain.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def _pod_monitor(name: str, namespace: str, spec: VLMServiceSpec) -> dict[str, Any]:
    metadata = _metadata(name, namespace, component="monitoring")
    metadata["labels"] = {**spec.monitoring.labels, **metadata["labels"]}
    service_meta_label = "__meta_kubernetes_pod_label_" + _prometheus_name(SERVICE_LABEL)
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": metadata,
        "spec": {
            "selector": {"matchLabels": selector_labels(name)},
            "namespaceSelector": {"matchNames": [namespace]},
            "podTargetLabels": [SERVICE_LABEL],
            "podMetricsEndpoints": [
                {
                    "port": GATE_PORT_NAME,
                    "path": "/metrics",
                    "interval": spec.monitoring.interval,
                    # The signals contract: namespace, vlmservice and pod on every series.
                    "relabelings": [
                        {
                            "action": "replace",
                            "sourceLabels": [service_meta_label],
                            "targetLabel": "vlmservice",
                        },
                        {
                            "action": "replace",
                            "sourceLabels": ["__meta_kubernetes_namespace"],
                            "targetLabel": "namespace",
                        },
                        {
                            "action": "replace",
                            "sourceLabels": ["__meta_kubernetes_pod_name"],
                            "targetLabel": "pod",
                        },
                    ],
                }
            ],
        },
    }


def _network_policy(name: str, namespace: str, spec: VLMServiceSpec) -> dict[str, Any]:
    policy = spec.network_policy
    clients: list[dict[str, Any]] = []
    if policy.allow_from_namespaces:
        clients.append({"namespaceSelector": {"matchLabels": dict(policy.allow_from_namespaces)}})
    if policy.allow_from_pods:
        clients.append({"podSelector": {"matchLabels": dict(policy.allow_from_pods)}})
    if not clients:
        clients.append({"podSelector": {}})  # every pod of this namespace
    # Named, as the Service's target: each pod's own port, old and new alike in a rollout.
    gate_port = [{"protocol": "TCP", "port": GATE_PORT_NAME}]
    ingress = [{"from": clients, "ports": gate_port}]
    if policy.prometheus_namespace_labels:
        prometheus = {
            "namespaceSelector": {"matchLabels": dict(policy.prometheus_namespace_labels)}
        }
        ingress.append({"from": [prometheus], "ports": gate_port})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(name, namespace),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(name)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def _prometheus_name(label: str) -> str:
    """A Kubernetes label name as Prometheus' service discovery spells it."""
    return "".join(c if c.isalnum() else "_" for c in label)
