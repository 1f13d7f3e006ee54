"""The VLMService CustomResourceDefinition, generated from the API models.

:mod:`vlm_operator.models` is the single source of truth; this module turns
pydantic's JSON schema into the *structural* OpenAPI v3 schema the Kubernetes
API server demands: every ``$ref`` inlined, every property typed, no
``anyOf`` unions with ``null`` (optional fields are simply omitted; a field
whose default is not ``None`` but that may be set to ``null`` is marked
``nullable``), ``exclusiveMinimum`` in the OpenAPI 3.0 boolean form, and
``default`` values so that the API server stores the same spec the models
would parse (nested objects get ``default: {}`` so their own defaults apply,
and the CEL rules can rely on them being present).

CEL rules come from each model's ``json_schema_extra`` (``CEL_KEY``). The API
server estimates the cost of every rule before it accepts the CRD; enum
strings therefore get a ``maxLength`` (the longest allowed value), and no rule
iterates over an unbounded list.

The file ``crds/vlmservice.yaml`` is :func:`crd_yaml` verbatim; a test fails
when the two disagree (``make crd`` regenerates it). This module is pure.
"""

from __future__ import annotations

import copy
import typing
from typing import Any

from pydantic import BaseModel

from vlm_operator import models
from vlm_operator.yamlio import dump_documents

__all__ = ["CRD_NAME", "NAME_SCHEMA", "SchemaDrift", "crd", "crd_yaml", "openapi_schema",
           "schema_drift"]  # fmt: skip

#: The CRD's own name.
CRD_NAME = f"{models.PLURAL}.{models.GROUP}"

#: The VLMService's name becomes the name of its Deployment and Service, and
#: the value of the pod label ``vlm-operator.io/service``: a DNS-1035 label.
#: (A structural schema may constrain metadata.name and nothing else in metadata.)
NAME_SCHEMA: dict[str, Any] = {
    "type": "string",
    "maxLength": 63,
    "pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$",
}

_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
    {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
    {"name": "Desired", "type": "integer", "jsonPath": ".status.desiredReplicas"},
    {
        "name": "In-Flight/Pod",
        "type": "number",
        "jsonPath": ".status.signals.inFlightPerPod",
        "description": "Requests inside the models per ready pod.",
    },
    {
        "name": "Queue",
        "type": "number",
        "jsonPath": ".status.signals.waiting",
        "description": "Requests waiting in the gates.",
    },
    {
        "name": "P95",
        "type": "number",
        "jsonPath": ".status.signals.p95Seconds",
        "description": "Fleet P95 latency in seconds.",
    },
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.id", "priority": 1},
    {"name": "Runtime", "type": "string", "jsonPath": ".spec.model.runtime", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

# Keys copied as they are from pydantic's schema into the structural schema.
_KEPT_KEYS = (
    "description",
    "type",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "enum",
    "minItems",
    "maxItems",
    "format",
    "x-kubernetes-preserve-unknown-fields",
    models.CEL_KEY,
)


def openapi_schema() -> dict[str, Any]:
    """The structural ``openAPIV3Schema`` of a whole VLMService object."""
    return {
        "type": "object",
        "description": "A vision-language model served behind a concurrency gate and "
        "autoscaled from Prometheus signals.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of the object."},
            "kind": {"type": "string", "description": "Kind of the object."},
            "metadata": {"type": "object", "properties": {"name": dict(NAME_SCHEMA)}},
            "spec": _model_schema(models.VLMServiceSpec),
            "status": _model_schema(models.VLMServiceStatus),
        },
    }


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {
                "app.kubernetes.io/name": "vlm-operator",
                "app.kubernetes.io/part-of": "vlm-operator",
            },
        },
        "spec": {
            "group": models.GROUP,
            "names": {
                "kind": models.KIND,
                "listKind": f"{models.KIND}List",
                "plural": models.PLURAL,
                "singular": models.SINGULAR,
                "shortNames": list(models.SHORT_NAMES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": copy.deepcopy(_PRINTER_COLUMNS),
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as the deterministic YAML of ``crds/vlmservice.yaml``."""
    header = (
        "# Generated by `vlm-operator crd` from vlm_operator/models.py; do not edit.\n"
        "# Regenerate with `make crd`.\n"
    )
    return header + dump_documents([crd()])


# ---------------------------------------------------------------------- internals


def _model_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    classes = _model_classes(model)
    return _convert(raw, raw.get("$defs", {}), classes, model)


def _model_classes(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every model class reachable from ``root``, by class name (pydantic's $defs keys)."""
    found: dict[str, type[BaseModel]] = {}

    def visit(annotation: Any) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation.__name__ in found:
                return
            found[annotation.__name__] = annotation
            for field in annotation.model_fields.values():
                visit(field.annotation)
            return
        for arg in typing.get_args(annotation):
            visit(arg)

    visit(root)
    return found


def _convert(
    node: dict[str, Any],
    defs: dict[str, Any],
    classes: dict[str, type[BaseModel]],
    model: type[BaseModel] | None,
) -> dict[str, Any]:
    """One pydantic JSON-schema node as a structural OpenAPI node."""
    node = dict(node)
    if "anyOf" in node:
        node = _collapse_optional(node)
    ref = node.pop("$ref", None)
    if ref is not None:
        def_name = ref.rsplit("/", 1)[-1]
        # Sibling keys (the field's description) win over the referenced model's.
        node = {**defs[def_name], **node}
        model = classes[def_name]
    if node.get(models.INT_OR_STRING_KEY):
        out: dict[str, Any] = {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            models.INT_OR_STRING_KEY: True,
        }
        # Beside the anyOf, not in its integer branch: a real server takes only that exact
        # anyOf with int-or-string, and a bound there applies to numbers alone.
        for key in ("description", "pattern", "minimum", "nullable", "default"):
            if node.get(key) is not None:
                out[key] = node[key]
        return out

    out = {key: copy.deepcopy(node[key]) for key in _KEPT_KEYS if key in node}
    if "nullable" in node:
        out["nullable"] = True
    if "const" in node:
        out["enum"] = [node["const"]]
    if "enum" in out:
        out.setdefault("type", "string")
        # Bounds the CEL cost estimate of rules comparing this string.
        out["maxLength"] = max(len(str(value)) for value in out["enum"])
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if bound in node:
            out["minimum" if bound == "exclusiveMinimum" else "maximum"] = node[bound]
            out[bound] = True
    if "default" in node and node["default"] is not None:
        out["default"] = node["default"]

    if node.get("type") == "object":
        properties = node.get("properties")
        additional = node.get("additionalProperties")
        if properties is not None:
            out["properties"] = {
                name: _property(name, prop, defs, classes, model)
                for name, prop in properties.items()
            }
            if node.get("required"):
                out["required"] = list(node["required"])
        elif isinstance(additional, dict):
            out["additionalProperties"] = _convert(additional, defs, classes, None)
        elif "x-kubernetes-preserve-unknown-fields" not in out:
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif node.get("type") == "array":
        out["items"] = _convert(node["items"], defs, classes, None)
    if "type" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        raise ValueError(f"untyped schema node: {node!r}")
    return out


def _collapse_optional(node: dict[str, Any]) -> dict[str, Any]:
    """``X | None`` → X, nullable only when null must survive a non-null default."""
    branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
    if len(branches) != 1:
        raise ValueError(f"unions other than `X | None` have no structural schema: {node!r}")
    merged = {**branches[0], **node}
    if merged.get("default") is not None:
        merged["nullable"] = True
    return merged


def _property(
    name: str,
    prop: dict[str, Any],
    defs: dict[str, Any],
    classes: dict[str, type[BaseModel]],
    owner: type[BaseModel] | None,
) -> dict[str, Any]:
    out = _convert(prop, defs, classes, None)
    default = _factory_default(owner, name) if owner is not None else None
    if default is not None:
        out["default"] = default
    return out


def _factory_default(owner: type[BaseModel], alias: str) -> Any:
    """The default of a ``default_factory`` field as the API server should store it.

    Nested models whose factory builds the model's own defaults become ``{}``
    (the API server then applies the nested defaults itself); a factory with
    other values (the measured pod's resources) is written out in full. Empty
    lists and maps get no default: absent and empty mean the same.
    """
    field = next(
        (f for n, f in owner.model_fields.items() if (f.alias or n) == alias),
        None,
    )
    if field is None or field.default_factory is None:
        return None
    value = field.default_factory()  # type: ignore[call-arg]
    if isinstance(value, BaseModel):
        dumped = value.model_dump(by_alias=True, exclude_none=True, mode="json")
        try:
            plain = type(value)().model_dump(by_alias=True, exclude_none=True, mode="json")
        except ValueError:  # the model has required fields: only the full value will do
            return dumped
        return {} if dumped == plain else dumped
    if value in ({}, []):
        return None
    return value


# ------------------------------------------------------------ the installed CRD


@typing.final
class SchemaDrift(typing.NamedTuple):
    """How an installed CRD's schema differs from this operator's, field by field.

    ``missing``: fields this operator knows and the installed CRD lacks (the API
    server prunes them from every VLMService: set, they are silently lost).
    ``unknown``: fields the installed CRD has and this operator does not know (a
    newer CRD: they are accepted and ignored). ``changed``: fields both have but
    typed, defaulted or bounded otherwise, each with the keywords that differ (an
    older default is filled in by the API server, an older bound refuses what this
    operator accepts), and the version's ``served`` or status subresource when
    they are not as this operator needs them. Paths are dotted, ``[]`` for the
    items of a list, ``{}`` for the values of a map.
    """

    missing: tuple[str, ...]
    unknown: tuple[str, ...]
    changed: tuple[str, ...] = ()


def schema_drift(installed: typing.Mapping[str, Any]) -> SchemaDrift:
    """Compare an installed VLMService CRD with :func:`crd`, version :data:`models.VERSION`.

    ``helm upgrade`` leaves CRDs alone (Helm installs ``crds/`` once), so an
    upgraded operator easily runs against the CRD of an older release.
    """
    ours = _fields(openapi_schema())
    theirs: dict[str, typing.Mapping[str, Any]] = {}
    changed: list[str] = []
    # (kopf's body is a Mapping, not a dict.)
    spec = installed.get("spec") if isinstance(installed, typing.Mapping) else None
    versions = spec.get("versions") if isinstance(spec, typing.Mapping) else None
    for version in versions if isinstance(versions, list) else []:
        if isinstance(version, typing.Mapping) and version.get("name") == models.VERSION:
            schema = (version.get("schema") or {}).get("openAPIV3Schema")
            theirs = _fields(schema if isinstance(schema, typing.Mapping) else {})
            if version.get("served") is not True:
                changed.append(f"versions[{models.VERSION}].served")
            if not isinstance((version.get("subresources") or {}).get("status"), typing.Mapping):
                changed.append(f"versions[{models.VERSION}].subresources.status")
    for path in sorted(ours.keys() & theirs.keys()):
        keywords = [
            keyword
            for keyword in _CONSTRAINTS
            if _as_json(ours[path].get(keyword)) != _as_json(theirs[path].get(keyword))
        ]
        if keywords:
            changed.append(f"{path} ({', '.join(keywords)})")
    return SchemaDrift(
        tuple(sorted(ours.keys() - theirs.keys())),
        tuple(sorted(theirs.keys() - ours.keys())),
        tuple(changed),
    )


#: The keywords of a field's schema that decide what the API server stores: its
#: type, its default and its bounds (its description and its sub-fields aside).
_CONSTRAINTS = (
    "type",
    "default",
    "enum",
    "nullable",
    "x-kubernetes-int-or-string",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "x-kubernetes-validations",
)


def _as_json(value: Any) -> Any:
    """``value`` with every number a float: a stored 5 is the 5.0 written."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, typing.Mapping):
        return {key: _as_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_json(item) for item in value]
    return value


def _fields(
    schema: typing.Mapping[str, Any], prefix: str = ""
) -> dict[str, typing.Mapping[str, Any]]:
    """Every field's path, with its schema."""
    fields: dict[str, typing.Mapping[str, Any]] = {}
    properties = schema.get("properties")
    if isinstance(properties, typing.Mapping):
        for name, sub in properties.items():
            path = f"{prefix}.{name}" if prefix else str(name)
            fields[path] = sub if isinstance(sub, typing.Mapping) else {}
            if isinstance(sub, typing.Mapping):
                fields |= _fields(sub, path)
    for key, mark in (("items", "[]"), ("additionalProperties", "{}")):
        sub = schema.get(key)
        if isinstance(sub, typing.Mapping):
            fields |= _fields(sub, prefix + mark)
    return fields
