"""The discrete-event engine: pods, gates, a Service, clients and a control loop.

Everything that moves is an event in one heap, ordered by time. What the
engine models, in the order a request meets it:

- **Clients.** Closed loop: N users, each sends a request, waits for the
  answer or the client timeout (30 s) and sends the next at once (1 s after an
  error, as a real client backs off instead of spinning). Open loop: Poisson
  arrivals at the trace's rate (thinning for ramps). Optional openai-style
  retries (openai-python retries twice by default): 429, 5xx and client
  timeouts retried, honouring Retry-After up to 60 s, otherwise an
  exponential back-off; a 504 from the gate carries ``x-should-retry: false``.
  The latency of a retried request runs from its first send.
- **Service.** Round-robin over ready pods (or least-loaded); no ready pod
  means 503 at once.
- **Gate** (per autoscaler: :class:`~vlm_operator.baselines.GateBehaviour`).
  A hard in-flight limit, a bounded FIFO queue answered 429 (or 503) when
  full, and a queue deadline answered 504. A client that times out leaves the
  queue; a request already inside the model keeps running (the model server
  does not cancel), which is how one overloaded pod spirals.
- **Pods.** :class:`~vlm_operator.latency.ProcessorSharing` under the
  calibrated latency model; new pods become ready after the start-up delay;
  removed pods leave the Service at once and finish what they hold.
- **Metrics pipeline.** Scrapes every ``scrape_interval`` read the gates'
  gauges; the rate-window signals (P95, arrival and error rates) cover the
  last ``window_seconds`` before the scrape. The P95 is what Prometheus's
  ``histogram_quantile`` makes of the gate's duration buckets (linear within
  a bucket, the highest finite bound past the last), not the exact quantile.
  The autoscaler sees the last scrape, as old as it is.

Client and queue deadlines are constant per run, so each is kept in one FIFO
(deadline order = send order) instead of one heap event per request; that and
the virtual-time pods keep the cost per request to a few heap operations.

This module is pure: standard library only (plus the project's pure modules).
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from vlm_operator.baselines import Autoscaler, Observation
from vlm_operator.contract import (
    DURATION_BUCKETS,
    moving_refused_fraction,
    moving_service_mean,
    retry_after_seconds,
)
from vlm_operator.latency import LatencyModel, ProcessorSharing
from vlm_operator.models import VLMServiceSpec
from vlm_operator.traces import Trace

__all__ = ["Series", "SimConfig", "SimResult", "arrival_times", "simulate"]

Routing = Literal["round-robin", "least-loaded"]

# Event kinds (small ints: cheaper to compare than enum members).
_ARRIVAL, _POD_DONE, _USER, _POD_READY, _SCRAPE, _TICK, _PHASE, _RETRY = range(8)

# Pod states.
_STARTING, _READY, _DRAINING, _GONE = range(4)

# Outcome codes recorded per request (HTTP status; 0 = client timeout).
OK = 200
TIMEOUT = 0


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


class _Request:
    __slots__ = ("admitted", "attempt", "done", "pod", "queued", "sent", "started", "user")

    def __init__(self, sent: float, user: int) -> None:
        self.sent = sent  # first send (client view)
        self.started = sent  # this attempt
        self.user = user  # closed-loop user, -1 for open loop
        self.attempt = 0
        self.done = False  # client has its answer (or gave up) for this attempt
        self.queued = False
        self.pod: _Pod | None = None
        self.admitted = 0.0  # took a slot (this attempt)


class _Pod:
    __slots__ = (
        "busy_mark",
        "busy_since",
        "busy_total",
        "created",
        "idx",
        "ps",
        "queue",
        "refused",
        "service",
        "state",
        "version",
        "waiting",
    )

    def __init__(self, idx: int, created: float, alpha: float) -> None:
        self.idx = idx
        self.created = created
        self.state = _STARTING
        self.ps: ProcessorSharing[_Request] = ProcessorSharing(alpha)
        self.queue: deque[_Request] = deque()
        self.waiting = 0  # live entries of ``queue`` (timed-out ones leave lazily)
        self.version = 0
        self.busy_since = -1.0  # >= 0 while something runs (CPU busy)
        self.busy_total = 0.0
        self.busy_mark = 0.0  # busy_total at the previous scrape
        self.service: float | None = None  # the gate's moving mean of slot-holding times
        self.refused = 0.0  # the gate's moving fraction of arrivals refused


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
        self.trace = trace
        self.scaler = autoscaler
        self.spec = spec
        self.seed = seed
        self.cfg = config
        self.model = config.latency
        self.rng = random.Random(seed)
        self.arrival_rng = random.Random(arrival_seed(seed))
        self.heap: list[tuple[float, int, int, object]] = []
        self.seq = 0
        self.now = 0.0
        gate = autoscaler.gate
        self.limit = gate.max_in_flight
        self.queue_size = gate.queue_size
        self.queue_timeout = gate.queue_timeout_seconds
        self.full_status = gate.full_status
        self.retry_after = gate.retry_after_seconds
        self.retry_after_estimated = gate.retry_after_estimated
        self.client_timeouts: deque[tuple[float, _Request, int]] = deque()
        self.queue_deadlines: deque[tuple[float, _Request, int]] = deque()
        self.pods: list[_Pod] = []
        self.ready: list[_Pod] = []
        self.rr = 0
        self.next_pod = 0
        self.replicas = 0  # non-draining pods (Deployment spec.replicas)
        self.running_total = 0
        self.waiting_total = 0
        # Gate-side answers for the rate-window signals: (time, seconds or -1 for
        # a rejection, ok).
        self.gate_done: deque[tuple[float, float, bool]] = deque()
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
        self.scraped_rates: tuple[float | None, float | None] = (None, None)
        self.arrivals: Iterator[float] = iter(())
        self.users = 0  # closed loop: active users
        self.user_busy: list[bool] = []

    # ------------------------------------------------------------------ events

    def push(self, at: float, kind: int, payload: object = None) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, kind, payload))

    def run(self) -> SimResult:
        end = self.trace.duration_s
        for _ in range(self.scaler.initial_replicas):
            pod = self._new_pod(0.0)
            self._pod_ready(pod)
        self.replicas = self.scaler.initial_replicas
        self._scrape()
        first = (self.scaler.period_seconds - self.cfg.signal_age_seconds) % self.scrape_interval
        self.push(first, _SCRAPE)
        self.push(self.scaler.period_seconds, _TICK)
        if self.trace.kind == "closed":
            for phase in self.trace.phases:
                self.push(phase.start_s, _PHASE, phase.users or 0)
        else:
            self.arrivals = arrival_times(self.trace, self.arrival_rng)
            self._schedule_arrival(0.0)

        heap = self.heap
        client_timeouts = self.client_timeouts
        queue_deadlines = self.queue_deadlines
        pop = heapq.heappop
        events = 0
        while True:
            at = heap[0][0] if heap else math.inf
            # Deadlines live in FIFOs; take them when due before the next event.
            if client_timeouts and client_timeouts[0][0] <= at:
                deadline, req, attempt = client_timeouts.popleft()
                if deadline > end:
                    break
                if not req.done and req.attempt == attempt:
                    self.now = deadline
                    self._client_timeout(req)
                continue
            if queue_deadlines and queue_deadlines[0][0] <= at:
                deadline, req, attempt = queue_deadlines.popleft()
                if deadline > end:
                    break
                if req.queued and req.attempt == attempt:
                    self.now = deadline
                    self._queue_deadline(req)
                continue
            if at > end:
                break
            _, _, kind, payload = pop(heap)
            self.now = at
            events += 1
            if kind == _POD_DONE:
                entry: tuple[_Pod, int] = payload  # type: ignore[assignment]
                if entry[0].version == entry[1]:
                    self._pod_done(entry[0])
            elif kind == _ARRIVAL:
                self._send(_Request(at, -1))
                self._schedule_arrival(at)
            elif kind == _USER:
                self._user_send(payload)  # type: ignore[arg-type]
            elif kind == _RETRY:
                self._attempt(payload)  # type: ignore[arg-type]
            elif kind == _POD_READY:
                self._pod_ready(payload)  # type: ignore[arg-type]
            elif kind == _SCRAPE:
                self._scrape()
                self.push(at + self.scrape_interval, _SCRAPE)
            elif kind == _TICK:
                self._tick()
                self.push(at + self.scaler.period_seconds, _TICK)
            elif kind == _PHASE:
                self._set_users(payload)  # type: ignore[arg-type]
        self.now = end
        self._account_cost()
        return SimResult(
            trace=self.trace,
            policy=self.scaler.name,
            seed=self.seed,
            spec=self.spec,
            config=self.cfg,
            sent=self.sent,
            ended=self.ended,
            status=self.status,
            replica_seconds=self.replica_seconds,
            scale_ups=self.scale_ups,
            scale_downs=self.scale_downs,
            scale_events=self.scale_events,
            series=self.series,
            events_processed=events,
            requests_issued=self.issued,
        )

    # ----------------------------------------------------------------- clients

    def _schedule_arrival(self, t: float) -> None:
        nxt = next(self.arrivals, None)
        if nxt is not None:
            self.push(nxt, _ARRIVAL)

    def _set_users(self, users: int) -> None:
        while len(self.user_busy) < users:
            self.user_busy.append(False)
        self.users = users
        for u in range(users):
            if not self.user_busy[u]:
                self.user_busy[u] = True
                self._user_send(u)

    def _user_send(self, user: int) -> None:
        if user >= self.users:
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
        retryable = (
            status != OK and status != 504 and (status != TIMEOUT or self.cfg.retry_timeouts)
        )
        if retryable and req.attempt < self.cfg.retries:
            if retry_after is not None and retry_after <= 60:
                delay = retry_after
            else:
                delay = min(0.5 * 2.0**req.attempt, 8.0) * (1.0 - 0.25 * self.rng.random())
            req.attempt += 1
            self.push(now + delay, _RETRY, req)
            return
        self.sent.append(req.sent)
        self.ended.append(now)
        self.status.append(status)
        if req.user >= 0:
            pause = 0.0 if status == OK else self.cfg.error_pause_seconds
            if pause:
                self.push(now + pause, _USER, req.user)
            else:
                self._user_send(req.user)

    def _attempt(self, req: _Request) -> None:
        now = self.now
        req.started = now
        req.done = False
        req.pod = None
        ready = self.ready
        if not ready:
            self._finish(req, 503, None)
            return
        if self.cfg.routing == "round-robin":
            self.rr = (self.rr + 1) % len(ready)
            pod = ready[self.rr]
        else:
            pod = min(ready, key=lambda p: len(p.ps) + p.waiting)
        self.client_timeouts.append((now + self.cfg.client_timeout_seconds, req, req.attempt))
        limit = self.limit
        if limit is None or (len(pod.ps) < limit and not pod.waiting):
            req.pod = pod
            if pod.refused:
                pod.refused = moving_refused_fraction(pod.refused, False)
            self._admit(pod, req)
        elif self.queue_size is None or pod.waiting < self.queue_size:
            pod.refused = moving_refused_fraction(pod.refused, False)
            req.pod = pod
            req.queued = True
            pod.queue.append(req)
            pod.waiting += 1
            self.waiting_total += 1
            if self.queue_timeout is not None:
                self.queue_deadlines.append((now + self.queue_timeout, req, req.attempt))
        else:
            self.gate_done.append((now, -1.0, False))
            pod.refused = moving_refused_fraction(pod.refused, True)
            retry_after = self.retry_after
            if self.retry_after_estimated and limit is not None:
                retry_after = retry_after_seconds(pod.service, pod.waiting + 1, limit, pod.refused)
            self._finish(req, self.full_status, retry_after)

    def _client_timeout(self, req: _Request) -> None:
        pod = req.pod
        if req.queued and pod is not None:
            req.queued = False
            pod.waiting -= 1
            self.waiting_total -= 1
            self._maybe_gone(pod)
        elif pod is not None and self.cfg.cancel_on_disconnect and pod.ps.remove(req, self.now):
            self.running_total -= 1
            pod.service = moving_service_mean(pod.service, self.now - req.admitted)
            self._refill(pod)
        self._finish(req, TIMEOUT, None)

    def _queue_deadline(self, req: _Request) -> None:
        pod = req.pod
        assert pod is not None
        req.queued = False
        pod.waiting -= 1
        self.waiting_total -= 1
        self.gate_done.append((self.now, self.now - req.started, False))
        self._finish(req, 504, None)
        self._maybe_gone(pod)

    # -------------------------------------------------------------------- pods

    def _admit(self, pod: _Pod, req: _Request) -> None:
        now = self.now
        ps = pod.ps
        if not ps:
            pod.busy_since = now
        ps.admit(req, self.model.sample_work(self.rng), now)
        req.admitted = now
        self.running_total += 1
        self._reschedule(pod)

    def _reschedule(self, pod: _Pod) -> None:
        pod.version += 1
        nxt = pod.ps.next_completion()
        if nxt is not None:
            self.seq += 1
            heapq.heappush(self.heap, (nxt[0], self.seq, _POD_DONE, (pod, pod.version)))

    def _pod_done(self, pod: _Pod) -> None:
        now = self.now
        finished = pod.ps.advance(now)
        self.running_total -= len(finished)
        # Fill freed slots from the queue first (FIFO), then answer: a client's
        # next request must queue behind the ones already waiting.
        self._refill(pod)
        gate_done = self.gate_done
        for req in finished:
            gate_done.append((now, now - req.started, True))
            pod.service = moving_service_mean(pod.service, now - req.admitted)
            if not req.done and req.pod is pod:
                self._finish(req, OK, None)

    def _refill(self, pod: _Pod) -> None:
        """Admit queued requests into free slots (skipping those whose client left)."""
        limit = self.limit
        queue = pod.queue
        while queue and (limit is None or len(pod.ps) < limit):
            req = queue.popleft()
            if not req.queued or req.pod is not pod:
                continue
            req.queued = False
            pod.waiting -= 1
            self.waiting_total -= 1
            self._admit(pod, req)
        if not pod.ps and pod.busy_since >= 0:
            pod.busy_total += self.now - pod.busy_since
            pod.busy_since = -1.0
        self._reschedule(pod)
        self._maybe_gone(pod)

    def _new_pod(self, now: float) -> _Pod:
        self._account_cost()
        pod = _Pod(self.next_pod, now, self.model.alpha)
        self.next_pod += 1
        self.pods.append(pod)
        self.pods_alive += 1
        return pod

    def _pod_ready(self, pod: _Pod) -> None:
        if pod.state != _STARTING:
            return
        pod.state = _READY
        self.ready.append(pod)

    def _maybe_gone(self, pod: _Pod) -> None:
        if pod.state == _DRAINING and not pod.ps and pod.waiting == 0:
            self._account_cost()
            pod.state = _GONE
            self.pods_alive -= 1
            self.pods.remove(pod)

    def _account_cost(self) -> None:
        self.replica_seconds += self.pods_alive * (self.now - self.cost_mark)
        self.cost_mark = self.now

    # ----------------------------------------------------------- control loop

    def _scrape(self) -> None:
        now = self.now
        failed = any(a <= now < b for a, b in self.cfg.metrics_outages)
        if failed:
            return  # the last good scrape ages; the autoscaler sees it as stale
        # CPU: busy fraction of each ready pod since the previous scrape.
        busy = 0.0
        n_ready = 0
        interval = self.scrape_interval
        for pod in self.pods:
            total = pod.busy_total + (now - pod.busy_since if pod.busy_since >= 0 else 0.0)
            if pod.state == _READY:
                busy += min((total - pod.busy_mark) / interval, 1.0)
                n_ready += 1
            pod.busy_mark = total
        self.scraped_cpu = busy / n_ready if n_ready else None
        # Rate-window signals over (now - window, now].
        done = self.gate_done
        while done and done[0][0] <= now - self.window:
            done.popleft()
        if done:
            # Rejections (duration -1) count in the rates, not in the latency.
            durations = sorted(d for _, d, _ in done if d >= 0)
            quantile = _bucket_quantile if self.cfg.p95_from_buckets else _quantile
            p95: float | None = quantile(durations, 0.95) if durations else None
            arrival: float | None = len(done) / self.window
            errors = sum(1 for _, _, ok in done if not ok)
            error_rate: float | None = errors / len(done)
        else:
            p95 = None  # no request finished: NaN in Prometheus
            arrival = 0.0
            error_rate = None
        self.scraped = (now, float(self.running_total), float(self.waiting_total), p95, None)
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
            age_seconds=now - scraped_at,
            current=self.replicas,
            ready=len(self.ready),
            starting=starting,
            error=error,
        )
        wanted = max(0, int(self.scaler.decide(obs)))
        if wanted != self.replicas:
            self._scale(wanted)
        if self.cfg.record_series:
            s = self.series
            s.t.append(now)
            s.replicas.append(self.replicas)
            s.ready.append(len(self.ready))
            s.demand.append(float(self.running_total + self.waiting_total))
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
            # Like a ReplicaSet: pods not ready go first, then the newest ready.
            victims = [p for p in self.pods if p.state == _STARTING][::-1]
            victims += [p for p in self.ready][::-1]
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


def arrival_seed(seed: int) -> int:
    """Seed of the arrival process: its own stream, identical for every policy."""
    return seed * 7919 + 1


def arrival_times(trace: Trace, rng: random.Random) -> Iterator[float]:
    """Poisson arrival times of an open trace, by thinning within ramping phases."""
    for phase in trace.phases:
        peak = phase.peak_rate()
        if peak <= 0:
            continue
        t = phase.start_s
        end = phase.end_s
        ramp = phase.rate_end is not None
        while True:
            t += rng.expovariate(peak)
            if t >= end:
                break
            if not ramp or rng.random() * peak <= phase.rate_at(t):
                yield t


def _bucket_quantile(
    sorted_values: list[float], q: float, buckets: tuple[float, ...] = DURATION_BUCKETS
) -> float:
    """Prometheus's ``histogram_quantile`` over these values bucketed by ``buckets``.

    The rank q × count falls in the first bucket whose cumulative count reaches
    it; the answer is interpolated linearly between that bucket's bounds (0 for
    the first), and a rank in +Inf answers the highest finite bound.
    """
    rank = q * len(sorted_values)
    below = 0
    lower = 0.0
    for upper in buckets:
        cumulative = bisect.bisect_right(sorted_values, upper)
        if cumulative >= rank and cumulative > below:
            return lower + (upper - lower) * (rank - below) / (cumulative - below)
        below, lower = cumulative, upper
    return buckets[-1]


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile of a sorted, non-empty list."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)
