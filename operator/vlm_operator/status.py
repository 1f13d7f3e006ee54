"""VLMService status and conditions, computed from one autoscaling cycle.

Pure functions: the operator gathers the facts (the policy's decision, the
signals, the pod counts, the previous status) and these functions say what the
status should become and which Events the change deserves. Keeping them pure
makes the rules testable without a cluster:

* a condition's ``lastTransitionTime`` moves only when its status flips
  (True/False/Unknown), never when only its reason or message changes;
* Events are emitted on transitions only (a scale-up, a scale-down, signals
  lost, signals back), never once per cycle.

This module is pure: it imports neither ``kubernetes``, ``kopf`` nor ``httpx``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from vlm_operator.policy import Decision, PodCounts, Signals

READY = "Ready"
METRICS_AVAILABLE = "MetricsAvailable"
SCALING_LIMITED = "ScalingLimited"
INVALID_SPEC = "InvalidSpec"
#: Problems the schema accepts but that leave pods that never become ready.
SPEC_WARNINGS = "SpecWarnings"
#: InvalidSpec's reason when the API server refused a rendered child.
CHILD_REJECTED = "ChildRejected"
#: ScalingLimited's reason when the API server refused the scale (or did not answer).
SCALE_FAILED = "ScaleFailed"
#: Relative change of a signal worth a status write on its own.
SIGNAL_TOLERANCE = 0.05
#: The conditions the operator owns, in the order they are listed.
CONDITION_TYPES = (READY, METRICS_AVAILABLE, SCALING_LIMITED, INVALID_SPEC, SPEC_WARNINGS)
#: The conditions the spec's handler evaluates; an autoscaling cycle leaves them alone.
SPEC_CONDITION_TYPES = (INVALID_SPEC, SPEC_WARNINGS)


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post about the VLMService."""

    type: str  # Normal or Warning
    reason: str
    message: str


def rfc3339(timestamp: float) -> str:
    """Seconds since the epoch as an RFC 3339 UTC string (second precision)."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def find_condition(conditions: Sequence[Mapping[str, Any]], type_: str) -> Mapping[str, Any] | None:
    for condition in conditions:
        if condition.get("type") == type_:
            return condition
    return None


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    type_: str,
    status: str,
    reason: str,
    message: str,
    *,
    now: str,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """A new conditions list with ``type_`` set; other conditions are kept as they are.

    ``lastTransitionTime`` is kept when the status did not change.
    """
    previous = find_condition(conditions, type_)
    since = now
    if previous is not None and previous.get("status") == status:
        since = str(previous.get("lastTransitionTime") or now)
    updated: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }
    if generation is not None:
        updated["observedGeneration"] = generation
    result = [dict(c) for c in conditions if c.get("type") != type_]
    result.append(updated)
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    result.sort(key=lambda c: order.get(str(c.get("type")), len(order)))
    return result


def invalid_spec_conditions(
    conditions: Sequence[Mapping[str, Any]],
    error: str | None,
    *,
    now: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    """InvalidSpec=True naming the field and reason, or False when the spec is valid."""
    if error is None:
        return set_condition(
            conditions, INVALID_SPEC, "False", "SpecValid", "", now=now, generation=generation
        )
    return set_condition(
        conditions, INVALID_SPEC, "True", "ValidationFailed", error, now=now, generation=generation
    )


def child_rejected_conditions(
    conditions: Sequence[Mapping[str, Any]],
    message: str,
    *,
    now: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    """InvalidSpec=True: the spec parsed, but the API server refused a child it renders."""
    return set_condition(
        conditions, INVALID_SPEC, "True", CHILD_REJECTED, message, now=now, generation=generation
    )


def spec_warning_conditions(
    conditions: Sequence[Mapping[str, Any]],
    warnings: Sequence[str],
    *,
    now: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    """SpecWarnings=True listing what would keep pods from becoming ready, else False."""
    if warnings:
        return set_condition(
            conditions,
            SPEC_WARNINGS,
            "True",
            "PodsMayNotStart",
            "; ".join(warnings),
            now=now,
            generation=generation,
        )
    return set_condition(
        conditions, SPEC_WARNINGS, "False", "NoWarnings", "", now=now, generation=generation
    )


def signals_status(signals: Signals, ready: int, observed_at: str) -> dict[str, Any]:
    """``status.signals``: an absent value is an explicit null (no signal is not zero).

    The status is written as a JSON merge patch: a key left out would keep the
    last value ever read (a stale P95 while Prometheus is down); null deletes it.
    """
    out: dict[str, Any] = {"observedAt": observed_at}
    fields = {
        "inFlight": signals.running,
        "waiting": signals.waiting,
        "p95Seconds": signals.p95_seconds,
        "arrivalRate": signals.arrival_rate,
        "errorRate": signals.error_rate,
    }
    for key, value in fields.items():
        out[key] = None if value is None else round(value, 4)
    out["inFlightPerPod"] = (
        round(signals.running / ready, 4) if signals.running is not None and ready > 0 else None
    )
    return out


def merge_patched(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """``target`` after the JSON merge patch ``patch`` (RFC 7386): null deletes a key.

    What the API server will store for a status patch; the operator compares
    its next cycle against this, so absent and null are the same thing.
    """
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping):
            old = out.get(key)
            out[key] = merge_patched(old if isinstance(old, Mapping) else {}, value)
        else:
            out[key] = value
    return out


def _metrics_condition(
    signals: Signals, decision: Decision, unscraped: int | None
) -> tuple[str, str, str]:
    if signals.error is not None:
        return "False", "PrometheusUnavailable", signals.error
    if not decision.signals_ok:
        # Not the reason, which quotes the tick's values: the condition, and so the
        # status, would change every tick the signals stay lost.
        problems = decision.signal_problems or "signals not trusted"
        if not decision.autoscaling:
            return "False", "NoSignal", f"{problems} (autoscaling is disabled: nothing waits on it)"
        return "False", "NoSignal", f"{problems}: never scaling down (lastDecision has the values)"
    if signals.partial is not None:
        return (
            "True",
            "PartialAnswer",
            f"Prometheus answered in part ({signals.partial}): series may be missing, "
            "so no scale-down",
        )
    if unscraped is None:
        return (
            "True",
            "ScrapeStatusUnknown",
            "whether every pod is scraped is unknown (the query of failed scrapes failed, "
            "or Prometheus answered it in part): no scale-down",
        )
    if unscraped:
        return (
            "True",
            "PartialScrape",
            f"{unscraped} pod(s) not scraped or not yet seen by the operator: their load "
            "is missing, so no scale-down",
        )
    return "True", "SignalsRead", "signals read from Prometheus"


def _ready_condition(pods: PodCounts, desired: int) -> tuple[str, str, str]:
    if desired == 0 and pods.current == 0:
        return "False", "ScaledToZero", "0 replicas desired"
    if pods.ready == 0:
        return "False", "NoPodReady", f"0/{pods.current} pods ready"
    if pods.ready < pods.current:
        return "True", "PartiallyReady", f"{pods.ready}/{pods.current} pods ready"
    return "True", "AllPodsReady", f"{pods.ready}/{pods.current} pods ready"


def _limited_condition(
    decision: Decision, pods: PodCounts, timeout: int, scale_error: str | None
) -> tuple[str, str, str]:
    if scale_error is not None:
        return "True", SCALE_FAILED, scale_error
    if pods.stuck > 0:
        message = f"{pods.stuck} pod(s) Pending longer than {timeout}s: no node for them"
        if decision.limited and "Pending" not in decision.limited:
            message += f"; {decision.limited}"
        return "True", "PodsPending", message
    if pods.unready > 0:
        message = (
            f"{pods.unready} pod(s) on a node and not ready past their start-up time "
            f"({timeout}s or the model's start-up budget, the longer): see their Events and logs"
        )
        return "True", "PodsNotReady", message
    if decision.limited:
        reason = "MaxReplicas" if "maxReplicas" in decision.limited else "PolicyLimit"
        return "True", reason, decision.limited
    return "False", "WithinLimits", ""


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _decision_kind(reason: str) -> str:
    """What a decision's reason says, without the numbers it quotes.

    A reason quotes the signals of its tick (``waiting=0 running=5.2 … →``)
    and may quote more (the p95, a rate); they move every tick. Replacing
    ``lastDecision`` for them would write the status every tick of a steady
    fleet, so it is replaced when the replicas, the direction or the words
    change (all of them: a hold's cause comes before the policy's arrow): it
    keeps the numbers of the tick that decided, and ``signals`` has the
    current ones.
    """
    return _NUMBER.sub("#", reason)


def cycle_status(
    previous: Mapping[str, Any],
    *,
    decision: Decision,
    signals: Signals,
    pods: PodCounts,
    replicas: int,
    scaled: bool,
    unscraped: int | None,
    pending_timeout_seconds: int,
    generation: int | None,
    now: float,
    scale_error: str | None = None,
) -> dict[str, Any]:
    """The status after one cycle (the whole ``status`` minus fields others own).

    The spec's conditions (:data:`SPEC_CONDITION_TYPES`) are carried over as
    they are in ``previous``: a cycle does not evaluate the spec, and one that
    started before the spec changed must not report on the new one.

    ``replicas`` is the Deployment's replica count after the cycle (the decision
    when it was applied); ``scaled`` says whether this cycle changed it, and
    ``scale_error`` why the scale it tried failed (``ScalingLimited`` says it).
    """
    stamp = rfc3339(now)
    conditions: list[dict[str, Any]] = [dict(c) for c in previous.get("conditions") or []]
    for type_, (status, reason, message) in (
        (READY, _ready_condition(pods, decision.replicas)),
        (METRICS_AVAILABLE, _metrics_condition(signals, decision, unscraped)),
        (
            SCALING_LIMITED,
            _limited_condition(decision, pods, pending_timeout_seconds, scale_error),
        ),
    ):
        conditions = set_condition(
            conditions, type_, status, reason, message, now=stamp, generation=generation
        )
    last_decision = previous.get("lastDecision")
    if (
        scaled
        or not last_decision
        or last_decision.get("replicas") != decision.replicas
        or last_decision.get("direction") != decision.direction
        or _decision_kind(str(last_decision.get("reason", ""))) != _decision_kind(decision.reason)
    ):
        last_decision = {
            "time": stamp,
            "replicas": decision.replicas,
            "direction": decision.direction,
            "reason": decision.reason,
        }
    return {
        "replicas": replicas,
        "readyReplicas": pods.ready,
        "desiredReplicas": decision.replicas,
        "signals": signals_status(signals, pods.ready, stamp),
        "lastDecision": last_decision,
        "lastScaleTime": stamp if scaled else previous.get("lastScaleTime"),
        "conditions": conditions,
        "autoscalerState": decision.state.to_dict(),
    }


def with_spec_conditions(
    conditions: Sequence[Mapping[str, Any]], live: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """``conditions`` with the spec's conditions replaced by the ones in ``live``.

    Conditions are a list, which a merge patch replaces whole: a cycle's write
    must carry the spec handler's latest conditions, not the ones it started with.
    """
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    result = [dict(c) for c in conditions if c.get("type") not in SPEC_CONDITION_TYPES]
    result += [dict(c) for c in live if c.get("type") in SPEC_CONDITION_TYPES]
    result.sort(key=lambda c: order.get(str(c.get("type")), len(order)))
    return result


def _signals_moved(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    keys = (set(old) | set(new)) - {"observedAt"}
    for key in keys:
        a, b = old.get(key), new.get(key)
        if a is None or b is None:
            if a is not b:
                return True
        elif abs(a - b) > SIGNAL_TOLERANCE * max(abs(a), abs(b)) + 1e-3:
            return True
    return False


def differs(previous: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether ``new`` says something ``previous`` does not.

    A cycle that only refreshed ``signals.observedAt``, moved a rate by the
    jitter of scrape timing, or advanced the policy's sample times need not be
    written: at a thousand services that would be a status write per service
    per cycle for nothing a reader could act on. (The operator still writes at
    least every few tens of seconds, so ``observedAt`` shows the loop is alive.)
    """
    for key, value in new.items():
        old = previous.get(key)
        if key == "signals":
            if _signals_moved(old or {}, value or {}):
                return True
        elif key == "autoscalerState":
            continue  # only worth a write together with something visible
        elif value != old:
            return True
    return False


def transition_events(
    previous: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    decision: Decision,
    before: int,
    scaled: bool,
) -> list[Event]:
    """Events for what changed in this cycle: scaling, signals lost or back."""
    events: list[Event] = []
    if scaled and decision.direction == "up":
        events.append(
            Event("Normal", "ScaledUp", f"{before} → {decision.replicas}: {decision.reason}")
        )
    elif scaled and decision.direction == "down":
        events.append(
            Event("Normal", "ScaledDown", f"{before} → {decision.replicas}: {decision.reason}")
        )
    old = find_condition(previous.get("conditions") or [], METRICS_AVAILABLE)
    cur = find_condition(new.get("conditions") or [], METRICS_AVAILABLE)
    if cur is not None and (old is None or old.get("status") != cur.get("status")):
        if cur.get("status") == "False":
            # With autoscaling off nothing is held: the replicas are the spec's anyway.
            hold = "; holding replicas" if decision.autoscaling else ""
            events.append(
                Event("Warning", "SignalsLost", f"{cur.get('reason')}: {cur.get('message')}{hold}")
            )
        elif old is not None and old.get("status") == "False":
            events.append(Event("Normal", "SignalsRestored", str(cur.get("message", ""))))
    old_limited = find_condition(previous.get("conditions") or [], SCALING_LIMITED)
    cur_limited = find_condition(new.get("conditions") or [], SCALING_LIMITED)
    # Told when it starts, and when a scale fails while it was limited otherwise.
    if (
        cur_limited is not None
        and cur_limited.get("status") == "True"
        and (
            old_limited is None
            or old_limited.get("status") != "True"
            or (
                cur_limited.get("reason") == SCALE_FAILED
                and old_limited.get("reason") != SCALE_FAILED
            )
        )
    ):
        events.append(
            Event(
                "Warning",
                "ScalingLimited",
                f"{cur_limited.get('reason')}: {cur_limited.get('message')}",
            )
        )
    return events
