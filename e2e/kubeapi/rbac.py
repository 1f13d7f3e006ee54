"""Compare the requests a client really made with what RBAC rules grant it.

``used_permissions`` turns recorded requests into ``(apiGroup, resource, verb)`` triples, with
subresources named as RBAC names them (``deployments/scale``). ``missing_permissions`` lists the
used ones no rule grants (the client would get 403 on a real cluster); ``unused_permissions``
lists what the rules grant explicitly but the client never used (least privilege). Rules are
Role/ClusterRole ``rules`` entries; ``*`` wildcards are understood; ``resourceNames`` restricts
a rule to the named objects (collection verbs never match it, as in Kubernetes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .recording import RecordedRequest

Permission = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)


def _resource(request: RecordedRequest) -> str:
    return f"{request.resource}/{request.subresource}" if request.subresource else request.resource


def used_permissions(requests: Iterable[RecordedRequest]) -> set[Permission]:
    return {(r.group, _resource(r), r.verb) for r in requests}


def _matches(values: Sequence[str], value: str) -> bool:
    return "*" in values or value in values


def grants(rules: Iterable[Mapping[str, Any]], request: RecordedRequest) -> bool:
    """Whether any rule allows this one request."""
    for rule in rules:
        names = rule.get("resourceNames") or []
        if names and (request.name is None or request.name not in names):
            continue
        if (
            _matches(rule.get("apiGroups") or [], request.group)
            and _matches(rule.get("resources") or [], _resource(request))
            and _matches(rule.get("verbs") or [], request.verb)
        ):
            return True
    return False


def missing_permissions(
    requests: Iterable[RecordedRequest], rules: Sequence[Mapping[str, Any]]
) -> set[Permission]:
    return {(r.group, _resource(r), r.verb) for r in requests if not grants(rules, r)}


def unused_permissions(
    requests: Iterable[RecordedRequest], rules: Iterable[Mapping[str, Any]]
) -> set[Permission]:
    """Explicitly granted triples (wildcards skipped) that no request used."""
    granted = {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups") or []
        for resource in rule.get("resources") or []
        for verb in rule.get("verbs") or []
        if "*" not in (group, resource, verb)
    }
    return granted - used_permissions(requests)
