"""Autoscalers to compare: ours and the anchors, behind one small protocol.

Each anchor is modelled from its published formula and defaults (docs/design.md,
"Scaling facts from the anchors"), not from its code, and brings the request
path its deployment implies:

============  ==========================================  =====================================
name          decision                                    request path (per pod)
============  ==========================================  =====================================
ours          :func:`vlm_operator.policy.recommend`,      our gate: maxInFlight, queueSize,
              every syncPeriodSeconds, 5 s scrapes        queueTimeoutSeconds, 429 when full
static        N replicas, never changes (the measured     no gate: every request goes into
              single-pod setup when N = 1)                the model at once
hpa-cpu       ⌈ready × cpu / 80 %⌉ if off by > 10 %;      no gate (a plain model server)
              15 s sync, 300 s down-stabilization,
              up ≤ max(4 pods, 100 %) per 15 s
hpa-inflight  HPA on in-flight per pod (the gate's        our gate
              running gauge), target 0.75 × maxInFlight
keda          KEDA Prometheus scaler: ⌈value / threshold⌉ our gate
              via the HPA, value = running + waiting,
              threshold = maxInFlight, queried at each
              15 s sync, an empty result read as 0
kpa           Knative KPA: target 0.7 × CC, 60 s stable   the activator while the excess burst
              / 6 s panic windows, panic at desired /     capacity is negative (ready × CC <
              ready ≥ 2, down at most halves, 2 s tick    211 + panic concurrency): one queue
                                                          of 10,000 in front of the fleet, CC
                                                          per pod, round-robin over the pods
                                                          with a free slot; else queue-proxies
                                                          alone: CC in flight, queue of 10 ×
                                                          CC; 503 when full, no queue deadline
ray           Ray Serve: ⌈ongoing / target_ongoing⌉       max_ongoing_requests = maxInFlight;
              (target 2, Ray's default), 30 s look-back,  the rest wait at the router in one
              30 s upscale / 600 s downscale delays       unbounded FIFO for a free replica
============  ==========================================  =====================================

:class:`Scheduled` is not an autoscaler but a replica plan fixed in advance
(behind our gate): it answers "what would this sequence of replica counts
give?", which bounds what any policy can reach on a trace.

CPU utilization of a CPU model pod is ~100 % at any nonzero load (the model
takes every core for one request as for four), so the simulator reports a
pod's busy fraction as its CPU: HPA-on-CPU sees 100 % whenever there is any
traffic and climbs towards maxReplicas. That is a pod whose threads match its
CPU request, as the rendered runtimes set them (``--threads``,
``OMP_NUM_THREADS``). The HPA divides usage by the request with no cap
(``pkg/controller/podautoscaler/metrics/utilization.go``): a server that
spreads over more cores than it requests reads above 100 % and scales out
faster and dearer than modelled here.

This module is pure: it imports neither ``kubernetes``, ``kopf`` nor ``httpx``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from vlm_operator.models import VLMServiceSpec
from vlm_operator.policy import PodCounts, PolicyState, Signals, recommend

__all__ = [
    "AUTOSCALERS",
    "HPACPU",
    "Autoscaler",
    "GateBehaviour",
    "HPAInFlight",
    "KEDAPrometheus",
    "KnativeKPA",
    "Observation",
    "Ours",
    "RayServe",
    "Scheduled",
    "Static",
    "hpa_desired",
    "make_autoscaler",
]


@dataclass(frozen=True)
class Observation:
    """What an autoscaler sees at one tick: the last scrape and the pod counts."""

    now: float
    running: float | None  # requests inside the models, summed over pods
    waiting: float | None  # requests queued in the gates (or proxies)
    p95_seconds: float | None  # fleet P95 over the rate window
    arrival_rate: float | None  # finished requests per second over the window
    error_rate: float | None  # fraction of them that failed
    cpu_utilization: float | None  # mean busy fraction of the pods counted (0..1)
    age_seconds: float  # age of the scrape
    current: int  # replicas asked for
    ready: int
    starting: int
    stuck: int = 0
    error: str | None = None  # the metrics source failed; values are None
    #: Pods whose CPU ``cpu_utilization`` averages: ready for a metric window
    #: (None: every ready pod).
    cpu_pods: int | None = None


@dataclass(frozen=True)
class GateBehaviour:
    """The per-pod request path an autoscaler's deployment implies."""

    max_in_flight: int | None  # None: no gate, every request enters the model
    queue_size: int | None  # None: unbounded queue
    queue_timeout_seconds: float | None  # None: wait until the client gives up
    full_status: int = 429  # answer when the queue is full
    retry_after_seconds: float | None = 1.0
    #: Retry-After as our gate computes it (moving mean of slot-holding times ×
    #: queue position ÷ slots), instead of the constant above.
    retry_after_estimated: bool = False
    #: A request on its last chance (retried LAST_CHANCE_RETRIES times) waits ahead
    #: of the others (FIFO among last chances) and may take a place beyond the
    #: queue's bound, as our gate does.
    last_chance_first: bool = False
    #: The gate gives up on a request the model has held this long without an
    #: answer (504 ``model_timeout``), cancelling it there; None: never.
    response_timeout_seconds: float | None = None
    #: Requests the shared queue in front of the fleet holds (Knative's activator,
    #: Ray Serve's router) while the autoscaler puts it in the path (its
    #: ``proxied``); None: unbounded. There a request goes to a ready pod with a
    #: free slot and no queue of its own (round-robin among them), or waits, with
    #: no deadline, for the first slot to free; a full shared queue answers
    #: ``full_status``.
    shared_queue_size: int | None = None
    #: The shared queue sends a request to the less loaded of two replicas drawn
    #: at random, drawing again while neither has a free slot (Ray Serve's
    #: power-of-two-choices router), instead of round-robin among those with one.
    shared_two_choices: bool = False


class Autoscaler(Protocol):
    """One autoscaler under simulation: stateful, deterministic."""

    name: str
    period_seconds: float  # how often :meth:`decide` runs
    scrape_interval_seconds: float  # how fresh its signals are
    gate: GateBehaviour
    initial_replicas: int
    #: Before a scale-down, each pod is marked with its load at the last scrape
    #: (the operator's ``pod-deletion-cost``), so the ReplicaSet deletes the
    #: idlest ready pods first; without, the newest ready go first.
    marks_pod_load: bool
    #: Requests pass the shared queue now (see ``GateBehaviour.shared_queue_size``),
    #: read after each decision; else they go to the pods through the Service.
    proxied: bool

    def decide(self, obs: Observation) -> int:
        """Replicas wanted now."""
        ...


def _our_gate(spec: VLMServiceSpec) -> GateBehaviour:
    c = spec.concurrency
    return GateBehaviour(
        c.max_in_flight,
        c.queue_size,
        c.queue_timeout_seconds,
        429,
        1.0,
        retry_after_estimated=True,
        last_chance_first=True,
        response_timeout_seconds=c.response_timeout_seconds,
    )


_NO_GATE = GateBehaviour(None, None, None, 503, None)


def _seconds(duration: str) -> float:
    """A Prometheus duration of the spec's pattern (``500ms``, ``5s``, ``1m``) in seconds."""
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if duration.endswith(suffix):
            return float(duration[: -len(suffix)]) * scale
    raise ValueError(f"not a duration: {duration!r}")


def _clamp(n: int, spec: VLMServiceSpec) -> int:
    a = spec.autoscaling
    return min(max(n, a.min_replicas), a.max_replicas)


# ----------------------------------------------------------------------------- ours


class Ours:
    """Our policy, :func:`vlm_operator.policy.recommend`, with its state."""

    def __init__(
        self, spec: VLMServiceSpec, *, scrape_interval_seconds: float | None = None
    ) -> None:
        self.name = "ours"
        self.spec = spec
        self.period_seconds = spec.autoscaling.sync_period_seconds
        self.scrape_interval_seconds = scrape_interval_seconds or _seconds(spec.monitoring.interval)
        self.gate = _our_gate(spec)
        a = spec.autoscaling
        # With autoscaling off the fleet is spec.replicas from the start, as the operator
        # renders it (not a pod that the first tick scales to it).
        self.initial_replicas = (
            max(a.min_replicas, 1) if a.enabled or spec.replicas is None else spec.replicas
        )
        self.marks_pod_load = True
        self.proxied = False
        self.state = PolicyState()
        self.last_reason = ""

    def decide(self, obs: Observation) -> int:
        signals = Signals(
            running=obs.running,
            waiting=obs.waiting,
            p95_seconds=obs.p95_seconds,
            arrival_rate=obs.arrival_rate,
            error_rate=obs.error_rate,
            age_seconds=obs.age_seconds,
            error=obs.error,
        )
        pods = PodCounts(obs.current, obs.ready, obs.starting, obs.stuck)
        decision = recommend(self.state, signals, pods, self.spec, obs.now)
        self.state = decision.state
        self.last_reason = decision.reason
        return decision.replicas


# --------------------------------------------------------------------------- static


class Static:
    """A fixed number of replicas with no gate: the measured setup when N = 1."""

    def __init__(self, spec: VLMServiceSpec, *, replicas: int | None = None) -> None:
        n = replicas if replicas is not None else (spec.replicas or 1)
        self.name = f"static-{n}"
        self.period_seconds = 60.0
        self.scrape_interval_seconds = 60.0
        self.gate = _NO_GATE
        self.initial_replicas = n
        self.marks_pod_load = False
        self.proxied = False

    def decide(self, obs: Observation) -> int:
        return self.initial_replicas


class Scheduled:
    """A replica plan fixed in advance, behind our gate: [(from time, replicas), ...].

    Each tick asks for the replicas of the latest entry whose time has come
    (``initial`` before the first). A plan that knows when the load changes is
    clairvoyant; one that changes only after a tick has seen the change is
    what a reactive policy could at best have done.
    """

    def __init__(
        self,
        spec: VLMServiceSpec,
        plan: Sequence[tuple[float, int]],
        *,
        initial: int = 1,
        name: str = "scheduled",
        period: float = 5.0,
    ) -> None:
        self.name = name
        self.period_seconds = period
        self.scrape_interval_seconds = period
        self.gate = _our_gate(spec)
        self.initial_replicas = initial
        self.marks_pod_load = True  # the plan run by our operator
        self.proxied = False
        self.plan = sorted(plan)

    def decide(self, obs: Observation) -> int:
        wanted = self.initial_replicas
        for at, replicas in self.plan:
            if obs.now >= at:
                wanted = replicas
        return wanted


# ------------------------------------------------------------------------------ HPA


def hpa_desired(current: int, ratio: float, *, tolerance: float = 0.1) -> int:
    """The HPA's core formula: ⌈current × ratio⌉ unless the ratio is within tolerance."""
    if abs(ratio - 1.0) <= tolerance:
        return current
    return math.ceil(current * ratio - 1e-9)


class _HPA:
    """The HPA's loop around a recommendation: down-stabilization and up limits.

    As an HPA with a ``behavior`` (``behavior: {}`` will do) takes them: the
    documented default policies. Without one, the controller takes an older
    path (``normalizeDesiredReplicas``): a step up of at most max(2 × current,
    4) pods and the window's highest recommendation in either direction. Run
    that way, every trace but step-burst gives the same figures to the digit,
    and KEDA on step-burst 1.474× instead of 1.477× the oracle.
    """

    def __init__(
        self,
        spec: VLMServiceSpec,
        *,
        name: str,
        gate: GateBehaviour,
        period: float = 15.0,
        scrape: float = 15.0,
        down_window: float = 300.0,
    ) -> None:
        self.name = name
        self.spec = spec
        self.period_seconds = period
        self.scrape_interval_seconds = scrape
        self.gate = gate
        self.initial_replicas = max(spec.autoscaling.min_replicas, 1)
        self.marks_pod_load = False
        self.proxied = False
        self.down_window = down_window
        self._recent: deque[tuple[float, int]] = deque()

    def recommendation(self, obs: Observation) -> int | None:
        raise NotImplementedError

    def decide(self, obs: Observation) -> int:
        rec = self.recommendation(obs)
        current = obs.current
        if rec is None:  # no metric: the HPA keeps the current scale
            return current
        self._recent.append((obs.now, rec))
        while self._recent and self._recent[0][0] <= obs.now - self.down_window:
            self._recent.popleft()
        if rec < current:
            # Scale-down stabilization: the highest recommendation of the window.
            rec = min(current, max(n for _, n in self._recent))
        elif rec > current:
            # Default scale-up policies: 100 % or 4 pods per 15 s, the larger.
            rec = min(rec, current + max(4, current))
        return _clamp(rec, self.spec)


class HPACPU(_HPA):
    """HPA on CPU utilization, target 80 %, over the ready pods."""

    def __init__(self, spec: VLMServiceSpec, *, target: float = 0.8) -> None:
        super().__init__(spec, name="hpa-cpu", gate=_NO_GATE)
        self.target = target

    def recommendation(self, obs: Observation) -> int | None:
        """``calcPlainMetricReplicas``: the pods with a sample, and on a scale-up
        the others (starting, or ready for less than a metric window) at 0 %,
        holding the scale if they bring the ratio within the tolerance or
        across 1."""
        counted = obs.ready if obs.cpu_pods is None else obs.cpu_pods
        if obs.cpu_utilization is None or counted == 0:
            return None  # no sample of any pod: the HPA keeps the scale
        ratio = obs.cpu_utilization / self.target
        if abs(ratio - 1.0) <= 0.1:
            return obs.current
        unready = obs.ready + obs.starting - counted
        if unready <= 0 or ratio < 1.0:
            return hpa_desired(counted, ratio)
        new_ratio = ratio * counted / (counted + unready)
        if abs(new_ratio - 1.0) <= 0.1 or new_ratio < 1.0:
            return obs.current
        return max(obs.current, hpa_desired(counted + unready, new_ratio))


class HPAInFlight(_HPA):
    """HPA on an external metric: in flight per pod, target 0.75 × maxInFlight.

    An ``AverageValue`` target, as the replica calculator takes it: the
    fleet's sum against the target times the current replicas (pods starting
    included), and within the tolerance the current replicas, not the ready
    ones (which would take starting pods away).
    """

    def __init__(self, spec: VLMServiceSpec, *, target: float | None = None) -> None:
        super().__init__(spec, name="hpa-inflight", gate=_our_gate(spec))
        self.target = target if target is not None else 0.75 * spec.concurrency.max_in_flight

    def recommendation(self, obs: Observation) -> int | None:
        if obs.running is None or obs.ready == 0 or obs.current < 1:
            return None
        return hpa_desired(obs.current, obs.running / (self.target * obs.current))


class KEDAPrometheus(_HPA):
    """KEDA's Prometheus scaler feeding an HPA: ⌈value / threshold⌉, empty read as 0.

    The HPA asks KEDA's metrics server at each 15 s sync, which queries
    Prometheus then (``pollingInterval`` paces only the activation from zero;
    caching is opt-in, ``useCachedMetrics``: kedacore/keda#2282), so the value
    is as fresh as the gates' scrapes. An empty or NaN result is 0
    (``ignoreNullValues``, default true: keda#3065); a failed query is an
    error, on which the HPA keeps the current scale.
    """

    def __init__(self, spec: VLMServiceSpec, *, threshold: float | None = None) -> None:
        scrape = _seconds(spec.monitoring.interval)
        super().__init__(spec, name="keda", gate=_our_gate(spec), period=15.0, scrape=scrape)
        self.threshold = threshold if threshold is not None else spec.concurrency.max_in_flight

    def recommendation(self, obs: Observation) -> int | None:
        if obs.error is not None:
            return None  # the query failed: the HPA keeps the scale
        # keda#3065: an empty result is read as 0, not as "no signal".
        value = (obs.running or 0.0) + (obs.waiting or 0.0)
        current = max(obs.current, 1)
        # The HPA's tolerance on an AverageValue target: skip changes within 10 %.
        if abs(value / (self.threshold * current) - 1.0) <= 0.1:
            return obs.current
        desired = math.ceil(value / self.threshold - 1e-9)
        return desired


# ------------------------------------------------------------------------------ KPA


class KnativeKPA:
    """Knative's KPA: stable and panic windows over observed concurrency.

    As ``pkg/autoscaler/scaling/autoscaler.go`` decides: both desired counts
    are kept within [⌊ready / maxScaleDownRate⌋, ⌈ready × maxScaleUpRate⌉]
    (rates 2 and 1000, ready counted as one at least); a panic window's count
    (before that bound) at twice the ready pods starts or extends the panic,
    which ends a stable window after the last such tick; while it lasts the
    higher of the two counts, never lower than the panic's highest so far.

    The activator is in the request path while the excess burst capacity,
    ⌊ready × CC − targetBurstCapacity − panic concurrency⌋, is negative (the
    same file; ``target-burst-capacity`` 211 in ``pkg/autoscaler/config``, the
    docs say 200): below some 53 ready pods of CC 4 always. It holds one queue
    for the revision (``breakerQueueDepth`` 10,000 in
    ``pkg/activator/net/throttler.go``) and sends each pod at most CC, round-robin
    over the pods with a free slot (its default for CC > 3). Otherwise requests
    reach the queue-proxies through the Service.
    """

    def __init__(
        self,
        spec: VLMServiceSpec,
        *,
        stable_window: float = 60.0,
        panic_window: float = 6.0,
        target_fraction: float = 0.7,
        tick: float = 2.0,
        max_scale_down_rate: float = 2.0,
        max_scale_up_rate: float = 1000.0,
        panic_threshold: float = 2.0,
        target_burst_capacity: float = 211.0,
        activator_queue: int = 10_000,
    ) -> None:
        cc = spec.concurrency.max_in_flight
        self.name = "kpa"
        self.spec = spec
        self.period_seconds = tick
        self.scrape_interval_seconds = 1.0
        self.gate = GateBehaviour(cc, 10 * cc, None, 503, None, shared_queue_size=activator_queue)
        self.initial_replicas = max(spec.autoscaling.min_replicas, 1)
        self.marks_pod_load = False
        self.cc = cc
        self.target_burst_capacity = target_burst_capacity
        # A revision starts behind the activator (it scales from zero through it).
        self.proxied = target_burst_capacity != 0
        self.target = target_fraction * cc
        self.stable_window = stable_window
        self.panic_window = panic_window
        self.max_scale_down_rate = max_scale_down_rate
        self.max_scale_up_rate = max_scale_up_rate
        self.panic_threshold = panic_threshold
        self._samples: deque[tuple[float, float]] = deque()
        self._panic_time: float | None = None  # the last tick over the panic threshold
        self._panic_max = 0

    def decide(self, obs: Observation) -> int:
        if obs.running is None or obs.waiting is None:
            return obs.current
        now = obs.now
        self._samples.append((now, obs.running + obs.waiting))
        while self._samples and self._samples[0][0] <= now - self.stable_window:
            self._samples.popleft()
        stable = [c for _, c in self._samples]
        panic = [c for t, c in self._samples if t > now - self.panic_window]
        panic_concurrency = sum(panic) / len(panic)
        observed_stable = math.ceil(sum(stable) / len(stable) / self.target - 1e-9)
        observed_panic = math.ceil(panic_concurrency / self.target - 1e-9)
        if self.target_burst_capacity > 0:
            excess = obs.ready * self.cc - self.target_burst_capacity - panic_concurrency
            self.proxied = math.floor(excess) < 0
        else:  # 0: the activator only scales from zero; -1: always in the path
            self.proxied = self.target_burst_capacity < 0
        ready = max(obs.ready, 1)
        lowest = math.floor(ready / self.max_scale_down_rate)
        highest = math.ceil(ready * self.max_scale_up_rate)
        desired_stable = min(max(observed_stable, lowest), highest)
        desired_panic = min(max(observed_panic, lowest), highest)
        if observed_panic / ready >= self.panic_threshold:
            self._panic_time = now  # panic starts, or goes on
        elif self._panic_time is not None and self._panic_time + self.stable_window < now:
            self._panic_time = None  # the surge has reached the stable window
            self._panic_max = 0
        if self._panic_time is not None:
            # Panicking: never down from the panic's highest count.
            self._panic_max = max(self._panic_max, desired_stable, desired_panic)
            return _clamp(self._panic_max, self.spec)
        return _clamp(desired_stable, self.spec)


# ------------------------------------------------------------------------------ Ray


class RayServe:
    """Ray Serve's autoscaler: ongoing requests per replica with delays.

    A replica takes ``max_ongoing_requests`` at most; the rest wait at the router
    (a deployment handle's queue, ``max_queued_requests`` -1 by default: no bound)
    until a replica has room, and the ongoing requests Ray scales on count them.
    The router sends each request to the less loaded of two random replicas,
    drawing again while neither has room (``PowerOfTwoChoicesReplicaScheduler``).

    The controller decides on what the handles last pushed: each records its
    ongoing requests (every 0.5 s in Ray; here every scrape) and pushes their
    mean over ``look_back_period_s`` every ``push_interval`` seconds
    (``RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S``, 10 s), so the
    value it scales on is up to one push interval older than the recordings.
    The mean covers the router's queue as well as the running requests, as the
    controller's time-series aggregation does on Ray's master; Ray 2.x routers
    push the queue as it is at the push instead (``router.py``,
    ``_get_aggregated_requests``), which reacts faster to a queue's first
    seconds.
    """

    def __init__(
        self,
        spec: VLMServiceSpec,
        *,
        target_ongoing_requests: float = 2.0,
        look_back: float = 30.0,
        upscale_delay: float = 30.0,
        downscale_delay: float = 600.0,
        period: float = 5.0,
        push_interval: float = 10.0,
    ) -> None:
        self.name = "ray"
        self.spec = spec
        self.period_seconds = period
        self.scrape_interval_seconds = 5.0
        # The router holds what no replica has room for (max_queued_requests -1: no bound).
        self.gate = GateBehaviour(
            spec.concurrency.max_in_flight, None, None, 503, None, shared_two_choices=True
        )
        self.initial_replicas = max(spec.autoscaling.min_replicas, 1)
        self.marks_pod_load = False
        self.proxied = True
        self.target = target_ongoing_requests
        self.look_back = look_back
        self.upscale_delay = upscale_delay
        self.downscale_delay = downscale_delay
        self.push_interval = push_interval
        self._samples: deque[tuple[float, float]] = deque()
        self._pushed: tuple[float, float] | None = None  # (time, mean ongoing) last pushed
        self._up_since: float | None = None
        self._down_since: float | None = None

    def decide(self, obs: Observation) -> int:
        if obs.running is None or obs.waiting is None:
            return obs.current
        now = obs.now
        self._samples.append((now, obs.running + obs.waiting))
        while self._samples and self._samples[0][0] <= now - self.look_back:
            self._samples.popleft()
        if self._pushed is None or now - self._pushed[0] >= self.push_interval - 1e-9:
            self._pushed = (now, sum(c for _, c in self._samples) / len(self._samples))
        ongoing = self._pushed[1]
        desired = _clamp(math.ceil(ongoing / self.target - 1e-9), self.spec)
        current = obs.current
        if desired > current:
            self._down_since = None
            self._up_since = now if self._up_since is None else self._up_since
            if now - self._up_since >= self.upscale_delay:
                self._up_since = None
                return desired
        elif desired < current:
            self._up_since = None
            self._down_since = now if self._down_since is None else self._down_since
            if now - self._down_since >= self.downscale_delay:
                self._down_since = None
                return desired
        else:
            self._up_since = self._down_since = None
        return current


#: name → factory. ``static`` uses spec.replicas (default 1).
AUTOSCALERS: dict[str, Callable[[VLMServiceSpec], Autoscaler]] = {
    "ours": Ours,
    "static": Static,
    "hpa-cpu": HPACPU,
    "hpa-inflight": HPAInFlight,
    "keda": KEDAPrometheus,
    "kpa": KnativeKPA,
    "ray": RayServe,
}


#: The most replicas of ``static-N``: maxReplicas's bound in the VLMService schema.
MAX_STATIC = 10000


def make_autoscaler(name: str, spec: VLMServiceSpec) -> Autoscaler:
    """A fresh autoscaler by name; ``static-N`` gives N fixed replicas (1 to MAX_STATIC)."""
    if name.startswith("static-") and name[7:].isdigit():
        replicas = int(name[7:])
        if not 1 <= replicas <= MAX_STATIC:
            raise ValueError(f"policy {name!r}: static-N takes 1 to {MAX_STATIC} replicas")
        return Static(spec, replicas=replicas)
    try:
        factory = AUTOSCALERS[name]
    except KeyError:
        raise ValueError(
            f"unknown policy {name!r} (known: {', '.join(AUTOSCALERS)}, static-N)"
        ) from None
    return factory(spec)
