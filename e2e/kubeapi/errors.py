"""Kubernetes ``Status`` error bodies, so clients see the reasons and codes they expect."""

from __future__ import annotations

from typing import Any

from .resources import ResourceKind


class APIError(Exception):
    """An error answered with a ``Status`` object."""

    def __init__(
        self, code: int, reason: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "code": self.code,
        }
        if self.reason:  # empty for errors a real server does not classify (StatusReasonUnknown)
            body["reason"] = self.reason
        if self.details is not None:
            body["details"] = self.details
        return body


def _details(kind: ResourceKind, name: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": kind.plural}
    if kind.group:
        details["group"] = kind.group
    return details


def not_found(kind: ResourceKind, name: str) -> APIError:
    return APIError(
        404, "NotFound", f'{kind.group_resource} "{name}" not found', _details(kind, name)
    )


def already_exists(kind: ResourceKind, name: str) -> APIError:
    return APIError(
        409, "AlreadyExists", f'{kind.group_resource} "{name}" already exists', _details(kind, name)
    )


_MODIFIED = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


def conflict(kind: ResourceKind, name: str, why: str | None = None) -> APIError:
    why = why or _MODIFIED
    return APIError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {kind.group_resource} "{name}": {why}',
        _details(kind, name),
    )


def invalid(
    kind: ResourceKind, name: str, causes: list[dict[str, str]], *, as_kind: str | None = None
) -> APIError:
    """422 Invalid; ``as_kind`` replaces the kind's name (the store's own checks name the
    resource, e.g. ``widgets.example.com``, where validation names the kind)."""
    summary = ", ".join(
        f"{c['field']}: {c['message']}" if c.get("field") else c["message"] for c in causes
    )
    kind_name = as_kind or kind.kind
    qualified = f"{kind_name}.{kind.group}" if kind.group else kind_name
    details = {**_details(kind, name), "kind": kind_name, "causes": causes}
    return APIError(422, "Invalid", f'{qualified} "{name}" is invalid: {summary}', details)


def invalid_options(options_kind: str, causes: list[dict[str, str]]) -> APIError:
    """422 for bad query parameters (``dryRun``, ``fieldValidation``), which a real server
    validates as a ``CreateOptions``/``UpdateOptions``/``PatchOptions``/``DeleteOptions``."""
    summary = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
    details = {"group": "meta.k8s.io", "kind": options_kind, "causes": causes}
    return APIError(422, "Invalid", f'{options_kind}.meta.k8s.io "" is invalid: {summary}', details)


def storage_key(kind: ResourceKind, namespace: str | None, name: str) -> str:
    """The etcd key a real server keeps the object under (it appears in some error messages)."""
    resource = "services/specs" if (kind.group, kind.plural) == ("", "services") else kind.plural
    if kind.custom or kind.group == "apiextensions.k8s.io":
        resource = f"{kind.group}/{kind.plural}"
    return "/".join(["/registry", resource, *([namespace] if namespace else []), name])


def precondition_failed(
    kind: ResourceKind, namespace: str | None, name: str, field: str, expected: str, actual: str
) -> APIError:
    """409 for a failed uid/resourceVersion precondition, worded as the storage layer does."""
    why = (
        f"StorageError: invalid object, Code: 4, Key: {storage_key(kind, namespace, name)}, "
        f"ResourceVersion: 0, AdditionalErrorMsg: Precondition failed: {field} in precondition: "
        f"{expected}, {field} in object meta: {actual}"
    )
    return conflict(kind, name, why)


def namespace_terminating(kind: ResourceKind, name: str, namespace: str) -> APIError:
    """403 from the NamespaceLifecycle admission: no new objects in a terminating namespace."""
    cause = {
        "reason": "NamespaceTerminating",
        "message": f"namespace {namespace} is being terminated",
        "field": "metadata.namespace",
    }
    return APIError(
        403,
        "Forbidden",
        f'{kind.group_resource} "{name}" is forbidden: unable to create new content in namespace '
        f"{namespace} because it is being terminated",
        {**_details(kind, name), "causes": [cause]},
    )


def crd_terminating(kind: ResourceKind) -> APIError:
    """405 for a new custom resource while its CRD is being deleted."""
    details = {k: v for k, v in _details(kind, "").items() if k != "name"}
    return APIError(
        405,
        "MethodNotAllowed",
        "create not allowed while custom resource definition is terminating",
        details,
    )


def bad_request(message: str) -> APIError:
    return APIError(400, "BadRequest", message)
