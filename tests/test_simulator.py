"""The simulator against closed-form queueing results, and its moving parts."""

from __future__ import annotations

import itertools
import math
import random
import statistics
from typing import Any

import pytest
from vlm_operator.baselines import (
    GateBehaviour,
    Observation,
    Ours,
    Scheduled,
    Static,
    make_autoscaler,
)
from vlm_operator.latency import LatencyModel, ProcessorSharing
from vlm_operator.models import VLMServiceSpec
from vlm_operator.simulator import SimConfig, run_policy, simulate, spec_for, summarize
from vlm_operator.simulator._compiled import load_interpreted_engine
from vlm_operator.simulator.engine import (
    OK,
    TIMEOUT,
    SimResult,
    _bucket_quantile,
    arrival_seed,
    arrival_times,
)
from vlm_operator.simulator.report import oracle_pods_at, oracle_replica_seconds
from vlm_operator.traces import Trace, load_trace, parse_trace


def _closed(users: int, seconds: float) -> Trace:
    return parse_trace(
        {"kind": "closed", "phases": [{"duration": seconds, "users": users}]}, origin="t"
    )


def _open(rate: float, seconds: float, **extra: Any) -> Trace:
    return parse_trace(
        {"kind": "open", "phases": [{"duration": seconds, "rate": rate, **extra}]}, origin="t"
    )


def _ok_latencies(result: SimResult) -> list[float]:
    return [
        e - s for s, e, c in zip(result.sent, result.ended, result.status, strict=True) if c == OK
    ]


def _one_pod_no_timeout(trace: Trace, model: LatencyModel, *, seed: int) -> SimResult:
    """One pod without a gate, and clients that never give up."""
    spec = spec_for(trace)
    config = SimConfig(latency=model, client_timeout_seconds=1e9)
    return simulate(trace, Static(spec, replicas=1), spec=spec, seed=seed, config=config)


_EXACT = LatencyModel(base_seconds=6.2, alpha=0.185, sigma=0.0)


def test_one_user_at_one_pod_waits_exactly_the_base_time() -> None:
    trace = _closed(1, 300)
    spec = spec_for(trace)
    result = simulate(trace, Static(spec, replicas=1), spec=spec, config=SimConfig(latency=_EXACT))
    latencies = _ok_latencies(result)
    # Sent at 0, 6.2, ... 297.6: the last is answered after the end, and counts.
    assert len(latencies) == math.ceil(300 / 6.2) == result.requests_issued
    assert all(lat == pytest.approx(6.2) for lat in latencies)


@pytest.mark.parametrize("users", [2, 4, 8, 16])
def test_n_users_at_one_pod_share_it(users: int) -> None:
    # No gate (the measured setup): all users run together, in lockstep.
    trace = _closed(users, 600)
    spec = spec_for(trace)
    result = simulate(trace, Static(spec, replicas=1), spec=spec, config=SimConfig(latency=_EXACT))
    latencies = _ok_latencies(result)
    expected = 6.2 * (1 + 0.185 * (users - 1))
    assert latencies
    assert statistics.fmean(latencies) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("alpha", "kind"), [(1.0, "M/G/1-PS"), (0.0, "M/G/inf")])
def test_open_loop_matches_the_textbook_queue(alpha: float, kind: str) -> None:
    # alpha 1: n requests share one processor (M/G/1-PS, mean sojourn E[S]/(1-rho),
    # whatever the service law); alpha 0: no contention at all (M/G/inf, E[S]).
    model = LatencyModel(base_seconds=1.0, alpha=alpha, sigma=0.3)
    rate = 0.6
    trace = _open(rate, 40_000)
    result = _one_pod_no_timeout(trace, model, seed=3)
    mean_service = math.exp(0.3**2 / 2)
    expected = mean_service / (1 - rate * mean_service) if alpha else mean_service
    assert statistics.fmean(_ok_latencies(result)) == pytest.approx(expected, rel=0.06), kind
    assert len(result.status) == pytest.approx(rate * 40_000, rel=0.03)


def test_the_engine_pods_are_processor_sharing_to_the_bit() -> None:
    # The engine runs ProcessorSharing's arithmetic inline: replaying the same
    # arrivals and works through the class must give the very same answer
    # times (==, not approx). One pod without a gate, nobody times out, no
    # retries: every admission draws one work from the engine's generator.
    model = LatencyModel(base_seconds=6.2, alpha=0.185, sigma=0.3)
    trace = _open(0.4, 3000, rateEnd=0.9)
    result = _one_pod_no_timeout(trace, model, seed=7)
    arrivals = list(arrival_times(trace, random.Random(arrival_seed(7))))
    works = random.Random(7)
    pod: ProcessorSharing[float] = ProcessorSharing(model.alpha)
    answered: dict[float, float] = {}
    pending = iter(arrivals)
    arrival = next(pending, math.inf)
    while True:
        nxt = pod.next_completion()
        if nxt is not None and nxt[0] < arrival:
            for sent in pod.advance(nxt[0]):
                answered[sent] = nxt[0]
        elif arrival <= trace.duration_s:
            pod.admit(arrival, model.sample_work(works), arrival)
            arrival = next(pending, math.inf)
        else:
            break
    engine = {s: e for s, e in zip(result.sent, result.ended, strict=True) if e <= 3000}
    assert len(engine) > 1000
    assert engine == {s: e for s, e in answered.items() if e <= 3000}


def test_the_arrivals_are_drawn_with_expovariate_to_the_bit() -> None:
    # arrival_times writes Random.expovariate out; its times must be the ones
    # the call gives (==, not approx), at a constant rate and by thinning.
    trace = parse_trace(
        {
            "kind": "open",
            "phases": [
                {"duration": 500, "rate": 2.0},
                {"duration": 500, "rate": 1.0, "rateEnd": 3.0},
            ],
        },
        origin="t",
    )
    rng = random.Random(3)
    expected = []
    t = 0.0
    while (t := t + rng.expovariate(2.0)) < 500.0:
        expected.append(t)
    t = 500.0
    while (t := t + rng.expovariate(3.0)) < 1000.0:
        if rng.random() * 3.0 <= 1.0 + 2.0 * ((t - 500.0) / 500.0):
            expected.append(t)
    assert len(expected) > 1000
    assert list(arrival_times(trace, random.Random(3))) == expected


def test_the_same_seed_gives_the_same_run_and_another_seed_does_not() -> None:
    a, _ = run_policy("step-burst", "ours", seed=5)
    b, _ = run_policy("step-burst", "ours", seed=5)
    c, _ = run_policy("step-burst", "ours", seed=6)
    assert a.to_dict() | {"wall_seconds": 0} == b.to_dict() | {"wall_seconds": 0}
    assert (a.requests, a.p95) != (c.requests, c.p95)


def test_a_full_gate_answers_429_and_a_late_queue_504() -> None:
    # One pod, 2 in flight, queue of 2 with a 5 s deadline; 12 users at once.
    trace = _closed(12, 60)
    spec = spec_for(
        trace,
        {
            "concurrency": {"maxInFlight": 2, "queueSize": 2, "queueTimeoutSeconds": 5},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
        },
    )
    result = simulate(trace, Ours(spec), spec=spec, config=SimConfig(latency=_EXACT))
    codes = set(result.status)
    assert {OK, 429, 504} <= codes
    report = summarize(result)
    assert report.errors_by_status["429"] > 0
    assert report.errors_by_status["504"] > 0


def test_client_timeout_cancels_work_inside_the_model_by_default() -> None:
    slow = LatencyModel(base_seconds=40.0, alpha=0.0, sigma=0.0)
    trace = _closed(1, 100)
    spec = spec_for(trace)
    cancel = simulate(trace, Static(spec, replicas=1), spec=spec, config=SimConfig(latency=slow))
    assert set(cancel.status) == {0}  # every request times out at 30 s
    assert cancel.ended[0] - cancel.sent[0] == pytest.approx(30.0)
    keep = simulate(
        trace,
        Static(spec, replicas=1),
        spec=spec,
        config=SimConfig(latency=slow, cancel_on_disconnect=False),
    )
    # Abandoned work keeps running, so the next requests share the pod and the
    # number answered in time is no better.
    assert set(keep.status) == {0}


def test_a_retry_runs_beside_the_attempt_a_model_did_not_cancel() -> None:
    # One pod without a gate, answers slower than the client timeout, a model
    # server that does not cancel: each retry lands on the pod still running
    # the attempt its client gave up on. Both run, as two requests.
    slow = LatencyModel(base_seconds=40.0, alpha=0.0, sigma=0.0)
    trace = _closed(1, 200)
    spec = spec_for(trace)
    config = SimConfig(latency=slow, cancel_on_disconnect=False, retries=2)
    result = simulate(trace, Static(spec, replicas=1), spec=spec, config=config)
    assert set(result.status) == {0}  # three attempts of 30 s, each given up
    first = result.ended[0] - result.sent[0]
    assert 3 * 30.0 < first < 3 * 30.0 + 2 * 8.0  # plus two back-offs
    # The last, still out at the end, runs to its outcome too (given up, like the others).
    assert result.requests_issued == len(result.status) == 3


# An interpreted class cannot inherit from a compiled one; the compiled engine
# gives the same results to the bit (test_simulator_compiled.py).
_interpreted = load_interpreted_engine()


class _Clock(_interpreted._Engine):  # type: ignore[misc]
    """The engine with a clock that notes every step back in time."""

    steps_back = 0

    @property  # type: ignore[override]
    def now(self) -> float:
        return self._now

    @now.setter
    def now(self, value: float) -> None:
        if value < getattr(self, "_now", 0.0):
            self.steps_back += 1
        self._now = value


@pytest.mark.parametrize(("policy", "seed"), [("hpa-inflight", 1), ("keda", 1)])
def test_deadlines_are_taken_in_time_order(policy: str, seed: int) -> None:
    # Client timeouts and queue deadlines sit in two FIFOs; on these runs a
    # client timeout was once taken before an earlier queue deadline, and the
    # clock went back.
    trace = load_trace("step-burst")
    spec = spec_for(trace)
    config = _interpreted.SimConfig(retries=2)
    run = _Clock(trace, make_autoscaler(policy, spec), spec, seed, config)
    run.run()
    assert run.steps_back == 0


def test_new_pods_serve_only_after_the_start_up_delay() -> None:
    trace = _closed(16, 400)
    spec = spec_for(trace)
    result = simulate(trace, Ours(spec), spec=spec, config=SimConfig(startup_seconds=90.0))
    first_up = next(t for t, before, after in result.scale_events if after > before)
    ready = [t for t, r in zip(result.series.t, result.series.ready, strict=True) if r > 1]
    assert ready
    assert ready[0] >= first_up + 90.0 - 1e-9


def test_replica_seconds_of_a_static_fleet() -> None:
    trace = _open(0.5, 1000)
    spec = spec_for(trace)
    result = simulate(trace, Static(spec, replicas=3), spec=spec)
    assert result.replica_seconds == pytest.approx(3000.0)


def test_metrics_outage_holds_our_replicas() -> None:
    trace = _closed(16, 900)
    spec = spec_for(trace, {"autoscaling": {"minReplicas": 1}})
    outage = SimConfig(metrics_outages=((0.0, 900.0),))
    ours = Ours(spec)
    result = simulate(trace, ours, spec=spec, config=outage)
    # The very first scrape (t=0) was taken before the outage window starts
    # to matter; after 60 s it is stale and the policy holds.
    assert all(after >= before for _, before, after in result.scale_events)
    assert "stale" in ours.last_reason


class _CPUWatcher(Static):
    """One pod, never scaled: notes the CPU each tick sees."""

    def __init__(self, spec: VLMServiceSpec) -> None:
        super().__init__(spec, replicas=1)
        self.cpu: dict[float, float | None] = {}

    def decide(self, obs: Observation) -> int:
        self.cpu[obs.now] = obs.cpu_utilization
        return super().decide(obs)


def test_after_a_metrics_outage_the_cpu_is_the_busy_fraction_of_the_whole_outage() -> None:
    # Scrapes every 60 s, at 58, 118, ...: the outage fails those at 358 and
    # 418, and the one at 478 covers the 180 s since the one at 298. The pod
    # was busy the same time as without the outage, over three intervals.
    trace = _open(0.05, 900)
    spec = spec_for(trace)
    seen = []
    for outage in ((), ((300.0, 420.0),)):
        watcher = _CPUWatcher(spec)
        simulate(trace, watcher, spec=spec, seed=3, config=SimConfig(metrics_outages=outage))
        seen.append(watcher.cpu)
    steady, after = seen
    assert after[420.0] == steady[300.0]  # the last good scrape, stale
    spans = [steady[t] for t in (360.0, 420.0, 480.0)]
    assert all(c is not None for c in spans)
    expected = statistics.mean(c for c in spans if c is not None)
    assert 0.0 < expected < 1.0
    assert after[480.0] == pytest.approx(expected)


class _SecondPodWatcher(Static):
    """One pod, a second asked for at 100 s: notes what the CPU sample covers."""

    def __init__(self, spec: VLMServiceSpec) -> None:
        super().__init__(spec, replicas=1)
        self.period_seconds = self.scrape_interval_seconds = 15.0
        self.seen: list[tuple[float, int, int | None]] = []

    def decide(self, obs: Observation) -> int:
        self.seen.append((obs.now, obs.ready, obs.cpu_pods))
        return 2 if obs.now >= 100 else 1


def test_a_pod_counts_for_cpu_once_a_metric_window_follows_its_readiness() -> None:
    # The HPA's groupPods: a pod in its first five minutes whose sample does not
    # cover a whole window since it turned ready is unready for CPU. The second
    # pod, asked for at 105 s, is ready at 165 s: the scrape at 178 s (every 15 s
    # from 13 s) is 13 s after, the one at 193 s a whole 15 s window.
    trace = _open(0.3, 300)
    spec = spec_for(trace)
    watcher = _SecondPodWatcher(spec)
    simulate(trace, watcher, spec=spec, seed=1)
    by_time = {now: (ready, counted) for now, ready, counted in watcher.seen}
    assert by_time[165.0] == (2, 1)
    assert by_time[180.0] == (2, 1)
    assert by_time[195.0] == (2, 2)


def test_the_p95_signal_is_what_prometheus_makes_of_the_gate_buckets() -> None:
    # Nineteen answers in (5, 6] and one in (12, 14]: the rank 19 of 20 ends
    # the (5, 6] bucket, so histogram_quantile answers its upper bound.
    assert _bucket_quantile(sorted([5.5] * 19 + [13.5]), 0.95) == pytest.approx(6.0)
    # Interpolated inside a bucket: rank 19 is the first of two in (12, 14].
    assert _bucket_quantile(sorted([5.5] * 18 + [13.0, 13.0]), 0.95) == pytest.approx(13.0)
    assert _bucket_quantile([0.2] * 10, 0.95) == pytest.approx(0.475)  # from 0
    assert _bucket_quantile([400.0] * 3, 0.95) == 300.0  # +Inf: the highest bound


@pytest.mark.parametrize(("from_buckets", "expected"), [(True, 6.95), (False, 6.2)])
def test_the_scraped_p95_is_bucketed_unless_told(from_buckets: bool, expected: float) -> None:
    # One user, exactly 6.2 s per answer: the exact P95 is 6.2 s; Prometheus
    # interpolates inside (6, 7] to 6 + 0.95.
    trace = _closed(1, 300)
    spec = spec_for(trace)
    config = SimConfig(latency=_EXACT, p95_from_buckets=from_buckets)
    result = simulate(trace, Static(spec, replicas=1), spec=spec, config=config)
    seen = [p for p in result.series.p95 if not math.isnan(p)]
    assert seen
    assert seen[-1] == pytest.approx(expected)


def test_ours_on_the_measured_gradient_has_no_errors_and_scales() -> None:
    report, result = run_policy("measured-gradient", "ours", seed=1)
    assert report.errors == 0
    assert report.scale_ups >= 2
    assert report.scale_downs == 0
    assert max(result.series.replicas) >= 4
    static, _ = run_policy("measured-gradient", "static", seed=1)
    assert static.phases[-1].p95 is not None
    assert report.phases[-1].p95 is not None
    assert report.phases[-1].p95 < static.phases[-1].p95
    assert report.phases[-1].goodput > static.phases[-1].goodput


def test_told_of_a_least_request_balancer_ours_runs_the_gradient_on_fewer_pods() -> None:
    # Behind least-loaded routing, the 8-user step on 2 pods meets the P95 target, and
    # the policy told so (loadBalancing: LeastRequest) holds 2 where it holds 3 behind
    # round-robin; told wrongly, behind round-robin, it misses the target there.
    routed = SimConfig(retries=2, routing="least-loaded")
    hint = {"autoscaling": {"loadBalancing": "LeastRequest"}}
    told, told_run = run_policy("measured-gradient", "ours", seed=1, config=routed, overrides=hint)
    untold, untold_run = run_policy("measured-gradient", "ours", seed=1, config=routed)
    assert told.errors == untold.errors == 0

    def replicas_late_in_the_8_user_phase(result: SimResult) -> set[int]:
        series = result.series
        return {r for t, r in zip(series.t, series.replicas, strict=True) if 1000 <= t < 1200}

    assert replicas_late_in_the_8_user_phase(told_run) == {2}
    assert replicas_late_in_the_8_user_phase(untold_run) == {3}
    assert told.replica_seconds < untold.replica_seconds
    assert all((p.p95_after_first_minute or 0.0) <= 12.0 for p in told.phases)
    wrong, _ = run_policy("measured-gradient", "ours", seed=1, config=SimConfig(retries=2),
                          overrides=hint)  # fmt: skip
    assert (wrong.phases[3].p95_after_first_minute or 0.0) > 12.0


def test_the_gate_gives_up_on_a_request_the_model_holds_past_the_response_timeout() -> None:
    # One pod, 4 users: each request takes 6.2 s alone and ~10.5 s four at a time.
    # A response timeout of 8 s cuts the slow ones at 8 s (504, slot freed); 20 s
    # cuts none.
    def run(timeout: float) -> tuple[list[float], list[int]]:
        spec = spec_for(
            _closed(4, 600),
            {"autoscaling": {"enabled": False}, "concurrency": {"responseTimeoutSeconds": timeout}},
        )
        result = simulate(_closed(4, 600), Ours(spec), spec=spec, seed=1)
        latencies = [e - s for s, e in zip(result.sent, result.ended, strict=True)]
        return latencies, result.status

    latencies, status = run(8.0)
    cut = [t for t, c in zip(latencies, status, strict=True) if c == 504]
    assert len(cut) > len(status) / 2  # four at a time mostly take longer than 8 s
    assert all(t == pytest.approx(8.0) for t in cut)  # from admission: nobody queues here
    assert all(t < 8.0 for t, c in zip(latencies, status, strict=True) if c == OK)
    assert set(status) == {OK, 504}
    latencies, status = run(20.0)
    assert set(status) == {OK}
    assert max(latencies) > 8.0
    # Past the client's own timeout (30 s) it can never fire: the default 600 s.
    default = spec_for(_closed(4, 60))
    assert default.concurrency.response_timeout_seconds == 600


def test_oracle_of_a_closed_trace_is_pods_for_the_users() -> None:
    trace = parse_trace(
        {
            "kind": "closed",
            "phases": [{"duration": 100, "users": 1}, {"duration": 100, "users": 9}],
        }
    )
    spec = spec_for(trace)
    assert oracle_replica_seconds(trace, spec, LatencyModel()) == pytest.approx(100 + 300)


def test_oracle_of_an_open_trace_follows_the_arrivals() -> None:
    trace = _open(2.0, 3600)
    spec = spec_for(trace)
    oracle = oracle_replica_seconds(trace, spec, LatencyModel(), seed=1)
    # ~2 req/s × 9.7 s ≈ 19.4 in flight → about 5.4 pods on average.
    assert 4.5 * 3600 < oracle < 6.5 * 3600


def test_oracle_pods_of_a_closed_trace_follow_its_phases() -> None:
    trace = parse_trace(
        {
            "kind": "closed",
            "phases": [{"duration": 100, "users": 1}, {"duration": 100, "users": 9}],
        }
    )
    pods = oracle_pods_at(trace, spec_for(trace), LatencyModel(), [0.0, 99.9, 100.0, 199.0, 250.0])
    assert pods == [1, 1, 3, 3, 3]  # ⌈9 / 4⌉ from the second phase on, and after the end


def test_oracle_pods_of_an_open_trace_add_up_to_its_replica_seconds() -> None:
    trace = _open(2.0, 600)
    spec = spec_for(trace)
    step = 0.25
    times = [i * step for i in range(int(600 / step))]
    pods = oracle_pods_at(trace, spec, LatencyModel(), times, seed=3)
    total = oracle_replica_seconds(trace, spec, LatencyModel(), seed=3)
    assert sum(pods) * step == pytest.approx(total, rel=0.02)
    assert min(pods) >= 1
    assert max(pods) > min(pods)  # it follows the arrivals, not a constant
    other = oracle_pods_at(trace, spec, LatencyModel(), times, seed=4)
    assert other != pods  # another seed's arrivals


def test_every_policy_runs_on_a_shipped_trace() -> None:
    for name in ("ours", "static", "hpa-cpu", "hpa-inflight", "keda", "kpa", "ray", "static-2"):
        report, _ = run_policy("flash-spike", name, seed=1)
        assert report.requests > 1000, name
    with pytest.raises(ValueError, match="unknown policy"):
        make_autoscaler("nope", spec_for(_closed(1, 10)))


def test_retries_turn_some_rejections_into_answers() -> None:
    plain, _ = run_policy("flash-spike", "ours", seed=2)
    retried, _ = run_policy("flash-spike", "ours", seed=2, config=SimConfig(retries=2))
    assert retried.errors_by_status.get("429", 0) < plain.errors_by_status.get("429", 0)


def test_a_timed_out_request_is_retried_like_openai_python() -> None:
    # One pod without a gate at twice its capacity: answers slower than the
    # 30 s client timeout. openai-python retries a timeout as it does a 5xx.
    trace = _open(0.8, 400)
    spec = spec_for(trace)

    def run(**client: Any) -> SimResult:
        config = SimConfig(retries=2, **client)
        return simulate(trace, Static(spec, replicas=1), spec=spec, seed=3, config=config)

    retried, plain = run(), run(retry_timeouts=False)
    given_up = [
        e - s for s, e, c in zip(retried.sent, retried.ended, retried.status, strict=True) if c == 0
    ]
    assert given_up
    # A timeout is final only after three attempts of 30 s (and the back-offs).
    assert min(given_up) >= 3 * 30.0
    first = [e - s for s, e, c in zip(plain.sent, plain.ended, plain.status, strict=True) if c == 0]
    assert first
    assert min(first) == pytest.approx(30.0)


def test_a_full_queue_tells_clients_to_retry_when_the_gate_would() -> None:
    # One pod behind our gate, one slot and one queue place, answers of exactly 6.2 s,
    # arrivals far faster: most requests find the queue full. The simulated 429 carries
    # the gate's own Retry-After (contract.retry_after_seconds): before anything was
    # served, the time its slot has been held stands for the service time; then the
    # moving mean of service times (6.2 s) × queue position 2 ÷ 1 slot × the margin 1.5
    # (19 s) stretched by the overload, which here refuses nearly every arrival.
    from vlm_operator.baselines import Scheduled
    from vlm_operator.contract import RETRY_AFTER_MAX_SECONDS, retry_after_seconds

    trace = _open(2.0, 300)
    spec = spec_for(trace, {"concurrency": {"maxInFlight": 1, "queueSize": 1}})
    result = simulate(
        trace,
        Scheduled(spec, []),
        spec=spec,
        seed=4,
        config=SimConfig(latency=_EXACT, retries=1, startup_seconds=0.0),
    )
    refused_twice = [
        (s, e - s)
        for s, e, c in zip(result.sent, result.ended, result.status, strict=True)
        if c == 429
    ]
    assert len(refused_twice) > 100
    first_answer = min(e for e, c in zip(result.ended, result.status, strict=True) if c == OK)
    waits = sorted(round(wait, 6) for sent, wait in refused_twice if sent > first_answer)
    plain = retry_after_seconds(6.2, 2, 1)  # 19 s
    assert plain == 19
    assert plain <= waits[0]
    assert waits[-1] <= RETRY_AFTER_MAX_SECONDS
    # Nearly every arrival refused: most are told the longest wait clients honour.
    assert waits[len(waits) // 2] == RETRY_AFTER_MAX_SECONDS
    # Before the first answer: at least the time held × position 2 × 1.5, and 1 s.
    first_sent = min(result.sent)
    early = [(sent, wait) for sent, wait in refused_twice if sent < first_answer]
    assert early
    for sent, wait in early:
        assert max(1.0, 3.0 * (sent - first_sent)) - 1e-9 <= wait <= RETRY_AFTER_MAX_SECONDS
    assert max(wait for _, wait in early) > 1.0


def test_a_request_that_waited_its_deadline_comes_back_when_the_gate_says() -> None:
    # One pod behind our gate, one slot, a queue too long to fill and a 5 s
    # deadline, answers of exactly 6.2 s at 1.9x the pod's capacity: every
    # failure is a 504. The 504 carries the gate's Retry-After for a place at
    # the back of the queue (at least 6.2 s x 1 place / 1 slot x the margin 1.5,
    # 10 s, once an answer has been seen), and openai-style clients retry it.
    from vlm_operator.baselines import Scheduled
    from vlm_operator.contract import retry_after_seconds

    trace = _open(0.3, 600)
    spec = spec_for(
        trace, {"concurrency": {"maxInFlight": 1, "queueSize": 100, "queueTimeoutSeconds": 5}}
    )

    def run(retries: int) -> SimResult:
        config = SimConfig(latency=_EXACT, retries=retries, startup_seconds=0.0)
        return simulate(trace, Scheduled(spec, []), spec=spec, seed=5, config=config)

    plain, retried = run(0), run(1)
    assert set(plain.status) == set(retried.status) == {OK, 504}
    waits = [
        e - s for s, e, c in zip(plain.sent, plain.ended, plain.status, strict=True) if c != OK
    ]
    assert waits == pytest.approx([5.0] * len(waits))
    first_answer = min(e for e, c in zip(retried.ended, retried.status, strict=True) if c == OK)
    twice = [
        e - s
        for s, e, c in zip(retried.sent, retried.ended, retried.status, strict=True)
        if c == 504 and s > first_answer
    ]
    assert twice
    assert min(twice) >= 5.0 + retry_after_seconds(6.2, 1, 1) + 5.0 - 1e-9
    # Some came back to a slot: answered later than any first attempt can be.
    assert any(latency > 5.0 + 6.2 + 1e-6 for latency in _ok_latencies(retried))
    assert retried.status.count(504) < plain.status.count(504)


def test_a_clients_last_retry_queues_first_and_fails_less_often() -> None:
    # One pod, one slot, a queue of one, a load a quarter over the pod's
    # capacity, answers of exactly 6.2 s. Our gate puts a request on its last
    # retry ahead of the others, with one place beyond the bound for it:
    # fewer clients are refused a third time, and no fewer answers served.
    import dataclasses

    from vlm_operator.baselines import Scheduled

    trace = _open(0.2, 600)
    spec = spec_for(
        trace, {"concurrency": {"maxInFlight": 1, "queueSize": 1, "queueTimeoutSeconds": 30}}
    )

    def run(retries: int, *, last_chance_first: bool) -> SimResult:
        scaler = Scheduled(spec, [])
        assert scaler.gate.last_chance_first  # our gate does it
        scaler.gate = dataclasses.replace(scaler.gate, last_chance_first=last_chance_first)
        config = SimConfig(latency=_EXACT, retries=retries, startup_seconds=0.0)
        return simulate(trace, scaler, spec=spec, seed=5, config=config)

    first, fifo = run(2, last_chance_first=True), run(2, last_chance_first=False)
    assert first.status.count(OK) >= fifo.status.count(OK) > 0
    assert 0 < first.status.count(429) < fifo.status.count(429)
    # Clients that never retry have no last chance: the same run either way.
    once, once_fifo = run(0, last_chance_first=True), run(0, last_chance_first=False)
    assert (once.status, once.ended) == (once_fifo.status, once_fifo.ended)


def test_retry_after_stretches_with_the_fraction_refused() -> None:
    from vlm_operator.contract import (
        RETRY_AFTER_MAX_SECONDS,
        moving_refused_fraction,
        retry_after_seconds,
    )

    assert retry_after_seconds(None, 9, 4) == 1
    # Nothing answered yet, the slots held 8 s: at least that long each.
    assert retry_after_seconds(None, 9, 4, busy_seconds=8.0) == 27
    assert retry_after_seconds(9.7, 9, 4, busy_seconds=8.0) == 33  # a mean wins
    # What no gate should pass still gets advice, never an exception.
    assert retry_after_seconds(math.nan, 9, 4) == RETRY_AFTER_MAX_SECONDS
    assert retry_after_seconds(math.inf, 9, 4) == RETRY_AFTER_MAX_SECONDS
    assert retry_after_seconds(1.0, 1, 0) == RETRY_AFTER_MAX_SECONDS
    assert retry_after_seconds(-3.0, 9, 4) == 1
    # A full queue of 8 behind 4 slots of 9.7 s: 21.8 s, erring long by half.
    assert retry_after_seconds(9.7, 9, 4) == 33
    assert retry_after_seconds(9.7, 9, 4, 0.2) == 41
    assert retry_after_seconds(9.7, 9, 4, 0.5) == RETRY_AFTER_MAX_SECONDS
    assert retry_after_seconds(9.7, 9, 4, 0.9) == RETRY_AFTER_MAX_SECONDS
    assert retry_after_seconds(9.7, 9, 4, 1.0) == RETRY_AFTER_MAX_SECONDS
    fraction = 0.0
    for _ in range(5):
        fraction = moving_refused_fraction(fraction, True)
    assert fraction == pytest.approx(1 - 0.8**5)
    assert moving_refused_fraction(fraction, False) == pytest.approx(fraction * 0.8)
    # An overload long past counts as none.
    for _ in range(20):
        fraction = moving_refused_fraction(fraction, False)
    assert fraction == 0.0


@pytest.mark.parametrize("retries", [0, 2])
def test_requests_out_at_the_end_run_to_their_outcome_after_it(retries: int) -> None:
    # One pod at three times its load: at the end its queue is full and
    # refused clients wait to retry. Each still gets its outcome, counted;
    # the pods are paid up to the end only.
    trace = _open(1.2, 300)
    spec = spec_for(trace)
    result = simulate(
        trace,
        make_autoscaler("static-1", spec),
        spec=spec,
        seed=3,
        config=SimConfig(retries=retries),
    )
    assert len(result.status) == result.requests_issued
    assert max(result.sent) <= 300.0 < max(result.ended)
    assert result.replica_seconds == pytest.approx(300.0)
    assert result.phase_replica_seconds == [pytest.approx(300.0)]


def test_each_phase_has_its_cost_oracle_scale_events_and_slo_seconds() -> None:
    report, result = run_policy("flash-spike", "ours", seed=1, config=SimConfig(retries=2))
    phases = report.phases
    assert [p.name for p in phases] == ["before", "spike", "after"]
    assert math.fsum(p.replica_seconds for p in phases) == pytest.approx(report.replica_seconds)
    assert math.fsum(p.oracle_replica_seconds for p in phases) == pytest.approx(
        report.oracle_replica_seconds
    )
    assert math.fsum(p.slo_violation_seconds for p in phases) == report.slo_violation_seconds
    assert sum(p.scale_ups for p in phases) == report.scale_ups
    assert sum(p.scale_downs for p in phases) == report.scale_downs
    for p in phases:
        assert p.cost_ratio == pytest.approx(p.replica_seconds / p.oracle_replica_seconds)
    # 90 s at 8 req/s: the spike's oracle pays for ~8 × 9.7 s in flight on 4-request pods.
    spike = phases[1]
    assert 15 * 90 < spike.oracle_replica_seconds < 25 * 90
    # Cost by time: the cold start's burst is paid before the spike, its drain after.
    ups = [t for t, b, a in result.scale_events if a > b]
    assert sum(1 for t in ups if 600 <= t < 690) == spike.scale_ups > 0
    assert phases[0].replica_seconds > 600  # more than one pod for the first ten minutes


def test_a_scale_event_at_the_end_of_the_trace_counts_in_the_last_phase() -> None:
    # The engine ticks at t == end as well; KPA scales up then on this trace.
    trace = parse_trace({"kind": "open", "phases": [{"duration": 10, "rate": 2}]})
    report, result = run_policy(trace, "kpa", seed=1)
    assert any(t == trace.duration_s for t, _, _ in result.scale_events)
    assert report.scale_ups >= 1
    assert sum(p.scale_ups for p in report.phases) == report.scale_ups
    assert sum(p.scale_downs for p in report.phases) == report.scale_downs


@pytest.mark.parametrize("policy", ["ours", "kpa", "hpa-inflight", "keda", "ray"])
def test_per_phase_scale_events_add_up_to_the_totals(policy: str) -> None:
    trace = parse_trace(
        {
            "kind": "open",
            "phases": [{"duration": 60, "rate": 0.5}, {"duration": 30, "rate": 3}],
        }
    )
    for seed in range(3):
        report, _ = run_policy(trace, policy, seed=seed)
        assert sum(p.scale_ups for p in report.phases) == report.scale_ups, seed
        assert sum(p.scale_downs for p in report.phases) == report.scale_downs, seed


class _Probe(Static):
    """One pod behind a gate of one slot and a long queue without deadline, never
    scaled, on its own tick and scrape: notes what each tick sees."""

    def __init__(self, spec: VLMServiceSpec, *, period: float, scrape: float) -> None:
        super().__init__(spec, replicas=1)
        self.period_seconds = period
        self.scrape_interval_seconds = scrape
        self.gate = GateBehaviour(1, 100, None, 429, 1.0)
        self.seen: list[Observation] = []

    def decide(self, obs: Observation) -> int:
        self.seen.append(obs)
        return super().decide(obs)


@pytest.mark.parametrize(
    ("period", "scrape", "age", "seen_age"),
    [(2.0, 1.0, 2.0, 0.0), (5.0, 5.0, 0.0, 0.0), (5.0, 5.0, 2.0, 2.0), (15.0, 5.0, 2.0, 2.0)],
)
def test_a_tick_reads_the_scrape_of_its_own_instant(
    period: float, scrape: float, age: float, seen_age: float
) -> None:
    # Scrapes run ``age`` before the ticks, modulo the interval: a whole number of
    # intervals puts a scrape on each tick, which the tick reads (age 0), not the one
    # an interval before.
    trace = _open(0.1, 120)
    spec = spec_for(trace)
    probe = _Probe(spec, period=period, scrape=scrape)
    simulate(trace, probe, spec=spec, seed=1, config=SimConfig(signal_age_seconds=age))
    assert len(probe.seen) >= 8
    assert all(obs.age_seconds == pytest.approx(seen_age) for obs in probe.seen)


@pytest.mark.parametrize("phase", [0.0, 0.3, 0.999])
def test_a_loop_phase_moves_the_ticks_and_keeps_the_signal_age(phase: float) -> None:
    trace = _open(0.1, 120)
    spec = spec_for(trace)
    probe = _Probe(spec, period=15.0, scrape=5.0)
    config = SimConfig(signal_age_seconds=2.0, loop_phase=phase)
    simulate(trace, probe, spec=spec, seed=1, config=config)
    ticks = [obs.now for obs in probe.seen]
    assert ticks[0] == pytest.approx(15.0 * (1 + phase))
    assert all(b - a == pytest.approx(15.0) for a, b in itertools.pairwise(ticks))
    assert all(obs.age_seconds == pytest.approx(2.0) for obs in probe.seen)


def test_a_loop_phase_outside_its_period_is_refused() -> None:
    trace = _open(0.1, 10)
    spec = spec_for(trace)
    with pytest.raises(ValueError, match=r"loop_phase must be in \[0, 1\), got 1.0"):
        simulate(trace, _Probe(spec, period=5, scrape=5), spec=spec, seed=1,
                 config=SimConfig(loop_phase=1.0))  # fmt: skip


def test_a_client_that_gives_up_is_an_answer_of_the_gate() -> None:
    # Six users on one slot with no queue deadline: most give up after 30 s in the
    # queue. The gate answers them 499 and counts them as it counts every answer,
    # in the arrival rate the autoscalers read (not as errors).
    trace = _closed(6, 300)
    spec = spec_for(trace)
    probe = _Probe(spec, period=5.0, scrape=5.0)
    result = simulate(trace, probe, spec=spec, seed=1, config=SimConfig(retries=0))
    assert result.status.count(TIMEOUT) >= 20
    window = spec.metrics.window_seconds
    checked = 0
    for obs in probe.seen:
        scraped = obs.now - obs.age_seconds
        if scraped < window:
            continue
        answered = [
            status
            for status, ended in zip(result.status, result.ended, strict=True)
            # An answer at the scrape's very instant comes after it (the scrape
            # runs first among events at its instant, for the tick on its grid).
            if scraped - window < ended < scraped
        ]
        assert obs.arrival_rate == pytest.approx(len(answered) / window), obs.now
        assert obs.error_rate == 0.0  # a 499 is the client's, no server error
        checked += TIMEOUT in answered
    assert checked >= 10


def test_our_scale_down_deletes_the_idlest_pod_first() -> None:
    # One user on two pods; at 5 s the plan asks for one. Marked with their load
    # (pod-deletion-cost), the idle pod goes at once; unmarked, the ReplicaSet takes
    # the newest, here the busy one, which drains its request first.
    trace = _closed(1, 60)
    spec = spec_for(trace)
    config = SimConfig(latency=_EXACT)
    costs = []
    for marked in (True, False):
        plan = Scheduled(spec, [(5.0, 1)], initial=2)
        plan.marks_pod_load = marked
        result = simulate(trace, plan, spec=spec, seed=1, config=config)
        assert set(result.status) == {OK}
        costs.append(result.replica_seconds)
    assert costs[0] == pytest.approx(2 * 5.0 + 55.0)
    assert costs[1] == pytest.approx(2 * 6.2 + 53.8)  # the busy pod drained at 6.2 s


class _GateAnswers(_interpreted._Engine):  # type: ignore[misc]
    """The engine, noting the answers its gates record as each scrape takes them in."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.recorded: list[tuple[float, float]] = []  # (time, seconds; -1 for a refusal)

    def _scrape(self) -> None:
        self.recorded += [(at, seconds) for at, seconds, _ in self.gate_new]
        super()._scrape()


@pytest.mark.parametrize("cancel", [True, False])
def test_a_request_leaves_the_gate_once_whether_or_not_the_model_cancels_it(
    cancel: bool,
) -> None:
    # One user, answers slower than the client's 30 s: each attempt is given up. A model
    # that cancels ends it there (the gate's 499); one that does not ends it later, and
    # the gate answers it then, once: never at both instants.
    slow = LatencyModel(base_seconds=40.0, alpha=0.0, sigma=0.0)
    trace = _closed(1, 200)
    spec = spec_for(trace)
    config = _interpreted.SimConfig(latency=slow, cancel_on_disconnect=cancel)
    probe = _Probe(spec, period=5.0, scrape=5.0)
    probe.gate = GateBehaviour(1, 0, None, 429, 1.0)  # one slot, no queue: refused, not queued
    run = _GateAnswers(trace, probe, spec, 1, config)
    result = run.run()
    run.recorded += [(at, seconds) for at, seconds, _ in run.gate_new]  # since the last scrape
    timed_out = [s + 30.0 for s, c in zip(result.sent, result.status, strict=True) if c == TIMEOUT]
    assert len(timed_out) >= 4
    answered = [at for at, seconds in run.recorded if seconds >= 0]
    if cancel:
        assert answered == pytest.approx(timed_out)
    else:
        # Answered once, when the model ends it (40 s after it began, 10 s after its
        # client gave up); the last at the trace's end, where no new request leaves.
        assert answered == pytest.approx([t + 10.0 for t in timed_out])
        assert max(result.sent) < trace.duration_s


class _SharedProbe(_Probe):
    """``pods`` pods of ``slots`` slots each, behind a shared queue when ``proxied``."""

    def __init__(self, spec: VLMServiceSpec, *, pods: int, slots: int, proxied: bool) -> None:
        super().__init__(spec, period=5.0, scrape=5.0)
        self.initial_replicas = pods
        self.gate = GateBehaviour(slots, 100, None, 503, None, shared_queue_size=50)
        self.proxied = proxied


@pytest.mark.parametrize("proxied", [True, False])
def test_a_shared_queue_waits_only_when_every_slot_is_taken(proxied: bool) -> None:
    # Three pods of two slots, at about 60 % of them, with works that vary (σ 0.3).
    # Behind the activator (or Ray's router) a request waits only when no pod has a
    # free slot; behind a round-robin Service it queues at its pod while another pod
    # has room, which scrapes catch.
    trace = _open(0.5, 1800)
    spec = spec_for(trace)
    probe = _SharedProbe(spec, pods=3, slots=2, proxied=proxied)
    config = SimConfig(latency=LatencyModel(sigma=0.3))
    result = simulate(trace, probe, spec=spec, seed=3, config=config)
    assert set(result.status) == {OK}
    queued = [obs for obs in probe.seen if obs.waiting]
    assert len(queued) >= 5
    room_left = [obs for obs in queued if obs.running is not None and obs.running < 6]
    if proxied:
        assert room_left == []
    else:
        assert len(room_left) >= 5


def test_a_shared_queue_serves_in_order() -> None:
    # One slot, answers in 10 s, three users at once and none after 9 s: they are
    # served in turn, and the third, admitted at 20 s, is given up at 30 s.
    slow = LatencyModel(base_seconds=10.0, alpha=0.0, sigma=0.0)
    trace = _closed(3, 9)
    spec = spec_for(trace)
    probe = _SharedProbe(spec, pods=1, slots=1, proxied=True)
    result = simulate(trace, probe, spec=spec, seed=1, config=SimConfig(latency=slow))
    outcomes = sorted(zip(result.ended, result.status, strict=True))
    assert outcomes == [(10.0, OK), (20.0, OK), (30.0, TIMEOUT)]
    assert [obs.waiting for obs in probe.seen if obs.now < 9] == [2.0]  # at 5 s


def test_a_shared_queue_lets_go_of_a_request_whose_client_gave_up() -> None:
    # One slot held for 100 s by a request the model does not cancel; a second user
    # comes at 5 s, waits in the shared queue and gives up at 35 s. When the slot
    # frees, nobody is waiting: the model saw one request.
    slow = LatencyModel(base_seconds=100.0, alpha=0.0, sigma=0.0)
    trace = parse_trace(
        {"kind": "closed", "phases": [{"duration": 5, "users": 1}, {"duration": 5, "users": 2}]},
        origin="t",
    )
    spec = spec_for(trace)
    probe = _SharedProbe(spec, pods=1, slots=1, proxied=True)
    config = _interpreted.SimConfig(latency=slow, cancel_on_disconnect=False)
    run = _interpreted._Engine(trace, probe, spec, 1, config)
    result = run.run()
    assert sorted(zip(result.ended, result.status, strict=True)) == [
        (30.0, TIMEOUT),
        (35.0, TIMEOUT),
    ]
    (pod,) = run.pods
    assert pod.seq == 1  # admissions
    assert (run.shared_waiting, run.waiting_total) == (0, 0)


class _Choices(_interpreted._Engine):  # type: ignore[misc]
    """The engine, noting for each request the shared queue sends on at once the
    in-flight counts of the pod it chose and of the others with a free slot."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.choices: list[tuple[int, list[int]]] = []

    def _attempt_shared(self, req: Any) -> None:
        limit = self.limit
        loads = {id(pod): len(pod.active) for pod in self.ready if len(pod.active) < limit}
        super()._attempt_shared(req)
        if req.pod is not None and len(loads) >= 2:
            chosen = loads.pop(id(req.pod))
            self.choices.append((chosen, list(loads.values())))


@pytest.mark.parametrize("two_choices", [True, False])
def test_rays_router_sends_to_the_less_loaded_of_two_pods(two_choices: bool) -> None:
    # Two pods of four slots, works that vary (σ 0.6), at about half their slots:
    # Ray's router, drawing both pods every time, always takes the less loaded one;
    # round-robin among the pods with room often takes the busier.
    trace = _open(0.35, 3600)
    spec = spec_for(trace)
    probe = _SharedProbe(spec, pods=2, slots=4, proxied=True)
    probe.gate = GateBehaviour(4, 100, None, 503, None, shared_two_choices=two_choices)
    config = _interpreted.SimConfig(latency=LatencyModel(sigma=0.6))
    run = _Choices(trace, probe, spec, 2, config)
    run.run()
    assert len(run.choices) >= 500
    busier = [(chosen, others) for chosen, others in run.choices if chosen > min(others)]
    if two_choices:
        assert busier == []
    else:
        assert len(busier) >= 50


def test_rays_router_picks_as_two_random_draws_would() -> None:
    # Five ready pods, three with a free slot (loads 0, 1, 1): every ordered pair of
    # distinct pods with room in at least one, alike, its less loaded member with room
    # (the first on a tie). The direct draw gives each pod its share of 20,000 draws.
    pods = [_interpreted._Pod(0, 0.0) for _ in range(3)]
    for pod, load in zip(pods, (0, 1, 1), strict=True):
        pod.active.update((object(), seq) for seq in range(load))  # type: ignore[misc]
    full = [3, 4]  # the pods without a free slot, by index among the five
    expected = [0.0, 0.0, 0.0]
    pairs = [(a, b) for a in range(5) for b in range(5) if a != b and not {a, b} <= set(full)]
    for a, b in pairs:
        if a in full or b in full:
            expected[b if a in full else a] += 1 / len(pairs)
        else:
            expected[b if len(pods[b].active) < len(pods[a].active) else a] += 1 / len(pairs)
    uniform = random.Random(7).random
    counts = [0, 0, 0]
    for _ in range(20_000):
        counts[pods.index(_interpreted.pick_of_two(pods, 5, uniform))] += 1
    assert expected == pytest.approx([8 / 18, 5 / 18, 5 / 18])
    assert [c / 20_000 for c in counts] == pytest.approx(expected, abs=0.01)


def test_a_full_shared_queue_refuses_with_the_gates_status() -> None:
    trace = _closed(5, 15)
    spec = spec_for(trace)
    probe = _SharedProbe(spec, pods=1, slots=1, proxied=True)
    probe.gate = GateBehaviour(1, 100, None, 503, None, shared_queue_size=2)
    result = simulate(trace, probe, spec=spec, seed=1, config=SimConfig(latency=_EXACT))
    assert result.status.count(503) >= 2  # 1 running, 2 waiting, the rest refused


@pytest.mark.parametrize(
    ("ready", "in_flight", "burst_capacity", "proxied"),
    [
        (10, 30.0, 211.0, True),  # 40 slots: the activator stays
        (60, 20.0, 211.0, False),  # 240 - 211 - 20 >= 0: serve mode
        (60, 40.0, 211.0, True),  # a burst eats the spare capacity: back in the path
        (60, 20.0, 0.0, False),  # 0: only to scale from zero
        (60, 20.0, -1.0, True),  # -1: always
    ],
)
def test_kpa_puts_the_activator_in_the_path_while_the_burst_capacity_is_short(
    ready: int, in_flight: float, burst_capacity: float, proxied: bool
) -> None:
    from vlm_operator.baselines import KnativeKPA

    spec = spec_for(_open(1.0, 60), {"autoscaling": {"maxReplicas": 100}})
    kpa = KnativeKPA(spec, target_burst_capacity=burst_capacity)
    obs = Observation(
        now=2.0, running=in_flight, waiting=0.0, p95_seconds=None, arrival_rate=None,
        error_rate=None, cpu_utilization=None, age_seconds=0.0, current=ready, ready=ready,
        starting=0,
    )  # fmt: skip
    kpa.decide(obs)
    assert kpa.proxied is proxied


def test_no_closed_loop_request_leaves_at_the_traces_end() -> None:
    # Users refused by a fleet of no ready pod come back every second on the
    # dot: one lands on the trace's end, and it used to be sent, counted in the
    # totals and in no phase.
    trace = parse_trace({"kind": "closed", "name": "t", "phases": [
        {"duration": 20, "users": 2}, {"duration": 20, "users": 2}]})  # fmt: skip
    spec = spec_for(trace)
    result = simulate(trace, Scheduled(spec, [(0, 0)], initial=0), spec=spec, seed=1)
    assert max(result.sent) < trace.duration_s
    report = summarize(result)
    assert report.requests == sum(phase.requests for phase in report.phases) == 80
