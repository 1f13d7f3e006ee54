"""The operator's kopf storages keep and compare exactly what kopf's own would."""

from __future__ import annotations

import copy
import json
from typing import Any

import kopf
import pytest
from vlm_operator.persistence import EssenceDiffBaseStorage, EssenceProgressStorage

PREFIX = "vlm-operator.io"
KEY = "last-handled-configuration"

SPEC = {"model": {"id": "m", "runtime": "fake"}, "autoscaling": {"maxReplicas": 5}}
STATUS = {"replicas": 2, "conditions": [{"type": "Ready", "status": "True"}]}


def _body(**metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "vlm-operator.io/v1alpha1",
        "kind": "VLMService",
        "metadata": {"name": "x", "namespace": "d", "uid": "u", "resourceVersion": "7",
                     **metadata},
        "spec": copy.deepcopy(SPEC),
        "status": copy.deepcopy(STATUS),
    }  # fmt: skip


BODIES = {
    "bare": _body(),
    "no status": {k: v for k, v in _body().items() if k != "status"},
    "labels and annotations": _body(
        labels={"team": "vision"},
        annotations={
            "note": "kept",
            f"{PREFIX}/kopf-managed": "yes",  # the operator's own: cleared
            "other-operator.example/last-handled-configuration": "{}",  # another kopf's
            "kubectl.kubernetes.io/last-applied-configuration": "{}",
        },
    ),
    "only the operator's annotations": _body(annotations={f"{PREFIX}/kopf-managed": "yes"}),
    "empty labels": _body(labels={}),
    "managed fields": _body(
        managedFields=[{"manager": "kubectl", "fieldsV1": {"f:spec": {"f:model": {}}}}],
        finalizers=[f"{PREFIX}/finalizer"],
    ),
    "a stored essence": _body(
        annotations={f"{PREFIX}/{KEY}": json.dumps({"spec": {"model": {"id": "old"}}})}
    ),
}


def _essences(
    diffbase: kopf.DiffBaseStorage,
    progress: kopf.ProgressStorage,
    body: dict[str, Any],
    extra_fields: Any,
) -> tuple[Any, Any]:
    """kopf's processing of one event: the stored essence and the new one, both cleared."""
    wrapped = kopf.Body(body)
    old = diffbase.fetch(body=wrapped)
    new = diffbase.build(body=wrapped, extra_fields=extra_fields)
    cleared_old = progress.clear(essence=old) if old is not None else None
    return cleared_old, progress.clear(essence=new)


#: What kopf asks a storage to keep beyond the essence: nothing, the spec (what kopf
#: asks for VLMServices, whose update handler watches the spec), fields of the kept
#: stanzas, and fields of the status and metadata, which only kopf's own way keeps.
EXTRA_FIELDS = {
    "none": set(),
    "spec": {("spec",)},
    "a spec field, dotted": {"spec.model"},
    "a status field": {("status", "replicas")},
    "a metadata field": {("metadata", "uid")},
    "spec and status, as a list": {("spec",), ("status", "conditions")},
}


@pytest.mark.parametrize("fields", list(EXTRA_FIELDS))
@pytest.mark.parametrize("name", list(BODIES))
def test_the_essences_are_kopfs_own(name: str, fields: str) -> None:
    body = BODIES[name]
    untouched = copy.deepcopy(body)
    kopf_own = _essences(
        kopf.AnnotationsDiffBaseStorage(prefix=PREFIX, key=KEY),
        kopf.AnnotationsProgressStorage(prefix=PREFIX),
        body,
        EXTRA_FIELDS[fields],
    )
    ours = _essences(
        EssenceDiffBaseStorage(prefix=PREFIX, key=KEY),
        EssenceProgressStorage(prefix=PREFIX),
        body,
        EXTRA_FIELDS[fields],
    )
    assert ours == kopf_own
    assert body == untouched  # the event's body is never edited


@pytest.mark.parametrize("fields", [set(), {("spec",)}], ids=["none", "spec"])
def test_the_essence_shares_nothing_with_the_body(fields: set[Any]) -> None:
    body = _body(labels={"team": "vision"}, annotations={"note": "kept"})
    essence = EssenceDiffBaseStorage(prefix=PREFIX, key=KEY).build(
        body=kopf.Body(body), extra_fields=fields
    )
    cleared = EssenceProgressStorage(prefix=PREFIX).clear(essence=essence)
    cleared["spec"]["model"]["id"] = "edited"  # type: ignore[index]
    cleared["metadata"]["labels"]["team"] = "edited"  # type: ignore[index]
    assert body["spec"]["model"]["id"] == "m"
    assert body["metadata"]["labels"]["team"] == "vision"


def test_fields_picked_from_the_status_are_kopfs_way() -> None:
    body = _body()
    fields = [("status", "replicas")]
    kopf_own = kopf.AnnotationsDiffBaseStorage(prefix=PREFIX, key=KEY).build(
        body=kopf.Body(body), extra_fields=fields
    )
    ours = EssenceDiffBaseStorage(prefix=PREFIX, key=KEY).build(
        body=kopf.Body(body), extra_fields=fields
    )
    assert ours == kopf_own
    assert ours["status"] == {"replicas": 2}  # type: ignore[typeddict-item]
