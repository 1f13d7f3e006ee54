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
            "reason": self.reason,
            "code": self.code,
        }
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


def invalid(kind: ResourceKind, name: str, causes: list[dict[str, str]]) -> APIError:
    summary = ", ".join(
        f"{c['field']}: {c['message']}" if c.get("field") else c["message"] for c in causes
    )
    qualified = f"{kind.kind}.{kind.group}" if kind.group else kind.kind
    details = {**_details(kind, name), "kind": kind.kind, "causes": causes}
    return APIError(422, "Invalid", f'{qualified} "{name}" is invalid: {summary}', details)


def bad_request(message: str) -> APIError:
    return APIError(400, "BadRequest", message)
