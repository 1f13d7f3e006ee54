"""What a run means: latency, errors, goodput, cost against the oracle, stability.

Latency percentiles are over successful requests (client view, retries
included, from the first send to the answer); failures are counted in the
error rate, and in SLO violation. Every request sent before the trace's end
has an outcome (the engine answers the rest after it). Requests are
attributed to the phase in which they were first sent; replica-seconds, the
oracle's, scale events and SLO violation to the phase in which they fell
(an answer after the end to the last).

The oracle pays, at each instant, ⌈demand / maxInFlight⌉ pods and never
less than minReplicas. Demand is the users of a closed trace; for an open
trace it is the requests that would be in flight if each were served from
its arrival at the pace of a full pod (E[work] × slowdown(maxInFlight)),
over the very arrivals of the run (same seed). It scales instantly, request
by request, and never queues: a reference of no queueing, not a floor. A
policy that lets requests queue (fewer pods running them slower) can cost
less, and a ratio under 1 says its savings were paid in latency (see its
P95). Nor is it held to maxReplicas: a load that needs more pods than the
spec allows makes every policy look cheap (:func:`oracle_peak_pods` says so).

A ten-second bucket (by answer time) is in SLO violation when the P95 of the
answers in it, failures counting as infinitely slow, exceeds
``autoscaling.p95LatencyTargetSeconds``.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left, bisect_right
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from vlm_operator.latency import LatencyModel
from vlm_operator.models import VLMServiceSpec
from vlm_operator.simulator.engine import OK, SimResult, _quantile, arrival_seed, arrival_times
from vlm_operator.traces import Trace

__all__ = [
    "PhaseStats",
    "Report",
    "oracle_by_phase",
    "oracle_pods_at",
    "oracle_replica_seconds",
    "summarize",
]

#: A phase's first minute is the step response; "steady" figures skip it.
SETTLE_SECONDS = 60.0
#: Scale-downs later than this into a phase count as oscillation on steady load.
OSCILLATION_SETTLE_SECONDS = 180.0


@dataclass(frozen=True)
class PhaseStats:
    name: str
    start_s: float
    duration_s: float
    requests: int
    ok: int
    errors: int
    error_rate: float
    p50: float | None
    p95: float | None
    p99: float | None
    p95_after_first_minute: float | None
    goodput: float  # successful answers per second of the phase
    replica_seconds: float
    oracle_replica_seconds: float
    cost_ratio: float
    slo_violation_seconds: float
    scale_ups: int
    scale_downs: int
    scale_downs_after_settle: int  # later than OSCILLATION_SETTLE_SECONDS into the phase


@dataclass(frozen=True)
class Report:
    trace: str
    policy: str
    seed: int
    requests: int
    ok: int
    errors: int
    error_rate: float
    errors_by_status: dict[str, int]
    p50: float | None
    p95: float | None
    p99: float | None
    goodput: float
    replica_seconds: float
    oracle_replica_seconds: float
    cost_ratio: float
    slo_violation_seconds: float
    scale_ups: int
    scale_downs: int
    phases: list[PhaseStats]
    events: int
    wall_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quantiles(values: list[float], *qs: float) -> list[float | None]:
    """Linear-interpolated quantiles of ``values`` (None if empty), sorting once."""
    if not values:
        return [None] * len(qs)
    ordered = sorted(values)
    return [_quantile(ordered, q) for q in qs]


def oracle_replica_seconds(
    trace: Trace, spec: VLMServiceSpec, model: LatencyModel, *, seed: int = 0
) -> float:
    """Replica-seconds of an instant, clairvoyant autoscaler (see the module doc)."""
    return math.fsum(oracle_by_phase(trace, spec, model, seed=seed))


def oracle_by_phase(
    trace: Trace, spec: VLMServiceSpec, model: LatencyModel, *, seed: int = 0
) -> list[float]:
    """:func:`oracle_replica_seconds` of each phase of the trace."""
    cap, floor = _oracle_bounds(spec)
    if trace.kind == "closed":
        return [max(floor, math.ceil((p.users or 0) / cap)) * p.duration_s for p in trace.phases]
    arrivals, departures = _oracle_requests(trace, spec, model, seed)
    ends = [p.end_s for p in trace.phases]
    ends[-1] = trace.duration_s
    ceil = math.ceil
    # Sweep arrivals, their departures and the phases' ends. Each step adds the
    # pods paid since the previous one (``pods`` is max(floor, ⌈in flight / cap⌉),
    # written out because this loop runs twice per request).
    totals = [0.0] * len(ends)
    phase = 0
    in_flight = 0
    last = 0.0
    i = j = 0
    n = len(arrivals)
    while i < n or j < n:
        if i < n and arrivals[i] < departures[j]:
            at = arrivals[i]
            i += 1
            delta = 1
        else:
            at = departures[j]
            j += 1
            delta = -1
        pods = ceil(in_flight / cap)
        if floor > pods:
            pods = floor
        while phase < len(ends) and ends[phase] <= at:
            totals[phase] += pods * (ends[phase] - last)
            last = ends[phase]
            phase += 1
        if phase < len(ends):
            totals[phase] += pods * (at - last)
            last = at
        in_flight += delta
    pods = max(floor, ceil(in_flight / cap))
    while phase < len(ends):
        totals[phase] += pods * (ends[phase] - last)
        last = ends[phase]
        phase += 1
    return totals


def oracle_peak_pods(
    trace: Trace, spec: VLMServiceSpec, model: LatencyModel, *, seed: int = 0
) -> int:
    """The most pods the oracle pays at any instant (to compare with maxReplicas)."""
    cap, floor = _oracle_bounds(spec)
    if trace.kind == "closed":
        return max(floor, *(math.ceil((p.users or 0) / cap) for p in trace.phases))
    arrivals, departures = _oracle_requests(trace, spec, model, seed)
    # The most in flight: just after an arrival, before the next departure.
    peak = 0
    for i, t in enumerate(arrivals):
        peak = max(peak, i + 1 - bisect_right(departures, t))
    return max(floor, math.ceil(peak / cap))


def oracle_pods_at(
    trace: Trace,
    spec: VLMServiceSpec,
    model: LatencyModel,
    times: list[float],
    *,
    seed: int = 0,
) -> list[int]:
    """The pods the oracle pays at each of ``times`` (for plots beside a policy's)."""
    cap, floor = _oracle_bounds(spec)
    if trace.kind == "closed":
        ends = [p.end_s for p in trace.phases]
        users = [p.users or 0 for p in trace.phases]
        last = len(ends) - 1
        return [max(floor, math.ceil(users[min(bisect_right(ends, t), last)] / cap)) for t in times]
    arrivals, departures = _oracle_requests(trace, spec, model, seed)
    return [
        max(floor, math.ceil((bisect_right(arrivals, t) - bisect_right(departures, t)) / cap))
        for t in times
    ]


def _oracle_bounds(spec: VLMServiceSpec) -> tuple[int, int]:
    """The oracle's requests per pod, and its fewest pods."""
    floor = spec.autoscaling.min_replicas if spec.autoscaling.enabled else 0
    return spec.concurrency.max_in_flight, floor


def _oracle_requests(
    trace: Trace, spec: VLMServiceSpec, model: LatencyModel, seed: int
) -> tuple[list[float], list[float]]:
    """An open trace's arrivals (the run's own, for ``seed``) and when the oracle ends each."""
    work = model.base_seconds * math.exp(model.sigma**2 / 2) / model.time_scale
    hold = work * model.slowdown(spec.concurrency.max_in_flight)
    arrivals = list(arrival_times(trace, random.Random(arrival_seed(seed))))
    return arrivals, [at + hold for at in arrivals]  # both in time order


def summarize(result: SimResult, *, wall_seconds: float | None = None) -> Report:
    trace = result.trace
    spec = result.spec
    sent, ended, status = result.sent, result.ended, result.status
    n = len(status)
    latency = [e - s for s, e in zip(sent, ended, strict=True)]
    # Requests in send order: a phase's requests are then one slice, found by
    # bisection, instead of a scan of every request for every phase.
    order = sorted(range(n), key=sent.__getitem__)
    sent_sorted = [sent[i] for i in order]
    oracles = oracle_by_phase(trace, spec, result.config.latency, seed=result.seed)
    costs = result.phase_replica_seconds
    violations = _slo_violation_seconds(result)
    phases: list[PhaseStats] = []
    for index, phase in enumerate(trace.phases):
        lo = bisect_left(sent_sorted, phase.start_s)
        hi = bisect_left(sent_sorted, phase.end_s, lo)
        settle = bisect_left(sent_sorted, phase.start_s + SETTLE_SECONDS, lo, hi)
        ok_lat = [latency[i] for i in order[lo:hi] if status[i] == OK]
        settled = [latency[i] for i in order[settle:hi] if status[i] == OK]
        requests = hi - lo
        errors = requests - len(ok_lat)
        # The engine ticks at the trace's end too: an event then (or later) is
        # the last phase's, as in _slo_violation_seconds, or no phase would count it.
        last = index == len(trace.phases) - 1
        events = [
            (t, b, a)
            for t, b, a in result.scale_events
            if phase.start_s <= t and (t < phase.end_s or last)
        ]
        settled_downs = sum(
            1 for t, b, a in events if a < b and t >= phase.start_s + OSCILLATION_SETTLE_SECONDS
        )
        p50, p95, p99 = _quantiles(ok_lat, 0.5, 0.95, 0.99)
        phases.append(
            PhaseStats(
                name=phase.name,
                start_s=phase.start_s,
                duration_s=phase.duration_s,
                requests=requests,
                ok=len(ok_lat),
                errors=errors,
                error_rate=errors / requests if requests else 0.0,
                p50=p50,
                p95=p95,
                p99=p99,
                p95_after_first_minute=_quantiles(settled, 0.95)[0],
                goodput=len(ok_lat) / phase.duration_s,
                replica_seconds=costs[index],
                oracle_replica_seconds=oracles[index],
                cost_ratio=costs[index] / oracles[index] if oracles[index] else math.inf,
                slo_violation_seconds=violations[index],
                scale_ups=sum(1 for _, b, a in events if a > b),
                scale_downs=sum(1 for _, b, a in events if a < b),
                scale_downs_after_settle=settled_downs,
            )
        )
    ok_all = [lat for lat, code in zip(latency, status, strict=True) if code == OK]
    by_status: dict[str, int] = {}
    for code, count in Counter(status).items():
        if code != OK:
            key = "timeout" if code == 0 else str(code)
            by_status[key] = by_status.get(key, 0) + count
    oracle = math.fsum(oracles)
    p50, p95, p99 = _quantiles(ok_all, 0.5, 0.95, 0.99)
    return Report(
        trace=trace.name,
        policy=result.policy,
        seed=result.seed,
        requests=n,
        ok=len(ok_all),
        errors=n - len(ok_all),
        error_rate=(n - len(ok_all)) / n if n else 0.0,
        errors_by_status=dict(sorted(by_status.items())),
        p50=p50,
        p95=p95,
        p99=p99,
        goodput=len(ok_all) / trace.duration_s if trace.duration_s else 0.0,
        replica_seconds=result.replica_seconds,
        oracle_replica_seconds=oracle,
        cost_ratio=result.replica_seconds / oracle if oracle else math.inf,
        slo_violation_seconds=math.fsum(violations),
        scale_ups=result.scale_ups,
        scale_downs=result.scale_downs,
        phases=phases,
        events=result.events_processed,
        wall_seconds=wall_seconds,
    )


def _slo_violation_seconds(result: SimResult) -> list[float]:
    """Seconds in SLO violation in each phase (by the bucket's start; after the end, the last)."""
    target = result.spec.autoscaling.p95_latency_target_seconds
    width = result.config.slo_bucket_seconds
    buckets: dict[int, list[float]] = {}
    for s, e, code in zip(result.sent, result.ended, result.status, strict=True):
        buckets.setdefault(int(e // width), []).append(e - s if code == OK else math.inf)
    starts = [p.start_s for p in result.trace.phases]
    violated = [0.0] * len(starts)
    for bucket, latencies in buckets.items():
        latencies.sort()
        # Nearest-rank P95: one failure in twenty answers is enough to violate.
        rank = max(math.ceil(0.95 * len(latencies)) - 1, 0)
        if latencies[rank] > target:
            violated[max(0, bisect_right(starts, bucket * width) - 1)] += width
    return violated
