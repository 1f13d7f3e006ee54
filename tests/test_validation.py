"""Turning bad VLMServices into one clear line per problem."""

from __future__ import annotations

from typing import Any

import pytest
from vlm_operator.models import VLMServiceSpec
from vlm_operator.runtimes import QWEN3_VL_2B_ID as QWEN
from vlm_operator.validation import (
    FieldError,
    InvalidManifest,
    load_services,
    parse_service,
    parse_spec,
    quantity_bytes,
    spec_warnings,
)

HEADER = "apiVersion: vlm-operator.io/v1alpha1\nkind: VLMService\nmetadata: {name: demo}\n"


def _errors(spec: Any) -> list[FieldError]:
    with pytest.raises(InvalidManifest) as info:
        parse_spec(spec)
    return info.value.errors


@pytest.mark.parametrize(
    ("spec", "path", "reason"),
    [
        (
            {"model": {"id": "m"}, "autoscaling": {"minReplicas": -1}},
            "spec.autoscaling.minReplicas",
            "must be >= 1, got -1",
        ),
        (
            # No bound holds NaN: the reason is that, not the bound.
            {"model": {"id": "m"}, "autoscaling": {"targetUtilization": float("nan")}},
            "spec.autoscaling.targetUtilization",
            "must be a finite number, got nan",
        ),
        (
            # No pod, no gate to count requests: nothing would scale it up again.
            {"model": {"id": "m"}, "autoscaling": {"minReplicas": 0}},
            "spec.autoscaling.minReplicas",
            "must be >= 1, got 0",
        ),
        (
            {"model": {"id": "m"}, "monitoring": {"interval": "0s"}},
            "spec.monitoring.interval",
            "must match ^0*[1-9][0-9]*(ms|s|m)$, got '0s'",
        ),
        (
            {"model": {"id": "m"}, "autoscaling": {"minReplicas": 5, "maxReplicas": 2}},
            "spec.autoscaling",
            "minReplicas must be less than or equal to maxReplicas",
        ),
        (
            {"model": {"id": "m"}, "concurrency": {"queueTimeoutSeconds": -3}},
            "spec.concurrency",
            "queueTimeoutSeconds must be positive",
        ),
        (
            {"model": {"id": "m"}, "concurrency": {"responseTimeoutSeconds": 0}},
            "spec.concurrency",
            "responseTimeoutSeconds must be positive",
        ),
        (
            {"model": {"id": "m", "runtime": "vllm"}},
            "spec.model.runtime",
            "must be one of 'llamacpp', 'transformers', 'fake' or 'custom', got 'vllm'",
        ),
        ({"model": {"id": "m", "colour": "red"}}, "spec.model.colour", "unknown field"),
        ({}, "spec.model", "required field is missing"),
        (
            {"model": {"id": "m", "env": [{"name": "A"}, {"value": "x"}]}},
            "spec.model.env[1].name",
            "required field is missing",
        ),
        (
            {"model": {"id": "m"}, "concurrency": {"maxInFlight": "many"}},
            "spec.concurrency.maxInFlight",
            "must be a valid integer, unable to parse string as an integer, got 'many'",
        ),
        (
            {"model": {"id": "m"}, "resources": {"limits": {"memory": "lots"}}},
            "spec.resources.limits.memory",
            "must be a Kubernetes quantity such as 8, 500m or 12Gi, got 'lots'",
        ),
        (
            {"model": {"id": "m"}, "autoscaling": {"targetUtilization": 0}},
            "spec.autoscaling.targetUtilization",
            "must be > 0, got 0",
        ),
        (
            {"model": {"id": "m"}, "metrics": {"prometheusUrl": "http://prometheus:9O90"}},
            "spec.metrics.prometheusUrl",
            "must be an http(s) URL with a host and a numeric port if any, "
            "got 'http://prometheus:9O90'",
        ),
        (
            {"model": {"id": "m"}, "metrics": {"prometheusUrl": "http://prometheus:99999"}},
            "spec.metrics.prometheusUrl",
            "must be an http(s) URL with a host and a numeric port if any, "
            "got 'http://prometheus:99999'",
        ),
        ({"model": "qwen"}, "spec.model", "must be a mapping, got the string 'qwen'"),
        (
            {"model": {"id": "m", "args": "--x"}},
            "spec.model.args",
            "must be a list, got the string '--x'",
        ),
    ],
)
def test_errors_name_the_field_in_camel_case(spec: Any, path: str, reason: str) -> None:
    errors = _errors(spec)
    assert FieldError(path, reason) in errors, errors


def test_every_problem_is_reported() -> None:
    errors = _errors(
        {"model": {"id": "", "runtime": "x"}, "concurrency": {"queueSize": -1}, "bogus": 1}
    )
    assert {e.path for e in errors} == {
        "spec.model.id",
        "spec.model.runtime",
        "spec.concurrency.queueSize",
        "spec.bogus",
    }


def test_spec_must_be_a_mapping() -> None:
    assert _errors(["model"]) == [FieldError("spec", "must be a mapping, got a list")]


def test_a_whole_service() -> None:
    (service,) = load_services(HEADER + "spec:\n  model: {id: m, runtime: fake}\n")
    assert (service.name, service.namespace) == ("demo", "default")
    assert service.spec.model.runtime == "fake"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [b", "not valid YAML at line 1, column 6"),
        ("", "no VLMService in the input"),
        ("- a\n- b\n", "a VLMService must be a mapping, got a list"),
        (
            "apiVersion: apps/v1\nkind: Deployment\n",
            "got apiVersion: 'apps/v1' and kind: 'Deployment'",
        ),
        (
            "apiVersion: vlm-operator.io/v1\nkind: VLMService\n",
            "expected apiVersion: vlm-operator.io/v1alpha1",
        ),
        (
            HEADER.replace("demo", "Demo") + "spec: {model: {id: m}}\n",
            "metadata.name: must be a DNS-1035",
        ),
        (
            HEADER.replace("metadata: {name: demo}\n", "") + "spec: {model: {id: m}}\n",
            "metadata: must be a mapping",
        ),
        (HEADER, "spec: required field is missing"),
        (HEADER + "spec: {model: {id: m}}\nextra: 1\n", "extra: unknown field"),
        # PyYAML would keep the second silently; kubectl's strict decoding refuses it.
        (
            HEADER + "spec:\n  model: {id: m}\n  replicas: 2\n  replicas: 3\n",
            "not valid YAML at line 7, column 3: found the key 'replicas' twice",
        ),
    ],
)
def test_not_a_vlmservice(text: str, message: str) -> None:
    with pytest.raises(InvalidManifest) as info:
        load_services(text)
    assert message in str(info.value)


def test_several_documents_say_which_one_is_wrong() -> None:
    good = HEADER + "spec: {model: {id: m}}\n"
    bad = HEADER + "spec: {model: {id: m, runtime: x}}\n"
    assert len(load_services(good + "---\n" + good)) == 2
    with pytest.raises(InvalidManifest) as info:
        load_services(good + "---\n" + bad)
    assert str(info.value).startswith("document 2: spec.model.runtime: must be one of")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        # The CRD's schema refuses these; read leniently they rendered as 8000 and True.
        ("{model: {id: m}, gate: {port: '8000'}}", "spec.gate.port: must be a valid integer"),
        (
            "{model: {id: m}, autoscaling: {enabled: 'true'}}",
            "spec.autoscaling.enabled: must be a valid boolean, got 'true'",
        ),
        (
            "{model: {id: m}, autoscaling: {targetUtilization: '0.5'}}",
            "spec.autoscaling.targetUtilization: must be a valid number",
        ),
        ("{model: {id: m}, replicas: 2.5}", "spec.replicas: must be a valid integer, got 2.5"),
    ],
)
def test_a_manifest_is_typed_as_the_api_server_types_it(spec: str, message: str) -> None:
    with pytest.raises(InvalidManifest) as info:
        load_services(HEADER + f"spec: {spec}\n")
    assert message in str(info.value)


def test_what_the_api_server_accepts_is_read() -> None:
    # A whole float is an integer to the API server; kubectl sends a date as a string.
    text = HEADER.replace("{name: demo}", "{name: demo, annotations: {since: 2024-01-01}}")
    (service,) = load_services(
        text + "spec: {model: {id: m}, replicas: 3.0, autoscaling: {targetUtilization: 1}}\n"
    )
    assert service.spec.replicas == 3
    assert service.spec.autoscaling.target_utilization == 1.0
    # kubectl reads exponents YAML 1.1 takes for text (no dot, no sign) as numbers.
    (service,) = load_services(
        HEADER + "spec: {model: {id: m}, autoscaling: {targetUtilization: 5e-1, maxReplicas: 1e2}}"
    )
    assert service.spec.autoscaling.target_utilization == 0.5
    assert service.spec.autoscaling.max_replicas == 100
    # Quoted, it is the text it says.
    with pytest.raises(InvalidManifest, match="targetUtilization: must be a valid number"):
        load_services(HEADER + "spec: {model: {id: m}, autoscaling: {targetUtilization: '5e-1'}}")


def test_a_key_kubectl_reads_as_a_bool_is_sent_as_json_spells_it() -> None:
    # kubectl reads the key `on` as true, and JSON's key is "true", not Python's "True".
    (service,) = load_services(
        HEADER + "spec: {model: {id: m, runtime: fake}, monitoring: {labels: {on: a, 'y': b}}}"
    )
    assert service.spec.monitoring.labels == {"true": "a", "y": "b"}


def test_a_key_may_be_overridden_after_a_merge() -> None:
    # ``<<`` merges keys that the mapping may then set again: no duplicate.
    text = HEADER + "spec:\n  <<: {model: {id: m}, replicas: 1}\n  replicas: 3\n"
    (service,) = load_services(text)
    assert service.spec.replicas == 3


def test_status_is_tolerated() -> None:
    service = parse_service(
        {
            "apiVersion": "vlm-operator.io/v1alpha1",
            "kind": "VLMService",
            "metadata": {"name": "a", "namespace": "ns", "uid": "u"},
            "spec": {"model": {"id": "m"}},
            "status": {"replicas": 2, "somethingNew": True},
        }
    )
    assert service.status is not None
    assert service.status.replicas == 2


def _spec(data: dict[str, Any]) -> VLMServiceSpec:
    return VLMServiceSpec.model_validate(data)


@pytest.mark.parametrize(
    ("data", "paths"),
    [
        ({"model": {"id": "m", "runtime": "fake"}}, []),
        ({"model": {"id": QWEN, "storage": {"pvc": {"claimName": "c"}}}}, []),
        ({"model": {"id": QWEN}}, ["spec.model.storage"]),
        ({"model": {"id": QWEN, "runtime": "transformers"}}, ["spec.model.storage"]),
        ({"model": {"id": "m", "runtime": "fake"}, "gate": {"port": 8080}}, ["spec.model.port"]),
        ({"model": {"id": "m", "runtime": "fake", "port": 8000}}, ["spec.model.port"]),
        (
            {
                "model": {
                    "id": QWEN,
                    "storage": {"pvc": {"claimName": "c"}, "download": {"image": "d"}},
                }
            },
            ["spec.model.storage.pvc.readOnly"],
        ),
        (
            {"model": {"id": "m", "runtime": "fake", "storage": {"download": {"image": "d"}}}},
            ["spec.model.storage.download"],
        ),
        # Empty file names are Qwen3-VL-2B-Instruct's, whatever the id says.
        (
            {"model": {"id": "m", "storage": {"pvc": {"claimName": "c"}}}},
            ["spec.model.files.model", "spec.model.files.mmproj"],
        ),
        (
            {
                "model": {
                    "id": "m",
                    "storage": {"pvc": {"claimName": "c"}},
                    "files": {"model": "m.gguf"},
                }
            },
            ["spec.model.files.mmproj"],
        ),
        (
            {
                "model": {
                    "id": "m",
                    "runtime": "transformers",
                    "storage": {"pvc": {"claimName": "c"}},
                }
            },
            ["spec.model.files.model"],
        ),
        (
            {
                "model": {
                    "id": "m",
                    "runtime": "transformers",
                    "storage": {"pvc": {"claimName": "c"}},
                    "files": {"model": "m"},
                }
            },
            [],
        ),
        # A fallback above maxReplicas is capped there: said so.
        (
            {
                "model": {"id": "m", "runtime": "fake"},
                "autoscaling": {
                    "maxReplicas": 5,
                    "missingSignals": {"action": "Fallback", "fallbackReplicas": 9},
                },
            },
            ["spec.autoscaling.missingSignals.fallbackReplicas"],
        ),
        (
            {
                "model": {"id": "m", "runtime": "fake"},
                "autoscaling": {
                    "maxReplicas": 5,
                    "missingSignals": {"action": "Fallback", "fallbackReplicas": 5},
                },
            },
            [],
        ),
        # `kubectl scale` with the autoscaler on: moot, and said so.
        ({"model": {"id": "m", "runtime": "fake"}, "replicas": 3}, ["spec.replicas"]),
        (
            {
                "model": {"id": "m", "runtime": "fake"},
                "replicas": 3,
                "autoscaling": {"enabled": False},
            },
            [],
        ),
    ],
)
def test_warnings_for_pods_that_would_never_start(data: dict[str, Any], paths: list[str]) -> None:
    assert [w.path for w in spec_warnings(_spec(data))] == paths


@pytest.mark.parametrize(
    ("window", "monitoring", "warned"),
    [
        (30, {"podMonitor": True}, False),  # the defaults: six scrapes of 5 s
        (20, {"podMonitor": True, "interval": "5s"}, False),
        (19, {"podMonitor": True, "interval": "5s"}, True),
        (30, {"podMonitor": True, "interval": "1m"}, True),
        (5, {"podMonitor": True, "interval": "1000ms"}, False),
        (5, {"podMonitor": True, "interval": "5s"}, True),
        (5, {"podMonitor": False, "interval": "5s"}, False),  # scraped elsewhere: unknown
    ],
)
def test_a_rate_window_of_too_few_scrapes_is_a_warning(
    window: int, monitoring: dict[str, Any], warned: bool
) -> None:
    spec = _spec({"model": {"id": "m", "runtime": "fake"}, "metrics": {"windowSeconds": window},
                  "monitoring": monitoring})  # fmt: skip
    warnings = spec_warnings(spec)
    assert [w.path for w in warnings] == (["spec.metrics.windowSeconds"] if warned else [])
    if warned:
        assert "at least" in warnings[0].reason


@pytest.mark.parametrize(
    ("concurrency", "gate", "warned"),
    [
        ({}, {}, False),  # the defaults: 96 MiB of bodies held, 256Mi
        ({"maxRequestBytes": 120 * 2**20}, {}, False),  # 120 + 128 MiB: it fits
        ({"maxRequestBytes": 200 * 2**20}, {}, True),  # one body alone is 200 MiB
        ({"maxRequestBytes": 200 * 2**20}, {"resources": {"limits": {"memory": "1Gi"}}}, False),
        ({"maxRequestBytes": 200 * 2**20}, {"resources": {"limits": {"memory": "300M"}}}, True),
        ({"maxRequestBytes": 200 * 2**20}, {"resources": {"limits": {}}}, False),  # no limit
        ({}, {"resources": {"limits": {"memory": "128Mi"}}}, True),
    ],
)
def test_a_gate_memory_limit_below_the_bodies_it_holds_is_a_warning(
    concurrency: dict[str, Any], gate: dict[str, Any], warned: bool
) -> None:
    spec = _spec({"model": {"id": "m", "runtime": "fake"}, "concurrency": concurrency,
                  "gate": gate})  # fmt: skip
    warnings = [w for w in spec_warnings(spec) if w.path.startswith("spec.gate")]
    assert [w.path for w in warnings] == (["spec.gate.resources.limits.memory"] if warned else [])
    if warned:
        assert "maxRequestBytes" in warnings[0].reason
        assert "raise it to" in warnings[0].reason


_QWEN = "Qwen/Qwen3-VL-2B-Instruct"
_PVC = {"pvc": {"claimName": "c"}}


@pytest.mark.parametrize(
    ("data", "paths"),
    [
        # llama-server runs at most 256 slots, and allocates each one's KV cache at start:
        # 448 MiB of Qwen3-VL-2B's each (4096 tokens of 112 KiB), plus ~2 GiB.
        ({"model": {"id": _QWEN, "storage": _PVC}}, []),
        (
            {"model": {"id": _QWEN, "storage": _PVC}, "concurrency": {"maxInFlight": 31}},
            [],  # 13.6 + 2 GiB < 16Gi
        ),
        (
            {"model": {"id": _QWEN, "storage": _PVC}, "concurrency": {"maxInFlight": 33}},
            ["spec.resources.limits.memory"],  # 14.4 + 2 GiB > 16Gi
        ),
        (
            {
                "model": {"id": _QWEN, "storage": _PVC},
                "concurrency": {"maxInFlight": 300},
                "resources": {"limits": {"memory": "200Gi"}},
            },
            ["spec.concurrency.maxInFlight"],
        ),
        (  # a context of the user's: the server's is the last --ctx-size
            {
                "model": {
                    "id": _QWEN,
                    "storage": _PVC,
                    "args": ["--ctx-size", "4096", "--ctx-size", "262144"],
                },
            },
            ["spec.resources.limits.memory"],  # 28 + 2 GiB > 16Gi
        ),
        (
            {"model": {"id": _QWEN, "storage": _PVC, "args": ["--ctx-size=8192"]}},
            [],
        ),
        (  # another model's weights: its cache is its own, not estimated
            {
                "model": {"id": _QWEN, "storage": _PVC, "files": {"model": "big.gguf"}},
                "concurrency": {"maxInFlight": 64},
            },
            [],
        ),
        # --alias is split at commas.
        (
            {
                "model": {
                    "id": "acme/vlm,v2",
                    "storage": _PVC,
                    "files": {"model": "m.gguf", "mmproj": "p.gguf"},
                }
            },
            ["spec.model.id"],
        ),
        ({"model": {"id": "acme/vlm,v2", "runtime": "fake"}}, []),
        # Files a runtime does not read.
        (
            {
                "model": {
                    "id": _QWEN,
                    "runtime": "transformers",
                    "storage": _PVC,
                    "files": {"mmproj": "p.gguf"},
                }
            },
            ["spec.model.files.mmproj"],
        ),
        (
            {"model": {"id": "m", "runtime": "fake", "files": {"model": "m"}}},
            ["spec.model.files.model"],
        ),
        # Variables the preset's flags override; others pass.
        (
            {
                "model": {
                    "id": _QWEN,
                    "storage": _PVC,
                    "env": [
                        {"name": "LLAMA_ARG_N_PARALLEL", "value": "1"},
                        {"name": "LLAMA_ARG_N_PREDICT", "value": "64"},
                        {"name": "LLAMA_ARG_CTX_SIZE", "value": "512"},
                    ],
                }
            },
            ["spec.model.env[0]", "spec.model.env[2]"],
        ),
        (  # --threads only when a CPU quantity is set
            {
                "model": {
                    "id": _QWEN,
                    "storage": _PVC,
                    "env": [{"name": "LLAMA_ARG_THREADS", "value": "2"}],
                },
                "resources": {"requests": {"cpu": None}},
            },
            [],
        ),
        (
            {
                "model": {
                    "id": _QWEN,
                    "runtime": "transformers",
                    "storage": _PVC,
                    "env": [
                        {"name": "VLM_MODEL_SERVER_MAX_CONCURRENT", "value": "1"},
                        {"name": "VLM_MODEL_SERVER_MAX_NEW_TOKENS", "value": "64"},
                        {"name": "VLM_MODEL_SERVER_MODEL_ID", "value": "x"},
                    ],
                }
            },
            ["spec.model.env[0]", "spec.model.env[2]"],
        ),
        # A mount over the image's own directories.
        (
            {"model": {"id": _QWEN, "storage": {**_PVC, "mountPath": "/"}}},
            ["spec.model.storage.mountPath"],
        ),
        (
            {"model": {"id": _QWEN, "storage": {**_PVC, "mountPath": "/usr/"}}},
            ["spec.model.storage.mountPath"],
        ),
        (
            {"model": {"id": _QWEN, "storage": {**_PVC, "mountPath": "/app"}}},
            ["spec.model.storage.mountPath"],
        ),
        ({"model": {"id": _QWEN, "storage": {**_PVC, "mountPath": "/usr/share/models"}}}, []),
        ({"model": {"id": _QWEN, "storage": {**_PVC, "mountPath": "/application"}}}, []),
    ],
)
def test_warnings_for_what_the_runtime_ignores_refuses_or_cannot_hold(
    data: dict[str, Any], paths: list[str]
) -> None:
    warnings = spec_warnings(_spec(data))
    assert [w.path for w in warnings] == paths
    for warning in warnings:
        if warning.path.startswith("spec.model.env"):
            assert "overridden by the preset's" in warning.reason


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [("256Mi", 256 * 2**20), ("1Gi", 2**30), ("300M", 300e6), ("1e9", 1e9), ("512", 512.0),
     ("1.5Gi", 1.5 * 2**30), ("100m", 0.1), ("lots", None)],
)  # fmt: skip
def test_memory_quantities_are_read_as_kubernetes_reads_them(
    quantity: str, expected: float | None
) -> None:
    assert quantity_bytes(quantity) == expected


@pytest.mark.parametrize(
    ("field", "labels"),
    [
        ("placement.nodeSelector", {"my pool": "cpu"}),
        ("monitoring.labels", {"-release": "x"}),
        ("networkPolicy.allowFromPods", {"a/b/c": "web"}),
        ("networkPolicy.allowFromNamespaces", {"Team.Example/name": "a"}),
        ("placement.nodeSelector", {"n" * 64: "x"}),
        # Go's regexp has no "$ before a final newline"; nor a prefix past 253 characters.
        ("placement.nodeSelector", {"pool\n": "x"}),
        ("monitoring.labels", {"p" * 254 + "/name": "x"}),
    ],
)
def test_a_label_key_is_checked_by_the_operator(field: str, labels: dict[str, str]) -> None:
    # The schema checks label values; keys only the operator does (a rule over a map's
    # keys is priced at the request's size), naming the field and the key.
    section, name = field.split(".")
    spec = {"model": {"id": "m", "runtime": "fake"}, section: {name: labels}}
    with pytest.raises(InvalidManifest) as info:
        parse_spec(spec)
    (error,) = info.value.errors
    key = next(iter(labels))
    assert error.path == f"spec.{field}"
    assert error.reason.startswith(f"key {key!r} must be a label key")


def test_label_keys_of_every_allowed_shape_pass() -> None:
    longest = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61]) + "/" + "e" * 63
    labels = {longest: "", "app.kubernetes.io/name": "web", "A_b-c.1": "v"}
    spec = parse_spec(
        {"model": {"id": "m", "runtime": "fake"}, "placement": {"nodeSelector": labels}}
    )
    assert spec.placement.node_selector == labels
