"""The discrete-event engine: pods, gates, a Service, clients and a control loop.

Everything that moves is an event in one heap, ordered by time. What the
engine models, in the order a request meets it:

- **Clients.** Closed loop: N users, each sends a request, waits for the
  answer or the client timeout (30 s) and sends the next at once (1 s after an
  error, as a real client backs off instead of spinning). Open loop: Poisson
  arrivals at the trace's rate (thinning for ramps). Optional openai-style
  retries (openai-python retries twice by default): 429, 5xx and client
  timeouts retried, honouring Retry-After up to 60 s, otherwise an
  exponential back-off. The gate's 429 and its 504 (queue deadline) both
  carry its Retry-After for a place at the back of the queue.
  The latency of a retried request runs from its first send.
- **Service.** Round-robin over ready pods (or least-loaded); no ready pod
  means 503 at once. While an anchor's autoscaler says so (``proxied``), a
  shared queue stands in front instead (Knative's activator, Ray Serve's
  router): a request goes to a ready pod with a free slot and no queue of its
  own (round-robin among them for the activator; for Ray's router the less
  loaded of two drawn at random, drawn again while neither has a free slot),
  or waits there, with no deadline, for the first slot to free (on a pod that
  is not draining).
- **Gate** (per autoscaler: :class:`~vlm_operator.baselines.GateBehaviour`).
  A hard in-flight limit, a bounded FIFO queue answered 429 (or 503) when
  full, and a queue deadline answered 504. Our gate puts a request on its
  last chance (a client's last retry) ahead of the others, with a few
  places beyond the bound for it, and gives up on a request the model has
  held for its response timeout (504, the model's request cancelled). A
  client that times out leaves the queue, and its request inside the model
  is cancelled there (``SimConfig.cancel_on_disconnect``; the stock server
  of the measured setup kept running it, which is how one overloaded pod
  spirals).
- **Pods.** :class:`~vlm_operator.latency.ProcessorSharing` under the
  calibrated latency model; new pods become ready after the start-up delay;
  removed pods leave the Service at once and finish what they hold.
- **Metrics pipeline.** Scrapes every ``scrape_interval`` read the gates'
  gauges; the rate-window signals (P95, arrival and error rates) cover the
  last ``window_seconds`` before the scrape. The P95 is what Prometheus's
  ``histogram_quantile`` makes of the gate's duration buckets (linear within
  a bucket, the highest finite bound past the last), not the exact quantile.
  The autoscaler sees the last scrape, as old as it is.
- **The end.** Arrivals stop at the trace's end; the requests sent before it
  are still answered (or fail: timeouts, refusals, retries) by the fleet as
  it stands, with no new decision, so that every request counts, the slowest
  and the queued included. Replica-seconds stop at the end.

Client, queue and response deadlines are constant per run, so each is kept in one
FIFO (deadline order = send or admission order) instead of one heap event per
request, and one wake-up event in the heap stands for the earliest live head; that
and the virtual-time pods keep the cost per request to a few heap operations.

Speed. A day of traffic is some 700,000 requests, so the per-request path is
written for the interpreter, without changing a single result:

- each pod carries the state of a :class:`~vlm_operator.latency.ProcessorSharing`
  and the engine runs that class's arithmetic inline, operation for operation
  in the same order, so every float is the one the class would give (the class
  stays the reference, and the fake model server's engine; a test replays a
  run through it); ``max``/``min`` calls are written as comparisons that pick
  the same operand; ``LatencyModel.sample_work`` and ``Phase.rate_at`` are
  written out too, with the same operations;
- ``Random.lognormvariate`` (the work of each request) and
  ``Random.expovariate`` (each candidate arrival) are written out as CPython's
  random module computes them: the same draws and operations, without two
  calls per request (the test that replays a run through the class draws its
  works with ``LatencyModel.sample_work``; another draws arrivals with
  ``expovariate``);
- configuration is read once into attributes, and the loop binds what it
  calls; the next open-loop arrival waits beside the heap rather than in it;
  requests in the models are counted when scraped, not kept up to date on
  every change;
- the loop does not look at the deadline FIFOs on every event: their wake-up
  (see ``_Engine._deadline``) is an entry of the heap, ordered before any event
  at its instant as the FIFOs' heads were; the entries of requests answered in
  time (nearly all) leave in a batch when a wake-up meets them;
- a scrape counts the window's answers into histogram buckets a batch at a
  time, instead of sorting all of the window's durations each time.

A completion event made stale by a later admission is skipped when popped,
and swept out of the heap now and then (and counted): an overloaded pod
without a gate leaves thousands of them, each making every heap operation
dearer. Sweeping changes nothing, because stale events change no state, and
the deadlines' wake-ups are kept.

Compiled. ``make engine`` compiles this module with mypyc (see
:mod:`vlm_operator.simulator._compiled`), which runs it 1.6 times faster with
the same results; so it stays inside what mypyc compiles and what a compiled
module allows: annotations that hold at run time (mypyc checks them), no
class of it subclassed nor patched from Python (tests that do so use the
interpreted engine).

This module is pure: standard library only (plus the project's pure modules).
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from heapq import heapify, heappop, heappush
from itertools import repeat
from operator import add, itemgetter, sub
from typing import Literal

from vlm_operator.baselines import Autoscaler, Observation
from vlm_operator.contract import (
    DURATION_BUCKETS,
    LAST_CHANCE_RETRIES,
    SERVICE_EWMA_WEIGHT,
    last_chance_places,
    moving_refused_fraction,
    moving_service_mean,
    retry_after_seconds,
)
from vlm_operator.latency import LatencyModel
from vlm_operator.models import VLMServiceSpec
from vlm_operator.traces import Trace

__all__ = ["Series", "SimConfig", "SimResult", "arrival_times", "simulate"]

Routing = Literal["round-robin", "least-loaded"]

# Event kinds in the heap (small ints: cheaper to compare than enum members).
# Open-loop arrivals wait outside the heap (see ``_Engine._loop``); _DEADLINE
# is the deadline FIFOs' wake-up (see ``_Engine._deadline``), not an event.
_POD_DONE, _USER, _POD_READY, _SCRAPE, _TICK, _PHASE, _RETRY, _DEADLINE = range(8)
#: Sequence number of the scrape's event: below every other (deadlines use 0), so a
#: scrape runs first among events at its instant. One scrape is pending at a time.
_SCRAPE_FIRST = -1

# Pod states.
_STARTING, _READY, _DRAINING, _GONE = range(4)
#: The HPA's --horizontal-pod-autoscaler-cpu-initialization-period (its default):
#: a pod this young counts for CPU only once a metric window follows its readiness.
CPU_INITIALIZATION_SECONDS = 300.0

# Outcome codes recorded per request (HTTP status; 0 = client timeout).
OK = 200
TIMEOUT = 0

# random.NV_MAGICCONST, computed as the random module computes it.
_NV_MAGICCONST = 4 * math.exp(-0.5) / math.sqrt(2.0)
_exp, _log = math.exp, math.log

# As in vlm_operator.latency: completions computed from floating-point virtual
# time can land a few ulps after the instant asked about; they count as finished.
_EPSILON = 1e-9


@dataclass(frozen=True)
class SimConfig:
    """Knobs of the simulated environment (not of the autoscaler)."""

    startup_seconds: float = 60.0
    client_timeout_seconds: float = 30.0
    retries: int = 0
    #: Retries also follow a client timeout (openai-python does, as for 5xx).
    retry_timeouts: bool = True
    routing: Routing = "round-robin"
    latency: LatencyModel = field(default_factory=LatencyModel)
    error_pause_seconds: float = 1.0
    #: Override the autoscaler's own scrape interval (None: keep it).
    scrape_interval_seconds: float | None = None
    #: Scrapes run this long before the control loop's ticks (mod the interval):
    #: the age of the freshest signal a tick sees.
    signal_age_seconds: float = 2.0
    #: Where in its period the control loop first ticks, as a fraction of the
    #: period (0: at the period itself). A real loop starts when its process
    #: does, at no particular phase of the traffic; a grid locked to the trace's
    #: start makes one phase of a rise stand for all of them (scrapes keep
    #: ``signal_age_seconds`` before the ticks either way).
    loop_phase: float = 0.0
    #: Half-open intervals during which every scrape fails.
    metrics_outages: tuple[tuple[float, float], ...] = ()
    #: Width of the buckets in which SLO violation is judged.
    slo_bucket_seconds: float = 10.0
    record_series: bool = True
    #: A client that gives up cancels its request inside the model (the
    #: project's model server and llama.cpp stop generating; the stock server
    #: of the measured setup did not, which is how one overloaded pod spirals).
    cancel_on_disconnect: bool = True
    #: The P95 signal as Prometheus computes it from the gate's histogram
    #: buckets (False: the exact quantile of the window's durations).
    p95_from_buckets: bool = True


@dataclass
class Series:
    """Per-tick time series for plots: replicas, demand and P95 as seen."""

    t: list[float] = field(default_factory=list)
    replicas: list[int] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)
    demand: list[float] = field(default_factory=list)
    p95: list[float] = field(default_factory=list)


@dataclass
class SimResult:
    """Raw outcome of one run; :mod:`vlm_operator.simulator.report` summarises it."""

    trace: Trace
    policy: str
    seed: int
    spec: VLMServiceSpec
    config: SimConfig
    # Per finished request (index-aligned): first send time, end time, final status.
    sent: list[float]
    ended: list[float]
    status: list[int]
    replica_seconds: float
    scale_ups: int
    scale_downs: int
    scale_events: list[tuple[float, int, int]]  # (time, from, to)
    series: Series
    events_processed: int
    requests_issued: int
    #: Replica-seconds of each phase of the trace (they sum to ``replica_seconds``).
    phase_replica_seconds: list[float]


# Fields of a gate answer (time, seconds or -1 for a rejection, ok).
_TIME, _SECONDS, _OK = itemgetter(0), itemgetter(1), itemgetter(2)


def _scraped_load(pod: _Pod) -> int:
    return pod.scraped_load


class _Batch:
    """The gate's answers that one scrape took in, and what they count for."""

    __slots__ = ("answers", "cumulative", "errors", "latest")

    def __init__(self, answers: list[tuple[float, float, bool]]) -> None:
        self.answers = answers  # (time, seconds or -1 for a rejection, ok)
        self.latest = max(map(_TIME, answers))
        ordered = sorted(map(_SECONDS, answers))
        # Durations up to each bucket bound, then all durations (+Inf).
        cumulative = list(map(bisect_right, repeat(ordered), DURATION_BUCKETS))
        cumulative.append(len(ordered))
        rejected = bisect_left(ordered, 0.0)  # the -1 of rejections sort first
        if rejected:
            cumulative = [count - rejected for count in cumulative]
        self.cumulative = cumulative
        self.errors = len(answers) - sum(map(_OK, answers))


class _Window:
    """The gate's answers in the rate window, counted as Prometheus's histogram would.

    Answers come in at each scrape as one :class:`_Batch` and leave in the
    order they came, as from a deque of answers; the counts are kept by batch
    with C-level map, sort and bisect, instead of per answer in Python.
    """

    def __init__(self) -> None:
        self.batches: deque[_Batch] = deque()
        self.size = 0
        self.errors = 0
        self.cumulative = [0] * (len(DURATION_BUCKETS) + 1)  # as _Batch.cumulative

    def take(self, answers: list[tuple[float, float, bool]]) -> None:
        self._add(_Batch(answers))

    def evict(self, cutoff: float) -> None:
        """Drop answers from the oldest while their time is <= ``cutoff``."""
        batches = self.batches
        while batches:
            batch = batches[0]
            if batch.latest > cutoff:
                # The first later answer stops the eviction: keep from there.
                answers = batch.answers
                i = 0
                while answers[i][0] <= cutoff:
                    i += 1
                if i:
                    self._remove(batch)
                    batches.popleft()
                    self._add(_Batch(answers[i:]), first=True)
                return
            self._remove(batch)
            batches.popleft()

    def durations(self) -> list[float]:
        return [d for batch in self.batches for _, d, _ in batch.answers if d >= 0]

    def _add(self, batch: _Batch, *, first: bool = False) -> None:
        if first:
            self.batches.appendleft(batch)
        else:
            self.batches.append(batch)
        self.size += len(batch.answers)
        self.errors += batch.errors
        self.cumulative = list(map(add, self.cumulative, batch.cumulative))

    def _remove(self, batch: _Batch) -> None:
        self.size -= len(batch.answers)
        self.errors -= batch.errors
        self.cumulative = list(map(sub, self.cumulative, batch.cumulative))


class _Request:
    """One attempt of a client's request; a retry is a new :class:`_Request`.

    An attempt the client gave up on may still run in a model that does not
    cancel (``cancel_on_disconnect=False``) while the retry runs too, in the
    same pod or another: each is a job of its own.
    """

    __slots__ = ("admitted", "attempt", "done", "pod", "queued", "sent", "started", "user")

    # Set by _Engine._attempt, which every request meets first, and _admit.
    started: float  # this attempt
    admitted: float  # took a slot (this attempt)

    def __init__(self, sent: float, user: int, attempt: int = 0) -> None:
        self.sent = sent  # first send (client view)
        self.user = user  # closed-loop user, -1 for open loop
        self.attempt = attempt  # retries before this one
        self.queued = False
        self.done = False  # client has its answer (or gave up) for this attempt
        self.pod: _Pod | None = None


class _Pod:
    """A pod: its gate (queue, moving averages) and its model process.

    The model process is a :class:`~vlm_operator.latency.ProcessorSharing`
    taken apart: ``virtual``, ``last``, ``seq``, ``jobs`` and ``active`` are
    that class's fields, and the engine's ``_admit``, ``_reschedule``,
    ``_pod_done`` and ``_cancel`` its methods, so the hot path makes no call
    per step.
    """

    __slots__ = (
        "active",
        "busy_mark",
        "busy_since",
        "busy_total",
        "created",
        "first",
        "idx",
        "jobs",
        "last",
        "pending",
        "queue",
        "ready_at",
        "refused",
        "scraped_load",
        "seq",
        "service",
        "state",
        "virtual",
        "waiting",
    )

    def __init__(self, idx: int, created: float) -> None:
        self.idx = idx
        self.created = created
        self.state = _STARTING
        self.ready_at = -1.0  # when it turned ready (-1: not yet)
        #: Requests inside and queued at the last scrape: the load the operator
        #: marks the pod with before a scale-down (0 for a pod no scrape saw).
        self.scraped_load = 0
        self.virtual = 0.0  # service attained by every request inside since empty
        self.last = 0.0  # wall time up to which ``virtual`` is exact
        self.seq = 0
        self.jobs: list[tuple[float, int, _Request]] = []  # (finish virtual time, seq, request)
        self.active: dict[_Request, int] = {}  # request inside -> seq of its live ``jobs`` entry
        self.queue: deque[_Request] = deque()
        self.first: deque[_Request] = deque()  # last chances, served before ``queue``
        self.waiting = 0  # live entries of both (timed-out ones leave lazily)
        self.pending = 0  # sequence number of the live completion event (0: none)
        self.busy_since = -1.0  # >= 0 while something runs (CPU busy)
        self.busy_total = 0.0
        self.busy_mark = 0.0  # busy_total at the previous scrape
        self.service: float | None = None  # the gate's moving mean of slot-holding times
        self.refused = 0.0  # the gate's moving fraction of arrivals refused


def _load(pod: _Pod) -> int:
    """Requests a pod holds, running or queued (least-loaded routing)."""
    return len(pod.active) + pod.waiting


def simulate(
    trace: Trace,
    autoscaler: Autoscaler,
    *,
    spec: VLMServiceSpec,
    seed: int = 0,
    config: SimConfig | None = None,
) -> SimResult:
    """Run ``trace`` against ``autoscaler``; deterministic for a seed."""
    return _Engine(trace, autoscaler, spec, seed, config or SimConfig()).run()


class _Engine:
    def __init__(
        self,
        trace: Trace,
        autoscaler: Autoscaler,
        spec: VLMServiceSpec,
        seed: int,
        config: SimConfig,
    ) -> None:
        if not 0.0 <= config.loop_phase < 1.0:
            raise ValueError(f"loop_phase must be in [0, 1), got {config.loop_phase}")
        self.trace = trace
        self.scaler = autoscaler
        self.spec = spec
        self.seed = seed
        self.cfg = config
        self.alpha = config.latency.alpha
        # ProcessorSharing's slowdown by requests in a pod (index 0 unused),
        # each entry computed as the class computes it; grown on demand.
        self.slowdowns = [1.0, 1.0]
        self._slowdown(autoscaler.gate.max_in_flight or 16)
        self.rng = random.Random(seed)
        # LatencyModel.sample_work's terms, for the hot path.
        self.random = self.rng.random
        self.work_base = config.latency.base_seconds
        self.work_sigma = config.latency.sigma
        self.time_scale = config.latency.time_scale
        # Configuration read once: attribute lookups on the hot path.
        self.round_robin = config.routing == "round-robin"
        self.client_timeout = config.client_timeout_seconds
        self.retries = config.retries
        self.retry_timeouts = config.retry_timeouts
        self.error_pause = config.error_pause_seconds
        self.cancel_on_disconnect = config.cancel_on_disconnect
        self.arrival_rng = random.Random(arrival_seed(seed))
        self.heap: list[tuple[float, int, int, object]] = []
        self.seq = 0
        self.heap_sweep_at = 256  # heap size that triggers _sweep_stale
        self.swept = 0  # stale events swept out before their time (<= the end)
        self.now = 0.0
        gate = autoscaler.gate
        self.limit = gate.max_in_flight
        self.queue_size = gate.queue_size
        self.queue_timeout = gate.queue_timeout_seconds
        self.full_status = gate.full_status
        self.retry_after = gate.retry_after_seconds
        self.retry_after_estimated = gate.retry_after_estimated
        # The shared queue (see the module doc): in the path while ``shared``.
        self.shared = autoscaler.proxied
        self.shared_size = gate.shared_queue_size
        self.shared_queue: deque[_Request] = deque()
        self.shared_waiting = 0  # its live entries (those that gave up leave lazily)
        self.two_choices = gate.shared_two_choices
        # Its own stream, so that the draws leave the others' (work, back-off) as they are.
        self.choice_random = random.Random(f"{seed}:two-choices").random
        if self.shared and self.limit is None:
            raise ValueError("a shared queue needs a per-pod limit (max_in_flight)")
        # Queue places a request on its last chance may take (the bound plus the reserve).
        self.last_chance_bound = -1
        if gate.last_chance_first and gate.queue_size is not None:
            self.last_chance_bound = gate.queue_size + last_chance_places(gate.queue_size)
        self.client_timeouts: deque[tuple[float, _Request]] = deque()
        self.queue_deadlines: deque[tuple[float, _Request]] = deque()
        # The gate's response timeout, from admission. A client waits at most its
        # own timeout from the attempt's start (no later than its admission), so a
        # response timeout at least as long never fires: then there is no FIFO.
        timeout = gate.response_timeout_seconds
        self.response_timeout = (
            timeout if timeout is not None and timeout < self.client_timeout else None
        )
        self.response_deadlines: deque[tuple[float, _Request]] = deque()
        # Time of the earliest _DEADLINE wake-up in the heap (inf: none).
        self.wake_at = math.inf
        self.pods: list[_Pod] = []
        self.ready: list[_Pod] = []
        self.rr = 0
        self.next_pod = 0
        self.replicas = 0  # non-draining pods (Deployment spec.replicas)
        self.waiting_total = 0  # requests queued at the gates (the running ones: _running)
        # Gate-side answers for the rate-window signals: (time, seconds or -1 for
        # a rejection, ok). Appended here, counted into ``gate_window`` by the
        # next scrape.
        self.gate_new: list[tuple[float, float, bool]] = []
        self.gate_window = _Window()
        self.window = float(spec.metrics.window_seconds)
        # Results.
        self.sent: list[float] = []
        self.ended: list[float] = []
        self.status: list[int] = []
        self.replica_seconds = 0.0
        self.pods_alive = 0
        self.cost_mark = 0.0
        self.scale_ups = 0
        self.scale_downs = 0
        self.scale_events: list[tuple[float, int, int]] = []
        self.series = Series()
        self.phase_marks: list[float] = []  # replica-seconds at each phase's end but the last
        # The end of the first phase whose replica-seconds are not yet noted.
        self.phase_end = trace.phases[0].end_s if len(trace.phases) > 1 else math.inf
        self.events = 0
        self.issued = 0
        # Scrape state.
        self.scrape_interval = config.scrape_interval_seconds or autoscaler.scrape_interval_seconds
        self.scraped: tuple[float, float | None, float | None, float | None, str | None] = (
            0.0,
            0.0,
            0.0,
            None,
            None,
        )
        self.scraped_cpu: float | None = None
        self.scraped_cpu_pods = 0
        self.scrape_missed = False  # a scrape failed since the last one that did not
        self.scraped_rates: tuple[float | None, float | None] = (None, None)
        self.arrivals: Iterator[float] = iter(())
        self.users = 0  # closed loop: active users
        self.user_busy: list[bool] = []

    # ------------------------------------------------------------------ events

    def push(self, at: float, kind: int, payload: object = None) -> None:
        self.seq += 1
        heappush(self.heap, (at, self.seq, kind, payload))

    def _push_scrape(self, at: float) -> None:
        """Schedule the next scrape ahead of any event at the same instant (a tick
        on the same grid reads it: a signal age of whole scrape intervals is 0 s)."""
        heappush(self.heap, (at, _SCRAPE_FIRST, _SCRAPE, None))

    def run(self) -> SimResult:
        end = self.trace.duration_s
        for _ in range(self.scaler.initial_replicas):
            pod = self._new_pod(0.0)
            self._pod_ready(pod)
        self.replicas = self.scaler.initial_replicas
        self._scrape()
        first_tick = self.scaler.period_seconds * (1.0 + self.cfg.loop_phase)
        first = (first_tick - self.cfg.signal_age_seconds) % self.scrape_interval
        self._push_scrape(first)
        self.push(first_tick, _TICK)
        if self.trace.kind == "closed":
            for phase in self.trace.phases:
                self.push(phase.start_s, _PHASE, phase.users or 0)
        else:
            self.arrivals = arrival_times(self.trace, self.arrival_rng)
        events = self._loop(end) + self.swept
        self.now = end
        self._account_cost()
        replica_seconds = self.replica_seconds
        marks = [*self.phase_marks, replica_seconds]
        events += self._answer_the_rest()
        return SimResult(
            trace=self.trace,
            policy=self.scaler.name,
            seed=self.seed,
            spec=self.spec,
            config=self.cfg,
            sent=self.sent,
            ended=self.ended,
            status=self.status,
            replica_seconds=replica_seconds,
            scale_ups=self.scale_ups,
            scale_downs=self.scale_downs,
            scale_events=self.scale_events,
            series=self.series,
            events_processed=events,
            requests_issued=self.issued,
            phase_replica_seconds=[b - a for a, b in zip([0.0, *marks], marks, strict=False)],
        )

    def _answer_the_rest(self) -> int:
        """After the end: the requests sent before it run to their outcome; the events popped.

        No arrival, no new request from a user, no scrape and no decision: the
        fleet stands as the end left it (pods still starting become ready).
        Every attempt ends (an answer, a refusal, a client or queue deadline),
        and a retry is an event, so the heap empties once all have an outcome.
        """
        heap = self.heap
        self.users = 0  # closed loop: a user's answer sends nothing more
        events = 0
        while heap and len(self.status) < self.issued:
            at, seq, kind, payload = heappop(heap)
            if kind == _POD_DONE:
                events += 1
                if payload.pending == seq:  # type: ignore[attr-defined]
                    self.now = at
                    self._pod_done(payload)  # type: ignore[arg-type]
            elif kind == _DEADLINE:
                self._deadline(at)
            elif kind in (_USER, _RETRY, _POD_READY):
                events += 1
                self.now = at
                if kind == _USER:
                    self._user_send(payload)  # type: ignore[arg-type]
                elif kind == _RETRY:
                    self._attempt(payload)  # type: ignore[arg-type]
                else:
                    self._pod_ready(payload)  # type: ignore[arg-type]
        return events

    def _loop(self, end: float) -> int:
        """Process events and deadlines in time order up to ``end``; the events popped."""
        heap = self.heap
        arrivals = self.arrivals
        attempt = self._attempt
        pod_done = self._pod_done
        inf = math.inf
        # The next open-loop arrival waits here instead of in the heap (one push
        # and pop fewer per request), with the sequence number its push would
        # have had, so that ties are broken as in the heap.
        arrival_at = next(arrivals, inf)
        arrival_seq = 0
        if arrival_at < inf:
            self.seq += 1
            arrival_seq = self.seq
        events = 0
        arrived = 0  # open-loop requests issued (added to ``issued`` at the end)
        while True:
            # Never empty: the scrape and tick events push their successors.
            top = heap[0]
            at = top[0]
            if arrival_at < at or (arrival_at == at and arrival_seq < top[1]):
                if arrival_at > end:
                    break
                events += 1
                self.now = arrival_at
                arrived += 1
                attempt(_Request(arrival_at, -1))
                arrival_at = next(arrivals, inf)
                if arrival_at < inf:
                    arrival_seq = self.seq = self.seq + 1
                continue
            if at > end:
                break
            _, seq, kind, payload = heappop(heap)
            if kind == _POD_DONE:
                events += 1
                if payload.pending == seq:  # type: ignore[attr-defined]
                    self.now = at
                    pod_done(payload)  # type: ignore[arg-type]
                # else superseded by a later reschedule: only counted
                continue
            if kind == _DEADLINE:
                self._deadline(at)
                continue
            events += 1
            self.now = at
            if kind == _USER:
                self._user_send(payload)  # type: ignore[arg-type]
            elif kind == _RETRY:
                attempt(payload)  # type: ignore[arg-type]
            elif kind == _POD_READY:
                self._pod_ready(payload)  # type: ignore[arg-type]
            elif kind == _SCRAPE:
                self._scrape()
                if len(heap) > self.heap_sweep_at:
                    self._sweep_stale(end)
                self._push_scrape(at + self.scrape_interval)
            elif kind == _TICK:
                self._tick()
                self.push(at + self.scaler.period_seconds, _TICK)
            elif kind == _PHASE:
                self._set_users(payload)  # type: ignore[arg-type]
        self.issued += arrived
        return events

    def _deadline(self, at: float) -> None:
        """The deadline FIFOs' wake-up: take the earlier head if due at ``at``, then re-arm.

        Client and queue deadlines are constant per run, so each FIFO is in
        deadline order; one wake-up in the heap, at the earlier live head, is
        what the loop looks at. Its sequence number 0 puts it before any
        event or arrival at the same time (a deadline at the instant of an
        event is taken first), and of the two heads the client's goes first on
        a tie. Entries of attempts already answered (or no longer queued)
        leave when met. A wake-up overtaken by an earlier one is skipped.
        """
        if at != self.wake_at:
            return
        self.wake_at = math.inf
        client_timeouts = self.client_timeouts
        queue_deadlines = self.queue_deadlines
        response_deadlines = self.response_deadlines
        self._drop_met_heads()
        client = client_timeouts[0][0] if client_timeouts else math.inf
        queue = queue_deadlines[0][0] if queue_deadlines else math.inf
        response = response_deadlines[0][0] if response_deadlines else math.inf
        if client <= queue and client <= response:
            if client <= at:
                self.now = client
                self._client_timeout(client_timeouts.popleft()[1])
        elif queue <= response:
            if queue <= at:
                self.now = queue
                self._queue_deadline(queue_deadlines.popleft()[1])
        elif response <= at:
            self.now = response
            self._response_timeout(response_deadlines.popleft()[1])
        self._drop_met_heads()
        if client_timeouts:
            self._wake(client_timeouts[0][0])
        if queue_deadlines:
            self._wake(queue_deadlines[0][0])
        if response_deadlines:
            self._wake(response_deadlines[0][0])

    def _drop_met_heads(self) -> None:
        """Drop the FIFOs' leading entries whose attempt no longer waits for them."""
        client_timeouts = self.client_timeouts
        while client_timeouts and client_timeouts[0][1].done:
            client_timeouts.popleft()
        queue_deadlines = self.queue_deadlines
        while queue_deadlines and not queue_deadlines[0][1].queued:
            queue_deadlines.popleft()
        response_deadlines = self.response_deadlines
        while response_deadlines and response_deadlines[0][1].done:
            response_deadlines.popleft()

    def _wake(self, deadline: float) -> None:
        """A deadline has entered a FIFO: wake the loop for it if it is the earliest."""
        if deadline < self.wake_at:
            self.wake_at = deadline
            heappush(self.heap, (deadline, 0, _DEADLINE, None))

    def _sweep_stale(self, end: float) -> None:
        """Take the superseded completion events out of the heap (see the module doc).

        Each would have been popped, and counted, by ``end`` if due by then.
        """
        heap = self.heap
        live = [e for e in heap if e[2] != _POD_DONE or e[3].pending == e[1]]  # type: ignore[attr-defined]
        self.swept += sum(1 for e in heap if e[0] <= end) - sum(1 for e in live if e[0] <= end)
        heap[:] = live
        heapify(heap)
        self.heap_sweep_at = max(256, 2 * len(heap))

    # ----------------------------------------------------------------- clients

    def _set_users(self, users: int) -> None:
        while len(self.user_busy) < users:
            self.user_busy.append(False)
        self.users = users
        for u in range(users):
            if not self.user_busy[u]:
                self.user_busy[u] = True
                self._user_send(u)

    def _user_send(self, user: int) -> None:
        # No request leaves after the trace's end, as no open-loop arrival does
        # (an answer or a pause can end at the very instant).
        if user >= self.users or self.now >= self.trace.duration_s:
            self.user_busy[user] = False
            return
        self._send(_Request(self.now, user))

    def _send(self, req: _Request) -> None:
        self.issued += 1
        self._attempt(req)

    def _finish(self, req: _Request, status: int, retry_after: float | None) -> None:
        """The client has an answer for this attempt: retry, or record the outcome."""
        req.done = True
        now = self.now
        retryable = status != OK and (status != TIMEOUT or self.retry_timeouts)
        if retryable and req.attempt < self.retries:
            if retry_after is not None and retry_after <= 60:
                delay = retry_after
            else:
                delay = min(0.5 * 2.0**req.attempt, 8.0) * (1.0 - 0.25 * self.rng.random())
            self.push(now + delay, _RETRY, _Request(req.sent, req.user, req.attempt + 1))
            return
        self.sent.append(req.sent)
        self.ended.append(now)
        self.status.append(status)
        if req.user >= 0:
            pause = 0.0 if status == OK else self.error_pause
            if pause:
                self.push(now + pause, _USER, req.user)
            else:
                self._user_send(req.user)

    def _attempt(self, req: _Request) -> None:
        now = self.now
        req.started = now
        if self.shared:
            self._attempt_shared(req)
            return
        ready = self.ready
        if not ready:
            self._finish(req, 503, None)
            return
        if self.round_robin:
            self.rr = rr = (self.rr + 1) % len(ready)
            pod = ready[rr]
        else:
            pod = min(ready, key=_load)
        deadline = now + self.client_timeout
        self.client_timeouts.append((deadline, req))
        if deadline < self.wake_at:
            self._wake(deadline)
        limit = self.limit
        if limit is None or (len(pod.active) < limit and not pod.waiting):
            req.pod = pod
            if pod.refused:
                pod.refused = moving_refused_fraction(pod.refused, False)
            self._admit(pod, req)
        elif (
            self.queue_size is None
            or pod.waiting < self.queue_size
            or (req.attempt >= LAST_CHANCE_RETRIES and pod.waiting < self.last_chance_bound)
        ):
            pod.refused = moving_refused_fraction(pod.refused, False)
            req.pod = pod
            req.queued = True
            if self.last_chance_bound >= 0 and req.attempt >= LAST_CHANCE_RETRIES:
                pod.first.append(req)
            else:
                pod.queue.append(req)
            pod.waiting += 1
            self.waiting_total += 1
            if self.queue_timeout is not None:
                deadline = now + self.queue_timeout
                self.queue_deadlines.append((deadline, req))
                self._wake(deadline)
        else:
            self.gate_new.append((now, -1.0, False))
            pod.refused = moving_refused_fraction(pod.refused, True)
            self._finish(req, self.full_status, self._retry_after(pod))

    def _attempt_shared(self, req: _Request) -> None:
        """Through the shared queue: a ready pod with room, or a wait for one."""
        now = self.now
        deadline = now + self.client_timeout
        self.client_timeouts.append((deadline, req))
        if deadline < self.wake_at:
            self._wake(deadline)
        ready = self.ready
        limit = self.limit
        assert limit is not None
        if self.two_choices:
            roomy = [pod for pod in ready if len(pod.active) < limit and not pod.waiting]
            if roomy:
                pod = pick_of_two(roomy, len(ready), self.choice_random)
                req.pod = pod
                self._admit(pod, req)
                return
        else:
            n = len(ready)
            for step in range(1, n + 1):
                i = (self.rr + step) % n
                pod = ready[i]
                if len(pod.active) < limit and not pod.waiting:
                    self.rr = i
                    req.pod = pod
                    self._admit(pod, req)
                    return
        if self.shared_size is None or self.shared_waiting < self.shared_size:
            req.pod = None
            req.queued = True
            self.shared_queue.append(req)
            self.shared_waiting += 1
            self.waiting_total += 1
        else:
            self.gate_new.append((now, -1.0, False))
            self._finish(req, self.full_status, None)

    def _take_shared(self, pod: _Pod) -> None:
        """Fill the free slots of ``pod`` (ready, no queue of its own) from the shared queue."""
        shared = self.shared_queue
        active = pod.active
        limit = self.limit
        assert limit is not None
        while shared and len(active) < limit:
            req = shared.popleft()
            if not req.queued:
                continue  # its client gave up
            req.queued = False
            self.shared_waiting -= 1
            self.waiting_total -= 1
            req.pod = pod
            self._admit(pod, req)

    def _retry_after(self, pod: _Pod) -> float | None:
        """The gate's advice to a request turned away: a place at the back of ``pod``'s queue."""
        if self.retry_after_estimated and self.limit is not None:
            # Before its first answer the gate goes by how long its slots have been held
            # (the model's busy period, which is the gate's when the model cancels).
            busy = self.now - pod.busy_since if pod.busy_since >= 0 else 0.0
            return retry_after_seconds(
                pod.service, pod.waiting + 1, self.limit, pod.refused, busy_seconds=busy
            )
        return self.retry_after

    def _client_timeout(self, req: _Request) -> None:
        pod = req.pod
        # A request that leaves the gate here is its 499 (client closed), timed and
        # counted as any answer, no error; one a model does not cancel is answered
        # (and counted) when the model ends it.
        if req.queued and pod is not None:
            req.queued = False
            pod.waiting -= 1
            self.waiting_total -= 1
            self.gate_new.append((self.now, self.now - req.started, True))
            self._maybe_gone(pod)
        elif req.queued:  # in the shared queue, which lets it go lazily
            req.queued = False
            self.shared_waiting -= 1
            self.waiting_total -= 1
            self.gate_new.append((self.now, self.now - req.started, True))
        elif pod is not None and self.cancel_on_disconnect and self._cancel(pod, req):
            pod.service = moving_service_mean(pod.service, self.now - req.admitted)
            self.gate_new.append((self.now, self.now - req.started, True))
            self._refill(pod)
        self._finish(req, TIMEOUT, None)

    def _response_timeout(self, req: _Request) -> None:
        """The model held ``req`` for the response timeout: the gate answers 504 and
        drops the model's request (its connection closed), freeing the slot."""
        pod = req.pod
        assert pod is not None
        if not self._cancel(pod, req):
            return  # answered in the same instant
        pod.service = moving_service_mean(pod.service, self.now - req.admitted)
        self.gate_new.append((self.now, self.now - req.started, False))
        self._refill(pod)
        self._finish(req, 504, None)

    def _queue_deadline(self, req: _Request) -> None:
        pod = req.pod
        assert pod is not None
        req.queued = False
        pod.waiting -= 1
        self.waiting_total -= 1
        self.gate_new.append((self.now, self.now - req.started, False))
        self._finish(req, 504, self._retry_after(pod))
        self._maybe_gone(pod)

    # -------------------------------------------------------------------- pods

    def _slowdown(self, n: int) -> float:
        """ProcessorSharing's slowdown of ``n`` requests sharing a pod, from a table."""
        table = self.slowdowns
        while len(table) <= n:
            table.append(1.0 + self.alpha * (len(table) - 1))
        return table[n]

    def _admit(self, pod: _Pod, req: _Request) -> None:
        """Start ``req`` in the pod's model (``ProcessorSharing.admit``), then reschedule."""
        now = self.now
        active = pod.active
        jobs = pod.jobs
        n = len(active)
        if not n:
            pod.busy_since = now
        # LatencyModel.sample_work, written out. Its work is never negative or
        # infinite (math.exp raises first), so the class's check is left out.
        sigma = self.work_sigma
        if sigma > 0:
            # Random.lognormvariate(0.0, sigma), written out: the same draws
            # and operations as CPython's normalvariate (see the module doc).
            random = self.random
            while True:
                u1 = random()
                u2 = 1.0 - random()
                z = _NV_MAGICCONST * (u1 - 0.5) / u2
                if z * z / 4.0 <= -_log(u2):
                    break
            jitter = _exp(0.0 + z * sigma)
        else:
            jitter = 1.0
        work = self.work_base * jitter / self.time_scale
        # A request is new to every pod it is admitted to (a fresh attempt, or
        # one taken from the queue), so the class's check for a duplicate is left out.
        slowdowns = self.slowdowns
        if n + 1 >= len(slowdowns):  # only without a gate limit: more than seen so far
            self._slowdown(n + 1)
        last = pod.last
        moved = last if now < last else now  # never run backwards
        if n:
            virtual = pod.virtual + (moved - last) / slowdowns[n]
        else:
            # Restart virtual time when the pod is empty: a request alone then
            # finishes at exactly admit + work, without accumulated rounding.
            virtual = 0.0
            jobs.clear()
        pod.virtual = virtual
        pod.last = moved
        seq = pod.seq = pod.seq + 1
        active[req] = seq
        heappush(jobs, (virtual + work, seq, req))
        req.admitted = now
        if self.response_timeout is not None:
            deadline = now + self.response_timeout
            self.response_deadlines.append((deadline, req))
            self._wake(deadline)
        # _reschedule, written out (``active`` is not empty).
        top = jobs[0]
        while active.get(top[2]) != top[1]:
            heappop(jobs)  # removed earlier: drop lazily
            top = jobs[0]
        remaining = top[0] - virtual
        at = moved + (0.0 if remaining < 0.0 else remaining) * slowdowns[n + 1]
        seq = pod.pending = self.seq = self.seq + 1
        heappush(self.heap, (at, seq, _POD_DONE, pod))

    def _reschedule(self, pod: _Pod) -> None:
        """Push the pod's next completion (``ProcessorSharing.next_completion``).

        The event pushed before for this pod is superseded: its sequence
        number no longer matches ``pod.pending`` when it is popped.
        """
        active = pod.active
        if not active:
            pod.pending = 0
            return
        jobs = pod.jobs
        top = jobs[0]
        while active.get(top[2]) != top[1]:
            heappop(jobs)  # removed earlier: drop lazily
            top = jobs[0]
        remaining = top[0] - pod.virtual
        # ``0.0 if r < 0.0 else r`` is the class's max(r, 0.0), without the call.
        at = pod.last + (0.0 if remaining < 0.0 else remaining) * self.slowdowns[len(active)]
        seq = pod.pending = self.seq = self.seq + 1
        heappush(self.heap, (at, seq, _POD_DONE, pod))

    def _pod_done(self, pod: _Pod) -> None:
        """The pod's next completion is due: ``ProcessorSharing.advance``, then the answers."""
        now = self.now
        horizon = now + _EPSILON
        slowdowns = self.slowdowns
        active = pod.active
        jobs = pod.jobs
        virtual = pod.virtual
        last = pod.last
        # The requests finished by now, in finish order. The loop stops on the
        # live head of ``jobs`` with ``at``, its completion as things stand.
        finished: list[_Request] = []
        while active:
            finish, seq, req = jobs[0]
            if active.get(req) != seq:
                heappop(jobs)  # removed earlier: drop lazily
                continue
            remaining = finish - virtual
            at = last + (0.0 if remaining < 0.0 else remaining) * slowdowns[len(active)]
            if at > horizon:
                break
            # Exactly at the finish point: set virtual time to it (no drift).
            if finish > virtual:
                virtual = finish
            if at > last:
                last = at
            heappop(jobs)
            del active[req]
            finished.append(req)
        if now > last:
            # Move to now. Usually a no-op (the last finish is now, or a hair
            # later), and then ``at`` is already what _reschedule would find.
            if active:
                virtual += (now - last) / slowdowns[len(active)]
                remaining = finish - virtual
                at = now + (0.0 if remaining < 0.0 else remaining) * slowdowns[len(active)]
            last = now
        pod.virtual = virtual
        pod.last = last

        # Fill freed slots from the queue first (FIFO), then answer: a client's
        # next request must queue behind the ones already waiting.
        if pod.queue or pod.first or (self.shared_waiting and pod.state == _READY):
            self._refill(pod)
        else:
            # _refill with nothing queued, written out.
            if active:
                seq = pod.pending = self.seq = self.seq + 1
                heappush(self.heap, (at, seq, _POD_DONE, pod))
            else:
                pod.pending = 0
                if pod.busy_since >= 0:
                    pod.busy_total += now - pod.busy_since
                    pod.busy_since = -1.0
            if pod.state == _DRAINING:
                self._maybe_gone(pod)
        gate_new = self.gate_new
        for req in finished:
            gate_new.append((now, now - req.started, True))
            # moving_service_mean, written out.
            service = pod.service
            held = now - req.admitted
            pod.service = (
                held if service is None else service + SERVICE_EWMA_WEIGHT * (held - service)
            )
            if not req.done and req.pod is pod:
                # _finish(req, OK, None), written out: an answer is not retried.
                req.done = True
                self.sent.append(req.sent)
                self.ended.append(now)
                self.status.append(OK)
                if req.user >= 0:
                    self._user_send(req.user)

    def _cancel(self, pod: _Pod, req: _Request) -> bool:
        """Take ``req`` out of the model (``ProcessorSharing.remove``); False if not inside."""
        active = pod.active
        if req not in active:
            return False
        now = self.now
        last = pod.last
        moved = last if now < last else now
        pod.virtual += (moved - last) / self.slowdowns[len(active)]
        pod.last = moved
        del active[req]
        if len(pod.jobs) > 2 * len(active) + 32:
            pod.jobs = [e for e in pod.jobs if active.get(e[2]) == e[1]]
            heapify(pod.jobs)
        return True

    def _refill(self, pod: _Pod) -> None:
        """Admit queued requests into free slots (skipping those whose client left)."""
        limit = self.limit
        queue = pod.queue
        first = pod.first
        active = pod.active
        while (first or queue) and (limit is None or len(active) < limit):
            req = first.popleft() if first else queue.popleft()
            if not req.queued or req.pod is not pod:
                continue
            req.queued = False
            pod.waiting -= 1
            self.waiting_total -= 1
            self._admit(pod, req)
        if self.shared_waiting and pod.state == _READY and not pod.waiting:
            self._take_shared(pod)
        if not active and pod.busy_since >= 0:
            pod.busy_total += self.now - pod.busy_since
            pod.busy_since = -1.0
        self._reschedule(pod)
        if pod.state == _DRAINING:
            self._maybe_gone(pod)

    def _running(self) -> int:
        """Requests inside the models: counted when scraped, not on every change."""
        return sum([len(pod.active) for pod in self.pods])

    def _new_pod(self, now: float) -> _Pod:
        self._account_cost()
        pod = _Pod(self.next_pod, now)
        self.next_pod += 1
        self.pods.append(pod)
        self.pods_alive += 1
        return pod

    def _pod_ready(self, pod: _Pod) -> None:
        if pod.state != _STARTING:
            return
        pod.state = _READY
        pod.ready_at = self.now
        self.ready.append(pod)
        if self.shared_waiting:
            self._refill(pod)  # its slots go to the shared queue's heads

    def _maybe_gone(self, pod: _Pod) -> None:
        if pod.state == _DRAINING and not pod.active and pod.waiting == 0:
            self._account_cost()
            pod.state = _GONE
            self.pods_alive -= 1
            self.pods.remove(pod)

    def _account_cost(self) -> None:
        """Pay the pods alive since the last account (at each change of their number)."""
        now = self.now
        # A phase ended since: its replica-seconds so far are noted at its end.
        while self.phase_end <= now:
            self.replica_seconds += self.pods_alive * (self.phase_end - self.cost_mark)
            self.cost_mark = self.phase_end
            self.phase_marks.append(self.replica_seconds)
            ends = self.trace.phases
            self.phase_end = (
                ends[len(self.phase_marks)].end_s
                if len(self.phase_marks) < len(ends) - 1
                else math.inf
            )
        self.replica_seconds += self.pods_alive * (now - self.cost_mark)
        self.cost_mark = now

    # ----------------------------------------------------------- control loop

    def _scrape(self) -> None:
        now = self.now
        outages = self.cfg.metrics_outages
        if outages and any(a <= now < b for a, b in outages):
            self.scrape_missed = True
            return  # the last good scrape ages; the autoscaler sees it as stale
        # CPU: busy fraction of each ready pod since the previous scrape that
        # succeeded: after an outage, the busy time of the whole outage over
        # the whole outage, not over one scrape interval. As the HPA counts it
        # (replica_calculator's groupPods): within its first CPU_INITIALIZATION_SECONDS
        # a pod's sample counts only once a whole metric window (a scrape
        # interval) was measured since it turned ready.
        busy = 0.0
        n_ready = 0
        interval = self.scrape_interval
        if self.scrape_missed and now > self.scraped[0]:
            interval = now - self.scraped[0]
        self.scrape_missed = False
        for pod in self.pods:
            pod.scraped_load = len(pod.active) + pod.waiting
            total = pod.busy_total + (now - pod.busy_since if pod.busy_since >= 0 else 0.0)
            if pod.state == _READY and (
                pod.ready_at + self.scrape_interval <= now
                or now - pod.created >= CPU_INITIALIZATION_SECONDS
            ):
                fraction = (total - pod.busy_mark) / interval
                busy += 1.0 if fraction > 1.0 else fraction  # min(fraction, 1.0)
                n_ready += 1
            pod.busy_mark = total
        self.scraped_cpu = busy / n_ready if n_ready else None
        self.scraped_cpu_pods = n_ready
        # Rate-window signals over (now - window, now]. Rejections (duration
        # -1) count in the rates, not in the latency.
        done = self.gate_window
        if self.gate_new:
            done.take(self.gate_new)
            self.gate_new = []
        done.evict(now - self.window)
        if done.size:
            durations = done.cumulative[-1]
            p95: float | None
            if not durations:
                p95 = None
            elif self.cfg.p95_from_buckets:
                p95 = _histogram_quantile(done.cumulative, durations, 0.95)
            else:
                p95 = _quantile(sorted(done.durations()), 0.95)
            arrival: float | None = done.size / self.window
            error_rate: float | None = done.errors / done.size
        else:
            p95 = None  # no request finished: NaN in Prometheus
            arrival = 0.0
            error_rate = None
        self.scraped = (now, float(self._running()), float(self.waiting_total), p95, None)
        self.scraped_rates = (arrival, error_rate)

    def _tick(self) -> None:
        now = self.now
        scraped_at, running, waiting, p95, error = self.scraped
        arrival, error_rate = self.scraped_rates
        starting = sum(1 for p in self.pods if p.state == _STARTING)
        obs = Observation(
            now=now,
            running=running,
            waiting=waiting,
            p95_seconds=p95,
            arrival_rate=arrival,
            error_rate=error_rate,
            cpu_utilization=self.scraped_cpu,
            cpu_pods=self.scraped_cpu_pods,
            age_seconds=now - scraped_at,
            current=self.replicas,
            ready=len(self.ready),
            starting=starting,
            error=error,
        )
        wanted = max(0, int(self.scaler.decide(obs)))
        self.shared = self.scaler.proxied
        if wanted != self.replicas:
            self._scale(wanted)
        if self.cfg.record_series:
            s = self.series
            s.t.append(now)
            s.replicas.append(self.replicas)
            s.ready.append(len(self.ready))
            s.demand.append(float(self._running() + self.waiting_total))
            s.p95.append(p95 if p95 is not None else math.nan)

    def _scale(self, wanted: int) -> None:
        now = self.now
        before = self.replicas
        self.scale_events.append((now, before, wanted))
        if wanted > before:
            self.scale_ups += 1
            for _ in range(wanted - before):
                pod = self._new_pod(now)
                self.push(now + self.cfg.startup_seconds, _POD_READY, pod)
        else:
            self.scale_downs += 1
            # Like a ReplicaSet: pods not ready go first, then the newest ready;
            # with the pods marked with their load (pod-deletion-cost, which ranks
            # before age), the idlest ready first. A failed last scrape leaves
            # the load unknown: the operator then removes the marks.
            victims = [p for p in self.pods if p.state == _STARTING][::-1]
            ready = [p for p in self.ready][::-1]
            if self.scaler.marks_pod_load and not self.scrape_missed:
                ready.sort(key=_scraped_load)  # stable: the newest first among equals
            victims += ready
            for pod in victims[: before - wanted]:
                self._account_cost()
                if pod.state == _STARTING:
                    pod.state = _GONE
                    self.pods_alive -= 1
                    self.pods.remove(pod)
                else:
                    pod.state = _DRAINING
                    self.ready.remove(pod)
                    self._maybe_gone(pod)
        self.replicas = wanted


def pick_of_two(roomy: list[_Pod], ready: int, uniform: Callable[[], float]) -> _Pod:
    """The pod Ray Serve's router sends a request to, of ``roomy`` (those of the
    ``ready`` with a free slot; at least one).

    The router draws two distinct replicas, again while neither has room, and
    takes the one with fewer ongoing requests (the first drawn on a tie). Drawn
    directly: an ordered pair with room in both comes with probability
    k(k−1) / (n(n−1) − (n−k)(n−k−1)), and a pair with room in one only brings
    any of the k with room alike.
    """
    k = len(roomy)
    if k == 1:
        return roomy[0]
    first = int(uniform() * k)
    both = k * (k - 1) / (ready * (ready - 1) - (ready - k) * (ready - k - 1))
    if uniform() >= both:
        return roomy[first]
    second = int(uniform() * (k - 1))
    if second >= first:
        second += 1
    a, b = roomy[first], roomy[second]
    return b if len(b.active) < len(a.active) else a


def arrival_seed(seed: int) -> int:
    """Seed of the arrival process: its own stream, identical for every policy."""
    return seed * 7919 + 1


def arrival_times(trace: Trace, rng: random.Random) -> Iterator[float]:
    """Poisson arrival times of an open trace, by thinning within ramping phases."""
    # Random.expovariate(peak) is written out below, as -log(1.0 - random()) / peak:
    # the same draw and operations (a test compares them), without the call.
    uniform = rng.random
    log = math.log
    for phase in trace.phases:
        peak = phase.peak_rate()
        if peak <= 0:
            continue
        t = phase.start_s
        end = phase.end_s
        if phase.rate_end is None or phase.duration_s <= 0:
            # A constant rate (an empty phase ends before its first candidate).
            while True:
                t += -log(1.0 - uniform()) / peak
                if t >= end:
                    break
                yield t
            continue
        # Phase.rate_at written out (the same operations): it runs once per
        # candidate arrival, a million times in a day. Its clamp of the
        # fraction to [0, 1] is left out: start <= t < end keeps it there.
        start, duration = phase.start_s, phase.duration_s
        rate = phase.rate or 0.0
        rise = phase.rate_end - rate
        while True:
            t += -log(1.0 - uniform()) / peak
            if t >= end:
                break
            if uniform() * peak <= rate + rise * ((t - start) / duration):
                yield t


def _bucket_quantile(
    sorted_values: list[float], q: float, buckets: tuple[float, ...] = DURATION_BUCKETS
) -> float:
    """Prometheus's ``histogram_quantile`` over these values bucketed by ``buckets``.

    The rank q × count falls in the first bucket whose cumulative count reaches
    it; the answer is interpolated linearly between that bucket's bounds (0 for
    the first), and a rank in +Inf answers the highest finite bound.
    """
    cumulative = [bisect_right(sorted_values, upper) for upper in buckets]
    return _histogram_quantile(cumulative, len(sorted_values), q, buckets)


def _histogram_quantile(
    cumulative: list[int], total: int, q: float, buckets: tuple[float, ...] = DURATION_BUCKETS
) -> float:
    """:func:`_bucket_quantile` from the histogram itself.

    ``cumulative[i]`` values are <= ``buckets[i]`` (any entries past the
    bounds are ignored), and ``total`` counts them all, +Inf included.
    """
    rank = q * total
    below = 0
    lower = 0.0
    for upper, count in zip(buckets, cumulative, strict=False):
        if count >= rank and count > below:
            return lower + (upper - lower) * (rank - below) / (count - below)
        below, lower = count, upper
    return buckets[-1]


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile of a sorted, non-empty list."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)
