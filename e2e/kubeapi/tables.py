"""Server-side printing: a GET asked ``as=Table`` answers a ``meta.k8s.io/v1`` Table.

kubectl asks every ``get`` for a Table and prints its columns, so without one ``kubectl
get vlms`` shows names and ages only, never the CRD's printer columns. The real API
server builds the Table from a CRD's ``additionalPrinterColumns`` (a JSONPath each; a
``date`` cell shown as an age, a missing value as ``nil``, which kubectl prints as
``<none>``; Age alone when the CRD declares no columns), and from a printer of its own
for each built-in kind. Here Deployments and Pods get the columns kubectl users know
(READY, UP-TO-DATE, AVAILABLE; READY, STATUS, RESTARTS), every other built-in kind Name
and Age. Each row carries what ``includeObject`` asks for: the object's metadata by
default (``PartialObjectMetadata``, which kubectl reads for the NAMESPACE column of
``-A``), the whole object (``--sort-by``) or nothing. A watch asked for a Table sends
each event as a Table of its one row (``kubectl get -w``).

The JSONPath subset is what printer columns use in practice: fields (``.a.b``), list
indices (``[0]``) and an equality filter (``[?(@.type=="Ready")]``).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from .resources import ResourceKind

__all__ = ["human_duration", "include_object", "json_path", "table", "wants_table"]

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

#: Values of ``includeObject``: no object, its metadata (the default), all of it.
INCLUDE_OBJECT = ("None", "Metadata", "Object")

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
                if (found := json_path(item, "." + filter_field)) is not None
                and _text(found) == filter_value
            ]
            value = matches[0] if matches else None
        if value is None:
            return None
    return value


def human_duration(seconds: float) -> str:
    """An age as kubectl shows it (k8s.io/apimachinery/pkg/util/duration.HumanDuration)."""
    whole = int(seconds)  # Go's int(d.Seconds()): toward zero, before any comparison
    if whole < -1:
        return "<invalid>"
    if whole < 0:
        return "0s"
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


def _age(stamp: str, now: dt.datetime) -> str:
    """A timestamp as an age; ``<unknown>`` when empty, ``<invalid>`` when unreadable."""
    if stamp in ("", "null"):
        return "<unknown>"
    try:
        created = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return "<invalid>"
    if created.tzinfo is None:
        return "<invalid>"  # RFC 3339 has an offset, always
    return human_duration((now - created).total_seconds())


def _text(value: Any) -> str:
    """A value as a JSONPath template prints it (a string column of a CRD)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _cell(value: Any, column_type: str, now: dt.datetime) -> Any:
    """A CRD column's cell as the real server types it (apiextensions' tableconvertor:
    a value of another type is nil, but an integer column truncates a float)."""
    if value is None:
        return None
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if column_type == "string":
        return _text(value)
    if column_type == "integer":
        return int(value) if number else None
    if column_type == "number":
        return float(value) if number else None
    if column_type == "boolean":
        return value if isinstance(value, bool) else None
    if column_type == "date":
        return _age(value, now) if isinstance(value, str) else None
    return None


def _deployment(obj: dict[str, Any]) -> list[Any]:
    status = obj.get("status") or {}
    wanted = (obj.get("spec") or {}).get("replicas", 1)
    return [
        f"{status.get('readyReplicas', 0)}/{wanted}",
        status.get("updatedReplicas", 0),
        status.get("availableReplicas", 0),
    ]


def _pod(obj: dict[str, Any]) -> list[Any]:
    # Native sidecars (init containers that keep running) count as kubectl counts them.
    status_of = obj.get("status") or {}
    spec = obj.get("spec") or {}
    sidecars = {
        c.get("name")
        for c in spec.get("initContainers") or []
        if c.get("restartPolicy") == "Always"
    }
    statuses = (status_of.get("containerStatuses") or []) + [
        s for s in status_of.get("initContainerStatuses") or [] if s.get("name") in sidecars
    ]
    containers = [*(spec.get("containers") or []), *sidecars]
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


def _column(name: str, column_type: str) -> dict[str, Any]:
    """A built-in printer's column between Name and Age."""
    return {"name": name, "type": column_type, "format": "", "description": "", "priority": 0}


def include_object(value: str | None) -> str:
    """The ``includeObject`` query parameter: what each row carries of its object."""
    if value in (None, ""):
        return "Metadata"
    if value not in INCLUDE_OBJECT:
        raise ValueError(
            f'includeObject: Unsupported value: "{value}": supported values: '
            + ", ".join(f'"{v}"' for v in INCLUDE_OBJECT)
        )
    return value


def _crd_column(declared: dict[str, Any]) -> dict[str, Any]:
    """A Table's definition of one of a CRD's additionalPrinterColumns."""
    path = declared["jsonPath"]
    description = declared.get("description") or (
        f"Custom resource definition column (in JSONPath format): {path}"
    )
    return {
        "name": str(declared["name"]),
        "type": str(declared.get("type", "string")),
        "format": str(declared.get("format", "")),
        "description": str(description),
        "priority": int(declared.get("priority", 0)),
    }


def _lookup(obj: dict[str, Any], path: str) -> Any:
    """A printer column's value; None where the path finds nothing or is beyond the subset."""
    try:
        return json_path(obj, path)
    except ValueError:
        return None


def table(
    kind: ResourceKind,
    items: list[dict[str, Any]],
    resource_version: str,
    now: dt.datetime | None = None,
    *,
    include: str = "Metadata",
) -> dict[str, Any]:
    """The Table of ``items`` (one object for a GET of a name or a watch event, every
    match for a list); ``include`` is the request's :func:`include_object`."""
    now = now or dt.datetime.now(dt.UTC)
    rows: list[dict[str, Any]] = []
    if kind.custom:
        declared = list(kind.printer_columns) or [_AGE_COLUMN]
        columns = [_NAME_COLUMN] + [_crd_column(c) for c in declared]
        for obj in items:
            cells = [obj["metadata"]["name"]]
            cells += [
                _cell(_lookup(obj, str(c["jsonPath"])), str(c.get("type", "string")), now)
                for c in declared
            ]
            rows.append(_row(obj, cells, include))
    else:
        extra, cells_of = _PRINTERS.get((kind.group, kind.plural), ((), lambda _: []))
        columns = [_NAME_COLUMN, *(_column(name, t) for name, t in extra)]
        columns.append({k: v for k, v in _AGE_COLUMN.items() if k != "jsonPath"})
        for obj in items:
            age = _age(str((obj.get("metadata") or {}).get("creationTimestamp") or ""), now)
            rows.append(_row(obj, [obj["metadata"]["name"], *cells_of(obj), age], include))
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns,
        "rows": rows,
    }


def _row(obj: dict[str, Any], cells: list[Any], include: str) -> dict[str, Any]:
    if include == "Object":
        return {"cells": cells, "object": obj}
    if include == "None":
        return {"cells": cells}
    partial = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1"}
    return {"cells": cells, "object": partial | {"metadata": obj["metadata"]}}
