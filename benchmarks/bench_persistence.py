"""kopf's bookkeeping per VLMService event: its own storages against the operator's.

For every event of a VLMService kopf reads the essence it stored last, builds
the new one and clears both of its own annotations before comparing them
(``vlm_operator.persistence`` says why this matters at a thousand services).
This times exactly those three calls on one realistic body (the defaulted spec
of ``make bench-operator``'s services, a status of the operator's shape), with
and without the ``managedFields`` a real API server adds, and checks that both
ways give the same essences.

Run: ``.venv/bin/python benchmarks/bench_persistence.py``.
"""

from __future__ import annotations

import json
import sys
import timeit
from pathlib import Path
from typing import Any

import kopf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vlm_operator.crd import crd  # noqa: E402
from vlm_operator.persistence import EssenceDiffBaseStorage, EssenceProgressStorage  # noqa: E402

from e2e.kubeapi.schema import apply_defaults  # noqa: E402

PREFIX = "vlm-operator.io"
KEY = "last-handled-configuration"
Storages = tuple[kopf.DiffBaseStorage, kopf.ProgressStorage]


def _fields(obj: dict[str, Any]) -> dict[str, Any]:
    return {f"f:{k}": _fields(v) if isinstance(v, dict) else {} for k, v in obj.items()}


def vlmservice(managed_fields: bool) -> dict[str, Any]:
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec = apply_defaults(schema, {
        "model": {"id": "Qwen/Qwen3-VL-2B-Instruct", "runtime": "fake"},
        "autoscaling": {"minReplicas": 1, "maxReplicas": 5, "syncPeriodSeconds": 5,
                        "targetUtilization": 1.0},
        "metrics": {"windowSeconds": 10},
    })  # fmt: skip
    stamp = "2026-12-05T10:00:00Z"
    status = {
        "replicas": 3, "readyReplicas": 1, "desiredReplicas": 3,
        "lastDecision": "waiting=8 running=4 → 3 pods (burst)",
        "conditions": [
            {"type": kind, "status": "True", "reason": "SomeReason", "message": "m" * 80,
             "lastTransitionTime": stamp, "observedGeneration": 1}
            for kind in ("Ready", "Scaling", "SignalsHealthy", "InvalidSpec")
        ],
        "signals": {name: 1.5 for name in ("running", "waiting", "p95", "arrivalRate",
                                           "errorRate")} | {"observedAt": stamp},
        "policyState": {"window": [[float(i), 2.0, 3.0] for i in range(12)],
                        "burstUntil": 1.0, "means": {"a": 1.0, "b": [1.0, 2.0]}},
    }  # fmt: skip
    metadata: dict[str, Any] = {
        "name": "svc-0001", "namespace": "default", "uid": "0" * 36,
        "resourceVersion": "12345", "generation": 1, "creationTimestamp": stamp,
        "finalizers": [f"{PREFIX}/finalizer"], "labels": {"team": "vision"},
        "annotations": {f"{PREFIX}/kopf-managed": "yes"},
    }  # fmt: skip
    if managed_fields:
        metadata["managedFields"] = [
            {"manager": "kubectl-client-side-apply", "operation": "Update", "time": stamp,
             "apiVersion": "vlm-operator.io/v1alpha1", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:spec": _fields(spec)}},
            {"manager": "vlm-operator", "operation": "Update", "time": stamp,
             "apiVersion": "vlm-operator.io/v1alpha1", "fieldsType": "FieldsV1",
             "subresource": "status", "fieldsV1": {"f:status": _fields(status)}},
        ]  # fmt: skip
    body = {"apiVersion": "vlm-operator.io/v1alpha1", "kind": "VLMService",
            "metadata": metadata, "spec": spec, "status": status}  # fmt: skip
    stored = kopf.AnnotationsDiffBaseStorage(prefix=PREFIX, key=KEY).build(body=kopf.Body(body))
    metadata["annotations"][f"{PREFIX}/{KEY}"] = json.dumps(stored, separators=(",", ":"))
    return body


def one_event(storages: Storages, body: dict[str, Any]) -> tuple[Any, Any]:
    """What kopf's processing does with its storages for one event."""
    diffbase, progress = storages
    wrapped = kopf.Body(body)
    old = diffbase.fetch(body=wrapped)
    # kopf asks for the spec: the operator's update handler watches spec changes.
    new = diffbase.build(body=wrapped, extra_fields={("spec",)})
    assert old is not None
    return progress.clear(essence=old), progress.clear(essence=new)


def main() -> int:
    kopf_own: Storages = (
        kopf.AnnotationsDiffBaseStorage(prefix=PREFIX, key=KEY),
        kopf.AnnotationsProgressStorage(prefix=PREFIX),
    )
    operators: Storages = (
        EssenceDiffBaseStorage(prefix=PREFIX, key=KEY),
        EssenceProgressStorage(prefix=PREFIX),
    )
    print("| body | kopf's storages, µs per event | the operator's | ratio |")
    print("|---|---:|---:|---:|")
    for managed in (False, True):
        body = vlmservice(managed)
        if one_event(kopf_own, body) != one_event(operators, body):
            raise SystemExit("the operator's storages give other essences than kopf's")
        times: dict[str, list[float]] = {"kopf": [], "ours": []}
        for _ in range(3):  # interleaved rounds: both see the same machine
            for name, storages in (("kopf", kopf_own), ("ours", operators)):
                n = 2000
                best = min(
                    timeit.repeat(lambda s=storages, b=body: one_event(s, b), number=n, repeat=3)
                )
                times[name].append(best / n * 1e6)
        size = len(json.dumps(body))
        label = f"{size:,} bytes" + (", with managedFields" if managed else "")
        theirs, ours = min(times["kopf"]), min(times["ours"])
        print(f"| {label} | {theirs:.0f} | {ours:.0f} | {theirs / ours:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
