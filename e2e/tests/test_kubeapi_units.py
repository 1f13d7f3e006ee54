"""The emulated API's pure parts: patches, selectors and structural schemas."""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.kubeapi import RecordedRequest
from e2e.kubeapi import schema as schema_module
from e2e.kubeapi.patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from e2e.kubeapi.rbac import missing_permissions, unused_permissions, used_permissions
from e2e.kubeapi.resources import ResourceKind
from e2e.kubeapi.schema import (
    PatternError,
    apply_defaults,
    check_crd_schema,
    pattern_matcher,
    prune,
    prune_nulls,
    validate,
    whole_numbers,
)
from e2e.kubeapi.selectors import (
    SelectorError,
    parse_field_selector,
    parse_label_selector,
    selectable_fields,
    selector_to_string,
)
from e2e.kubeapi.tables import human_duration, include_object, json_path, table, wants_table


def test_merge_patch_is_rfc7386() -> None:
    target = {"a": {"b": 1, "c": 2}, "l": [1, 2], "k": "v"}
    assert merge_patch(target, {"a": {"b": None, "d": 3}, "l": [3], "k": None}) == {
        "a": {"c": 2, "d": 3}, "l": [3]}  # fmt: skip
    assert target["a"] == {"b": 1, "c": 2}  # the input is never mutated


def test_merge_patch_drops_nulls_inside_added_values() -> None:
    # As evanphx/json-patch (the API server's library) does: nulls in objects of an added or
    # replacing value are dropped at any depth, list items included.
    target = {"spec": {"parts": [{"name": "a"}], "keep": {"x": 1}}}
    patch = {"spec": {"parts": [{"name": "b", "weight": None}], "new": {"a": None, "b": 1}}}
    assert merge_patch(target, patch) == {
        "spec": {"parts": [{"name": "b"}], "keep": {"x": 1}, "new": {"b": 1}}}  # fmt: skip


def test_json_patch_operations_and_failures() -> None:
    doc = {"metadata": {"annotations": {"a/b": "1"}}, "items": [1, 2]}
    patched = json_patch(doc, [
        {"op": "add", "path": "/items/-", "value": 3},
        {"op": "add", "path": "/items/0", "value": 0},
        {"op": "replace", "path": "/metadata/annotations/a~1b", "value": "2"},
        {"op": "copy", "from": "/items/3", "path": "/last"},
        {"op": "move", "from": "/last", "path": "/moved"},
        {"op": "remove", "path": "/items/1"},
        {"op": "test", "path": "/moved", "value": 3},
    ])  # fmt: skip
    assert patched == {"metadata": {"annotations": {"a/b": "2"}}, "items": [0, 2, 3], "moved": 3}
    assert doc["items"] == [1, 2]
    for bad in ([{"op": "test", "path": "/items/0", "value": 9}],
                [{"op": "remove", "path": "/nope"}],
                [{"op": "replace", "path": "/nope", "value": 1}],
                [{"op": "frobnicate", "path": "/items"}],
                {"op": "add"}):  # fmt: skip
        with pytest.raises(PatchError):
            json_patch(doc, bad)


def test_json_patch_test_compares_json_values_not_python_ones() -> None:
    # evanphx/json-patch compares scalars as JSON text: true is not 1, and 4.0 is not the
    # 4 a whole number of the stored object is written as (even one kept as a float here).
    doc = {"flag": True, "count": 4, "ratio": 4.0, "nested": {"list": [1, False]}}
    for path, value in (("/flag", 1), ("/count", 4.0), ("/count", True),
                        ("/nested", {"list": [True, 0]}), ("/nested/list", [1, 0])):  # fmt: skip
        with pytest.raises(PatchError):
            json_patch(doc, [{"op": "test", "path": path, "value": value}])
    for path, value in (("/flag", True), ("/count", 4), ("/ratio", 4),
                        ("/nested", {"list": [1, False]})):  # fmt: skip
        assert json_patch(doc, [{"op": "test", "path": path, "value": value}]) == doc


def test_strategic_merge_patch_merges_named_lists() -> None:
    pod = {"containers": [{"name": "a", "image": "a:1", "ports": [{"containerPort": 80}],
                           "env": [{"name": "X", "value": "1"}]}],
           "finalizers": ["f1"]}  # fmt: skip
    patched = strategic_merge_patch(pod, {
        "containers": [{"name": "a", "ports": [{"containerPort": 81}],
                        "env": [{"name": "X", "value": "2"}, {"name": "Y", "value": "3"}]},
                       {"name": "b", "image": "b:1"}],
        "finalizers": ["f2"],
    })  # fmt: skip
    assert patched["containers"][0] == {
        "name": "a", "image": "a:1", "ports": [{"containerPort": 80}, {"containerPort": 81}],
        "env": [{"name": "X", "value": "2"}, {"name": "Y", "value": "3"}]}  # fmt: skip
    assert patched["containers"][1] == {"name": "b", "image": "b:1"}
    assert patched["finalizers"] == ["f1", "f2"]
    replaced = strategic_merge_patch(pod, {"containers": [{"$patch": "replace"}, {"name": "z"}]})
    assert replaced["containers"] == [{"name": "z"}]
    service = {"ports": [{"port": 80, "name": "http"}]}
    assert strategic_merge_patch(service, {"ports": [{"port": 80, "targetPort": 8000}]}) == {
        "ports": [{"port": 80, "name": "http", "targetPort": 8000}]}  # fmt: skip
    assert strategic_merge_patch({"args": ["a"]}, {"args": ["b"]}) == {"args": ["b"]}


def test_label_selectors() -> None:
    def matches(selector: str, labels: dict[str, str]) -> bool:
        return parse_label_selector(selector)({"metadata": {"labels": labels}})

    assert matches("", {})
    assert matches("a in (1, 2),b", {"a": "2", "b": "x"})
    assert not matches("a notin (1,2)", {"a": "1"})
    assert matches("a notin (1,2)", {})
    assert matches("a!=1,!c", {"a": "2"})
    assert not matches("a==1", {"a": "2"})
    assert matches("vlm-operator.io/service=chat", {"vlm-operator.io/service": "chat"})
    for bad in ("a in 1", "a b", "=x"):
        with pytest.raises(SelectorError):
            parse_label_selector(bad)
    assert selector_to_string({"matchLabels": {"b": "2", "a": "1"}, "matchExpressions": [
        {"key": "c", "operator": "In", "values": ["y", "x"]},
        {"key": "d", "operator": "DoesNotExist"}]}) == "a=1,b=2,c in (x,y),!d"  # fmt: skip


def test_label_selectors_parse_as_apimachinery_does() -> None:
    def matches(selector: str, labels: dict[str, str]) -> bool:
        return parse_label_selector(selector)({"metadata": {"labels": labels}})

    # > and < compare integers; a label that is none matches neither.
    assert matches("x>1", {"x": "2"})
    assert not matches("x>1", {"x": "1"})
    assert matches("x<1", {"x": "-3"})
    assert not matches("x<1", {"x": "zero"})
    assert not matches("x>1", {})
    # Whitespace is free between tokens; "()" is the set of the empty value.
    assert matches("env in(prod)", {"env": "prod"})
    assert matches("! env", {})
    assert not matches("! env", {"env": "prod"})
    assert matches("env in ()", {"env": ""})
    assert not matches("env in ()", {"env": "prod"})
    assert matches("in in (in,notin)", {"in": "notin"})
    for bad in ("x>a", "x>", "a,", "a in (b c)", "!a=b", "a=b c", "-a", "a=-b", "a/b/c"):
        with pytest.raises(SelectorError):
            parse_label_selector(bad)


def test_field_selectors() -> None:
    pod = {"metadata": {"name": "p", "namespace": "n"}, "status": {"phase": "Running"}}
    assert parse_field_selector("metadata.name=p,status.phase==Running")(pod)
    assert not parse_field_selector("metadata.namespace!=n")(pod)
    with pytest.raises(SelectorError):
        parse_field_selector("metadata.name")


def test_field_selectors_only_know_a_kinds_selectable_fields() -> None:
    pods = selectable_fields("", "pods")
    pod = {"metadata": {"name": "p"}, "spec": {"nodeName": "n1"},
           "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.1"}]}}  # fmt: skip
    assert parse_field_selector("spec.nodeName=n1,status.podIP=10.0.0.1", pods)(pod)
    assert parse_field_selector("spec.hostNetwork=false", pods)(pod)
    with pytest.raises(SelectorError, match=r"field label not supported: spec\.containers"):
        parse_field_selector("spec.containers=x", pods)
    with pytest.raises(SelectorError, match=r"field label not supported: data\.k"):
        parse_field_selector("data.k=v", selectable_fields("", "configmaps"))
    event = {"metadata": {"name": "e"}, "reportingComponent": "kopf"}
    assert parse_field_selector("source=kopf", selectable_fields("", "events"))(event)
    crd_fields = selectable_fields("", "", ["spec.color"])
    assert parse_field_selector("spec.color=red", crd_fields)({"spec": {"color": "red"}})
    with pytest.raises(SelectorError):
        parse_field_selector("spec.size=1", crd_fields)


SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "default": {},
            "required": ["port"],
            "x-kubernetes-validations": [
                {"rule": "self.min <= self.max", "message": "min must not exceed max",
                 "fieldPath": ".min"},
                {"rule": "self.min == oldSelf.min", "message": "min is immutable"},
            ],
            "properties": {
                "min": {"type": "integer", "default": 1, "minimum": 0},
                "max": {"type": "integer", "default": 5},
                "port": {"x-kubernetes-int-or-string": True},
                "ratio": {"type": "number", "minimum": 0, "maximum": 1,
                          "exclusiveMinimum": True},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "items": {"type": "array", "maxItems": 2,
                          "items": {"type": "object", "properties": {"n": {"type": "string"}}}},
            },
        },
    },
}  # fmt: skip


def _causes(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    return [(c.field, c.reason) for c in validate(SCHEMA, obj, old)]


def test_defaults_pruning_and_validation() -> None:
    obj: dict[str, Any] = {"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "n"}}
    apply_defaults(SCHEMA, obj)
    assert obj["spec"] == {"min": 1, "max": 5}
    assert _causes(obj) == [("spec.port", "FieldValueRequired")]

    obj["spec"].update(
        port="http",
        extra=1,
        free={"any": {"thing": 1}},
        items=[{"n": "a", "junk": 2}],
        labels={"a": "b"},
    )
    assert prune(SCHEMA, obj) == ["spec.extra", "spec.items[0].junk"]
    assert obj["spec"]["free"] == {"any": {"thing": 1}}
    assert obj["metadata"] == {"name": "n"}
    assert _causes(obj) == []

    obj["spec"].update(port=True, ratio=0, labels={"a": 1}, items=[{}, {}, {}])
    assert sorted(_causes(obj)) == [
        ("spec.items", "FieldValueTooMany"),
        ("spec.labels.a", "FieldValueTypeInvalid"),
        ("spec.port", "FieldValueTypeInvalid"),
        ("spec.ratio", "FieldValueInvalid"),
    ]


def test_whole_floats_are_integers_as_the_real_server_reads_them() -> None:
    # 3.0 is decoded as a float and taken for an integer, and read back as 3; 2.5, or a
    # whole float past 2^53, stays a float the integer field refuses.
    spec = {"min": 3.0, "max": 2.0**53, "port": 80.0, "ratio": 1.0}
    obj: dict[str, Any] = {
        "apiVersion": "x/v1",
        "kind": "X",
        "metadata": {"name": "n"},
        "spec": spec,
    }
    whole_numbers(SCHEMA, obj)
    assert obj["spec"] == {"min": 3, "max": 2**53, "port": 80, "ratio": 1.0}
    assert [type(obj["spec"][k]) for k in ("min", "max", "port")] == [int, int, int]
    assert isinstance(obj["spec"]["ratio"], float)  # a number stays one
    assert _causes(obj) == []
    obj["spec"].update(min=2.5, max=2.0**54, port=1e300)
    whole_numbers(SCHEMA, obj)
    assert sorted(_causes(obj)) == [
        ("spec.max", "FieldValueTypeInvalid"),
        ("spec.min", "FieldValueTypeInvalid"),
        ("spec.port", "FieldValueTypeInvalid"),
    ]


def test_nulls_are_pruned_or_defaulted_unless_nullable() -> None:
    schema = {"type": "object", "properties": {
        "color": {"type": "string", "default": "red"},
        "note": {"type": "string"},
        "label": {"type": "string", "nullable": True},
        "parts": {"type": "array", "items": {"type": "object", "properties": {
            "weight": {"type": "integer"}}}},
    }}  # fmt: skip
    obj: dict[str, Any] = {"color": None, "note": None, "label": None, "parts": [{"weight": None}]}
    prune_nulls(schema, obj)
    apply_defaults(schema, obj)
    assert obj == {"color": "red", "label": None, "parts": [{}]}
    assert validate(schema, obj) == []


def test_metadata_name_follows_the_schema() -> None:
    schema = {"type": "object", "properties": {"metadata": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 5, "pattern": "^[a-z]+$"}}}}}  # fmt: skip
    assert validate(schema, {"metadata": {"name": "abc"}}) == []
    causes = validate(schema, {"metadata": {"name": "abc123"}})
    assert [(c.field, c.reason) for c in causes] == [
        ("metadata.name", "FieldValueTooLong"), ("metadata.name", "FieldValueInvalid")]  # fmt: skip


@pytest.fixture(params=["re2", "python"])
def regex_engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Schema patterns through google-re2, or through the translation to Python's ``re``
    used when it is not installed."""
    if request.param == "re2":
        pytest.importorskip("re2")
    else:
        monkeypatch.setitem(sys.modules, "re2", None)  # makes `import re2` fail
    schema_module._compiled_pattern.cache_clear()
    yield request.param
    schema_module._compiled_pattern.cache_clear()


def test_schema_patterns_have_go_semantics(regex_engine: str) -> None:
    def valid(pattern: str, text: str) -> bool:
        return validate({"type": "string", "pattern": pattern}, text) == []

    # `$` is the end of the text, not also the place before a final newline.
    assert valid("^[a-z]+$", "abc")
    assert not valid("^[a-z]+$", "abc\n")
    assert not valid(r"^a\z", "a\n")
    assert valid("(?m)^a$", "a\nb")
    assert not valid(r"^\(?model$", "model\n")  # an escaped "(" is no flag group
    # A flag group anywhere holds for the rest of its group, across its alternatives.
    assert valid("^a(?i)b$", "aB")
    assert not valid("^a(?i)b$", "AB")
    assert valid("^x(a(?i)b|c)y$", "xCy")
    assert not valid("^(a(?i)b)c$", "aBC")
    assert valid("^(?i)a(?-i)b$", "Ab")
    assert not valid("^(?i)a(?-i)b$", "AB")
    # m too: a "$" outside its scope is the end of the text.
    assert not valid("^(a(?m)b)c$", "abc\n")
    assert not valid("^(?m)a$|(?-m)b$", "b\n")
    assert valid("^(?m)a$|(?-m)b$", "a\n")
    assert valid("^[$]+$", "$$")
    assert valid(r"^\$[a-z]+$", "$x")
    # POSIX classes, and \d as ASCII digits only.
    assert valid("^[[:alpha:]_]+$", "ab_c")
    assert not valid("^[[:alpha:]]+$", "ab1")
    assert not valid(r"^\d+$", "\u0661\u0662")
    # What Go's regexp does not compile is an invalid value, never an exception.
    for pattern in ("(", "(?=a)", r"(a)\1"):
        with pytest.raises(PatternError):
            pattern_matcher(pattern)
        assert [c.reason for c in validate({"type": "string", "pattern": pattern}, "a")] == [
            "FieldValueInvalid"]  # fmt: skip
        causes = check_crd_schema({"type": "object", "properties": {"a": {
            "type": "string", "pattern": pattern}}}, "root")  # fmt: skip
        assert [c.field for c in causes] == ["root.properties[a].pattern"]


def test_crd_schemas_must_be_structural_and_compile() -> None:
    root = "spec.versions[0].schema.openAPIV3Schema"
    schema = {"type": "object", "properties": {
        "metadata": {"type": "object", "properties": {"labels": {"type": "object"}}},
        "spec": {"type": "object", "x-kubernetes-validations": [
            {"rule": "self.a >>> 1"}, {"rule": "self.a > 1", "messageExpression": "'a' +"}],
            "properties": {
                "a": {"type": "integer"}, "untyped": {}, "list": {"type": "array"},
                "port": {"x-kubernetes-int-or-string": True},
                "free": {"x-kubernetes-preserve-unknown-fields": True}}},
    }}  # fmt: skip
    assert sorted(c.field for c in check_crd_schema(schema, root)) == [
        f"{root}.properties[metadata]",
        f"{root}.properties[spec].properties[list].items",
        f"{root}.properties[spec].properties[untyped].type",
        f"{root}.properties[spec].x-kubernetes-validations[0].rule",
        f"{root}.properties[spec].x-kubernetes-validations[1].messageExpression",
    ]
    assert check_crd_schema(SCHEMA, root) == []


def test_cel_rules_and_transition_rules() -> None:
    obj = {"spec": {"min": 7, "max": 5, "port": 80}}
    causes = validate(SCHEMA, obj)
    assert [(c.field, c.reason) for c in causes] == [("spec.min", "FieldValueInvalid")]
    assert "min must not exceed max" in causes[0].message
    new = {"spec": {"min": 2, "max": 5, "port": 80}}
    old = {"spec": {"min": 1, "max": 5, "port": 80}}
    assert [c.message for c in validate(SCHEMA, new, old)] == [
        'Invalid value: "object": min is immutable'
    ]
    broken = {"type": "object", "x-kubernetes-validations": [{"rule": "self.missing > 1"}]}
    (error,) = validate(broken, {})
    assert "evaluating rule: self.missing > 1" in error.message


def test_rbac_comparison() -> None:
    requests = [
        RecordedRequest("patch", "apps", "v1", "deployments", "scale", "ns", "web"),
        RecordedRequest("list", "", "v1", "pods", "", "ns", None),
        RecordedRequest("get", "", "v1", "configmaps", "", "ns", "settings"),
        RecordedRequest("get", "", "v1", "configmaps", "", "ns", "other"),
    ]
    rules = [
        {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["patch", "get"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"],
         "resourceNames": ["settings"]},
    ]  # fmt: skip
    assert used_permissions(requests) == {
        ("apps", "deployments/scale", "patch"),
        ("", "pods", "list"),
        ("", "configmaps", "get"),
    }
    assert missing_permissions(requests, rules) == {("", "configmaps", "get")}  # "other"
    assert unused_permissions(requests, rules) == {("apps", "deployments/scale", "get")}


def test_cel_sees_numbers_as_doubles_even_when_written_as_integers() -> None:
    schema = {
        "type": "object",
        "x-kubernetes-validations": [{"rule": "self.timeout > 0.0 && self.count > 0"}],
        "properties": {"timeout": {"type": "number"}, "count": {"type": "integer"}},
    }
    assert validate(schema, {"timeout": 2, "count": 1}) == []
    assert len(validate(schema, {"timeout": 0, "count": 1})) == 1


def test_cel_message_expressions() -> None:
    schema = {
        "type": "object",
        "x-kubernetes-validations": [{
            "rule": "self.n < 3", "message": "too big",
            "messageExpression": "'n is ' + string(self.n) + ', at most 2'",
        }],
        "properties": {"n": {"type": "integer"}},
    }  # fmt: skip
    (cause,) = validate(schema, {"n": 5})
    assert cause.message == 'Invalid value: "object": n is 5, at most 2'


def test_unchanged_subtrees_of_an_update_are_not_validated_again() -> None:
    stored = {"spec": {"min": 9, "max": 5, "port": 80}}  # invalid, but already stored
    assert validate(SCHEMA, {**stored, "status": {"ok": True}}, stored) == []
    changed = {"spec": {"min": 9, "max": 4, "port": 80}}
    assert [c.field for c in validate(SCHEMA, changed, stored)] == ["spec.min"]


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(-5, "<invalid>"), (-1.5, "0s"), (-0.5, "0s"), (59, "59s"), (119, "119s"), (120, "2m"),
     (150, "2m30s"),
     (600, "10m"), (179 * 60, "179m"), (3 * 3600, "3h"), (3 * 3600 + 60, "3h1m"),
     (47 * 3600, "47h"), (50 * 3600, "2d2h"), (8 * 86400, "8d"), (800 * 86400, "2y70d"),
     (9 * 365 * 86400, "9y")],
)  # fmt: skip
def test_ages_are_shown_as_kubectl_shows_them(seconds: float, shown: str) -> None:
    assert human_duration(seconds) == shown


def test_printer_column_json_paths() -> None:
    obj = {"status": {"conditions": [{"type": "A", "status": "False"},
                                     {"type": "Ready", "status": "True"}],
                      "n": 0}}  # fmt: skip
    assert json_path(obj, '.status.conditions[?(@.type=="Ready")].status') == "True"
    assert json_path(obj, ".status.conditions[0].type") == "A"
    assert json_path(obj, ".status.conditions[5].type") is None
    assert json_path(obj, ".status.n") == 0
    assert json_path(obj, "{.status.missing.deeper}") is None
    with pytest.raises(ValueError, match="unsupported JSONPath"):
        json_path(obj, ".status[*]")


def test_only_a_meta_v1_table_is_taken_for_one() -> None:
    assert wants_table("application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
    assert wants_table("application/json; as=Table; g=meta.k8s.io; v=v1")
    assert not wants_table("application/json")
    assert not wants_table("application/json;as=Table;v=v1beta1;g=meta.k8s.io")
    assert wants_table(
        "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json;as=Table;v=v1;g=meta.k8s.io"
    )
    assert not wants_table("")


def test_crd_cells_are_typed_as_the_real_table_convertor_types_them() -> None:
    columns = tuple(
        {"name": n, "type": t, "jsonPath": f".spec.{n}"}
        for n, t in (("i", "integer"), ("f", "number"), ("s", "string"), ("b", "boolean"),
                     ("d", "date"), ("bad", "date"), ("odd", "date"), ("x", "integer"))
    )  # fmt: skip
    kind = ResourceKind("g", "v1", "things", "Thing", True, custom=True, printer_columns=columns)
    obj = {"metadata": {"name": "t"},
           "spec": {"i": 2.7, "f": 3, "s": True, "b": "yes", "d": "2026-12-05T10:00:00Z",
                    "bad": "yesterday", "odd": 5, "x": [1]}}  # fmt: skip
    now = dt.datetime(2026, 12, 5, 10, 5, tzinfo=dt.UTC)
    [row] = table(kind, [obj], "7", now)["rows"]
    # A float in an integer column truncates; an int in a number column is a float; any
    # value in a string column prints as JSONPath prints it; a wrong type is null.
    assert row["cells"] == ["t", 2, 3.0, "true", None, "5m", "<invalid>", None, None]
    assert isinstance(row["cells"][2], float)
    described = table(kind, [], "7", now)["columnDefinitions"][1]["description"]
    assert described == "Custom resource definition column (in JSONPath format): .spec.i"


def test_a_column_path_beyond_the_subset_is_a_null_cell_not_a_failed_list() -> None:
    columns = ({"name": "All", "type": "string", "jsonPath": ".spec.items[*].name"},)
    kind = ResourceKind("g", "v1", "things", "Thing", True, custom=True, printer_columns=columns)
    [row] = table(kind, [{"metadata": {"name": "t"}, "spec": {}}], "1")["rows"]
    assert row["cells"] == ["t", None]


def test_rows_carry_what_include_object_asks_for() -> None:
    kind = ResourceKind("g", "v1", "things", "Thing", True, custom=True)
    obj = {"metadata": {"name": "t", "namespace": "n"}, "spec": {"a": 1}}
    rows = {include: table(kind, [obj], "1", include=include)["rows"][0]
            for include in ("None", "Metadata", "Object")}  # fmt: skip
    assert "object" not in rows["None"]
    assert rows["Metadata"]["object"] == {
        "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
        "metadata": obj["metadata"]}  # fmt: skip
    assert rows["Object"]["object"] == obj  # kubectl --sort-by asks for it
    assert include_object(None) == include_object("") == "Metadata"
    with pytest.raises(ValueError, match='includeObject: Unsupported value: "All"'):
        include_object("All")


def test_a_filter_does_not_take_a_missing_field_for_the_text_none() -> None:
    items = {"items": [{"name": "a"}, {"type": "None", "name": "b"}]}
    assert json_path(items, '.items[?(@.type=="None")].name') == "b"


def test_a_crd_version_is_served_only_when_it_says_so() -> None:
    # apiextensions/v1 decodes a missing ``served`` as false, as a Go bool.
    from e2e.kubeapi.resources import kinds_from_crd

    version = {"name": "v1", "storage": True, "schema": {"openAPIV3Schema": {"type": "object"}}}
    crd = {
        "spec": {
            "group": "example.com",
            "names": {"plural": "widgets", "kind": "Widget"},
            "scope": "Namespaced",
            "versions": [version, {**version, "name": "v2", "storage": False, "served": True}],
        }
    }
    assert [kind.version for kind in kinds_from_crd(crd)] == ["v2"]
