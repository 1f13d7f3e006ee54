"""Time compression of a VLMService: the same scenario, ``K`` times faster.

The fake runtime divides its latency and its start-up by ``spec.model.fake.timeScale``; every
other duration of the control loop must shrink by the same factor, or the loop would look
``K`` times slower than it is relative to the pods. The one floor is the CRD's: the sync period
is at least 1 s (and the rate window at least 5 s), so the factor is chosen around it. At the
demo's factor 5 the default 5 s period becomes exactly 1 s and nothing is clamped; at a larger
factor the loop runs slower than the design's in real-time terms, which :func:`compress_spec`
reports as notes rather than hiding.

Real time → compressed time, for the defaults and K = 5: request 6.2 s → 1.24 s, start-up
60 s → 12 s, sync 5 s → 1 s, rate window 30 s → 6 s, scale-down stabilization 120 s → 24 s,
burst window 10 s → 2 s, stale signals 60 s → 12 s, queue timeout 20 s → 4 s, P95 target 12 s →
2.4 s, client timeout 30 s → 6 s. Prometheus scrapes every 1 s / K (200 ms at K = 5). The gates'
latency buckets follow from ``model.fake.timeScale`` too: the rendered gate gets
``VLM_GATE_BUCKET_SCALE`` = K, so the P95 signal (in compressed seconds) is read from buckets as
fine as in real time and compares directly with the compressed P95 target.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from vlm_operator.models import VLMServiceSpec

__all__ = ["compress_manifest", "compress_spec", "expand_spec", "scrape_interval"]


def scrape_interval(time_scale: float, real_seconds: float = 1.0) -> str:
    """Prometheus duration for a real-time scrape interval compressed by ``time_scale``
    (never below 100 ms: Prometheus 2.42 scrapes reliably down to there)."""
    return f"{max(100, round(real_seconds * 1000 / time_scale))}ms"


def _set(spec: dict[str, Any], path: str, value: Any) -> None:
    node = spec
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def _get(spec: dict[str, Any], path: str) -> Any:
    node: Any = spec
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


#: (camelCase path, CRD floor, integer field) of every duration the control loop uses.
_DURATIONS: tuple[tuple[str, float, bool], ...] = (
    ("concurrency.queueTimeoutSeconds", 0.01, False),
    ("concurrency.responseTimeoutSeconds", 0.01, False),
    ("autoscaling.syncPeriodSeconds", 1, False),
    ("autoscaling.p95LatencyTargetSeconds", 0.01, False),
    ("autoscaling.scaleUp.stabilizationWindowSeconds", 0, True),
    ("autoscaling.scaleUp.burstWindowSeconds", 1, True),
    ("autoscaling.scaleDown.stabilizationWindowSeconds", 0, True),
    ("autoscaling.missingSignals.staleAfterSeconds", 1, True),
    ("autoscaling.pendingTimeoutSeconds", 1, True),
    ("metrics.windowSeconds", 5, True),
)


def compress_spec(spec: dict[str, Any], time_scale: float) -> tuple[dict[str, Any], list[str]]:
    """``spec`` (a VLMService spec, camelCase) with every duration set for ``time_scale``,
    and notes naming the durations that hit a CRD floor.

    Durations written in the spec are read in the spec's own time scale
    (``model.fake.timeScale``, 1 when absent: real time), so an example already compressed 10x
    can be re-compressed 5x; defaults are real time. A written value sitting at its CRD floor
    was clamped there, so it is read as the real-time default when that is shorter. The
    effective values are read through the API models, so that a default changed in
    ``models.py`` is compressed too, and the result is validated by them.
    """
    if not time_scale > 0 or not math.isfinite(time_scale):
        raise ValueError(f"time_scale must be a positive number, got {time_scale}")
    effective = VLMServiceSpec.model_validate(spec).to_api()
    source_scale = float(_get(spec, "model.fake.timeScale") or 1.0)
    out = copy.deepcopy(spec)
    notes: list[str] = []
    defaults = VLMServiceSpec.model_validate({"model": {"id": "defaults"}}).to_api()
    for path, floor, integer in _DURATIONS:
        written = _get(spec, path)
        if written is None:
            real = float(_get(effective, path))
        else:
            real = float(written) * source_scale
            if floor > 0 and float(written) <= floor:
                # Written at the CRD floor: it was clamped, so it stands for anything up to
                # there; read it as the real-time default when that is shorter.
                real = min(real, float(_get(defaults, path)))
        value: float = real / time_scale
        if integer:
            value = round(value)
        if value < floor and real > 0:
            notes.append(
                f"{path}: {real / time_scale:g} s is below the CRD minimum; using {floor:g}"
            )
            value = floor
        _set(out, path, int(value) if integer else value)
    _set(out, "model.runtime", "fake")
    _set(out, "model.fake.timeScale", time_scale)
    VLMServiceSpec.model_validate(out)  # still a valid spec
    return out, notes


def compress_manifest(
    manifest: dict[str, Any], time_scale: float
) -> tuple[dict[str, Any], list[str]]:
    """A VLMService manifest with its spec compressed (see :func:`compress_spec`)."""
    spec, notes = compress_spec(dict(manifest.get("spec") or {}), time_scale)
    out = copy.deepcopy(manifest)
    out["spec"] = spec
    return out, notes


def expand_spec(spec: dict[str, Any], time_scale: float) -> dict[str, Any]:
    """The real-time spec a compressed one stands for: every duration × ``time_scale``, exactly
    (floors included: a sync period clamped to 1 s at 10x is 10 s of real time), and
    ``model.fake.timeScale`` 1. What the simulator must run to match a local-cluster run."""
    out = copy.deepcopy(spec)
    for path, _floor, integer in _DURATIONS:
        value = _get(spec, path)
        if value is not None:
            real = float(value) * time_scale
            _set(out, path, round(real) if integer else real)
    _set(out, "model.fake.timeScale", 1.0)
    VLMServiceSpec.model_validate(out)
    return out
