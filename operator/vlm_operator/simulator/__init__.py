"""A deterministic discrete-event simulator of VLM pods, gates and autoscalers.

It replays a trace (:mod:`vlm_operator.traces`) against one autoscaler (ours
or an anchor, :mod:`vlm_operator.baselines`) and reports latency, errors,
goodput, replica cost against an instant oracle, and scaling stability —
for traces far longer and larger than one machine can run for real.

    >>> from vlm_operator.simulator import run_policy
    >>> report = run_policy("measured-gradient", "ours", seed=1)

The engine runs compiled when ``make engine`` has built it for the sources as
they are (:mod:`vlm_operator.simulator._compiled`), interpreted otherwise;
:data:`ENGINE` says which.

This package is pure: it imports neither ``kubernetes``, ``kopf`` nor ``httpx``.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import ValidationError

from vlm_operator.baselines import make_autoscaler
from vlm_operator.models import VLMServiceSpec
from vlm_operator.simulator import _compiled

# Before the engine's first import: a fresh build then shadows engine.py.
_compiled.use_fresh_build(__path__)

from vlm_operator.simulator import engine  # noqa: E402
from vlm_operator.simulator.engine import Series, SimConfig, SimResult, simulate  # noqa: E402
from vlm_operator.simulator.report import (  # noqa: E402
    PhaseStats,
    Report,
    oracle_peak_pods,
    oracle_pods_at,
    oracle_replica_seconds,
    summarize,
)
from vlm_operator.traces import Trace, TraceError, load_trace  # noqa: E402
from vlm_operator.validation import field_errors  # noqa: E402

#: Which engine runs: ``"compiled"`` or ``"interpreted"``.
ENGINE = "compiled" if _compiled.is_compiled(engine) else "interpreted"

__all__ = [
    "ENGINE",
    "PhaseStats",
    "Report",
    "Series",
    "SimConfig",
    "SimResult",
    "oracle_peak_pods",
    "oracle_pods_at",
    "oracle_replica_seconds",
    "run_policy",
    "simulate",
    "spec_for",
    "summarize",
]

#: The service simulated unless a trace or the caller says otherwise.
DEFAULT_SERVICE: dict[str, Any] = {"model": {"id": "Qwen/Qwen3-VL-2B-Instruct", "runtime": "fake"}}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def spec_for(trace: Trace, overrides: dict[str, Any] | None = None) -> VLMServiceSpec:
    """The VLMService spec of a scenario: defaults, the trace's ``service``, overrides.

    Raises :class:`~vlm_operator.traces.TraceError` naming the field
    (``service.autoscaling.maxReplicas: ...``) when the result is no valid spec.
    """
    data = _merge(_merge(DEFAULT_SERVICE, trace.service), overrides or {})
    try:
        return VLMServiceSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(str(error) for error in field_errors(exc, "service"))
        raise TraceError(f"trace {trace.name}: {problems}") from None


def run_policy(
    trace: Trace | str,
    policy: str = "ours",
    *,
    seed: int = 0,
    config: SimConfig | None = None,
    overrides: dict[str, Any] | None = None,
) -> tuple[Report, SimResult]:
    """Simulate one policy on one trace and summarise it (wall time included)."""
    loaded = load_trace(trace) if isinstance(trace, str) else trace
    spec = spec_for(loaded, overrides)
    started = time.perf_counter()
    result = simulate(loaded, make_autoscaler(policy, spec), spec=spec, seed=seed, config=config)
    wall = time.perf_counter() - started
    return summarize(result, wall_seconds=wall), result
