"""What the Kubernetes API server does with a VLMService, without an API server.

Three steps of a real create request, on the generated ``openAPIV3Schema``:

* :func:`apply_defaults`: structural defaulting (nulls of non-nullable fields
  pruned, defaults applied top-down so that ``default: {}`` lets nested
  defaults apply);
* :func:`schema_errors`: OpenAPI validation, strict about unknown fields as
  ``kubectl apply --validate=strict`` is, through ``jsonschema``;
* :func:`cel_errors`: every ``x-kubernetes-validations`` rule evaluated with
  cel-python, with values typed by the schema as the API server types them
  (an integer in a ``number`` field is a CEL double).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml
from celpy import celtypes

CEL_KEY = "x-kubernetes-validations"

_ENV = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """``value`` as the API server stores it after defaulting."""
    value = copy.deepcopy(value)
    _default(schema, value)
    return value


def _default(schema: dict[str, Any], value: Any) -> None:
    if isinstance(value, dict) and "properties" in schema:
        for name, prop in schema["properties"].items():
            if name in value and value[name] is None and not prop.get("nullable"):
                del value[name]
            if name not in value and "default" in prop:
                value[name] = copy.deepcopy(prop["default"])
            if name in value:
                _default(prop, value[name])
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for item in value.values():
            _default(schema["additionalProperties"], item)
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _default(schema["items"], item)


def to_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI v3.0 dialect of Kubernetes as JSON Schema 2020-12 (strict on unknowns)."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key in {"nullable", "exclusiveMinimum"}:
            continue
        if key == "exclusiveMaximum":
            continue
        if key == "properties":
            out[key] = {name: to_json_schema(prop) for name, prop in value.items()}
        elif key in {"items", "additionalProperties"} and isinstance(value, dict):
            out[key] = to_json_schema(value)
        elif key == "anyOf":
            out[key] = [to_json_schema(branch) for branch in value]
        else:
            out[key] = copy.deepcopy(value)
    for bound, numeric in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if schema.get(bound) is True:
            out[bound] = out.pop(numeric)
    if (
        "properties" in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
        and "additionalProperties" not in schema
    ):
        out["additionalProperties"] = False
    if schema.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


def schema_errors(schema: dict[str, Any], value: Any) -> list[str]:
    """OpenAPI validation errors as ``path: message`` lines."""
    converted = to_json_schema(schema)
    if "metadata" in converted.get("properties", {}):
        # ObjectMeta: the CRD constrains only the name; the rest is Kubernetes' own.
        converted["properties"]["metadata"].pop("additionalProperties", None)
    validator = jsonschema.Draft202012Validator(converted)
    return sorted(
        f"{'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(value)
    )


def cel_errors(schema: dict[str, Any], value: Any, path: str = "") -> list[tuple[str, str]]:
    """(path, message) of every CEL rule that fails on ``value``."""
    failures: list[tuple[str, str]] = []
    for rule in schema.get(CEL_KEY, []):
        if not evaluate(rule["rule"], schema, value):
            failures.append((path + rule.get("fieldPath", ""), rule["message"]))
    if isinstance(value, dict) and "properties" in schema:
        for name, prop in schema["properties"].items():
            if name in value:
                failures += cel_errors(prop, value[name], f"{path}.{name}")
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            failures += cel_errors(schema["items"], item, f"{path}[{index}]")
    return failures


def evaluate(rule: str, schema: dict[str, Any], value: Any) -> bool:
    """One CEL rule on ``self`` = value; an evaluation error counts as a failure."""
    program = _PROGRAMS.get(rule)
    if program is None:
        program = _PROGRAMS[rule] = _ENV.program(_ENV.compile(rule))
    try:
        result = program.evaluate({"self": to_cel(schema, value)})
    except celpy.CELEvalError:
        return False
    return isinstance(result, celtypes.BoolType) and bool(result)


def compiles(rule: str) -> bool:
    try:
        _ENV.compile(rule)
    except celpy.CELParseError:
        return False
    return True


def to_cel(schema: dict[str, Any], value: Any) -> Any:
    """A JSON value as a CEL value, typed by its schema."""
    if isinstance(value, dict):
        if "properties" in schema:
            props = schema["properties"]
            return celtypes.MapType(
                {celtypes.StringType(k): to_cel(props.get(k, {}), v) for k, v in value.items()}
            )
        inner = schema.get("additionalProperties")
        inner = inner if isinstance(inner, dict) else {}
        return celtypes.MapType(
            {celtypes.StringType(k): to_cel(inner, v) for k, v in value.items()}
        )
    if isinstance(value, list):
        return celtypes.ListType([to_cel(schema.get("items", {}), v) for v in value])
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int) and schema.get("type") != "number":
        return celtypes.IntType(value)
    if isinstance(value, int | float):
        return celtypes.DoubleType(float(value))
    if isinstance(value, str):
        return celtypes.StringType(value)
    raise TypeError(f"no CEL value for {value!r}")


def walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every schema node with its path."""
    nodes = [(path, schema)]
    for name, prop in schema.get("properties", {}).items():
        nodes += walk(prop, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            nodes += walk(schema[key], f"{path}[{key}]")
    for index, branch in enumerate(schema.get("anyOf", [])):
        nodes += walk(branch, f"{path}<anyOf {index}>")
    return nodes


def example_files(manifests: Path) -> list[Path]:
    """The example VLMServices in ``manifests/`` (files of VLMService documents only)."""
    found = []
    for path in sorted(manifests.glob("*.yaml")):
        kinds = {
            doc.get("kind") for doc in yaml.safe_load_all(path.read_text()) if isinstance(doc, dict)
        }
        if kinds == {"VLMService"}:
            found.append(path)
    return found
