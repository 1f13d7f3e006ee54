"""Where kopf keeps what it handled last: its annotation storages, without needless copies.

kopf compares every event's body with the spec it handled last to decide
whether an update handler runs. For that it builds the body's *essence*
(everything but the status and the system metadata) by deep-copying the
whole body and then deleting the status and metadata, and it deep-copies
each essence once more to clear its own annotations out of it. A VLMService
event is mostly the operator's own status write, and at a thousand services
a scale-out makes a thousand of them within a second or two: the copies were
the largest part of the operator's CPU after the cycles themselves
(``docs/benchmarks.md``, "Operator at scale"). Here the essence is built from
what it keeps only, and cleared by copying just the maps on the way to the
annotations. What kopf stores and compares is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import kopf

#: The parts of an object's metadata that belong to its essence (kopf's own choice).
_KEPT_METADATA = ("labels", "annotations")
#: The stanzas kopf drops from the essence.
_DROPPED = frozenset({"metadata", "status"})


def _stanza(field: Any) -> str:
    """The top-level key of a kopf field spec ("a.b", ("a", "b") or ["a", "b"])."""
    if isinstance(field, str):
        return field.split(".", 1)[0]
    return str(next(iter(field), ""))


class EssenceDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's annotation diff-base storage, building the essence from the parts it keeps."""

    def build(
        self,
        *,
        body: kopf.Body,
        extra_fields: Iterable[Any] | None = None,
    ) -> kopf.BodyEssence:
        fields = list(extra_fields or ())
        if any(_stanza(field) in _DROPPED for field in fields):
            # A field picked back out of the status or metadata: kopf's own way.
            return super().build(body=body, extra_fields=fields)
        # Other extra fields (kopf asks for "spec" for an update handler on the spec)
        # are in the essence already: picking them again would copy them twice.
        metadata = body.get("metadata") or {}
        kept: dict[str, Any] = {k: v for k, v in body.items() if k not in _DROPPED}
        kept["metadata"] = {k: metadata[k] for k in _KEPT_METADATA if k in metadata}
        return super().build(body=kopf.Body(cast(kopf.RawBody, kept)), extra_fields=None)


class EssenceProgressStorage(kopf.AnnotationsProgressStorage):
    """kopf's annotation progress storage, clearing an essence without deep-copying it.

    Both essences kopf clears are its own fresh objects (one built for this
    event, one parsed from the stored annotation) and are not used after, so
    copying only the maps that clearing edits keeps them apart just as well.
    """

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        cleared: dict[str, Any] = dict(essence)
        metadata = cleared.get("metadata")
        if isinstance(metadata, dict):
            cleared["metadata"] = dict(metadata)
        annotations = (cleared.get("metadata") or {}).get("annotations") or {}
        prefix = self.prefix
        keys = {key for key in annotations if prefix and key.startswith(f"{prefix}/")}
        self.remove_annotations(cleared, keys)  # type: ignore[arg-type]
        self.remove_empty_stanzas(cleared)  # type: ignore[arg-type]
        return cleared  # type: ignore[return-value]
