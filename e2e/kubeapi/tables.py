"""Server-side printing: a GET asked ``as=Table`` answers a ``meta.k8s.io/v1`` Table.

kubectl asks every ``get`` for a Table and prints its columns, so without one ``kubectl
get vlms`` shows names and ages only, never the CRD's printer columns. The real API
server builds the Table from a CRD's ``additionalPrinterColumns`` (a JSONPath each; a
``date`` cell shown as an age, a missing value as ``nil``, which kubectl prints as
``<none>``; Age alone when the CRD declares no columns), and from a printer of its own
for each built-in kind. Here Deployments and Pods get the columns kubectl users know
(READY, UP-TO-DATE, AVAILABLE; READY, STATUS, RESTARTS), every other built-in kind Name
and Age. Each row carries the object's metadata (``PartialObjectMetadata``, the
server's default), which kubectl reads for the NAMESPACE column of ``-A``.

The JSONPath subset is what printer columns use in practice: fields (``.a.b``), list
indices (``[0]``) and an equality filter (``[?(@.type=="Ready")]``).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from typing import Any

from .resources import ResourceKind

__all__ = ["human_duration", "json_path", "table", "wants_table"]

_NAME_COLUMN = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "description": "Name must be unique within a namespace.",
    "priority": 0,
}
_AGE_COLUMN = {
    "name": "Age",
    "type": "date",
    "format": "",
    "description": "CreationTimestamp is the time the object was created.",
    "priority": 0,
    "jsonPath": ".metadata.creationTimestamp",
}

_STEP = re.compile(r"\.([A-Za-z0-9_$-]+)|\[(\d+)\]|\[\?\(@\.([A-Za-z0-9_.-]+)==\"([^\"]*)\"\)\]")


def wants_table(accept: str) -> bool:
    """Whether an Accept header asks for a ``meta.k8s.io/v1`` Table (kubectl get does)."""
    for media_range in accept.split(","):
        params = {
            key.strip(): value.strip()
            for key, _, value in (p.partition("=") for p in media_range.split(";")[1:])
        }
        table = params.get("as") == "Table" and params.get("g") == "meta.k8s.io"
        if table and params.get("v") == "v1":
            return True
    return False


def json_path(obj: Any, path: str) -> Any:
    """The value at a printer column's JSONPath, or None where there is none."""
    text = path.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    position = 0
    value = obj
    while position < len(text):
        step = _STEP.match(text, position)
        if step is None:
            raise ValueError(f"unsupported JSONPath {path!r} at {text[position:]!r}")
        position = step.end()
        field, index, filter_field, filter_value = step.groups()
        if field is not None:
            value = value.get(field) if isinstance(value, dict) else None
        elif index is not None:
            at = int(index)
            value = value[at] if isinstance(value, list) and at < len(value) else None
        else:
            matches = [
                item
                for item in (value if isinstance(value, list) else [])
                if str(json_path(item, "." + filter_field)) == filter_value
            ]
            value = matches[0] if matches else None
        if value is None:
            return None
    return value


def human_duration(seconds: float) -> str:
    """An age as kubectl shows it (k8s.io/apimachinery/pkg/util/duration.HumanDuration)."""
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    whole = int(seconds)
    if whole < 60 * 2:
        return f"{whole}s"
    minutes = whole // 60
    if minutes < 10:
        return f"{minutes}m" if whole % 60 == 0 else f"{minutes}m{whole % 60}s"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = hours // 24 % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def _age(obj: dict[str, Any], now: dt.datetime) -> str:
    stamp = json_path(obj, ".metadata.creationTimestamp")
    try:
        created = dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    return human_duration((now - created).total_seconds())


def _cell(value: Any, column_type: str, now: dt.datetime) -> Any:
    """A CRD column's cell as the real server types it (a wrong type: nil, as there)."""
    if value is None:
        return None
    if column_type == "date":
        return _age({"metadata": {"creationTimestamp": value}}, now)
    if column_type == "integer":
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if column_type == "number":
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if column_type == "boolean":
        return value if isinstance(value, bool) else None
    return value if isinstance(value, str) else str(value)


def _deployment(obj: dict[str, Any]) -> list[Any]:
    status = obj.get("status") or {}
    wanted = (obj.get("spec") or {}).get("replicas", 1)
    return [
        f"{status.get('readyReplicas', 0)}/{wanted}",
        status.get("updatedReplicas", 0),
        status.get("availableReplicas", 0),
    ]


def _pod(obj: dict[str, Any]) -> list[Any]:
    statuses = (obj.get("status") or {}).get("containerStatuses") or []
    containers = (obj.get("spec") or {}).get("containers") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    status = (obj.get("metadata") or {}).get("deletionTimestamp") and "Terminating"
    return [
        f"{ready}/{len(containers)}",
        status or (obj.get("status") or {}).get("phase", "Unknown"),
        sum(int(s.get("restartCount", 0)) for s in statuses),
    ]


#: Built-in printers: (group, plural) -> (columns between Name and Age, cells of an object).
_PRINTERS: dict[tuple[str, str], tuple[Sequence[tuple[str, str]], Callable[..., list[Any]]]] = {
    ("apps", "deployments"): (
        (("Ready", "string"), ("Up-to-date", "integer"), ("Available", "integer")),
        _deployment,
    ),
    ("", "pods"): ((("Ready", "string"), ("Status", "string"), ("Restarts", "integer")), _pod),
}


def _column(
    name: str, column_type: str, description: str = "", priority: int = 0
) -> dict[str, Any]:
    return {
        "name": name,
        "type": column_type,
        "format": "",
        "description": description,
        "priority": priority,
    }


def table(
    kind: ResourceKind,
    items: list[dict[str, Any]],
    resource_version: str,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """The Table of ``items`` (one object for a GET of a name, every match for a list)."""
    now = now or dt.datetime.now(dt.UTC)
    rows: list[dict[str, Any]] = []
    if kind.custom:
        declared = list(kind.printer_columns) or [_AGE_COLUMN]
        columns = [_NAME_COLUMN] + [
            _column(
                str(c["name"]),
                str(c.get("type", "string")),
                str(c.get("description", "")),
                int(c.get("priority", 0)),
            )
            | {"format": str(c.get("format", ""))}
            for c in declared
        ]
        for obj in items:
            cells = [obj["metadata"]["name"]]
            cells += [
                _cell(json_path(obj, str(c["jsonPath"])), str(c.get("type", "string")), now)
                for c in declared
            ]
            rows.append(_row(obj, cells))
    else:
        extra, cells_of = _PRINTERS.get((kind.group, kind.plural), ((), lambda _: []))
        columns = [_NAME_COLUMN, *(_column(name, t) for name, t in extra)]
        columns.append({k: v for k, v in _AGE_COLUMN.items() if k != "jsonPath"})
        for obj in items:
            rows.append(_row(obj, [obj["metadata"]["name"], *cells_of(obj), _age(obj, now)]))
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns,
        "rows": rows,
    }


def _row(obj: dict[str, Any], cells: list[Any]) -> dict[str, Any]:
    return {
        "cells": cells,
        "object": {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj["metadata"],
        },
    }
