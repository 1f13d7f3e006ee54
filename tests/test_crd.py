"""The generated CRD: equal to the models, structural, and agreeing with them on every rule."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError
from vlm_operator.crd import SchemaDrift, crd, crd_yaml, openapi_schema, schema_drift
from vlm_operator.models import VLMServiceSpec, VLMServiceStatus
from vlm_operator.validation import NAME_PATTERN

from tests.crd_check import (
    CEL_KEY,
    apply_defaults,
    cel_errors,
    compiles,
    example_files,
    schema_errors,
    to_json_schema,
    walk,
)

REPO = Path(__file__).resolve().parent.parent
CRD_FILE = REPO / "crds" / "vlmservice.yaml"
EXAMPLES = example_files(REPO / "manifests")
KUBERNETES_VERSIONS = ["1.30", kubernetes_validate.latest_version()]

SCHEMA = openapi_schema()
SPEC_SCHEMA = SCHEMA["properties"]["spec"]


def _examples() -> list[dict[str, Any]]:
    documents = []
    for path in EXAMPLES:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "VLMService":
                documents.append(doc)
    return documents


def test_crd_file_is_the_generated_one() -> None:
    assert CRD_FILE.read_text() == crd_yaml(), (
        "crds/vlmservice.yaml disagrees with vlm_operator/models.py; regenerate it with `make crd`"
    )


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_crd_is_a_valid_custom_resource_definition(version: str) -> None:
    kubernetes_validate.validate(crd(), version, strict=True)


def test_names_scope_and_subresources() -> None:
    spec = crd()["spec"]
    assert spec["group"] == "vlm-operator.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "VLMService"
    assert spec["names"]["plural"] == "vlmservices"
    assert spec["names"]["shortNames"] == ["vlms"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1"
    assert version["served"]
    assert version["storage"]
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    columns = {c["name"].upper(): c for c in version["additionalPrinterColumns"]}
    wanted = {
        "READY": ".status.readyReplicas",
        "REPLICAS": ".status.replicas",
        "DESIRED": ".status.desiredReplicas",
        "IN-FLIGHT/POD": ".status.signals.inFlightPerPod",
        "QUEUE": ".status.signals.waiting",
        "P95": ".status.signals.p95Seconds",
        "AGE": ".metadata.creationTimestamp",
    }
    for name, json_path in wanted.items():
        assert columns[name]["jsonPath"] == json_path
        assert columns[name].get("priority", 0) == 0, f"{name} must show without -o wide"


def test_printer_columns_and_scale_paths_exist_in_the_schema() -> None:
    version = crd()["spec"]["versions"][0]
    paths = [c["jsonPath"] for c in version["additionalPrinterColumns"]]
    paths += [p for p in version["subresources"]["scale"].values()]
    for json_path in paths:
        if json_path.startswith(".metadata"):
            continue
        node = SCHEMA
        for part in json_path.strip(".").split("."):
            assert part in node.get("properties", {}), f"{json_path} is not in the schema"
            node = node["properties"][part]


def test_schema_is_structural() -> None:
    for path, node in walk(SCHEMA):
        leftovers = {"$ref", "$defs", "title", "const"} & node.keys()
        assert not leftovers, f"{path}: pydantic-only keys {leftovers}"
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            continue
        if "<anyOf" in path:
            continue
        assert "anyOf" not in node, f"{path}: unions are not structural"
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), (
            f"{path} has no type"
        )
        if "properties" in node:
            assert "additionalProperties" not in node, path
        if "additionalProperties" in node:
            assert isinstance(node["additionalProperties"], dict), path
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            if bound in node:
                assert node[bound] is True, f"{path}: OpenAPI 3.0 uses a boolean {bound}"
    metadata = SCHEMA["properties"]["metadata"]
    assert set(metadata.get("properties", {})) <= {"name", "generateName"}


def test_every_field_of_the_models_is_described() -> None:
    for path, node in walk(SPEC_SCHEMA, "spec"):
        if "<anyOf" in path or path.endswith("[items]") or path.endswith("[additionalProperties]"):
            continue
        assert node.get("description"), f"{path} has no description"


def test_bounds_and_enums_come_from_the_models() -> None:
    autoscaling = SPEC_SCHEMA["properties"]["autoscaling"]["properties"]
    assert autoscaling["minReplicas"]["minimum"] == 1
    assert autoscaling["targetUtilization"]["minimum"] == 0
    assert autoscaling["targetUtilization"]["exclusiveMinimum"] is True
    assert autoscaling["targetUtilization"]["maximum"] == 1
    runtime = SPEC_SCHEMA["properties"]["model"]["properties"]["runtime"]
    assert runtime["enum"] == ["llamacpp", "transformers", "fake", "custom"]
    assert runtime["default"] == "llamacpp"
    max_in_flight = SPEC_SCHEMA["properties"]["concurrency"]["properties"]["maxInFlight"]
    assert max_in_flight["default"] == 4
    assert SPEC_SCHEMA["properties"]["model"]["properties"]["id"]["minLength"] == 1
    assert SPEC_SCHEMA["required"] == ["model"]


def test_enum_strings_are_bounded_for_the_cel_cost_estimate() -> None:
    for path, node in walk(SCHEMA):
        if "enum" in node:
            assert node["maxLength"] >= max(len(v) for v in node["enum"]), path


def test_status_schema_keeps_the_policy_state_as_is() -> None:
    status = SCHEMA["properties"]["status"]
    state = status["properties"]["autoscalerState"]
    assert state["x-kubernetes-preserve-unknown-fields"] is True
    written = VLMServiceStatus.model_validate(
        {
            "replicas": 3,
            "readyReplicas": 2,
            "desiredReplicas": 4,
            "selector": "a=b",
            "signals": {"inFlight": 8.0, "waiting": 3, "inFlightPerPod": 4.0},
            "lastDecision": {"time": "t", "replicas": 4, "direction": "up", "reason": "r"},
            "conditions": [{"type": "Ready", "status": "True"}],
            "autoscalerState": {"history": [[1.0, 3]], "nested": {"any": "thing"}},
        }
    ).to_api()
    assert schema_errors(status, written) == []


def test_defaults_are_valid_under_their_own_schema() -> None:
    checked = 0
    for path, node in walk(SCHEMA):
        if "default" in node:
            errors = list(
                jsonschema.Draft202012Validator(to_json_schema(node)).iter_errors(
                    apply_defaults(node, node["default"])
                )
            )
            assert errors == [], f"{path}: default {node['default']!r}: {errors[0].message}"
            checked += 1
    assert checked > 30


def test_rules_are_cheap_for_the_cost_estimator() -> None:
    """A rule under a list runs once per item: the list then needs maxItems.

    The API server multiplies a rule's estimated cost by the largest number of
    times it can run; rules on objects reached through objects only run once.
    Strings they compare are enums (bounded by maxLength) or only measured
    with size(), which costs the same at any length.
    """
    for path, node in walk(SCHEMA):
        if node.get(CEL_KEY) and "[items]" in path:
            parents = [
                n for p, n in walk(SCHEMA) if path.startswith(p) and n.get("type") == "array"
            ]
            assert all("maxItems" in n for n in parents), f"{path}: rule under an unbounded list"
    compared = 0
    for _, node in walk(SCHEMA):
        for rule in node.get(CEL_KEY, []):
            for dotted in re.findall(r"self((?:\.\w+)+)\s*(?:==|!=)", rule["rule"]):
                field = node
                for part in dotted.strip(".").split("."):
                    field = field["properties"][part]
                if field.get("type") == "string":
                    assert "maxLength" in field, f"{rule['rule']}: unbounded string compared"
                    compared += 1
    assert compared >= 2  # runtime and missingSignals.action


def test_every_rule_compiles_and_says_why() -> None:
    rules = [rule for _, node in walk(SCHEMA) for rule in node.get(CEL_KEY, [])]
    assert len(rules) >= 6
    for rule in rules:
        assert compiles(rule["rule"]), rule["rule"]
        assert rule["message"]


# ------------------------------------------------------------------ models ⇄ CRD


def _spec(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"id": "Qwen/Qwen3-VL-2B-Instruct", "runtime": "fake"}}
    for dotted, value in changes.items():
        node = spec
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return spec


#: A DNS subdomain of 253 characters, "/", a name of 63.
LONGEST_LABEL_KEY = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61]) + "/" + "e" * 63

RULE_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("minimal", _spec(), None),
    (
        "names, labels and paths of every allowed shape",
        _spec(
            model__files={"model": "qwen//..m.gguf", "mmproj": "./.p/mmproj.gguf"},
            model__storage={"hostPath": {"path": "/data//models/"}},
            model__env=[{"name": "_my.VAR-1", "value": "x y"}],
            model__image="ghcr.io/o/m:1@sha256:" + "a" * 64,
            placement__nodeSelector={"node.kubernetes.io/pool": "cpu_pool-1.a", "empty": ""},
            placement__priorityClassName="system-node-critical",
            placement__serviceAccountName="models.runner",
            placement__imagePullSecrets=["regcred"],
            monitoring__labels={"release": "kube-prometheus-stack"},
        ),
        None,
    ),
    ("min equals max", _spec(autoscaling__minReplicas=3, autoscaling__maxReplicas=3), None),
    (
        "min above max",
        _spec(autoscaling__minReplicas=5, autoscaling__maxReplicas=2),
        "minReplicas must be less than or equal to maxReplicas",
    ),
    (
        "min above default max",
        _spec(autoscaling__minReplicas=11),
        "minReplicas must be less than or equal to maxReplicas",
    ),
    (
        "fallback without replicas",
        _spec(autoscaling__missingSignals={"action": "Fallback"}),
        "missingSignals.action Fallback needs fallbackReplicas",
    ),
    (
        "fallback with replicas",
        _spec(autoscaling__missingSignals={"action": "Fallback", "fallbackReplicas": 2}),
        None,
    ),
    (
        "zero queue timeout",
        _spec(concurrency__queueTimeoutSeconds=0),
        "queueTimeoutSeconds must be positive",
    ),
    (
        "negative queue timeout",
        _spec(concurrency__queueTimeoutSeconds=-1.5),
        "queueTimeoutSeconds must be positive",
    ),
    ("integer queue timeout", _spec(concurrency__queueTimeoutSeconds=5), None),
    (
        "zero response timeout",
        _spec(concurrency__responseTimeoutSeconds=0),
        "responseTimeoutSeconds must be positive",
    ),
    ("fractional response timeout", _spec(concurrency__responseTimeoutSeconds=0.5), None),
    (
        "two storage sources",
        _spec(model__storage={"pvc": {"claimName": "a"}, "hostPath": {"path": "/m"}}),
        "set at most one of pvc, hostPath, emptyDir",
    ),
    (
        "emptyDir without download",
        _spec(model__storage={"emptyDir": {}}),
        "emptyDir storage needs a download step to fill it",
    ),
    (
        "emptyDir with download",
        _spec(model__storage={"emptyDir": {"sizeLimit": "8Gi"}, "download": {"image": "d"}}),
        None,
    ),
    ("custom without image", _spec(model__runtime="custom"), "runtime custom needs model.image"),
    (
        "custom with empty image",
        _spec(model__runtime="custom", model__image=""),
        "runtime custom needs model.image",
    ),
    ("custom with image", _spec(model__runtime="custom", model__image="vllm/vllm"), None),
    ("integer quantity", _spec(resources={"requests": {"cpu": 8}}), None),
    (
        "URL with credentials and a path",
        _spec(metrics__prometheusUrl="https://u:p@thanos.example.com/prefix"),
        None,
    ),
    ("URL of an IPv6 host", _spec(metrics__prometheusUrl="http://[fd00::1]:9090/"), None),
    (
        "model mounted on the scratch volume",
        _spec(model__storage={"pvc": {"claimName": "a"}, "mountPath": "/tmp/"}),
        "/tmp is the model container's scratch volume; mount the model elsewhere",
    ),
    ("model mounted under /tmp", _spec(model__storage={"mountPath": "/tmp/models"}), None),
    (
        "toleration of every taint",
        _spec(placement__tolerations=[{"operator": "Exists"}]),
        None,
    ),
    (
        "toleration of a key and effect for a while",
        _spec(
            placement__tolerations=[
                {"key": "example.com/spot", "value": "yes", "effect": "NoExecute"},
                {
                    "key": "cpu",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 60,
                },
            ]
        ),
        None,
    ),
    (
        "toleration of every taint, its key empty",
        _spec(placement__tolerations=[{"key": "", "operator": "Exists", "effect": "NoSchedule"}]),
        None,
    ),
    (
        "toleration with an empty operator (Equal)",
        _spec(placement__tolerations=[{"key": "k", "operator": "", "value": "v"}]),
        None,
    ),
    (
        "toleration with an empty key and an empty operator",
        _spec(placement__tolerations=[{"key": "", "operator": ""}]),
        "an empty key needs operator Exists (it then tolerates every taint)",
    ),
    (
        "toleration of the longest key",
        _spec(placement__tolerations=[{"key": LONGEST_LABEL_KEY, "operator": "Exists"}]),
        None,
    ),
    (
        "toleration without a key",
        _spec(placement__tolerations=[{"operator": "Equal", "value": "a"}]),
        "an empty key needs operator Exists (it then tolerates every taint)",
    ),
    (
        "toleration Exists with a value",
        _spec(placement__tolerations=[{"key": "k", "operator": "Exists", "value": "v"}]),
        "operator Exists takes no value",
    ),
    (
        "toleration seconds without NoExecute",
        _spec(placement__tolerations=[{"key": "k", "tolerationSeconds": 5}]),
        "needs effect NoExecute",
    ),
]


@pytest.mark.parametrize(
    ("spec", "message"), [(s, m) for _, s, m in RULE_CASES], ids=[c[0] for c in RULE_CASES]
)
def test_cel_rules_agree_with_the_pydantic_validators(
    spec: dict[str, Any], message: str | None
) -> None:
    stored = apply_defaults(SPEC_SCHEMA, spec)
    assert schema_errors(SPEC_SCHEMA, stored) == []
    cel_messages = [m for _, m in cel_errors(SPEC_SCHEMA, stored)]
    try:
        VLMServiceSpec.model_validate(spec)
        pydantic_message = None
    except ValidationError as exc:
        pydantic_message = str(exc)
    if message is None:
        assert cel_messages == []
        assert pydantic_message is None
    else:
        assert cel_messages == [message]
        assert pydantic_message is not None
        assert message in pydantic_message


BOUND_CASES: list[tuple[str, dict[str, Any]]] = [
    ("negative min", _spec(autoscaling__minReplicas=-1)),
    ("zero max", _spec(autoscaling__maxReplicas=0)),
    ("zero utilization", _spec(autoscaling__targetUtilization=0)),
    ("utilization above one", _spec(autoscaling__targetUtilization=1.5)),
    ("zero in flight", _spec(concurrency__maxInFlight=0)),
    ("unknown runtime", _spec(model__runtime="tensorrt")),
    ("unknown field", _spec(model__colour="red")),
    ("empty id", _spec(model__id="")),
    ("relative mount", _spec(model__storage={"mountPath": "models"})),
    ("bad quantity", _spec(resources={"requests": {"cpu": "8 cores"}})),
    ("bad interval", _spec(monitoring__interval="5 seconds")),
    ("URL without a host", _spec(metrics__prometheusUrl="http://:9090")),
    ("URL with a port not a number", _spec(metrics__prometheusUrl="http://prom:9O90")),
    ("URL with junk after an IPv6 host", _spec(metrics__prometheusUrl="http://[::1]x")),
    ("URL with a port over 65535", _spec(metrics__prometheusUrl="http://prom:65536")),
    ("string replicas", _spec(replicas="three")),
    ("zero time scale", _spec(model__fake={"timeScale": 0})),
    ("time scale too slow for the probes", _spec(model__fake={"timeScale": 1e-307})),
    ("blank id", _spec(model__id=" ")),
    ("id with a trailing blank", _spec(model__id="qwen ")),
    ("id of two lines", _spec(model__id="qwen\nvl")),
    ("negative quantity", _spec(resources={"requests": {"cpu": "-8"}})),
    ("quantity with a fractional exponent", _spec(resources={"requests": {"cpu": "1e1.5"}})),
    ("interval of 400 digits", _spec(monitoring__interval="9" * 400 + "s")),
    ("misspelt toleration field", _spec(placement__tolerations=[{"operater": "Exists"}])),
    (
        "toleration key past a label key's length",
        _spec(placement__tolerations=[{"key": "f" + LONGEST_LABEL_KEY, "operator": "Exists"}]),
    ),
    ("unknown toleration effect", _spec(placement__tolerations=[{"key": "k", "effect": "No"}])),
    (
        "toleration value not a label value",
        _spec(placement__tolerations=[{"key": "k", "value": "a b"}]),
    ),
    ("zero pending timeout", _spec(autoscaling__pendingTimeoutSeconds=0)),
    ("negative quantity as a number", _spec(resources={"requests": {"cpu": -1}})),
    ("negative size limit as a number", _spec(model__storage={"emptyDir": {"sizeLimit": -1}})),
    ("model file as an absolute path", _spec(model__files={"model": "/models/m.gguf"})),
    ("model file out of the mount", _spec(model__files={"model": "../etc/passwd"})),
    ("projector through a '..' segment", _spec(model__files={"mmproj": "a/../../b.gguf"})),
    ("host path with a '..' segment", _spec(model__storage={"hostPath": {"path": "/srv/../m"}})),
    ("node selector value with a blank", _spec(placement__nodeSelector={"pool": "cpu pool"})),
    ("pod monitor label value with a blank", _spec(monitoring__labels={"release": "kube prom"})),
    ("pod label value with a slash", _spec(networkPolicy__allowFromPods={"app": "web/front"})),
    ("env name with '='", _spec(model__env=[{"name": "A=B", "value": "1"}])),
    ("env name starting with a digit", _spec(model__env=[{"name": "1A"}])),
    ("priority class in capitals", _spec(placement__priorityClassName="High")),
    ("service account with '_'", _spec(placement__serviceAccountName="model_runner")),
    ("pull secret in capitals", _spec(placement__imagePullSecrets=["Regcred"])),
    ("image with a blank", _spec(model__image=" vllm:latest")),
    ("gate image with a blank", _spec(gate__image="gate :1")),
    (
        "download image with a blank",
        _spec(model__storage={"pvc": {"claimName": "c"}, "download": {"image": "d 1"}}),
    ),
]


@pytest.mark.parametrize("spec", [s for _, s in BOUND_CASES], ids=[c[0] for c in BOUND_CASES])
def test_schema_bounds_agree_with_the_models(spec: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        VLMServiceSpec.model_validate(spec)
    assert schema_errors(SPEC_SCHEMA, apply_defaults(SPEC_SCHEMA, spec)) != []


@pytest.mark.parametrize("example", _examples(), ids=lambda doc: doc["metadata"]["name"])
def test_examples_pass_the_api_server_checks(example: dict[str, Any]) -> None:
    stored = apply_defaults(SCHEMA, example)
    assert schema_errors(SCHEMA, stored) == []
    assert cel_errors(SCHEMA, stored) == []


@pytest.mark.parametrize(
    "spec",
    [*(doc["spec"] for doc in _examples()), *(s for _, s, m in RULE_CASES if m is None)],
)
def test_crd_defaults_are_the_model_defaults(spec: dict[str, Any]) -> None:
    """What the API server stores parses to the same spec as what the user wrote."""
    stored = apply_defaults(SPEC_SCHEMA, spec)
    assert VLMServiceSpec.model_validate(stored) == VLMServiceSpec.model_validate(spec)
    # And every default is written down: the stored spec has every field of the full dump.
    full = VLMServiceSpec.model_validate(spec).to_api()
    assert _leaves(stored) == _leaves(full)


def _leaves(value: Any, path: str = "") -> set[str]:
    """Paths of the non-empty leaves of a JSON value."""
    if isinstance(value, dict):
        return {leaf for k, v in value.items() for leaf in _leaves(v, f"{path}.{k}")}
    if value in ([], None):
        return set()
    return {path}


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("qwen3-vl-2b", True),
        ("a", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("3-vl", False),
        ("Qwen", False),
        ("qwen_vl", False),
        ("qwen-", False),
        ("qwen.vl", False),
    ],
)
def test_name_rule_agrees_with_the_validation_module(name: str, valid: bool) -> None:
    document = copy.deepcopy(_examples()[0])
    document["metadata"]["name"] = name
    assert (schema_errors(SCHEMA, apply_defaults(SCHEMA, document)) == []) is valid
    assert (NAME_PATTERN.match(name) is not None and len(name) <= 63) is valid


# ------------------------------------------------------------ the installed CRD


def _spec_properties(crd_obj: dict[str, Any]) -> dict[str, Any]:
    schema = crd_obj["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    properties: dict[str, Any] = schema["properties"]["spec"]["properties"]
    return properties


def test_the_operators_own_crd_has_no_drift() -> None:
    assert schema_drift(crd()) == SchemaDrift((), ())
    assert schema_drift(yaml.safe_load(CRD_FILE.read_text())) == SchemaDrift((), ())


def test_an_older_crd_names_the_fields_it_lacks() -> None:
    older = crd()
    properties = _spec_properties(older)
    del properties["concurrency"]["properties"]["responseTimeoutSeconds"]
    del properties["placement"]  # with everything under it
    drift = schema_drift(older)
    assert "spec.concurrency.responseTimeoutSeconds" in drift.missing
    assert "spec.placement" in drift.missing
    assert any(path.startswith("spec.placement.") for path in drift.missing)
    assert drift.unknown == ()


def test_a_newer_crd_names_the_fields_this_operator_ignores() -> None:
    newer = crd()
    properties = _spec_properties(newer)
    properties["concurrency"]["properties"]["priorityClasses"] = {
        "type": "array",
        "items": {"type": "object", "properties": {"name": {"type": "string"}}},
    }
    properties["gate"]["properties"]["headers"] = {
        "type": "object",
        "additionalProperties": {"type": "object", "properties": {"value": {"type": "string"}}},
    }
    assert schema_drift(newer) == SchemaDrift(
        (),
        (
            "spec.concurrency.priorityClasses",
            "spec.concurrency.priorityClasses[].name",
            "spec.gate.headers",
            "spec.gate.headers{}.value",
        ),
    )


@pytest.mark.parametrize(
    "installed",
    [{}, {"spec": {"versions": [{"name": "v1beta9", "schema": {}}]}}, {"spec": None}],
    ids=["empty", "another version only", "no spec"],
)
def test_a_crd_without_this_version_lacks_every_field(installed: dict[str, Any]) -> None:
    drift = schema_drift(installed)
    assert "spec.model.id" in drift.missing
    assert "status.replicas" in drift.missing
    assert drift.unknown == ()


def test_a_crd_that_types_defaults_or_bounds_otherwise_is_named() -> None:
    # An older release's CRD: the API server fills in its defaults and holds its bounds.
    older = crd()
    properties = _spec_properties(older)
    autoscaling = properties["autoscaling"]["properties"]
    autoscaling["maxReplicas"]["maximum"] = 100
    autoscaling["syncPeriodSeconds"]["default"] = 30
    properties["model"]["properties"]["runtime"]["enum"] = ["custom"]
    del properties["concurrency"]["x-kubernetes-validations"]
    version = older["spec"]["versions"][0]
    version["served"] = False
    del version["subresources"]
    drift = schema_drift(older)
    assert (drift.missing, drift.unknown) == ((), ())
    assert drift.changed == (
        "versions[v1alpha1].served",
        "versions[v1alpha1].subresources.status",
        "spec.autoscaling.maxReplicas (maximum)",
        "spec.autoscaling.syncPeriodSeconds (default)",
        "spec.concurrency (x-kubernetes-validations)",
        "spec.model.runtime (enum)",
    )
    # Numbers as a real API server gives them back (5.0 stored, 5 read) are the same.
    same = crd()
    _spec_properties(same)["autoscaling"]["properties"]["syncPeriodSeconds"]["default"] = 5
    assert schema_drift(same).changed == ()
