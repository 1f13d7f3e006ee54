"""Structural-schema behaviour of custom resources, as the real API server applies it.

Order on every write, as in the real API server: pruning of unknown fields (or rejection under
``fieldValidation=Strict``, which happens while decoding), pruning of ``null`` values of fields
that are not ``nullable`` and have no default, defaults (``default`` of absent properties, and of
non-nullable nulls, recursively), OpenAPI validation (type, enum, required, minimum/maximum,
exclusive bounds, minLength/maxLength, pattern (with Go's regexp semantics, see
``pattern_matcher``), minItems/maxItems, minProperties/maxProperties, nullable, int-or-string;
``metadata.name`` and ``metadata.generateName`` against the schema's
``metadata`` properties, the only ones a CRD may constrain), then ``x-kubernetes-validations`` CEL
rules (cel-python) on the subtrees that passed schema validation. ``oldSelf`` transition rules are
only evaluated on updates, and subtrees an update leaves unchanged are not validated again
(ratcheting). Every failure becomes a cause naming the field, like the real 422 body.

``check_crd_schema`` is the part of CRD validation that catches broken CRDs before they serve: a
structural schema (every node typed, except int-or-string and preserve-unknown-fields ones; arrays
with ``items``; ``metadata`` constraining only ``name``/``generateName``), patterns that compile
as Go regexps, and CEL rules that compile (parsing only: cel-python does not type-check against
the schema as the real server does).
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_ROOT_FIELDS = ("apiVersion", "kind", "metadata")
_METADATA_FIELDS = ("name", "generateName")  # the only metadata a CRD's schema may constrain
_CEL_EXPRESSIONS = (
    ("rule", "compilation failed"),
    ("messageExpression", "messageExpression compilation failed"),
)


@dataclass(frozen=True)
class Cause:
    """One field error of a 422 Invalid response."""

    field: str
    reason: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message, "field": self.field}


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Fill absent (or non-nullable null) properties that have a ``default``, in place; returns
    the value."""
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            absent = name not in value or (value[name] is None and not sub.get("nullable"))
            if absent and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in list(value):
                value[name] = apply_defaults(extra, value[name])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], item) for item in value]
    return value


def prune(schema: dict[str, Any], value: Any, path: str = "", *, root: bool = True) -> list[str]:
    """Drop fields the schema does not know, in place; returns their paths."""
    dropped: list[str] = []
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return dropped
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for name in list(value):
            if root and name in _ROOT_FIELDS:
                continue
            if name in properties:
                dropped += prune(properties[name], value[name], _join(path, name), root=False)
            elif isinstance(extra, dict):
                dropped += prune(extra, value[name], _join(path, name), root=False)
            elif extra is True:
                continue
            else:
                dropped.append(_join(path, name))
                del value[name]
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            dropped += prune(schema["items"], item, _join(path, index), root=False)
    return dropped


#: The largest whole float the real server takes for an integer (go-openapi's
#: ``IsFloat64AJSONInteger``: within ±2^53, where a float64 still holds every integer).
_WHOLE_FLOAT_BOUND = 2.0**53


def whole_numbers(schema: dict[str, Any], value: Any) -> Any:
    """``value`` with each whole float of an ``integer`` (or int-or-string) field as an int.

    The real server decodes ``2.0`` as a float64, takes it for an integer (it holds a
    whole number within ±2^53), and writes it back as ``2``: a client reads an integer.
    Fractional ones and those beyond the bound stay floats, for validation to refuse.
    """
    integral = schema.get("type") == "integer" or schema.get("x-kubernetes-int-or-string")
    if integral and isinstance(value, float):
        if value.is_integer() and abs(value) <= _WHOLE_FLOAT_BOUND:
            return int(value)
        return value
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for name in list(value):
            sub = properties.get(name, extra if isinstance(extra, dict) else None)
            if sub is not None:
                value[name] = whole_numbers(sub, value[name])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value[:] = [whole_numbers(schema["items"], item) for item in value]
    return value


def prune_nulls(schema: dict[str, Any], value: Any, *, root: bool = True) -> None:
    """Drop ``null`` values of properties that are neither ``nullable`` nor defaulted, in place.

    The real server does this before defaulting (so a null with a default gets the default):
    ``{"color": null}`` means "unset", not a type error.
    """
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for name in list(value):
            if root and name in _ROOT_FIELDS:
                continue
            sub = properties.get(name)
            if sub is not None:
                if value[name] is None and not sub.get("nullable") and "default" not in sub:
                    del value[name]
                else:
                    prune_nulls(sub, value[name], root=False)
            elif isinstance(extra, dict):
                prune_nulls(extra, value[name], root=False)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            prune_nulls(schema["items"], item, root=False)


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return '"object"' if isinstance(value, dict) else '"array"'
    return str(value)


def _type_ok(schema: dict[str, Any], value: Any) -> str | None:
    if schema.get("x-kubernetes-int-or-string"):
        ok = isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
        return None if ok else "must be an integer or a string"
    expected = schema.get("type")
    checks = {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
    }
    if expected in checks and not checks[expected](value):
        return f"must be of type {expected}"
    return None


class PatternError(ValueError):
    """A schema ``pattern`` that is no valid (Go, RE2 syntax) regular expression."""


#: POSIX classes (inside brackets) as ASCII ranges, as RE2 defines them.
_POSIX_CLASSES = {
    "alnum": "0-9A-Za-z", "alpha": "A-Za-z", "ascii": "\\x00-\\x7f", "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f", "digit": "0-9", "graph": "!-~", "lower": "a-z",
    "print": " -~", "punct": "!-/:-@\\[-`{-~", "space": "\\t\\n\\v\\f\\r ", "upper": "A-Z",
    "word": "0-9A-Za-z_", "xdigit": "0-9A-Fa-f",
}  # fmt: skip
_POSIX_CLASS = re.compile(r"\[:(\^?)([a-z]+):\]")
#: A group that sets flags for the rest of the group it is in: "(?i)", "(?s-m)".
_FLAG_GROUP = re.compile(r"\(\?([imsU]+(?:-[imsU]+)?|-[imsU]+)\)")
#: A group with flags of its own: "(?m:", "(?-m:", "(?:".
_SCOPED_FLAGS = re.compile(r"\(\?([imsU]*(?:-[imsU]*)?):")


def _with_m(on: bool, flags: str) -> bool:
    """Whether m is on after ``flags`` ("im", "-m", "s-m") where it was ``on``."""
    added, _, removed = flags.partition("-")
    return (on or "m" in added) and "m" not in removed


def _python_regex(pattern: str) -> str:
    """An RE2 pattern in Python's syntax: ``$`` and ``\\z`` (outside brackets, without the
    ``m`` flag) are the end of the text, ``\\Z`` in Python, where ``$`` also matches before
    a final newline; POSIX classes become ranges, and flag groups scoped ones. What
    Python would read otherwise (``\\p`` classes, look-arounds, back-references, the
    ungreedy flag) is refused rather than misread."""
    out, index, in_class = [], 0, False
    # Whether m is on, in each open group (the pattern's own first): RE2 scopes it
    # as any flag, so a "$" is the end of the text wherever it is off.
    multiline = [False]
    # RE2 lets "(?i)" stand anywhere, for the rest of its group; Python only at the
    # start of the pattern. Each becomes "(?i:", closed where its group ends and
    # around each "|" of it: the flags set so far in each open group (the pattern's
    # own first).
    flag_sets: list[list[str]] = [[]]
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            escaped = pattern[index + 1]
            if escaped in "pPZ123456789":  # classes, back-references; no \\Z in RE2
                raise PatternError(f"invalid escape \\{escaped} (unsupported without google-re2)")
            out.append("\\Z" if escaped == "z" and not in_class else char + escaped)
            index += 2
            continue
        if in_class and (posix := _POSIX_CLASS.match(pattern, index)):
            if posix[1] or posix[2] not in _POSIX_CLASSES:
                raise PatternError(f"invalid character class range: {posix[0]}")
            out.append(_POSIX_CLASSES[posix[2]])
            index = posix.end()
            continue
        if not in_class and pattern.startswith(("(?=", "(?!", "(?<=", "(?<!"), index):
            raise PatternError("invalid or unsupported Perl syntax: look-around")
        if not in_class and (flags := _FLAG_GROUP.match(pattern, index)):
            if "U" in flags[1]:
                raise PatternError("invalid or unsupported Perl syntax: (?U)")
            out.append(f"(?{flags[1]}:")
            flag_sets[-1].append(flags[1])
            multiline[-1] = _with_m(multiline[-1], flags[1])
            index = flags.end()
            continue
        if char == "(" and not in_class:
            flag_sets.append([])
            scoped = _SCOPED_FLAGS.match(pattern, index)
            multiline.append(_with_m(multiline[-1], scoped[1]) if scoped else multiline[-1])
        elif char == ")" and not in_class and len(flag_sets) > 1:
            out.append(")" * len(flag_sets.pop()))
            multiline.pop()
        elif char == "|" and not in_class and flag_sets[-1]:
            out.append(")" * len(flag_sets[-1]) + "|" + "".join(f"(?{f}:" for f in flag_sets[-1]))
            index += 1
            continue
        if char == "[" and not in_class:
            in_class = True
            out.append(char)
            index += 1
            # A "]" (after an optional "^") right at the start is a literal member.
            for literal in ("^", "]"):
                if pattern.startswith(literal, index):
                    out.append("\\]" if literal == "]" else literal)
                    index += 1
            continue
        if char == "]" and in_class:
            in_class = False
        elif char == "[" and in_class:  # a literal in RE2, a FutureWarning in Python
            char = "\\["
        out.append("\\Z" if char == "$" and not in_class and not multiline[-1] else char)
        index += 1
    return "".join(out) + ")" * len(flag_sets[0])


def pattern_matcher(pattern: Any) -> Callable[[str], bool]:
    """A predicate telling whether a text matches a schema ``pattern`` anywhere, with the real
    server's (Go) semantics: RE2 through google-re2 (cel-python's dependency) when installed,
    else Python's ``re`` on a translation. Raises PatternError where Go's regexp would not
    compile the pattern."""
    if not isinstance(pattern, str):
        raise PatternError(f"must be a string, not {_describe(pattern)}")
    return _compiled_pattern(pattern)


@functools.lru_cache(maxsize=1024)
def _compiled_pattern(pattern: str) -> Callable[[str], bool]:
    try:
        import re2
    except ImportError:
        try:
            compiled = re.compile(_python_regex(pattern), re.ASCII)  # \d, \w, \s as RE2 reads them
        except re.error as error:
            raise PatternError(f"error parsing regexp: {error}") from None
        return lambda text: compiled.search(text) is not None
    options = re2.Options()
    options.log_errors = False
    try:
        compiled_re2 = re2.compile(pattern, options)
    except re2.error as error:
        reason = error.args[0] if error.args else error
        if isinstance(reason, bytes):
            reason = reason.decode()
        raise PatternError(f"error parsing regexp: {reason}") from None
    return lambda text: compiled_re2.search(text) is not None


def _bounds(schema: dict[str, Any], value: Any, field: str) -> list[Cause]:
    causes: list[Cause] = []

    def add(reason: str, message: str) -> None:
        causes.append(Cause(field, reason, message))

    def bad(message: str) -> None:
        add("FieldValueInvalid", f"Invalid value: {_describe(value)}: {message}")

    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(_describe(v) for v in schema["enum"])
        add(
            "FieldValueNotSupported",
            f"Unsupported value: {_describe(value)}: supported values: {allowed}",
        )
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema:
            if schema.get("exclusiveMinimum") is True and value <= schema["minimum"]:
                bad(f"should be greater than {schema['minimum']}")
            elif value < schema["minimum"]:
                bad(f"should be greater than or equal to {schema['minimum']}")
        if "maximum" in schema:
            if schema.get("exclusiveMaximum") is True and value >= schema["maximum"]:
                bad(f"should be less than {schema['maximum']}")
            elif value > schema["maximum"]:
                bad(f"should be less than or equal to {schema['maximum']}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            bad(f"should be at least {schema['minLength']} chars long")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            add("FieldValueTooLong", f"Too long: may not be longer than {schema['maxLength']}")
        if "pattern" in schema:
            pattern = schema["pattern"]
            try:
                if not pattern_matcher(pattern)(value):
                    bad(f"should match '{pattern}'")
            except PatternError as error:  # a CRD stored before it was checked: never a 500
                bad(f"should match '{pattern}': {error}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            bad(f"should have at least {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            add(
                "FieldValueTooMany",
                f"Too many: {len(value)}: must have at most {schema['maxItems']} items",
            )
    if isinstance(value, dict):
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            bad(f"should have at least {schema['minProperties']} properties")
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            bad(f"should have at most {schema['maxProperties']} properties")
    return causes


def validate(
    schema: dict[str, Any], value: Any, old: Any = None, path: str = "", *, root: bool = True
) -> list[Cause]:
    """Schema and CEL errors of ``value`` (``old`` is the stored value on update).

    Unchanged subtrees of an update are not validated again (validation ratcheting, on by
    default since Kubernetes 1.30): a status write never re-runs the spec's rules.
    """
    if old is not None and value == old:
        return []
    if value is None:
        if schema.get("nullable"):
            return []
        return [
            Cause(
                path,
                "FieldValueTypeInvalid",
                f'Invalid value: "null": must be of type {schema.get("type", "object")}',
            )
        ]
    type_error = _type_ok(schema, value)
    if type_error is not None:
        return [
            Cause(path, "FieldValueTypeInvalid", f"Invalid value: {_describe(value)}: {type_error}")
        ]
    causes = _bounds(schema, value, path)
    if isinstance(value, dict):
        for name in schema.get("required") or []:
            if name not in value:
                causes.append(Cause(_join(path, name), "FieldValueRequired", "Required value"))
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        if root:
            causes += _validate_metadata(properties.get("metadata"), value, old)
        for name, item in value.items():
            if root and name in _ROOT_FIELDS:
                continue
            sub = properties.get(name, extra if isinstance(extra, dict) else None)
            if sub is not None:
                old_item = old.get(name) if isinstance(old, dict) else None
                causes += validate(sub, item, old_item, _join(path, name), root=False)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            old_item = old[index] if isinstance(old, list) and index < len(old) else None
            causes += validate(schema["items"], item, old_item, _join(path, index), root=False)
    if not causes:
        causes += _cel(schema, value, old, path)
    return causes


def _validate_metadata(schema: Any, obj: dict[str, Any], old: Any) -> list[Cause]:
    """``metadata.name``/``generateName`` against the CRD's ``metadata`` schema (the real server
    validates the whole object, metadata included, against the schema)."""
    metadata = obj.get("metadata")
    properties = (schema or {}).get("properties") if isinstance(schema, dict) else None
    if not isinstance(metadata, dict) or not isinstance(properties, dict):
        return []
    old_metadata = old.get("metadata") if isinstance(old, dict) else None
    causes: list[Cause] = []
    for name in _METADATA_FIELDS:
        if isinstance(properties.get(name), dict) and name in metadata:
            old_value = old_metadata.get(name) if isinstance(old_metadata, dict) else None
            causes += validate(
                properties[name], metadata[name], old_value, f"metadata.{name}", root=False
            )
    return causes


def _as_declared(schema: dict[str, Any], value: Any) -> Any:
    """The value with the schema's types: a ``number`` is a CEL double even when written as
    ``2`` (JSON has one number type, CEL has int and double and no mixed comparisons)."""
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        return {
            key: _as_declared(properties.get(key, extra if isinstance(extra, dict) else {}), item)
            for key, item in value.items()
        }
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_as_declared(schema["items"], item) for item in value]
    return value


def check_crd_schema(schema: Any, path: str) -> list[Cause]:
    """What the real server refuses in a CRD version's ``openAPIV3Schema`` (``path`` names it,
    e.g. ``spec.versions[0].schema.openAPIV3Schema``): a non-structural schema or a CEL rule that
    does not compile."""
    if not isinstance(schema, dict):
        return [Cause(path, "FieldValueRequired", "Required value: a schema is required")]
    causes = _check_node(schema, path, "root")
    properties = schema.get("properties") or {}
    for name, expected in (("kind", "string"), ("apiVersion", "string"), ("metadata", "object")):
        sub = properties.get(name)
        if isinstance(sub, dict) and sub.get("type") != expected:
            causes.append(
                Cause(
                    f"{path}.properties[{name}].type",
                    "FieldValueInvalid",
                    f"Invalid value: {_describe(sub.get('type', ''))}: must be {expected}",
                )
            )
    metadata = properties.get("metadata")
    if isinstance(metadata, dict) and (
        set(metadata) - {"type", "properties", "default"}
        or set(metadata.get("properties") or {}) - set(_METADATA_FIELDS)
    ):
        causes.append(
            Cause(
                f"{path}.properties[metadata]",
                "FieldValueForbidden",
                "Forbidden: must not specify anything other than name and generateName, but "
                "metadata is implicitly specified",
            )
        )
    return causes


_UNTYPED = {
    "root": "must not be empty at the root",
    "item": "must not be empty for specified array items",
    "field": "must not be empty for specified object fields",
}


def _check_node(schema: dict[str, Any], path: str, level: str) -> list[Cause]:
    """The structural invariants of one schema node and its CEL rules, recursively."""
    causes: list[Cause] = []
    untyped_ok = schema.get("x-kubernetes-int-or-string") or schema.get(
        "x-kubernetes-preserve-unknown-fields"
    )
    if not schema.get("type") and not untyped_ok:
        causes.append(
            Cause(f"{path}.type", "FieldValueRequired", f"Required value: {_UNTYPED[level]}")
        )
    if level == "root" and schema.get("type") not in (None, "", "object"):
        causes.append(
            Cause(
                f"{path}.type",
                "FieldValueInvalid",
                f"Invalid value: {_describe(schema['type'])}: must be object at the root",
            )
        )
    if schema.get("type") == "array" and not isinstance(schema.get("items"), dict):
        causes.append(
            Cause(f"{path}.items", "FieldValueRequired", "Required value: must be specified")
        )
    for name, sub in (schema.get("properties") or {}).items():
        if isinstance(sub, dict):
            causes += _check_node(sub, f"{path}.properties[{name}]", "field")
    if isinstance(schema.get("items"), dict):
        causes += _check_node(schema["items"], f"{path}.items", "item")
    if isinstance(schema.get("additionalProperties"), dict):
        causes += _check_node(
            schema["additionalProperties"], f"{path}.additionalProperties", "field"
        )
    if "pattern" in schema:
        try:
            pattern_matcher(schema["pattern"])
        except PatternError as error:
            causes.append(
                Cause(
                    f"{path}.pattern",
                    "FieldValueInvalid",
                    f"Invalid value: {_describe(schema['pattern'])}: must be a valid regular "
                    f"expression, but isn't: {error}",
                )
            )
    for index, rule in enumerate(schema.get("x-kubernetes-validations") or []):
        rule_path = f"{path}.x-kubernetes-validations[{index}]"
        for key, what in _CEL_EXPRESSIONS:
            expression = rule.get(key) if isinstance(rule, dict) else None
            if key == "rule" and not isinstance(expression, str):
                causes.append(Cause(f"{rule_path}.rule", "FieldValueRequired", "Required value"))
                continue
            error = _compile_error(expression) if isinstance(expression, str) else None
            if error is not None:
                causes.append(
                    Cause(
                        f"{rule_path}.{key}",
                        "FieldValueInvalid",
                        f"Invalid value: {_describe(expression)}: {what}: {error}",
                    )
                )
    return causes


def _compile_error(expression: str) -> str | None:
    """Why a CEL expression does not compile, or None (also when cel-python is missing)."""
    try:
        _program(expression)
    except ImportError:
        return None
    except Exception as error:  # cel-python's parse errors carry the position
        line, column = getattr(error, "line", 1), getattr(error, "column", 0)
        excerpt = "".join(f"\n | {text}" for text in str(error).rstrip().split("\n"))
        return f"ERROR: <input>:{line}:{column}: Syntax error{excerpt}"
    return None


@functools.lru_cache(maxsize=1024)
def _program(expression: str) -> Any:
    """A compiled CEL program; parsing dominates the cost, so each rule is compiled once."""
    import celpy

    environment = celpy.Environment()
    return environment.program(environment.compile(expression))


def _cel(schema: dict[str, Any], value: Any, old: Any, path: str) -> list[Cause]:
    rules = schema.get("x-kubernetes-validations") or []
    if not rules:
        return []
    from celpy.adapter import json_to_cel  # the local-cluster extra; only needed for CEL rules

    causes = []
    for rule in rules:
        expression = rule.get("rule", "")
        if "oldSelf" in expression and old is None:
            continue  # transition rules apply to updates only
        activation = {"self": json_to_cel(_as_declared(schema, value))}
        if old is not None:
            activation["oldSelf"] = json_to_cel(_as_declared(schema, old))
        field = path + (rule.get("fieldPath") or "")
        try:
            result = _program(expression).evaluate(activation)
        except Exception as error:  # compile and evaluation errors are reported, never raised
            causes.append(
                Cause(
                    field,
                    "FieldValueInvalid",
                    f"Invalid value: {_describe(value)}: {error} evaluating rule: {expression}",
                )
            )
            continue
        if isinstance(result, Exception):
            causes.append(
                Cause(
                    field,
                    "FieldValueInvalid",
                    f"Invalid value: {_describe(value)}: {result} evaluating rule: {expression}",
                )
            )
        elif not bool(result):
            message = rule.get("message") or f"failed rule: {expression}"
            if rule.get("messageExpression"):
                try:
                    rendered = _program(rule["messageExpression"]).evaluate(activation)
                except Exception:  # a broken message falls back to the static one
                    rendered = None
                if isinstance(rendered, str) and rendered:
                    message = str(rendered)
            reason = {
                "FieldValueRequired": "FieldValueRequired",
                "FieldValueForbidden": "FieldValueForbidden",
                "FieldValueDuplicate": "FieldValueDuplicate",
            }.get(rule.get("reason", ""), "FieldValueInvalid")
            causes.append(Cause(field, reason, f"Invalid value: {_describe(value)}: {message}"))
    return causes
