"""The Helm chart, rendered and linted offline with the real Helm library.

Every object rendered for a range of values must pass the Kubernetes schemas
strictly (1.30 and the newest known), bad values must be refused by
values.schema.json naming the key, the operator Deployment must be locked
down, and the files derived from the chart (its CRD copy, manifests/install.yaml)
must not drift from their sources.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from vlm_operator import __version__
from vlm_operator.cli import build_parser
from vlm_operator.models import VLMService
from vlm_operator.render import DEFAULT_OPERATOR_IMAGE
from vlm_operator.yamlio import load_documents

from e2e.cluster import chart

REPO = chart.REPO_ROOT
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())

#: Kinds from other projects' CRDs: kubernetes-validate only knows built-in kinds.
CRD_KINDS = {"PodMonitor": "monitoring.coreos.com CRD (Prometheus Operator), not a built-in kind"}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "pod-monitor": {"podMonitor": {"enabled": True, "labels": {"release": "kps"}}},
    "dashboard": {"dashboard": {"enabled": True, "namespace": "monitoring"}},
    "credentials": {
        "prometheus": {
            "url": "https://prometheus.example.svc:9443/prom",
            "bearerTokenSecret": {"name": "prom-token", "key": "token"},
            "caSecret": {"name": "prom-ca", "key": "ca.crt"},
        }
    },
    "placement": {
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "infra", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "pool", "operator": "In", "values": ["system"]}
                            ]
                        }
                    ]
                }
            }
        },
        "priorityClassName": "system-cluster-critical",
        "imagePullSecrets": ["regcred", {"name": "other"}],
        "image": {"digest": "sha256:" + "a" * 64},
        "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
    },
    "resources": {
        "resources": {
            "requests": {"cpu": "1.5", "memory": "1e9"},
            "limits": {"memory": "2Gi", "hugepages-2Mi": "128Mi", "example.com/gpu": 1},
        }
    },
    "everything": {
        "watchNamespaces": ["ml"],
        "watchPodMonitors": True,
        "podMonitor": {"enabled": True},
        "dashboard": {"enabled": True},
        "serviceAccount": {"create": True, "name": "vlm", "annotations": {"a": "b"}},
    },
    "ipv6": {"ipFamily": "IPv6"},
    # Strings of the schema's that read as another type when written bare in YAML.
    "yaml-lookalikes": {
        "nameOverride": "true",
        "watchNamespaces": ["null", "123"],
        "serviceAccount": {"name": "null"},
        "priorityClassName": "123",
        "imagePullSecrets": ["true", {"name": "null"}],
        "prometheus": {
            "url": "http://prom:9090/x:",
            "bearerTokenSecret": {"name": "123", "key": "true"},
            "caSecret": {"name": "null", "key": "null"},
        },
        "podLabels": {"app.kubernetes.io/component": "controller", "canary": "true"},
        "podMonitor": {"enabled": True, "labels": {"app.kubernetes.io/name": "x"}},
        "dashboard": {"enabled": True, "namespace": "true"},
    },
}


def _for_users(obj: dict[str, Any]) -> bool:
    """A ClusterRole the cluster's admin, edit or view roles aggregate: not the operator's."""
    labels = obj["metadata"].get("labels") or {}
    return any(key.startswith(AGGREGATE_TO) for key in labels)


def _by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The objects of ``kind`` the operator runs with (the users' roles apart)."""
    return [obj for obj in objects if obj["kind"] == kind and not _for_users(obj)]


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = _by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = _one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


# ----------------------------------------------------------------- lint, schema


def test_lint_is_clean_in_strict_mode() -> None:
    for values in VALUE_SETS.values():
        report = helm.lint(chart.CHART_DIR, values, strict=True, kube_version="v1.30.0")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert report["errors"] == [], report
        assert problems == [], report


@pytest.mark.parametrize("case", sorted(VALUE_SETS))
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_rendered_object_passes_the_kubernetes_schema(case: str, kube_version: str) -> None:
    objects = chart.render(VALUE_SETS[case], include_crds=True)
    assert objects
    validated = 0
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(obj, kube_version, strict=True)
        validated += 1
    assert validated >= 4


@pytest.mark.parametrize(
    ("values", "key", "reason"),
    [
        ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0", "does not match pattern"),
        ({"watchNamespaces": "team-a"}, "/watchNamespaces", "got string, want array"),
        ({"watchNamespaces": ["a", "a"]}, "/watchNamespaces", "are equal"),
        ({"prometheus": {"url": "prometheus:9090"}}, "/prometheus/url", "does not match pattern"),
        # Each of these the operator refuses at start (a crash loop, not a failed install).
        ({"prometheus": {"url": "http://:9090"}}, "/prometheus/url", "does not match pattern"),
        ({"prometheus": {"url": "http://prom:99999"}}, "/prometheus/url", "does not match"),
        ({"prometheus": {"url": "http://prom:abc"}}, "/prometheus/url", "does not match pattern"),
        ({"prometheus": {"url": "http://[::1"}}, "/prometheus/url", "does not match pattern"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy", "must be one of"),
        ({"image": {"tag": "has space"}}, "/image/tag", "does not match pattern"),
        ({"imagee": {}}, "''", "additional properties 'imagee' not allowed"),
        ({"podMonitor": {"interval": "5 seconds"}}, "/podMonitor/interval", "pattern"),
        ({"podMonitor": {"interval": "30m1h"}}, "/podMonitor/interval", "pattern"),
        ({"podMonitor": {"enabled": "yes"}}, "/podMonitor/enabled", "want boolean"),
        ({"dashboard": {"enable": True}}, "/dashboard", "additional properties 'enable'"),
        ({"ports": {"metrics": 70000}}, "/ports/metrics", "maximum"),
        ({"resources": {"requests": {"cpu": "lots"}}}, "/resources/requests/cpu", "pattern"),
        ({"resources": {"limits": {"memory": -1}}}, "/resources/limits/memory", "minimum"),
        # Claims name the pod's resourceClaims, which the chart does not set.
        ({"resources": {"claims": [{"name": "c"}]}}, "/resources", "additional properties"),
        ({"nodeSelector": {"pool": 3}}, "/nodeSelector/pool", "want string"),
        # Labels and annotations a real server refuses (ValidateLabels): refused at install,
        # not half-way through it.
        ({"nodeSelector": {"pool": "cpu pool"}}, "/nodeSelector/pool", "pattern"),
        ({"podLabels": {"team": "x" * 64}}, "/podLabels/team", "maxLength"),
        # A bad key Helm's validator names by itself, not by its path.
        ({"podLabels": {"bad key!": "x"}}, "''", "invalid propertyName 'bad key!'"),
        ({"podAnnotations": {"not a key": "text"}}, "''", "invalid propertyName 'not a key'"),
        ({"podMonitor": {"labels": {"release": "kube prom"}}}, "/podMonitor/labels/release", ""),
        ({"prometheusRule": {"labels": {"-x": "y"}}}, "''", "invalid propertyName '-x'"),
        ({"dashboard": {"labels": {"grafana": "1 2"}}}, "/dashboard/labels/grafana", ""),
        # The operator runs without capabilities: it could not listen below 1024.
        ({"ports": {"metrics": 80}}, "/ports/metrics", "minimum"),
        ({"nameOverride": "Vision_Models"}, "/nameOverride", "pattern"),
        ({"ipFamily": "ipv6"}, "/ipFamily", "must be one of"),
        ({"fullnameOverride": "vlm-"}, "/fullnameOverride", "pattern"),
        ({"priorityClassName": "a: b"}, "/priorityClassName", "does not match pattern"),
        ({"priorityClassName": "System"}, "/priorityClassName", "does not match pattern"),
        ({"priorityClassName": "p" * 254}, "/priorityClassName", "maxLength"),
        (
            {"prometheus": {"bearerTokenSecret": {"name": "Bad_Name", "key": "t"}}},
            "/prometheus/bearerTokenSecret/name",
            "",
        ),
    ],
)
def test_bad_values_are_refused_naming_the_key(
    values: dict[str, Any], key: str, reason: str
) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.render(values)
    message = str(caught.value)
    assert f"at '{key}'" in message or f"at {key}" in message, message
    assert reason in message, message


@pytest.mark.parametrize("interval", ["15s", "500ms", "1m30s", "1h", "2d"])
def test_pod_monitor_interval_takes_any_prometheus_duration(interval: str) -> None:
    objects = chart.render({"podMonitor": {"enabled": True, "interval": interval}})
    (endpoint,) = _one(objects, "PodMonitor")["spec"]["podMetricsEndpoints"]
    assert endpoint["interval"] == interval


def test_annotation_keys_are_checked_lower_cased_as_the_api_server_does() -> None:
    # ValidateAnnotations lower-cases a key before it checks it; labels are taken as written.
    annotations = {"Example.com/Note": "any text at all", "team": ""}
    pod = _one(chart.render({"podAnnotations": annotations}), "Deployment")["spec"]["template"]
    assert annotations.items() <= pod["metadata"]["annotations"].items()
    with pytest.raises(helm.HelmValuesError, match=r"invalid propertyName 'Example\.com/team'"):
        chart.render({"podLabels": {"Example.com/team": "a"}})


def test_resources_take_any_resource_name_and_quantity() -> None:
    resources = VALUE_SETS["resources"]["resources"]
    assert _container(chart.render(VALUE_SETS["resources"]))["resources"] == resources


def test_one_port_for_both_listeners_is_refused_naming_both() -> None:
    # The schema checks each port alone; the template compares them.
    both = r"ports\.health and ports\.metrics are both 9090"
    with pytest.raises(helm.HelmRenderError, match=both):
        chart.render({"ports": {"health": 9090, "metrics": 9090}})


def test_schema_describes_every_default_value() -> None:
    # additionalProperties is false at every level with named keys, so a key
    # in values.yaml missing from the schema would fail the default render.
    schema = json.loads((chart.CHART_DIR / "values.schema.json").read_text())
    defaults = yaml.safe_load((chart.CHART_DIR / "values.yaml").read_text())
    assert set(defaults) <= set(schema["properties"])
    assert schema["additionalProperties"] is False
    helm.Chart.load(chart.CHART_DIR).validate_schema(defaults)


# ------------------------------------------------------------ the Deployment


def test_the_pod_has_the_time_a_stopped_control_loop_is_given() -> None:
    # A loop finishes its cycle on SIGTERM (a scale it made is written), and is
    # cancelled only after that: the kubelet must not kill the pod first.
    import kopf
    import vlm_operator.handlers as handlers

    daemons = kopf.get_default_registry()._spawning.get_all_handlers()
    (autoscale,) = [d for d in daemons if d.id == "autoscale"]
    assert autoscale.cancellation_backoff == handlers.CYCLE_GRACE_SECONDS
    assert autoscale.cancellation_timeout == handlers.CANCELLED_GRACE_SECONDS
    pod = _one(chart.render(), "Deployment")["spec"]["template"]["spec"]
    grace = handlers.CYCLE_GRACE_SECONDS + handlers.CANCELLED_GRACE_SECONDS
    assert pod["terminationGracePeriodSeconds"] > grace


def test_operator_deployment_is_one_locked_down_replica() -> None:
    objects = chart.render()
    deployment = _one(objects, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = _container(objects)
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["limits"]["memory"]
    assert container["image"] == DEFAULT_OPERATOR_IMAGE
    # A read-only root needs a writable /tmp.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "tmp" in {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    assert mounts["/tmp"] == "tmp"
    selector = spec["selector"]["matchLabels"]
    assert selector.items() <= spec["template"]["metadata"]["labels"].items()


def _operator_args(objects: list[dict[str, Any]]) -> list[str]:
    container = _container(objects)
    assert container["command"] == ["vlm-operator"]
    args: list[str] = container["args"]
    return args


def _flag(args: list[str], name: str) -> list[str]:
    return [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]


def test_liveness_probe_targets_the_operators_liveness_endpoint() -> None:
    objects = chart.render({"ports": {"health": 8181, "metrics": 9191}})
    container = _container(objects)
    args = _operator_args(objects)
    assert _flag(args, "liveness") == ["http://0.0.0.0:8181/healthz"]
    assert _flag(args, "metrics-port") == ["9191"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8181, "metrics": 9191}
    probe = container["livenessProbe"]["httpGet"]
    assert (probe["path"], ports[probe["port"]]) == ("/healthz", 8181)


def test_an_ipv6_only_cluster_reaches_the_operator_on_ipv6() -> None:
    # The kubelet probes, and Prometheus scrapes, the pod's one address.
    args = _operator_args(chart.render(VALUE_SETS["ipv6"]))
    assert _flag(args, "liveness") == ["http://[::]:8080/healthz"]
    assert _flag(args, "metrics-address") == ["::"]
    parsed = build_parser().parse_args(args)
    assert (parsed.liveness, parsed.metrics_address) == ("http://[::]:8080/healthz", "::")
    assert not _flag(_operator_args(chart.render()), "metrics-address")  # the default 0.0.0.0


def test_watched_namespaces_become_flags() -> None:
    assert "--all-namespaces" in _operator_args(chart.render())
    args = _operator_args(chart.render(VALUE_SETS["namespaced"]))
    assert "--all-namespaces" not in args
    assert _flag(args, "namespace") == ["team-a", "team-b"]


def test_prometheus_credentials_are_mounted_where_the_flags_point() -> None:
    objects = chart.render(VALUE_SETS["credentials"])
    args = _operator_args(objects)
    assert _flag(args, "prometheus-url") == ["https://prometheus.example.svc:9443/prom"]
    container = _container(objects)
    volumes = {
        v["name"]: v for v in _one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    }
    for flag, secret, key in (
        ("prometheus-bearer-token-file", "prom-token", "token"),
        ("prometheus-ca-file", "prom-ca", "ca.crt"),
    ):
        (path,) = _flag(args, flag)
        mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
        assert mount["readOnly"] is True
        source = volumes[mount["name"]]["secret"]
        assert source["secretName"] == secret
        assert path == f"{mount['mountPath']}/{key}"
        assert {"key": key, "path": key} in source["items"]
    plain = _operator_args(chart.render())
    assert not _flag(plain, "prometheus-bearer-token-file")
    assert not _flag(plain, "prometheus-ca-file")


def test_watching_pod_monitors_is_a_flag_and_its_permissions() -> None:
    def podmonitor_verbs(objects: list[dict[str, Any]]) -> set[str]:
        return {
            verb
            for obj in objects
            if obj["kind"] in {"Role", "ClusterRole"}
            for rule in obj.get("rules", [])
            if "podmonitors" in rule["resources"]
            for verb in rule["verbs"]
        }

    plain = chart.render()
    assert "--watch-podmonitors" not in _operator_args(plain)
    assert not {"list", "watch"} & podmonitor_verbs(plain)
    watching = chart.render({"watchPodMonitors": True})
    assert "--watch-podmonitors" in _operator_args(watching)
    assert {"list", "watch"} <= podmonitor_verbs(watching)


@pytest.mark.parametrize(
    "case", ["default", "namespaced", "credentials", "placement", "everything", "ipv6"]
)
def test_operator_arguments_are_accepted_by_vlm_operator_run(case: str) -> None:
    objects = chart.render(VALUE_SETS[case])
    args = build_parser().parse_args(_operator_args(objects))
    assert args.command == "run"
    # The gates (and the fake runtime) run the operator's own image.
    container = _container(objects)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VLM_OPERATOR_IMAGE"] == container["image"]


@pytest.mark.parametrize(
    "url",
    [
        "http://prometheus-operated.monitoring:9090",
        "https://u:p@thanos.example.com:443/prefix",
        "http://[fd00::1]:9090",
        "http://10.0.0.7",
        "http://prom:9090/x:",
    ],
)
def test_a_prometheus_url_the_chart_takes_the_operator_takes(url: str) -> None:
    args = build_parser().parse_args(_operator_args(chart.render({"prometheus": {"url": url}})))
    assert args.prometheus_url == url


# ------------------------------------------------------------------ RBAC shape


def _rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        rule
        for obj in objects
        if obj["kind"] in {"Role", "ClusterRole"}
        for rule in obj.get("rules", [])
    ]


@pytest.mark.parametrize("case", sorted(VALUE_SETS))
def test_rbac_has_no_wildcards(case: str) -> None:
    rules = _rules(chart.render(VALUE_SETS[case]))
    assert rules
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        assert "nonResourceURLs" not in rule
        assert "resourceNames" not in rule


def _bound_service_accounts(
    objects: list[dict[str, Any]], binding_kind: str
) -> set[tuple[str, str]]:
    found = set()
    for binding in _by_kind(objects, binding_kind):
        for subject in binding["subjects"]:
            found.add((binding["roleRef"]["name"], f"{subject['namespace']}/{subject['name']}"))
    return found


def test_all_namespaces_uses_one_cluster_role() -> None:
    objects = chart.render()
    assert not _by_kind(objects, "Role")
    role = _one(objects, "ClusterRole")
    account = _one(objects, "ServiceAccount")["metadata"]
    assert _bound_service_accounts(objects, "ClusterRoleBinding") == {
        (role["metadata"]["name"], f"{account['namespace']}/{account['name']}")
    }
    pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["name"]


AGGREGATE_TO = "rbac.authorization.k8s.io/aggregate-to-"


@pytest.mark.parametrize("values", [{}, {"watchNamespaces": ["team-a"]}])
def test_users_bound_to_admin_edit_or_view_may_use_vlmservices(values: dict[str, Any]) -> None:
    # Namespace users hold the cluster's aggregated roles, not the operator's: without
    # these, `kubectl apply` of a VLMService in their namespace is 403.
    roles = [o for o in chart.render(values) if o["kind"] == "ClusterRole" and _for_users(o)]
    granted: dict[str, dict[str, set[str]]] = {}  # aggregated into -> resource -> verbs
    for role in roles:
        into = [k.removeprefix(AGGREGATE_TO) for k in role["metadata"]["labels"]
                if k.startswith(AGGREGATE_TO)]  # fmt: skip
        for rule in role["rules"]:
            assert rule["apiGroups"] == ["vlm-operator.io"]
            for resource in rule["resources"]:
                for user_role in into:
                    granted.setdefault(user_role, {})[resource] = set(rule["verbs"])
    assert set(granted) == {"admin", "edit", "view"}
    assert granted["admin"] == granted["edit"]
    assert granted["edit"]["vlmservices"] >= {"get", "list", "watch", "create", "patch", "delete"}
    assert granted["edit"]["vlmservices/scale"] == {"get", "update", "patch"}
    read = {"get", "list", "watch"}
    assert granted["view"] == {
        "vlmservices": read,
        "vlmservices/status": read,
        "vlmservices/scale": read,
    }
    off = chart.render({**values, "rbac": {"aggregateToUserRoles": False}})
    assert not [o for o in off if o["kind"] == "ClusterRole" and _for_users(o)]


def test_cluster_scoped_objects_of_two_namespaces_do_not_collide() -> None:
    # One release name in two namespaces (one per team): their ClusterRoles and bindings
    # would be one object, rebound by whichever applied last.
    values = {"watchNamespaces": ["team-a"]}
    names = []
    for namespace in ("team-a-ops", "team-b-ops"):
        objects = chart.render(values, namespace=namespace)
        cluster_scoped = [o for o in objects if "namespace" not in o["metadata"]]
        names.append({(o["kind"], o["metadata"]["name"]) for o in cluster_scoped})
    assert names[0]
    assert not names[0] & names[1]


def test_a_borrowed_service_account_must_be_named() -> None:
    # Not the namespace's "default", which every pod there runs as.
    with pytest.raises(Exception, match=r"serviceAccount\.name"):
        chart.render({"serviceAccount": {"create": False}})


def test_watched_namespaces_get_a_role_each_and_no_cluster_wide_write() -> None:
    objects = chart.render(VALUE_SETS["namespaced"])
    roles = _by_kind(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    bindings = _by_kind(objects, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"][0]["namespace"] == chart.RELEASE_NAMESPACE
    # Cluster-wide: only reads, and nothing on namespaced resources.
    for cluster_role in _by_kind(objects, "ClusterRole"):
        for rule in cluster_role["rules"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
            assert rule["resources"] in (["customresourcedefinitions"], ["namespaces"]), rule


# ------------------------------------------------------------------ extras


def test_pod_monitor_scrapes_the_operators_metrics_port() -> None:
    objects = chart.render(VALUE_SETS["pod-monitor"])
    monitor = _one(objects, "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    deployment = _one(objects, "Deployment")
    assert (
        monitor["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    )
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["path"] == "/metrics"
    assert "metrics" in {p["name"] for p in _container(objects)["ports"]}
    assert not _by_kind(chart.render(), "PodMonitor")


def test_dashboard_configmap_is_sidecar_discoverable_and_carries_the_file() -> None:
    objects = chart.render(VALUE_SETS["dashboard"])
    config_map = _one(objects, "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "monitoring"
    (payload,) = config_map["data"].values()
    shipped = json.loads((chart.CHART_DIR / "dashboards" / "vlm-operator.json").read_text())
    assert json.loads(payload) == shipped
    assert not _by_kind(chart.render(), "ConfigMap")


NOTES = "vlm-operator/templates/NOTES.txt"

#: Stands in for kubectl when the notes' commands run: each call leaves its
#: arguments (one a line) and its standard input in files numbered in order
#: (counted in a file: a call in a pipeline runs in a subshell).
KUBECTL_STUB = """
kubectl() {
    echo >> calls
    n=$(($(wc -l < calls)))
    printf '%s\\n' "$@" > "kubectl-$n.args"
    cat > "kubectl-$n.stdin"
}
"""


def _kubectl_commands(notes: str) -> str:
    """The notes' command blocks (runs of lines indented five spaces) that call
    kubectl, as rendered: indentation and all, as a reader pastes them."""
    blocks: list[list[str]] = [[]]
    for line in notes.splitlines():
        if line.startswith("     "):
            blocks[-1].append(line)
        elif blocks[-1]:
            blocks.append([])
    return "\n".join(line for block in blocks if "kubectl " in "".join(block) for line in block)


def test_notes_tell_what_to_apply_next() -> None:
    notes = chart.render_texts(VALUE_SETS["namespaced"])[NOTES]
    assert "team-a, team-b" in notes
    assert "vlm-operator inspect team-a/demo" in notes


@pytest.mark.parametrize("shell", ["bash", "sh"])
@pytest.mark.parametrize(("case", "namespace"), [("namespaced", "team-a"), ("default", "default")])
def test_notes_commands_work_pasted_as_rendered(
    shell: str, case: str, namespace: str, tmp_path: Path
) -> None:
    script = _kubectl_commands(chart.render_texts(VALUE_SETS[case])[NOTES])
    subprocess.run(
        [shell, "-c", KUBECTL_STUB + script],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        check=True,
        timeout=30,
    )
    calls = [
        (path.read_text().splitlines(), path.with_suffix(".stdin").read_text())
        for path in sorted(tmp_path.glob("kubectl-*.args"), key=lambda p: int(p.stem[8:]))
    ]
    # Each line its own command, in the namespace the demo went to (an
    # unterminated here-document would swallow the lines after it).
    assert [args for args, _ in calls] == [
        ["-n", chart.RELEASE_NAMESPACE, "rollout", "status", f"deployment/{chart.RELEASE_NAME}"],
        ["apply", "-n", namespace, "-f", "-"],
        ["get", "vlms", "-n", namespace, "-w"],
        ["describe", "vlms", "demo", "-n", namespace],
    ]
    applied = yaml.safe_load(calls[1][1])
    assert VLMService.model_validate(applied).name == "demo"
    assert [stdin for _, stdin in calls if stdin] == [calls[1][1]]


# ------------------------------------------- values that read as other YAML types
#
# Names, namespaces, keys and labels such as "true", "null" or "123" pass the
# schema's patterns; written bare into the YAML they would become a boolean, a
# null or an integer (an object in the wrong namespace, a binding to no one, a
# manifest the API server refuses), and some strings break the YAML itself.


def _strict_render(
    values: Mapping[str, Any], *, name: str = chart.RELEASE_NAME, namespace: str | None = None
) -> list[dict[str, Any]]:
    """The chart's objects, each template's text read as kubectl reads it (a key
    given twice is an error, not the last one kept)."""
    texts = chart.render_texts(values, name=name, namespace=namespace or chart.RELEASE_NAMESPACE)
    return [
        obj
        for path, text in texts.items()
        if not path.endswith("NOTES.txt")
        for obj in load_documents(text)
    ]


def _pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    template: dict[str, Any] = _one(objects, "Deployment")["spec"]["template"]
    return template


def _secret_volume(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (volume,) = [v for v in _pod(objects)["spec"]["volumes"] if v["name"] == name]
    source: dict[str, Any] = volume["secret"]
    return source


@pytest.mark.parametrize(
    ("secret", "volume", "flag", "directory"),
    [
        (
            "bearerTokenSecret",
            "prometheus-token",
            "prometheus-bearer-token-file",
            "prometheus-token",
        ),
        ("caSecret", "prometheus-ca", "prometheus-ca-file", "prometheus-ca"),
    ],
)
@pytest.mark.parametrize(("name", "key"), [("tok", "true"), ("ca", "null"), ("123", "ca.crt")])
def test_secret_names_and_keys_stay_strings(
    secret: str, volume: str, flag: str, directory: str, name: str, key: str
) -> None:
    objects = _strict_render({"prometheus": {secret: {"name": name, "key": key}}})
    source = _secret_volume(objects, volume)
    assert source["secretName"] == name
    assert source["items"] == [{"key": key, "path": key}]
    path = f"/var/run/secrets/vlm-operator/{directory}/{key}"
    assert f"--{flag}={path}" in _operator_args(objects)


@pytest.mark.parametrize("watch", [[], ["team-a"]])
def test_a_service_account_named_null_is_the_one_bound_and_run_as(watch: list[str]) -> None:
    objects = _strict_render({"serviceAccount": {"name": "null"}, "watchNamespaces": watch})
    assert _one(objects, "ServiceAccount")["metadata"]["name"] == "null"
    assert _pod(objects)["spec"]["serviceAccountName"] == "null"
    bindings = _by_kind(objects, "ClusterRoleBinding") + _by_kind(objects, "RoleBinding")
    assert len(bindings) == (2 if watch else 1)
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "null", "namespace": chart.RELEASE_NAMESPACE}
        ]
    # Not created by the chart: the pod still runs as the account named.
    borrowed = _strict_render({"serviceAccount": {"create": False, "name": "null"}})
    assert not _by_kind(borrowed, "ServiceAccount")
    assert _pod(borrowed)["spec"]["serviceAccountName"] == "null"


def test_a_name_override_of_true_is_the_name_label_of_every_object() -> None:
    objects = _strict_render(
        {"nameOverride": "true", "podMonitor": {"enabled": True}, "dashboard": {"enabled": True}}
    )
    labelled = [obj["metadata"]["labels"] for obj in objects]
    labelled.append(_pod(objects)["metadata"]["labels"])
    assert len(labelled) >= 7
    for labels in labelled:
        assert labels["app.kubernetes.io/name"] == "true"
        assert labels["app.kubernetes.io/instance"] == chart.RELEASE_NAME
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
    deployment = _one(objects, "Deployment")
    assert deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "true"
    assert deployment["metadata"]["name"] == f"{chart.RELEASE_NAME}-true"


def test_a_full_name_of_null_names_every_object() -> None:
    values = {
        "fullnameOverride": "null",
        "watchNamespaces": ["team-a"],
        "podMonitor": {"enabled": True},
        "dashboard": {"enabled": True},
        "prometheusRule": {"enabled": True},
    }
    objects = _strict_render(values)
    names = {(obj["kind"], obj["metadata"]["name"]) for obj in objects}
    assert names == {
        ("ServiceAccount", "null"),
        ("Role", "null"),
        ("RoleBinding", "null"),
        ("ClusterRole", f"{chart.RELEASE_NAMESPACE}-null-discovery"),
        ("ClusterRoleBinding", f"{chart.RELEASE_NAMESPACE}-null-discovery"),
        ("ClusterRole", f"{chart.RELEASE_NAMESPACE}-null-edit"),
        ("ClusterRole", f"{chart.RELEASE_NAMESPACE}-null-view"),
        ("Deployment", "null"),
        ("PodMonitor", "null"),
        ("ConfigMap", "null-dashboard"),
        ("PrometheusRule", "null"),
    }
    for binding in _by_kind(objects, "RoleBinding") + _by_kind(objects, "ClusterRoleBinding"):
        assert binding["roleRef"]["name"] == binding["metadata"]["name"]
        assert [s["name"] for s in binding["subjects"]] == ["null"]


def test_a_release_named_true_in_namespace_null_keeps_both() -> None:
    objects = _strict_render(
        {"watchNamespaces": ["team-a"], "podMonitor": {"enabled": True}},
        name="true",
        namespace="null",
    )
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "true"
        if obj["kind"] in {"ServiceAccount", "Deployment", "PodMonitor"}:
            assert obj["metadata"]["namespace"] == "null"
    for binding in _by_kind(objects, "RoleBinding") + _by_kind(objects, "ClusterRoleBinding"):
        assert [s["namespace"] for s in binding["subjects"]] == ["null"]
    assert _one(objects, "PodMonitor")["spec"]["namespaceSelector"] == {"matchNames": ["null"]}
    selector = _one(objects, "Deployment")["spec"]["selector"]["matchLabels"]
    assert selector["app.kubernetes.io/instance"] == "true"


def test_watched_namespaces_like_null_get_their_own_role() -> None:
    watch = ["null", "123", "true"]
    objects = _strict_render({"watchNamespaces": watch})
    for kind in ("Role", "RoleBinding"):
        assert [obj["metadata"]["namespace"] for obj in _by_kind(objects, kind)] == watch
    args = _operator_args(objects)
    assert _flag(args, "namespace") == watch
    assert build_parser().parse_args(args).namespace == watch


def test_a_prometheus_url_ending_in_a_colon_is_one_argument() -> None:
    args = _operator_args(_strict_render({"prometheus": {"url": "http://prom:9090/x:"}}))
    assert "--prometheus-url=http://prom:9090/x:" in args
    assert all(isinstance(arg, str) for arg in args)


def test_a_priority_class_and_pull_secrets_named_like_scalars_stay_strings() -> None:
    objects = _strict_render(
        {"priorityClassName": "123", "imagePullSecrets": ["true", {"name": "null"}]}
    )
    pod = _pod(objects)["spec"]
    assert pod["priorityClassName"] == "123"
    assert pod["imagePullSecrets"] == [{"name": "true"}, {"name": "null"}]


def test_pod_labels_add_to_the_charts_own_which_win() -> None:
    pod_labels = {
        "app.kubernetes.io/component": "controller",
        "app.kubernetes.io/name": "other",
        "team": "ml",
        "canary": "true",
    }
    objects = _strict_render({"podLabels": pod_labels})
    deployment = _one(objects, "Deployment")
    own = deployment["metadata"]["labels"]
    assert own["app.kubernetes.io/component"] == "operator"
    labels = _pod(objects)["metadata"]["labels"]
    assert labels == {**own, "team": "ml", "canary": "true"}
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize(
    ("key", "kind", "defaults"),
    [
        ("podMonitor", "PodMonitor", {}),
        ("dashboard", "ConfigMap", {"grafana_dashboard": "1"}),
        ("prometheusRule", "PrometheusRule", {}),
    ],
)
def test_monitoring_labels_add_to_the_charts_own_which_win(
    key: str, kind: str, defaults: dict[str, str]
) -> None:
    labels = {"app.kubernetes.io/component": "monitoring", "release": "true"}
    objects = _strict_render({key: {"enabled": True, "labels": labels}})
    own = _one(objects, "Deployment")["metadata"]["labels"]
    assert own["app.kubernetes.io/component"] == "operator"
    assert _one(objects, kind)["metadata"]["labels"] == {**own, **defaults, "release": "true"}


@pytest.mark.parametrize(
    ("key", "kind"), [("dashboard", "ConfigMap"), ("prometheusRule", "PrometheusRule")]
)
@pytest.mark.parametrize("namespace", ["null", "true", "123"])
def test_monitoring_namespaces_like_null_are_kept(key: str, kind: str, namespace: str) -> None:
    objects = _strict_render({key: {"enabled": True, "namespace": namespace}})
    assert _one(objects, kind)["metadata"]["namespace"] == namespace


# ------------------------------------------------------------------ drift


def test_chart_crd_equals_the_generated_crd() -> None:
    generated = (REPO / "crds" / "vlmservice.yaml").read_text()
    assert (chart.CHART_DIR / "crds" / "vlmservice.yaml").read_text() == generated, (
        "charts/vlm-operator/crds/vlmservice.yaml is stale: run `make crd`"
    )


def test_install_manifest_equals_the_default_render() -> None:
    assert chart.INSTALL_MANIFEST.read_text() == chart.install_manifest(), (
        "manifests/install.yaml is stale: run `make install-manifest`"
    )
    objects = [doc for doc in yaml.safe_load_all(chart.INSTALL_MANIFEST.read_text()) if doc]
    kinds = [obj["kind"] for obj in objects]
    assert kinds[:2] == ["Namespace", "CustomResourceDefinition"]
    assert {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"} <= set(kinds)
    namespaced = [o for o in objects if o["kind"] in {"ServiceAccount", "Deployment"}]
    assert {o["metadata"]["namespace"] for o in namespaced} == {objects[0]["metadata"]["name"]}


def test_chart_version_follows_the_package() -> None:
    metadata = yaml.safe_load((chart.CHART_DIR / "Chart.yaml").read_text())
    assert metadata["appVersion"] == __version__
    values: Mapping[str, Any] = yaml.safe_load((chart.CHART_DIR / "values.yaml").read_text())
    assert f"{values['image']['repository']}:{metadata['appVersion']}" == DEFAULT_OPERATOR_IMAGE
