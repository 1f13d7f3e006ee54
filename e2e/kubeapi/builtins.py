"""Validation of built-in kinds, the part of it that catches real mistakes in rendered manifests.

Always on (cheap, and the classic apps/v1 errors a real server rejects with 422): a Deployment or
ReplicaSet needs ``spec.selector`` and its ``matchLabels`` must match the pod template's labels.
Opt-in (``validate_builtins=True``; ~20 ms per object): the full OpenAPI schema of the kind via
kubernetes-validate (the test extra), strict about unknown fields under
``fieldValidation=Strict`` (400 ``strict decoding error``, as a real server's decoder answers).
Only the first schema error is reported, as kubernetes-validate raises one at a time.
"""

from __future__ import annotations

import re
from typing import Any

from . import errors
from .resources import ResourceKind

_UNEXPECTED = re.compile(r"'([^']+)'")

KUBERNETES_VERSION = "1.30"


def _cause(field: str, message: str, reason: str = "FieldValueInvalid") -> dict[str, str]:
    return {"reason": reason, "field": field, "message": message}


def check_workload(kind: ResourceKind, obj: dict[str, Any]) -> list[dict[str, str]]:
    """The selector rules of apps/v1 Deployments and ReplicaSets."""
    if (kind.group, kind.plural) not in (("apps", "deployments"), ("apps", "replicasets")):
        return []
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [_cause("spec", "Required value", "FieldValueRequired")]
    selector = spec.get("selector")
    if not isinstance(selector, dict) or not (
        selector.get("matchLabels") or selector.get("matchExpressions")
    ):
        return [_cause("spec.selector", "Required value", "FieldValueRequired")]
    template = spec.get("template")
    metadata = template.get("metadata") if isinstance(template, dict) else None
    labels = (metadata.get("labels") if isinstance(metadata, dict) else None) or {}
    wanted = selector.get("matchLabels") or {}
    if not isinstance(labels, dict) or any(labels.get(k) != v for k, v in wanted.items()):
        message = f"Invalid value: {labels!r}: `selector` does not match template `labels`"
        return [_cause("spec.template.metadata.labels", message)]
    return []


def _field_path(parts: Any) -> str:
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def check_schema(kind: ResourceKind, obj: dict[str, Any], strict: bool) -> list[dict[str, str]]:
    """The kind's OpenAPI schema, through kubernetes-validate; [] for kinds it does not know.

    Raises 400 for unknown fields under ``strict`` (a decoding error on a real server).
    """
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=strict)
    except kubernetes_validate.ValidationError as error:
        field = _field_path(error.path)
        if strict and error.validator == "additionalProperties":
            unknown = _UNEXPECTED.findall(str(error.message).split("(", 1)[-1])
            prefix = f"{field}." if field else ""
            raise errors.bad_request(
                "strict decoding error: "
                + ", ".join(f'unknown field "{prefix}{name}"' for name in unknown)
            ) from None
        return [_cause(field or "<root>", f"Invalid value: {error.message}")]
    except Exception:  # unknown kind or version: a real server would know, we cannot tell
        return []
    return []
