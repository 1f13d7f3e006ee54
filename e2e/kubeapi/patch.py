"""The PATCH flavours the API server accepts, applied to plain JSON documents.

- ``application/merge-patch+json``: RFC 7386.
- ``application/json-patch+json``: RFC 6902 (add, remove, replace, move, copy, test); a failed
  ``test`` or a missing path raises PatchError, which the server answers with 422. ``test``
  compares JSON values, as evanphx/json-patch does, not Python ones (``true`` is not ``1``).
- ``application/strategic-merge-patch+json`` (built-in kinds only, as in Kubernetes): a merge
  patch in which lists of named things are merged by their key instead of replaced — containers,
  initContainers, volumes, env, envFrom-free named lists, imagePullSecrets (``name``),
  volumeMounts (``mountPath``), ports (``containerPort``, or ``port`` for Services),
  ownerReferences (``uid``), conditions (``type``); ``finalizers`` is merged as a set. The
  ``$patch: delete`` / ``$patch: replace`` directives are honoured inside merged lists and maps;
  other directives ($retainKeys, $setElementOrder, $deleteFromPrimitiveList) are ignored.
"""

from __future__ import annotations

import copy
from typing import Any


class PatchError(ValueError):
    """A patch that cannot be applied to the document."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch; returns a new document.

    As in the library the API server uses (evanphx/json-patch), nulls inside a value that is
    added or replaces a non-object (a new key, a list) are dropped from its objects, at any
    depth, list items included; only an object replaced by a list keeps them.
    """
    if not isinstance(patch, dict):
        return _without_nulls(patch) if not isinstance(target, dict) else copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return copy.deepcopy(value)


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    node = doc
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise PatchError(f"doc is missing path: {path!r}")
    return node


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent, last = _parent(doc, parts, path), parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise PatchError(f"doc is missing path: {path!r}")


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        raise PatchError("cannot remove the whole document")
    parent, last = _parent(doc, parts, path), parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise PatchError(f"unable to remove nonexistent key: {path!r}")


def _add(doc: Any, path: str, value: Any, *, replace: bool = False) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent, last = _parent(doc, parts, path), parts[-1]
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise PatchError(f"replace operation does not apply: doc is missing key: {path!r}")
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-" and not replace:
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent) - (1 if replace else 0):
            if replace:
                parent[int(last)] = value
            else:
                parent.insert(int(last), value)
        else:
            raise PatchError(f"index out of range in {path!r}")
    else:
        raise PatchError(f"doc is missing path: {path!r}")
    return doc


def _json_equal(current: Any, expected: Any) -> bool:
    """The ``test`` op's equality in evanphx/json-patch: structural for objects and arrays,
    the JSON text for scalars. So ``true`` is not ``1``, and ``4.0`` (a float here, so written
    with a point or an exponent) is not the ``4`` a whole number of the stored object is
    serialized as, whatever its Python type."""
    if isinstance(current, dict) or isinstance(expected, dict):
        return (
            isinstance(current, dict)
            and isinstance(expected, dict)
            and current.keys() == expected.keys()
            and all(_json_equal(current[key], expected[key]) for key in current)
        )
    if isinstance(current, list) or isinstance(expected, list):
        return (
            isinstance(current, list)
            and isinstance(expected, list)
            and len(current) == len(expected)
            and all(map(_json_equal, current, expected))
        )
    if isinstance(current, float) and current.is_integer():
        current = int(current)  # Go writes a whole float64 without a point
    return type(current) is type(expected) and current == expected


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch; returns a new document."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for operation in operations:
        if not isinstance(operation, dict) or "path" not in operation:
            raise PatchError(f"invalid operation {operation!r}")
        op, path = operation.get("op"), operation["path"]
        if op in ("add", "replace", "test") and "value" not in operation:
            raise PatchError(f"operation {op!r} on {path!r} has no value")
        if op == "add":
            doc = _add(doc, path, copy.deepcopy(operation["value"]))
        elif op == "replace":
            doc = _add(doc, path, copy.deepcopy(operation["value"]), replace=True)
        elif op == "remove":
            _remove(doc, path)
        elif op == "test":
            if not _json_equal(_get(doc, path), operation["value"]):
                raise PatchError(f"testing value {path} failed: test failed")
        elif op in ("move", "copy"):
            source = operation.get("from", "")
            value = _remove(doc, source) if op == "move" else copy.deepcopy(_get(doc, source))
            doc = _add(doc, path, value)
        else:
            raise PatchError(f"unsupported JSON patch operation {op!r}")
    return doc


_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "imagePullSecrets": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ownerReferences": "uid",
    "conditions": "type",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
}
_SET_LISTS = {"finalizers"}


def _merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":
        dicts = [item for item in items if isinstance(item, dict)]
        return "containerPort" if any("containerPort" in item for item in dicts) else "port"
    return _MERGE_KEYS.get(field)


def _merge_list(field: str, target: list[Any], patch: list[Any]) -> list[Any]:
    if field in _SET_LISTS:
        return [*target, *(item for item in patch if item not in target)]
    key = _merge_key(field, [*target, *patch])
    if key is None or not all(isinstance(item, dict) for item in patch):
        return copy.deepcopy(patch)
    if any(item.get("$patch") == "replace" for item in patch):
        return [copy.deepcopy(i) for i in patch if i.get("$patch") != "replace"]
    result = copy.deepcopy(target)
    for item in patch:
        index = next(
            (
                i
                for i, old in enumerate(result)
                if isinstance(old, dict) and old.get(key) == item.get(key)
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
        elif index is None:
            result.append(strategic_merge_patch({}, item))
        else:
            result[index] = strategic_merge_patch(result[index], item)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Kubernetes strategic merge patch for the list keys documented in the module."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _merge_list(key, result[key], value)
        elif isinstance(value, list):
            result[key] = [
                {k: v for k, v in item.items() if k != "$patch"} if isinstance(item, dict) else item
                for item in value
                if not (isinstance(item, dict) and item.get("$patch") == "delete")
            ]
        elif isinstance(value, dict) and value.get("$patch") == "delete":
            result.pop(key, None)
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result
