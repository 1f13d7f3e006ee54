"""Label and field selectors in the API's query-string syntax.

Label selectors are parsed as apimachinery's ``labels.Parse`` parses them (its lexer and
grammar, not a regex per term, so that what a real server refuses is refused here and what
it takes is taken): ``k``, ``!k``, ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``,
``k notin (a,b)``, and ``k>1``/``k<1`` comparing labels as integers; keys and values must be
valid label keys and values. Field selectors accept ``=``, ``==`` and ``!=``, and, as on a
real server, only on the fields a kind makes selectable: ``metadata.name`` and
``metadata.namespace`` everywhere, a few documented fields of some built-in kinds (pods'
``spec.nodeName`` or ``status.phase``, events' ``involvedObject.*``...) and a CRD's
``selectableFields``. Anything else is answered 400 ``field label not supported``, so a
selector that only works here cannot slip through.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

Predicate = Callable[[Mapping[str, Any]], bool]
FieldGetter = Callable[[Mapping[str, Any]], str]

_EQ_TERM = re.compile(r"^(?P<key>[^\s!=]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s,]*)$")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_INT64 = re.compile(r"[+-]?[0-9]+")  # what Go's strconv.ParseInt reads (range aside)


class SelectorError(ValueError):
    """A selector string that cannot be parsed."""


def is_label_key(key: str) -> bool:
    """A qualified name: an optional DNS subdomain prefix and "/", then a name of at most 63
    alphanumerics, '-', '_' or '.' that starts and ends alphanumeric (fullmatch: Go's ``$``
    does not match before a final newline as Python's does)."""
    prefix, slash, name = key.rpartition("/")
    if slash and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return False
    return len(name) <= 63 and _LABEL_NAME.fullmatch(name) is not None


def is_label_value(value: str) -> bool:
    return value == "" or (len(value) <= 63 and _LABEL_NAME.fullmatch(value) is not None)


def _split_terms(selector: str) -> list[str]:
    """A field selector's terms (commas separate them)."""
    return [term.strip() for term in selector.split(",") if term.strip()]


_WHITESPACE = " \t\r\n"
_SPECIAL = "=!(),><"


def _tokens(selector: str) -> list[tuple[str, str]]:
    """apimachinery's label selector lexer: (kind, text) pairs, the kind being the symbol
    itself, "in", "notin", "id" (any other run of characters) or "end"."""
    tokens, index = [], 0
    while True:
        while index < len(selector) and selector[index] in _WHITESPACE:
            index += 1
        if index == len(selector):
            return [*tokens, ("end", "")]
        if selector[index] in _SPECIAL:
            length = 2 if selector[index : index + 2] in ("==", "!=") else 1
            symbol = selector[index : index + length]
            tokens.append((symbol, symbol))
        else:
            length = 0
            while index + length < len(selector) and (
                selector[index + length] not in _SPECIAL + _WHITESPACE
            ):
                length += 1
            word = selector[index : index + length]
            tokens.append((word if word in ("in", "notin") else "id", word))
        index += length


class _LabelSelectorParser:
    """apimachinery's ``labels.Parse``: requirements ``k``, ``!k``, ``k=v``, ``k==v``,
    ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k>1``, ``k<1``, separated by commas;
    whitespace is free between tokens; ``in``/``notin`` are words only where an operator
    may stand; ``()`` is the set of the empty value."""

    def __init__(self, selector: str) -> None:
        self._tokens = _tokens(selector)
        self._position = 0

    def _lookahead(self, *, values: bool = True) -> tuple[str, str]:
        kind, text = self._tokens[min(self._position, len(self._tokens) - 1)]
        return ("id" if values and kind in ("in", "notin") else kind), text

    def _consume(self, *, values: bool = True) -> tuple[str, str]:
        token = self._lookahead(values=values)
        self._position += 1
        return token

    def parse(self) -> list[tuple[str, str, set[str]]]:
        requirements = []
        while True:
            kind, text = self._lookahead()
            if kind == "end":
                return requirements
            if kind not in ("id", "!"):
                raise SelectorError(f"found '{text}', expected: !, identifier, or 'end of string'")
            try:
                requirements.append(self._requirement())
            except SelectorError as error:
                raise SelectorError(f"unable to parse requirement: {error}") from None
            kind, text = self._consume()
            if kind == "end":
                return requirements
            if kind != ",":
                raise SelectorError(f"found '{text}', expected: ',' or 'end of string'")
            kind, text = self._lookahead()
            if kind not in ("id", "!"):
                raise SelectorError(f"found '{text}', expected: identifier after ','")

    def _requirement(self) -> tuple[str, str, set[str]]:
        kind, key = self._consume()
        negated = kind == "!"
        if negated:
            kind, key = self._consume()
        if kind != "id":
            raise SelectorError(f"found '{key}', expected: identifier")
        if not is_label_key(key):
            raise SelectorError(f'key: Invalid value: "{key}": not a valid label key')
        if negated or self._lookahead()[0] in ("end", ","):
            return key, "!" if negated else "exists", set()
        operator, text = self._consume(values=False)
        if operator in ("in", "notin"):
            values = self._values()
        elif operator in ("=", "==", "!=", ">", "<"):
            values = {self._exact_value()}
        else:
            raise SelectorError(f"found '{text}', expected: in, notin, =, ==, !=, gt, lt")
        for value in values:
            if operator in (">", "<") and not _INT64.fullmatch(value):
                raise SelectorError(
                    f"values[0]: Invalid value: \"{value}\": for 'Gt', 'Lt' operators, the "
                    "value must be an integer"
                )
            if not is_label_value(value):
                raise SelectorError(
                    f'values[0][{key}]: Invalid value: "{value}": a valid label must be an '
                    "empty string or consist of alphanumeric characters, '-', '_' or '.'"
                )
        return key, operator, values

    def _values(self) -> set[str]:
        kind, text = self._consume()
        if kind != "(":
            raise SelectorError(f"found '{text}' expected: '('")
        kind, text = self._lookahead()
        if kind not in ("id", ",", ")"):
            raise SelectorError(f"found '{text}', expected: ',', ')' or identifier")
        values: set[str] = set()
        while kind != ")":
            kind, text = self._consume()
            if kind == "id":
                values.add(text)
                kind, text = self._lookahead()
                if kind not in (",", ")"):
                    raise SelectorError(f"found '{text}', expected: ',' or ')'")
            elif kind == ",":  # "(,", ",," and ",)" are empty values
                kind = self._lookahead()[0]
                if not values or kind in (",", ")"):
                    values.add("")
            else:
                raise SelectorError(f"found '{text}', expected: ',', or identifier")
        self._consume()
        return values or {""}

    def _exact_value(self) -> str:
        if self._lookahead()[0] in ("end", ","):
            return ""
        kind, text = self._consume()
        if kind != "id":
            raise SelectorError(f"found '{text}', expected: identifier")
        return text


def _matches(labels: Mapping[str, Any], key: str, operator: str, values: set[str]) -> bool:
    value = labels.get(key)
    if operator in ("=", "==", "in"):
        return value in values
    if operator in ("!=", "notin"):
        return value not in values
    if operator == "exists":
        return key in labels
    if operator == "!":
        return key not in labels
    if not isinstance(value, str) or not _INT64.fullmatch(value):
        return False  # gt/lt: only labels that are integers match
    (bound,) = values
    return int(value) > int(bound) if operator == ">" else int(value) < int(bound)


def parse_label_selector(selector: str | None) -> Predicate:
    """A predicate over an object's ``metadata.labels``; raises SelectorError."""
    requirements = _LabelSelectorParser(selector or "").parse()

    def matches(obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(_matches(labels, *requirement) for requirement in requirements)

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
