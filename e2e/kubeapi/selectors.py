"""Label and field selectors in the API's query-string syntax.

Supported label terms: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k``,
``!k``. Field selectors accept ``=``, ``==`` and ``!=``, and, as on a real server, only on the
fields a kind makes selectable: ``metadata.name`` and ``metadata.namespace`` everywhere, a few
documented fields of some built-in kinds (pods' ``spec.nodeName`` or ``status.phase``, events'
``involvedObject.*``...) and a CRD's ``selectableFields``. Anything else is answered 400
``field label not supported``, so a selector that only works here cannot slip through.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

Predicate = Callable[[Mapping[str, Any]], bool]
FieldGetter = Callable[[Mapping[str, Any]], str]

_SET_TERM = re.compile(r"^(?P<key>[^\s!=]+)\s+(?P<op>in|notin)\s+\((?P<values>[^)]*)\)$")
_EQ_TERM = re.compile(r"^(?P<key>[^\s!=]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s,]*)$")


class SelectorError(ValueError):
    """A selector string that cannot be parsed."""


def _split_terms(selector: str) -> list[str]:
    # Commas separate terms except inside the parentheses of a set term.
    terms: list[str] = []
    current: list[str] = []
    depth = 0
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    terms.append("".join(current).strip())
    return [term for term in terms if term]


def _label_term(term: str) -> Predicate:
    if match := _SET_TERM.match(term):
        key, values = match["key"], {v.strip() for v in match["values"].split(",") if v.strip()}
        if match["op"] == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if match := _EQ_TERM.match(term):
        key, value = match["key"], match["value"]
        if match["op"] == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if term.startswith("!") and re.fullmatch(r"![^\s!=(),]+", term):
        return lambda labels: term[1:] not in labels
    if re.fullmatch(r"[^\s!=(),]+", term):
        return lambda labels: term in labels
    raise SelectorError(f"unable to parse requirement: {term!r}")


def parse_label_selector(selector: str | None) -> Predicate:
    """A predicate over an object's ``metadata.labels``; raises SelectorError."""
    predicates = [_label_term(term) for term in _split_terms(selector or "")]

    def matches(obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(predicate(labels) for predicate in predicates)

    return matches


def _lookup(obj: Mapping[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _path(path: str) -> FieldGetter:
    return lambda obj: _lookup(obj, path)


def _pod_ip(pod: Mapping[str, Any]) -> str:
    ips = (pod.get("status") or {}).get("podIPs") or []
    first = ips[0] if ips and isinstance(ips[0], Mapping) else {}
    return str(first.get("ip") or _lookup(pod, "status.podIP"))


def _event_source(event: Mapping[str, Any]) -> str:
    return _lookup(event, "source.component") or _lookup(event, "reportingComponent")


def _host_network(pod: Mapping[str, Any]) -> str:
    return _lookup(pod, "spec.hostNetwork") or "false"


# The documented field selectors of built-in kinds (their GetAttrs/field label conversions in
# Kubernetes 1.30), beyond metadata.name and metadata.namespace.
_BUILTIN_FIELDS: dict[tuple[str, str], dict[str, FieldGetter]] = {
    ("", "pods"): {
        **{path: _path(path) for path in ("spec.nodeName", "spec.restartPolicy",
                                          "spec.schedulerName", "spec.serviceAccountName",
                                          "status.phase", "status.nominatedNodeName")},
        "spec.hostNetwork": _host_network,
        "status.podIP": _pod_ip,
    },
    ("", "events"): {
        **{f"involvedObject.{key}": _path(f"involvedObject.{key}") for key in (
            "kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")},
        "reason": _path("reason"),
        "reportingComponent": _path("reportingComponent"),
        "source": _event_source,
        "type": _path("type"),
    },
    ("events.k8s.io", "events"): {
        **{f"regarding.{key}": _path(f"regarding.{key}") for key in (
            "kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")},
        "reason": _path("reason"),
        "reportingController": _path("reportingController"),
        "type": _path("type"),
    },
    ("", "namespaces"): {"status.phase": _path("status.phase")},
    ("", "secrets"): {"type": _path("type")},
    ("apps", "replicasets"): {"status.replicas": lambda rs: _lookup(rs, "status.replicas") or "0"},
}  # fmt: skip


def selectable_fields(group: str, plural: str, extra: Iterable[str] = ()) -> dict[str, FieldGetter]:
    """The field-selector labels a kind supports, each with how to read it from an object."""
    fields = {
        "metadata.name": _path("metadata.name"),
        "metadata.namespace": _path("metadata.namespace"),
    }
    fields.update(_BUILTIN_FIELDS.get((group, plural), {}))
    fields.update({path: _path(path) for path in extra if path})
    return fields


def parse_field_selector(
    selector: str | None, fields: Mapping[str, FieldGetter] | None = None
) -> Predicate:
    """A predicate over an object's selectable ``fields`` (any dotted path if None).

    Raises SelectorError on a malformed term or a label the kind does not support.
    """
    checks: list[tuple[FieldGetter, bool, str]] = []
    for term in _split_terms(selector or ""):
        match = _EQ_TERM.match(term)
        if match is None:
            raise SelectorError(f"invalid field selector term: {term!r}")
        label = match["key"]
        if fields is None:
            getter = _path(label)
        elif label in fields:
            getter = fields[label]
        else:
            raise SelectorError(f"field label not supported: {label}")
        checks.append((getter, match["op"] != "!=", match["value"]))

    def matches(obj: Mapping[str, Any]) -> bool:
        return all((getter(obj) == value) == equal for getter, equal, value in checks)

    return matches


def selector_to_string(selector: Mapping[str, Any] | None) -> str:
    """A LabelSelector object (matchLabels/matchExpressions) in query-string syntax."""
    if not selector:
        return ""
    terms = [f"{key}={value}" for key, value in sorted((selector.get("matchLabels") or {}).items())]
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression.get("key", ""), expression.get("operator", "")
        values = ",".join(sorted(expression.get("values") or []))
        terms.append(
            {
                "In": f"{key} in ({values})",
                "NotIn": f"{key} notin ({values})",
                "Exists": key,
                "DoesNotExist": f"!{key}",
            }.get(operator, key)
        )
    return ",".join(terms)
