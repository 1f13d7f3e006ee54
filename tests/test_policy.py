"""The scaling policy's rules, one by one, on hand-made signals."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
from typing import Any

import pytest
from vlm_operator.models import VLMServiceSpec
from vlm_operator.policy import (
    COLLAPSE_WINDOWS,
    GUARD_P95_WINDOWS,
    GUARD_SETTLE_WINDOWS,
    MAX_HISTORY,
    SMALL_STEP_PODS,
    Decision,
    PodCounts,
    PolicyState,
    Signals,
    recommend,
)


def _spec(**autoscaling: Any) -> VLMServiceSpec:
    """A spec whose per-pod target is a round 4 requests (maxInFlight 4 × 1.0)."""
    autoscaling.setdefault("targetUtilization", 1.0)
    data: dict[str, Any] = {"model": {"id": "m", "runtime": "fake"}, "autoscaling": autoscaling}
    return VLMServiceSpec.model_validate(data)


def _signals(
    running: float | None = 0.0,
    waiting: float | None = 0.0,
    p95: float | None = 8.0,
    *,
    rate: float | None = 1.0,
    age: float = 1.0,
    error: str | None = None,
    errors: float | None = 0.0,
) -> Signals:
    return Signals(
        running=running,
        waiting=waiting,
        p95_seconds=p95,
        arrival_rate=rate,
        error_rate=errors,
        age_seconds=age,
        error=error,
    )


def _pods(current: int, ready: int | None = None, starting: int = 0, stuck: int = 0) -> PodCounts:
    return PodCounts(
        current=current,
        ready=current - starting if ready is None else ready,
        starting=starting,
        stuck=stuck,
    )


def _steady(
    spec: VLMServiceSpec,
    signals: Signals,
    pods: PodCounts,
    *,
    seconds: float,
    start: float = 0.0,
    period: float = 5.0,
    state: PolicyState | None = None,
) -> list[Decision]:
    """Run the policy on constant inputs, applying each decision to ``current``."""
    decisions: list[Decision] = []
    state = state or PolicyState()
    current = pods.current
    t = start
    for _ in range(int(seconds / period) + 1):
        d = recommend(state, signals, PodCounts(current, current, 0, 0), spec, t)
        decisions.append(d)
        state, current = d.state, d.replicas
        t += period
    return decisions


# ---------------------------------------------------------------- demand


def test_demand_counts_the_queue_not_only_what_runs() -> None:
    # 4 running (the gate's cap) and 12 waiting: 16 requests need 4 pods,
    # although in-flight per pod is only at target.
    d = recommend(PolicyState(), _signals(4, 12), _pods(1), _spec(), now=0.0)
    assert d.replicas == 4
    assert d.direction == "up"
    assert "waiting=12 running=4" in d.reason
    assert "→ 4 pods" in d.reason


def test_demand_that_fits_holds() -> None:
    d = recommend(PolicyState(), _signals(7, 0), _pods(2), _spec(), now=0.0)
    assert (d.replicas, d.direction) == (2, "hold")
    assert d.signals_ok


def test_default_target_leaves_headroom_that_grows_with_the_fleet() -> None:
    # Default 0.9 × 4 = 3.6 per pod with a quarter pod of queue tolerated:
    # 8 requests fit 2 pods, 16 need 5 (4 would run every pod at its cap).
    spec = VLMServiceSpec.model_validate({"model": {"id": "m"}})
    assert spec.autoscaling.target_utilization == 0.9
    assert recommend(PolicyState(), _signals(8, 0), _pods(2), spec, 0.0).replicas == 2
    assert recommend(PolicyState(), _signals(16, 0), _pods(4), spec, 0.0).replicas == 5


def test_target_utilization_lowers_the_per_pod_target() -> None:
    # 8 in flight at 0.5 × 4 = 2 per pod → 4 pods.
    d = recommend(PolicyState(), _signals(8, 0), _pods(2), _spec(targetUtilization=0.5), now=0.0)
    assert d.replicas == 4


def test_running_a_little_over_the_target_is_tolerated() -> None:
    # Default 0.9 × 4 = 3.6 per pod: 4 running and nothing queued on one pod is
    # within the quarter-pod tolerance.
    spec = VLMServiceSpec.model_validate({"model": {"id": "m"}})
    d = recommend(PolicyState(), _signals(4, 0), _pods(1), spec, now=0.0)
    assert d.replicas == 1


def test_a_queue_is_not_excused_by_the_tolerance() -> None:
    # 5 requests on one pod of 4: the one waiting is demand no slot absorbed.
    d = recommend(PolicyState(), _signals(4, 1), _pods(1), _spec(), now=0.0)
    assert d.replicas == 2
    assert "(demand)" in d.reason
    # The same 5 requests all running on two pods hold.
    assert recommend(PolicyState(), _signals(5, 0), _pods(2), _spec(), now=0.0).replicas == 2


def test_behind_a_least_request_balancer_a_short_queue_is_tolerated() -> None:
    # The measured gradient's 8-user step, at the default 3.6 per pod: 4 users ran on
    # one pod, now 4 run and 4 wait. Behind round-robin the queue stays with the pod
    # that has it, and 2 pods would queue there again: 3. Behind a least-request
    # balancer 2 pods take 4 each, none waiting: 2 (8 is within a quarter pod of 7.2).
    round_robin = _spec(maxReplicas=20, targetUtilization=0.9)
    least_request = _spec(maxReplicas=20, targetUtilization=0.9, loadBalancing="LeastRequest")
    assert round_robin.autoscaling.load_balancing == "RoundRobin"  # the default
    for spec, wanted in ((round_robin, 3), (least_request, 2)):
        state = _history(spec, [4.0] * 60, pods=1)
        d = recommend(state, _signals(4, 4), _pods(1), spec, now=300.0)
        assert d.replicas == wanted, spec.autoscaling.load_balancing
        # 16 users on 2 pods: 8 running, 8 waiting, past the tolerance under both.
        state = _history(spec, [8.0] * 60, pods=2)
        assert recommend(state, _signals(8, 8), _pods(2), spec, now=300.0).replicas == 5
    # The tolerance is the quarter pod running requests get (one request at 4 per
    # pod): a longer queue still buys a pod at once.
    spec = _spec(maxReplicas=20, loadBalancing="LeastRequest")
    state = _history(spec, [4.0] * 60, pods=1)
    assert recommend(state, _signals(4, 1), _pods(1), spec, now=300.0).replicas == 1
    assert recommend(state, _signals(4, 2), _pods(1), spec, now=300.0).replicas == 2
    rr_state = _history(_spec(maxReplicas=20), [4.0] * 60, pods=1)
    assert recommend(rr_state, _signals(4, 1), _pods(1), _spec(maxReplicas=20), 300.0).replicas == 2


def test_requests_refused_while_queues_are_full_are_demand_too() -> None:
    # One pod, 4 running and its queue of 8 full, half the arrivals refused: the
    # admitted half holds the 4 slots, so the refused half needs 4 more.
    spec = _spec(maxReplicas=20)
    seen = recommend(PolicyState(), _signals(4, 8, errors=0.0), _pods(1), spec, 0.0)
    refused = recommend(PolicyState(), _signals(4, 8, errors=0.5), _pods(1), spec, 0.0)
    assert (seen.replicas, refused.replicas) == (3, 4)
    assert "refused=50%" in refused.reason
    # Clients retry and are refused again: never more than doubles what is seen.
    swamped = recommend(PolicyState(), _signals(4, 8, errors=1.0), _pods(1), spec, 0.0)
    assert swamped.replicas == 6


def test_failures_with_nothing_queued_are_not_demand() -> None:
    # A model that fails fast (every answer a 500, nothing waits): more pods
    # would fail the same way.
    spec = _spec(maxReplicas=20)
    d = recommend(PolicyState(), _signals(3, 0, errors=1.0), _pods(1), spec, 0.0)
    assert d.replicas == 1
    assert "refused" not in d.reason


def _history(spec: VLMServiceSpec, values: list[float], pods: int) -> PolicyState:
    """A state that has seen ``values`` (all running) every 5 s on ``pods`` pods."""
    state = PolicyState()
    for i, value in enumerate(values):
        state = recommend(state, _signals(value, 0), _pods(pods), spec, i * 5.0).state
    return state


def test_a_queue_on_a_quiet_demand_counts_on_the_first_sample() -> None:
    # A closed loop: 12 in flight on 3 pods for a minute, then 6 more queue.
    spec = _spec(maxReplicas=20)
    state = _history(spec, [12.0] * 13, pods=3)
    d = recommend(state, _signals(12, 6), _pods(3), spec, now=65.0)
    # 18 requests need 5 pods now, not the 4 of the window's mean.
    assert d.replicas == 5
    assert "burst" not in d.reason


def test_one_waiting_request_on_a_fleet_counts_once_two_samples_show_a_queue() -> None:
    # 8 users on 2 full pods. The gates are scraped at different instants, so a
    # request that moved between pods can read as 8 running + 1 waiting once.
    spec = _spec(maxReplicas=20)
    state = _history(spec, [8.0] * 13, pods=2)
    blip = _replay(spec, state, [(8.0, 1.0), (8.0, 0.0), (8.0, 0.0)], start=65.0, pods=2)
    assert [d.replicas for d in blip] == [2, 2, 2]
    # A ninth user: the queue is still there on the next tick, and counts then.
    ninth = _replay(spec, state, [(8.0, 1.0), (8.0, 1.0)], start=65.0, pods=2)
    assert [d.replicas for d in ninth] == [2, 3]
    # Two waiting are more than one request counted twice: at once.
    two = recommend(state, _signals(8, 2), _pods(2), spec, now=65.0)
    assert two.replicas == 3
    # A queue seen long ago (a gap in the ticks) does not confirm today's.
    stale = _replay(spec, state, [(8.0, 1.0)], start=65.0, pods=2)[0].state
    late = recommend(stale, _signals(8, 1), _pods(2), spec, now=65.0 + 60.0)
    assert late.replicas == 2


def _replay(
    spec: VLMServiceSpec,
    state: PolicyState,
    demand: list[tuple[float, float]],
    *,
    start: float,
    pods: int,
) -> list[Decision]:
    """Feed (running, waiting) every 5 s from ``start``, applying each decision."""
    signals = [_signals(running, waiting) for running, waiting in demand]
    return _run(spec, state, signals, start=start, pods=pods)


def _run(
    spec: VLMServiceSpec, state: PolicyState, signals: list[Signals], *, start: float, pods: int
) -> list[Decision]:
    """Feed ``signals`` every 5 s from ``start``, applying each decision."""
    decisions: list[Decision] = []
    current = pods
    for i, read in enumerate(signals):
        d = recommend(state, read, _pods(current), spec, start + 5.0 * i)
        decisions.append(d)
        state, current = d.state, d.replicas
    return decisions


def test_on_a_noisy_demand_a_rise_counts_once_two_rate_windows_show_it() -> None:
    # An open load wandering by 1.5 requests, then 18 in flight from 70 s on.
    spec = _spec(maxReplicas=20)
    window = spec.metrics.window_seconds
    state = _history(spec, [12.0, 13.5] * 7, pods=3)
    decisions = _replay(spec, state, [(12.0, 6.0)] * 24, start=70.0, pods=3)
    first_up = next(i for i, d in enumerate(decisions) if d.direction == "up")
    # Not on the first window of the rise, at the latest once two show it.
    assert window <= 5.0 * first_up <= 2 * window
    assert decisions[first_up].replicas >= 4
    assert "(demand)" in decisions[first_up].reason


def test_on_a_noisy_demand_a_cluster_shorter_than_a_window_buys_nothing() -> None:
    # The same load; 18 in flight with a queue for 20 s, then back to its level.
    spec = _spec(maxReplicas=20)
    state = _history(spec, [12.0, 13.5] * 7, pods=3)
    cluster = [(12.0, 6.0)] * 4 + [(12.0, 0.0), (13.5, 0.0)] * 10
    decisions = _replay(spec, state, cluster, start=70.0, pods=3)
    assert {d.replicas for d in decisions} == {3}


def test_a_closed_loop_that_jitters_still_rises_within_two_samples() -> None:
    # 16 users on 4 pods, the in-flight count 15 or 16 as answers turn over into
    # new requests: a spread far under Poisson's (√16 = 4) is a closed loop, not
    # an open load, so a step to 24 counts on its second sample.
    spec = _spec(maxReplicas=20)
    state = _history(spec, [15.0, 16.0] * 14, pods=4)
    decisions = _replay(spec, state, [(16.0, 8.0)] * 3, start=140.0, pods=4)
    assert [d.replicas for d in decisions][:2] == [4, 6]


def test_on_a_quiet_demand_a_rise_needs_two_samples_only() -> None:
    # A closed loop's demand does not wander: a rise without a queue counts on
    # its second sample.
    spec = _spec(maxReplicas=20)
    state = _history(spec, [12.0] * 14, pods=3)
    decisions = _replay(spec, state, [(18.0, 0.0)] * 3, start=70.0, pods=3)
    assert [d.replicas for d in decisions][:2] == [3, 5]


# ----------------------------------------------------------------- burst


def test_burst_scales_up_at_once_past_the_step_limit() -> None:
    spec = _spec(maxReplicas=50, scaleUp={"maxPodsPerStep": 1, "maxPercentPerStep": 10})
    d = recommend(PolicyState(), _signals(8, 72), _pods(2), spec, now=0.0)
    assert d.replicas == 20
    assert "burst" in d.reason


def test_without_burst_the_step_limit_applies() -> None:
    spec = _spec(maxReplicas=50, scaleUp={"maxPodsPerStep": 2, "maxPercentPerStep": 10})
    # 30 requests on 6 ready pods: needs 8, not twice the ready pods → step-limited.
    d = recommend(PolicyState(), _signals(24, 10), _pods(6), spec, now=0.0)
    assert d.replicas == 8
    spec = _spec(maxReplicas=50, scaleUp={"maxPodsPerStep": 1, "maxPercentPerStep": 10})
    d = recommend(PolicyState(), _signals(24, 10), _pods(6), spec, now=0.0)
    assert d.replicas == 7
    assert "step limit +1" in d.reason


def test_no_scale_down_during_a_burst() -> None:
    spec = _spec(scaleDown={"stabilizationWindowSeconds": 0})
    d = recommend(PolicyState(), _signals(4, 20), _pods(6, ready=2, starting=4), spec, now=500.0)
    assert d.replicas >= 6


# --------------------------------------------------------- stabilization


def test_scale_down_waits_out_the_window_then_steps() -> None:
    # A window shorter than a collapse's rate window: what it waits is its own.
    spec = _spec(scaleDown={"stabilizationWindowSeconds": 20, "maxPercentPerStep": 50})
    assert spec.metrics.window_seconds * COLLAPSE_WINDOWS > 20
    busy = _steady(spec, _signals(32, 0), _pods(8), seconds=100)
    assert busy[-1].replicas == 8
    quiet = _steady(spec, _signals(2, 0), _pods(8), seconds=240, start=105, state=busy[-1].state)
    replicas = [d.replicas for d in quiet]
    first_down = next(i for i, r in enumerate(replicas) if r < 8)
    # Not before the window has passed since the last busy recommendation.
    assert 20 - 5.0 <= first_down * 5.0 < spec.metrics.window_seconds * COLLAPSE_WINDOWS
    # Never up again, at most half per step, down to what the demand needs.
    steps = list(itertools.pairwise(replicas))
    assert all(after <= before for before, after in steps)
    assert all(after >= before / 2 for before, after in steps)
    assert replicas[-1] == 1
    assert all("demand fell" in d.reason for d in quiet if d.direction == "down")


def _after_a_burst_on_8_pods(quiet: Signals) -> list[Decision]:
    """8 pods hold 32 requests (4 arrive a second) for 400 s, then ``quiet`` for 200 s."""
    spec = _spec(scaleDown={"stabilizationWindowSeconds": 300})
    busy = _steady(spec, _signals(32, 0, rate=4.0), _pods(8), seconds=400)
    return _steady(spec, quiet, _pods(8), seconds=200, start=405, state=busy[-1].state)


def test_a_collapsed_load_does_not_wait_out_the_whole_window() -> None:
    # A burst on 8 pods is over: 2 requests fit in 1 pod, far under half of 8.
    # They take 20 s each at 0.1 arrivals a second, over the P95 target, so
    # Little's law bounds nothing and the collapse waits one rate window of
    # recommendations that fit half the pods (after the rate window's mean fell).
    window = _spec().metrics.window_seconds
    quiet = _after_a_burst_on_8_pods(_signals(2, 0, rate=0.1))
    first_down = next(i for i, d in enumerate(quiet) if d.direction == "down")
    assert COLLAPSE_WINDOWS * window <= first_down * 5.0 <= (COLLAPSE_WINDOWS + 1) * window
    assert "load collapsed" in quiet[first_down].reason
    assert "backlog drained" not in quiet[first_down].reason
    assert quiet[first_down].replicas == 4  # still at most half per step
    # A fall to more than half the pods is waited out: it may be the load's noise.
    dip = _after_a_burst_on_8_pods(_signals(20, 0))
    assert {d.replicas for d in dip} == {8}


def test_a_drained_backlog_collapses_once_the_arrivals_bound_the_demand() -> None:
    # 8 pods drained a backlog of 32 requests; 1 request a second arrives now.
    # While answers take at most the 12 s P95 target (the window's mean of
    # in flight is at most 1 × 12), Little's law keeps at most 12 in flight, 3
    # pods' worth: the backlog's recommendations still in the last rate window
    # are no load the arrivals bring back, and the collapse need not wait them out.
    window = _spec().metrics.window_seconds
    quiet = _after_a_burst_on_8_pods(_signals(2, 0, rate=1.0))
    first_down = next(i for i, d in enumerate(quiet) if d.direction == "down")
    assert first_down * 5.0 < COLLAPSE_WINDOWS * window - 5.0
    assert "load collapsed, backlog drained" in quiet[first_down].reason
    assert quiet[first_down].replicas == 4  # still at most half per step
    assert quiet[-1].replicas == 3
    assert "arrivals 1.0/s need 3" in next(d.reason for d in quiet if d.replicas == 3)


def test_a_collapse_goes_no_lower_than_the_arrivals_need_at_the_p95_target() -> None:
    # 20 pods idle at 4 requests in flight, but 4 arrive a second: fewer pods
    # run fuller and slower, and each request may stay the 12 s P95 target in
    # flight at the target: 48 requests, 12 pods of 4 (half the fleet is 10).
    spec = _spec(maxReplicas=30, scaleDown={"stabilizationWindowSeconds": 300})
    assert spec.autoscaling.p95_latency_target_seconds == 12
    busy = _steady(spec, _signals(80, 0, rate=4.0), _pods(20), seconds=400)
    quiet = _steady(
        spec, _signals(4, 0, rate=4.0), _pods(20), seconds=200, start=405, state=busy[-1].state
    )
    downs = [d for d in quiet if d.direction == "down"]
    assert [d.replicas for d in downs] == [12]
    assert "load collapsed, arrivals 4.0/s need 12" in downs[0].reason
    assert {d.replicas for d in quiet[quiet.index(downs[0]) :]} == {12}
    assert "held: load collapsed" in quiet[-1].reason


def test_the_arrivals_need_is_taken_at_the_p95_the_fleet_aims_for() -> None:
    # 4 requests a second on pods of 3.6 (maxInFlight 4 x 0.9): a fleet that
    # keeps its P95 within LATENCY_HEADROOM of the 12 s target keeps fewer than
    # 4 x 11.16 = 44.6 in flight (the mean stay is under the P95), 13 pods'
    # worth. At the whole target, 48 in flight, it would be 14: a pod that the
    # load then takes back in a step of its own.
    spec = _spec(
        maxReplicas=60, targetUtilization=0.9, scaleDown={"stabilizationWindowSeconds": 300}
    )
    assert spec.autoscaling.p95_latency_target_seconds == 12
    busy = _steady(spec, _signals(140, 0, rate=4.0), _pods(40), seconds=400)
    assert busy[-1].replicas == 40
    quiet = _steady(
        spec, _signals(6, 0, rate=4.0), _pods(40), seconds=300, start=405, state=busy[-1].state
    )
    downs = [d for d in quiet if d.direction == "down"]
    assert [d.replicas for d in downs] == [20, 13]
    assert "arrivals 4.0/s need 13" in downs[-1].reason
    assert quiet[-1].replicas == 13


def test_a_fall_of_two_pods_is_waited_out_even_to_half_the_fleet() -> None:
    # 3 pods down to what 1 pod holds is noise at this size: wait the window.
    spec = _spec(maxReplicas=30, scaleDown={"stabilizationWindowSeconds": 300})
    busy = _steady(spec, _signals(10, 0, rate=0.1), _pods(3), seconds=400)
    assert busy[-1].replicas == 3
    quiet = _steady(
        spec, _signals(2, 0, rate=0.1), _pods(3), seconds=400, start=405, state=busy[-1].state
    )
    first_down = next(i for i, d in enumerate(quiet) if d.direction == "down")
    assert first_down * 5.0 >= 300 - 5.0
    assert "load collapsed" not in quiet[first_down].reason


def test_without_an_arrival_rate_or_an_error_rate_nothing_scales_down() -> None:
    # Both gate rules that let a fleet down (the P95 guard needs answers, the
    # refused demand the error rate): missing, read as 0, they would not.
    spec = _spec(maxReplicas=30, scaleDown={"stabilizationWindowSeconds": 300})
    busy = _steady(spec, _signals(32, 0), _pods(8), seconds=400)
    for quiet_signals, missing in (
        (_signals(2, 0, rate=None), "no signal: arrival_rate"),
        (_signals(2, 0, rate=math.nan), "no signal: arrival_rate"),
        (_signals(2, 0, rate=-1.0), "no signal: arrival_rate"),
        (Signals(2.0, 0.0, 5.0, 1.0, None), "no signal: error_rate"),
        (Signals(2.0, 0.0, 5.0, 1.0, math.inf), "no signal: error_rate"),
    ):
        quiet = _steady(spec, quiet_signals, _pods(8), seconds=700, start=405, state=busy[-1].state)
        assert all(d.replicas == 8 for d in quiet), missing
        assert all(missing in d.reason and "never scaling down" in d.reason for d in quiet)
        assert not any(d.signals_ok for d in quiet)
    # No answers in the window: the error rate is 0/0, an idle service's, and it may go down.
    idle = _steady(spec, Signals(0.0, 0.0, None, 0.0, None), _pods(8), seconds=700, start=405)
    assert idle[-1].replicas < 8
    assert idle[-1].signals_ok


def test_scale_down_respects_max_pods_per_step() -> None:
    spec = _spec(scaleDown={"stabilizationWindowSeconds": 0, "maxPodsPerStep": 1})
    ds = _steady(spec, _signals(0, 0, rate=0.0, p95=None), _pods(6), seconds=400)
    downs = [d for d in ds if d.direction == "down"]
    assert all(d.state is not None for d in downs)
    steps = [ds[i - 1].replicas - ds[i].replicas for i in range(1, len(ds))]
    assert max(steps) == 1
    assert ds[-1].replicas == 1


def test_a_fall_that_is_no_collapse_steps_down_a_tenth_of_the_pods_at_a_time() -> None:
    # 40 pods at 160 in flight, then 120: 31 pods' worth with the quarter-pod
    # spare, more than half the fleet, so no collapse. Demand measured on 40
    # pods understates what fewer hold (they run fuller and slower): each step
    # takes a tenth of the pods at most and is measured before the next, but
    # for one that goes no lower than where the P95 (8 s) and the in-flight
    # count, both grown in proportion to the pods taken away, still fit:
    # 121 × 39 / 35 is 135 in flight, 3.9 a pod.
    spec = _spec(maxReplicas=60)
    window = spec.metrics.window_seconds
    busy = _steady(spec, _signals(160, 0), _pods(40), seconds=300)
    assert busy[-1].replicas == 40
    quiet = _steady(spec, _signals(120, 0), _pods(40), seconds=600, start=305, state=busy[-1].state)
    downs = [(i, d) for i, d in enumerate(quiet) if d.direction == "down"]
    fleet = [40] + [d.replicas for _, d in downs]
    assert fleet == [40, 39, 35, 32, 31]
    assert "the p95 and in-flight grown x39/35 fit 35" in downs[1][1].reason
    assert all(0 < a - b <= max(1, a // 10) for a, b in itertools.pairwise(fleet[2:]))
    assert "step limit -3" in downs[2][1].reason
    # Each step waits a rate window for its effect to show in the signals.
    assert all(5.0 * (j - i) >= window for (i, _), (j, _) in itertools.pairwise(downs))
    # Nearer the target (10 s) the P95 grown in proportion allows no more than
    # a tenth: tenths, until the P95 the fleet shows itself stops a step (on
    # 36 pods: 11.2 s on 32). Those 33 pods are the fewest found to hold this
    # demand, and stay while it lasts, though the P95 stays as flat on them.
    busy = _steady(spec, _signals(160, 0, p95=10.0), _pods(40), seconds=300)
    quiet = _steady(
        spec, _signals(120, 0, p95=10.0), _pods(40), seconds=900, start=305, state=busy[-1].state
    )
    downs = [d for d in quiet if d.direction == "down"]
    fleet = [40] + [d.replicas for d in downs]
    assert fleet == [40, 39, 36, 33]
    # The step to 36 was stopped by the P95 of 40 pods, not of the fleet that
    # stepped: nothing kept.
    assert downs[1].state.kept_floor is None
    assert downs[2].state.kept_floor is not None
    assert downs[2].state.kept_floor[1:] == (33, 120.0)
    assert all(0 < a - b <= max(1, a // 10) for a, b in itertools.pairwise(fleet))
    assert quiet[-1].reason.endswith("(held: 33 pods were the fewest found to hold demand 120)")
    # A demand clearly lower (by more than a pod and the spare) forgets them.
    lower = _steady(
        spec, _signals(100, 0, p95=10.0), _pods(33), seconds=600, start=1210, state=quiet[-1].state
    )
    assert lower[-1].replicas < 33


@pytest.mark.parametrize(
    ("running", "rate", "fleet"),
    [
        # Idle: by Little's law nothing will be in flight, so the steps are the
        # spec's 50 % ones, not a tenth of the pods each.
        (0.0, 0.0, [18, 9, 5, 3, 2, 1]),
        # 6 requests a second each in flight up to the 11.16 s the fleet aims
        # for need 17 pods of 4 (Little's law): the 40 in flight that 18 pods
        # hold may be fewer than 11 will. The P95 (9 s) grown 18/15 times
        # fits 15, and so does the in-flight count: there at once; below,
        # each step is a tenth of the pods and is measured.
        (40.0, 6.0, [18, 15, 14, 13, 12, 11]),
    ],
)
def test_a_fall_steps_faster_down_to_what_the_arrivals_need(
    running: float, rate: float, fleet: list[int]
) -> None:
    spec = _spec(maxReplicas=60)
    ds = _steady(spec, _signals(running, 0, p95=9.0, rate=rate), _pods(18), seconds=600)
    assert [18] + [d.replicas for d in ds if d.direction == "down"] == fleet
    if rate == 0.0:
        assert "arrivals 0.0/s need 0" in next(d.reason for d in ds if d.direction == "down")


def _random_history(
    seed: int,
) -> tuple[random.Random, VLMServiceSpec, PolicyState, int, float]:
    """A seeded random load history: (rng, spec, state, replicas, now) after it.

    1-6 phases of 1-17 minutes each; in-flight counts, queues, P95s and arrival
    rates are drawn independently, so a lesson can be learnt at any demand (a
    slow P95 on few requests buys one at a low demand).
    """
    rng = random.Random(seed)
    low = rng.choice([1, 1, 2])
    spec = _spec(minReplicas=low, maxReplicas=40, targetUtilization=rng.choice([0.7, 0.9, 1.0]))
    state, current, now = PolicyState(), low, 0.0
    for _ in range(rng.randint(1, 6)):
        running = rng.uniform(0, rng.choice([8, 60]))
        waiting = rng.choice([0.0, 0.0, rng.uniform(0, 30)])
        p95 = rng.choice([None, rng.uniform(5, 30)])
        rate = rng.uniform(0, 6)
        for _ in range(rng.randint(12, 200)):
            signals = _signals(running * rng.uniform(0.8, 1.2), waiting, p95=p95, rate=rate)
            d = recommend(state, signals, _pods(current), spec, now)
            state, current, now = d.state, d.replicas, now + 5.0
    return rng, spec, state, current, now


@pytest.mark.parametrize("seed", range(40))
def test_an_idle_service_returns_to_min_replicas_after_any_load(seed: int) -> None:
    # Whatever a load left in the state (a guard's lesson, a latency floor, a
    # burst, a landing), once nothing arrives the fleet goes back to
    # minReplicas within minutes: an idle service that kept the pods of a
    # lesson learnt below a pod's worth of demand is what this guards against.
    _, spec, state, current, now = _random_history(seed)
    low = spec.autoscaling.min_replicas
    idle_from = now
    reasons = []
    while current > low and now - idle_from <= 600:
        d = recommend(state, _signals(0, 0, p95=None, rate=0.0), _pods(current), spec, now)
        state, current, now = d.state, d.replicas, now + 5.0
        reasons.append(d.reason)
    assert current == low, reasons[-3:]


_BROKEN_SIGNALS = (
    _signals(None, None, None, rate=None, error="connection refused"),
    _signals(0, 0, p95=None, rate=0.0, age=120.0),
    _signals(math.nan, 0, rate=0.0),
    _signals(0, None, p95=None, rate=0.0),
    _signals(-1, 0),
)


@pytest.mark.parametrize("seed", range(40))
def test_broken_signals_never_scale_down_whatever_the_state(seed: int) -> None:
    # The rules above on a fresh state, here on whatever a random load left
    # (a collapse under way, a descent, a landing due): ten minutes of broken
    # signals that would read as idle move no pod down.
    rng, spec, state, current, now = _random_history(seed)
    broken = rng.choice(_BROKEN_SIGNALS)
    for i in range(120):
        d = recommend(state, broken, _pods(current), spec, now + 5.0 * i)
        assert d.replicas >= current, d.reason
        assert not d.signals_ok
        state, current = d.state, d.replicas


def _alternating(low: float, high: float, count: int) -> list[tuple[float, float]]:
    return [(low if i % 2 else high, 0.0) for i in range(count)]


@pytest.mark.parametrize(("low", "high", "needs"), [(26.0, 34.0, 11), (22.0, 30.0, 10)])
def test_a_step_of_one_or_two_pods_on_a_noisy_load_waits_two_windows(
    low: float, high: float, needs: int
) -> None:
    # An open load wandering between 30 and 38 in flight (σ ≈ 8) keeps 12
    # pods (its mean 34 and 1.6 σ of spare); at 26-34 it needs 11, at 22-30
    # 10. A pod or two fewer is what a dip of such noise looks like: the step
    # waits until the highest recommendation of two stabilization windows
    # allows it, then goes there at once (two pods, more than a tenth of 12:
    # measured enough by the wait).
    spec = _spec(maxReplicas=60)
    down_window = spec.autoscaling.scale_down.stabilization_window_seconds
    state = _history(spec, [38.0, 30.0] * 30, pods=12)
    lower = _replay(spec, state, _alternating(low, high, 80), start=300.0, pods=12)
    first_down = next(i for i, d in enumerate(lower) if d.direction == "down")
    assert 2 * down_window <= 5.0 * first_down <= 2 * down_window + 60
    assert lower[first_down].replicas == needs
    # The minute before the step says what it waited for.
    waiting = f"a fall of 2 pods or fewer waits {2 * down_window}s on a load this noisy"
    assert any(waiting in d.reason for d in lower[first_down - 12 : first_down])
    # A quiet load (the same fall without the noise) waits one window, from
    # the first tick whose rate window shows the fall.
    state = _history(spec, [44.0] * 60, pods=12)
    quiet = _replay(spec, state, [(4.0 * needs - 4.0, 0.0)] * 80, start=300.0, pods=12)
    shown = next(i for i, d in enumerate(quiet) if d.state.down[-1][1] < 12)
    first_down = next(i for i, d in enumerate(quiet) if d.direction == "down")
    assert down_window <= 5.0 * (first_down - shown) + 5.0 < 2 * down_window
    assert quiet[first_down].replicas == 11


def test_a_fall_of_three_pods_on_a_noisy_load_waits_one_window() -> None:
    # 18-26 in flight needs 9 of the 12 pods: no dip of noise, one window.
    spec = _spec(maxReplicas=60)
    down_window = spec.autoscaling.scale_down.stabilization_window_seconds
    state = _history(spec, [38.0, 30.0] * 30, pods=12)
    lower = _replay(spec, state, _alternating(18.0, 26.0, 80), start=300.0, pods=12)
    first_down = next(i for i, d in enumerate(lower) if d.direction == "down")
    assert down_window <= 5.0 * first_down < 2 * down_window
    assert lower[first_down].replicas == 11  # a tenth of the pods, one at least


def _alternating_values(low: float, high: float, count: int) -> list[float]:
    return [running for running, _ in _alternating(low, high, count)]


def _falling_rate(
    spec: VLMServiceSpec, state: PolicyState, demand: list[float], rates: list[float], start: float
) -> list[Decision]:
    """Feed running=demand[i] at arrival rate rates[i] every 5 s, applying each decision."""
    decisions: list[Decision] = []
    current = 12
    for i, (running, rate) in enumerate(zip(demand, rates, strict=True)):
        d = recommend(state, _signals(running, 0, rate=rate), _pods(current), spec, start + 5.0 * i)
        decisions.append(d)
        state, current = d.state, d.replicas
    return decisions


def test_a_falling_arrival_rate_lets_a_small_step_go_after_one_window() -> None:
    # The same two-pod fall as above, but the arrivals have been falling for
    # half an hour (a day's evening, 6 requests/s an hour): that is no dip of
    # the noise, and the step waits one window, not two.
    spec = _spec(maxReplicas=60)
    down_window = spec.autoscaling.scale_down.stabilization_window_seconds
    ticks = 360  # 30 minutes of history
    rates = [6.0 - i * 5.0 / 3600 * 6.0 for i in range(ticks + 80)]
    demand = [38.0, 30.0] * (ticks // 2) + _alternating_values(22.0, 30.0, 80)
    before = _falling_rate(spec, PolicyState(), demand[:ticks], rates[:ticks], 0.0)
    assert {d.replicas for d in before} == {12}
    trend = before[-1].state.arrival_trend
    assert trend is not None
    assert trend[2] < trend[3]
    after = _falling_rate(spec, before[-1].state, demand[ticks:], rates[ticks:], 5.0 * ticks)
    first_down = next(i for i, d in enumerate(after) if d.direction == "down")
    assert down_window <= 5.0 * first_down < 2 * down_window
    assert after[first_down].replicas == 11
    assert "arrivals falling" in after[first_down].reason
    # At a steady rate the same step waits two windows.
    steady = _falling_rate(spec, PolicyState(), demand, [6.0] * len(demand), 0.0)
    first_down = next(i for i, d in enumerate(steady) if d.direction == "down")
    assert 5.0 * (first_down - ticks) >= 2 * down_window


def test_the_fewest_pods_found_hold_while_the_load_does_not_while_it_falls() -> None:
    # 12 pods kept at this demand (34): the two-pod fall of the test above
    # waits for good at a steady rate, and goes after one window while the
    # arrivals fall (a day's evening is no steady load).
    spec = _spec(maxReplicas=60)
    ticks = 360
    demand = [38.0, 30.0] * (ticks // 2) + _alternating_values(22.0, 30.0, 200)
    steady = _falling_rate(spec, PolicyState(), demand[:ticks], [6.0] * ticks, 0.0)
    kept = dataclasses.replace(steady[-1].state, kept_floor=(5.0 * ticks - 60.0, 12, 34.0))
    held = _falling_rate(spec, kept, demand[ticks:], [6.0] * 200, 5.0 * ticks)
    assert {d.replicas for d in held} == {12}
    assert held[-1].reason.endswith("(held: 12 pods were the fewest found to hold demand 34)")
    rates = [6.0 - i * 5.0 / 3600 * 6.0 for i in range(ticks + 200)]
    before = _falling_rate(spec, PolicyState(), demand[:ticks], rates[:ticks], 0.0)
    kept = dataclasses.replace(before[-1].state, kept_floor=(5.0 * ticks - 60.0, 12, 34.0))
    after = _falling_rate(spec, kept, demand[ticks:], rates[ticks:], 5.0 * ticks)
    assert after[-1].replicas < 12
    assert "arrivals falling" in next(d for d in after if d.direction == "down").reason


def test_pods_bought_back_when_the_fewest_found_fell_short_are_kept() -> None:
    # A noisy load (30-38 in flight) on 11 pods, the fewest found to hold it:
    # a queue says they fall short, and 13 are bought back. Those are kept at
    # the floor's demand (34), not at the queue's, which a fleet that falls
    # short shows and which would let the share of it go again: the load back
    # as it was holds the 13.
    spec = _spec(maxReplicas=60)
    state = _history(spec, [38.0, 30.0] * 60, pods=12)
    short = dataclasses.replace(state, kept_floor=(250.0, 11, 34.0))
    bought = _replay(spec, short, [(44.0, 6.0)] * 14, start=600.0, pods=11)
    up = next(d for d in bought if d.direction == "up")
    assert up.replicas == 13
    assert up.state.kept_floor is not None
    assert up.state.kept_floor[1:] == (13, 34.0)
    after = _replay(spec, bought[-1].state, _alternating(30.0, 38.0, 240), start=670.0, pods=13)
    assert {d.replicas for d in after} == {13}
    assert after[-1].reason.endswith("(held: 13 pods were the fewest found to hold demand 34)")
    # With nothing found before, the pod or two a steady load's queue buys
    # are kept too, at the demand the fleet ran since its last change (the
    # 30-38 and the queue's first samples, not the queue's 50): the fleet
    # they were bought for fell short of it...
    fresh = _replay(spec, state, [(44.0, 6.0)] * 14, start=600.0, pods=11)
    assert fresh[-1].replicas == 13
    assert fresh[-1].state.kept_floor is not None
    _, pods, demand = fresh[-1].state.kept_floor
    assert pods == 13
    assert 34.0 < demand < 40.0
    again = _replay(spec, fresh[-1].state, _alternating(30.0, 38.0, 240), start=670.0, pods=13)
    assert {d.replicas for d in again} == {13}
    assert again[-1].reason.endswith("(held: 13 pods were the fewest found to hold demand 36.3)")
    # ...but the steps of a rise that follow, each before the last one's
    # fleet ran a while, are the load's: the window takes them back, to what
    # its first step found (11 -> 12 -> 16 pods; back to 12).
    risen = _replay(spec, state, [(56.0, 8.0)] * 14, start=600.0, pods=11)
    ups = [d.replicas for d in risen if d.direction == "up"]
    assert ups[0] - 11 <= SMALL_STEP_PODS < ups[-1] - ups[0]
    assert risen[-1].state.kept_floor is not None
    assert risen[-1].state.kept_floor[1] == ups[0]
    after = _replay(spec, risen[-1].state, _alternating(30.0, 38.0, 240), start=670.0, pods=ups[-1])
    assert after[-1].replicas == ups[0]


def test_pods_an_open_load_s_clump_buys_at_once_are_kept_while_its_arrivals_hold() -> None:
    # The noisy open load of 30-38 in flight on 12 pods, at a steady 1
    # request/s: a clump of slow answers queues a dozen requests and buys 3
    # pods at once, more than the pod or two kept above. The arrivals did not
    # rise with it: the fleet fell short of the load it ran, and the load back
    # as it was holds them (let go, they were a scale-down more on a steady
    # load: 28 -> 31 -> 28 pods at 10 req/s).
    spec = _spec(maxReplicas=60)
    state = _history(spec, [38.0, 30.0] * 60, pods=12)
    calm = [_signals(running, 0.0) for running, _ in _alternating(30.0, 38.0, 240)]
    bought = _run(spec, state, [_signals(48.0, 12.0)] * 13 + calm, start=600.0, pods=12)
    ups = [d.replicas for d in bought if d.direction == "up"]
    assert len(ups) == 1
    assert ups[0] - 12 > SMALL_STEP_PODS
    assert {d.replicas for d in bought[13:]} == {ups[0]}
    assert bought[-1].reason.endswith(
        f"(held: {ups[0]} pods were the fewest found to hold demand 37.7)"
    )
    # The same clump with the arrivals up three-fold is a rise of the load,
    # whose pods the window takes back once it is over...
    risen = _run(spec, state, [_signals(48.0, 12.0, rate=3.0)] * 13 + calm, start=600.0, pods=12)
    assert [d.replicas for d in risen if d.direction == "up"] == ups
    assert risen[-1].replicas == 12
    # ...and a closed loop's arrivals (its answers) tell nothing: its quiet
    # demand of 44 on 12 pods, then a queue of 14 for one sample.
    quiet = _history(spec, [44.0] * 120, pods=12)
    queue = [_signals(48.0, 14.0)] + [_signals(44.0, 0.0)] * 80
    closed = _run(spec, quiet, queue, start=600.0, pods=12)
    assert closed[0].replicas - 12 > SMALL_STEP_PODS
    assert closed[-1].replicas == 12


def test_the_arrival_trend_starts_anew_after_refusals_and_leaves_out_the_drain() -> None:
    spec = _spec(maxReplicas=60)
    window = spec.metrics.window_seconds
    state = _history(spec, [30.0] * 20, pods=12)
    calm = state.calm_since
    assert calm == 0.0
    assert state.arrival_trend is not None
    # Refused requests while requests queue: a backlog, whose drain answers
    # faster than requests arrive. The trend starts anew...
    d = recommend(state, _signals(48, 20, errors=0.2, rate=9.0), _pods(12), spec, 100.0)
    assert d.state.calm_since is None
    assert d.state.arrival_trend is None
    # ...from the first calm tick, and takes samples only a rate window later.
    d = recommend(d.state, _signals(30, 0, rate=7.0), _pods(12), spec, 105.0)
    assert d.state.calm_since == 105.0
    assert d.state.arrival_trend is None
    d = recommend(d.state, _signals(30, 0, rate=7.0), _pods(12), spec, 105.0 + window - 5.0)
    assert d.state.arrival_trend is None
    d = recommend(d.state, _signals(30, 0, rate=1.0), _pods(12), spec, 105.0 + window)
    assert d.state.arrival_trend == (105.0 + window, 105.0 + window, 1.0, 1.0)
    # A steady rate keeps both moving means on it.
    for i in range(1, 200):
        d = recommend(d.state, _signals(30, 0, rate=1.0), _pods(12), spec, 105.0 + window + 5 * i)
    assert d.state.arrival_trend is not None
    assert d.state.arrival_trend[2] == pytest.approx(1.0)
    assert d.state.arrival_trend[3] == pytest.approx(1.0)
    # No arrival rate: no trend.
    d = recommend(d.state, _signals(30, 0, rate=None), _pods(12), spec, 2000.0)
    assert d.state.arrival_trend is None


def test_a_loop_slower_than_the_rate_window_still_follows_the_arrival_trend() -> None:
    # A 60 s loop on a 30 s rate window: samples further apart than a window
    # are the loop's pace, not a gap to start the trend anew after.
    spec = _spec(maxReplicas=60, syncPeriodSeconds=60)
    state = PolicyState()
    for i in range(60):
        state = recommend(state, _signals(30, 0, rate=2.0), _pods(12), spec, 60.0 * i).state
    assert state.arrival_trend is not None
    first, last, fast, slow = state.arrival_trend
    assert last - first >= 3000.0
    assert (fast, slow) == (pytest.approx(2.0), pytest.approx(2.0))
    # A gap of more than two periods (the loop was down) starts it anew.
    later = recommend(state, _signals(30, 0, rate=2.0), _pods(12), spec, last + 200.0).state
    assert later.arrival_trend == (last + 200.0, last + 200.0, 2.0, 2.0)


def test_a_scale_down_on_a_noisy_load_lands_on_the_mean_since_the_last_change() -> None:
    # 40 pods whose window allows one fewer (its highest recommendation is
    # 39), while the demand's mean since the last change (134, plus 1.6 σ)
    # fits 37: the step goes to 37, within the tenth-of-the-pods limit, not to
    # 39 now and further down later, each a scale-down more.
    spec = _spec(maxReplicas=60)
    down_window = spec.autoscaling.scale_down.stabilization_window_seconds
    state = _history(spec, [144.0, 136.0] * 60, pods=40)
    probe = recommend(state, _signals(144.0, 0), _pods(40), spec, 600.0)
    assert probe.direction == "down"
    assert probe.replicas == 39
    # The same window, with the demand since the last change measured lower.
    first = 600.0 - 2 * down_window - 60.0
    measured = dataclasses.replace(state, demand_since_change=(first, 595.0, 134.0))
    d = recommend(measured, _signals(144.0, 0), _pods(40), spec, 600.0)
    assert d.replicas == 37
    assert "to the mean since the last change (134)" in d.reason
    # Measured for less than the two windows a small step waits: the window's step.
    short = dataclasses.replace(state, demand_since_change=(500.0, 595.0, 134.0))
    assert recommend(short, _signals(144.0, 0), _pods(40), spec, 600.0).replicas == 39
    # The step limit still holds: a tenth of the pods.
    lower = dataclasses.replace(state, demand_since_change=(first, 595.0, 100.0))
    assert recommend(lower, _signals(144.0, 0), _pods(40), spec, 600.0).replicas == 36
    # And a change resets the mean: it is measured anew on the new fleet.
    assert d.state.demand_since_change is None


def _noisy_40_pods(p95: float) -> PolicyState:
    """40 pods under 136-144 in flight for ten minutes, the P95 signal at
    ``p95``; minReplicas holds them there while the window fills."""
    spec = _spec(maxReplicas=60, minReplicas=40)
    state = PolicyState()
    for i, value in enumerate([144.0, 136.0] * 60):
        state = recommend(state, _signals(value, 0, p95=p95), _pods(40), spec, i * 5.0).state
    return state


def test_a_step_on_a_noisy_load_goes_as_far_as_the_p95_allows() -> None:
    # The window allows one pod fewer (its highest recommendation is 39, a
    # high quantile of the noise); the fleet's P95, 10.4 s on 40 pods, would
    # be 11.24 s on 37 and stays within 93 % of the 12 s target on 38: the
    # step goes to 38 now, not to 39 now and to 38 whenever a dip of the
    # noise allows it, a scale-down more.
    spec = _spec(maxReplicas=60)
    state = _noisy_40_pods(10.4)
    assert state.fleet_p95 is not None
    assert state.fleet_p95[2:] == (pytest.approx(10.4), 40)
    d = recommend(state, _signals(144.0, 0, p95=10.4), _pods(40), spec, 600.0)
    assert d.replicas == 38
    assert "as far as the p95 allows: p95 10.4s on 40 pods would be 11.2s on 37" in d.reason
    # A P95 far under the target tells nothing about fewer pods: the window's step.
    fast = recommend(_noisy_40_pods(8.0), _signals(144.0, 0), _pods(40), spec, 600.0)
    assert fast.replicas == 39
    assert "p95 allows" not in fast.reason
    # The step limit still holds: 9.7 s on 40 pods would allow 35, a tenth is 4.
    lower = recommend(_noisy_40_pods(9.7), _signals(144.0, 0, p95=9.7), _pods(40), spec, 600.0)
    assert lower.replicas == 36
    assert lower.reason.endswith("on 34, step limit -4)")
    # A window that allows no step is not overruled, though both the P95 and
    # the demand's mean since the last change (140) would allow fewer pods:
    # the P95 says how far a step may go, not when one is due. (A cluster of
    # 164 in flight for 15 s keeps the window at 40 pods or more.)
    state_after = state
    for i, value in enumerate([164.0, 164.0, 164.0]):
        tick = recommend(state_after, _signals(value, 0, p95=10.4), _pods(40), spec, 600.0 + 5 * i)
        state_after = tick.state
        assert tick.replicas == 40
    held = recommend(state_after, _signals(136.0, 0, p95=10.4), _pods(40), spec, 615.0)
    assert held.replicas == 40
    assert "p95 allows" not in held.reason
    # The P95 guard's floor (38 pods, learnt at this demand) still holds, and says so.
    guarded = dataclasses.replace(_noisy_40_pods(9.7), guard_floor=(300.0, 38, 140.0))
    d = recommend(guarded, _signals(144.0, 0, p95=9.7), _pods(40), spec, 600.0)
    assert d.replicas == 38
    assert d.reason.endswith("on 34, no fewer than the p95 guard's 38)")


def test_a_noisy_load_steps_down_to_its_mean_and_1_6_sigma_of_spare() -> None:
    # 26-34 in flight (mean 30, σ ≈ 8.4): 30 + 1.6 σ = 43.4 requests fit 11
    # pods of 4. The spare is narrower than the 2 σ a rise must clear, since a
    # one-pod step waits two windows; from 14 pods the descent ends at 11.
    # (The noise known: its moving mean, which the spare takes, at 8.4.)
    spec = _spec(maxReplicas=60)
    quiet = _history(spec, [56.0] * 60, pods=14)
    state = dataclasses.replace(quiet, noise_mean=(0.0, 295.0, 8.0 / 0.954))
    decisions = _replay(spec, state, _alternating(26.0, 34.0, 400), start=300.0, pods=14)
    assert decisions[-1].replicas == 11
    assert all(d.direction != "up" for d in decisions)
    # Once at 13, the window drains a pod at a time (its last 12s leave it 30 s
    # after its 13s): the step waits for 11 and goes once, not 13 -> 12 -> 11.
    assert [d.replicas for d in decisions if d.direction == "down"] == [13, 11]
    assert any("(the window falls to 11 within 30s)" in d.reason for d in decisions)
    # A noise that has only begun counts at its mean so far (the quiet
    # minutes before weigh in it): the descent goes a pod further.
    fresh = _replay(spec, quiet, _alternating(26.0, 34.0, 400), start=300.0, pods=14)
    assert fresh[-1].replicas == 10
    assert fresh[-1].state.noise_mean is not None
    assert fresh[-1].state.noise_mean[2] == pytest.approx(8.0 / 0.954, rel=0.05)


def test_a_quiet_spell_of_a_noisy_load_narrows_the_spare_by_little() -> None:
    # 136-144 in flight (σ ≈ 8.4) on the 39 pods its spare keeps; then four
    # minutes within a request of 140, where one window's σ is 2: its spare
    # alone (140 + 1.6 σ) fits 36 pods, the moving mean of the noise, which
    # the spare takes, 38. The noise back, the 38 hold; a load no noisier
    # than that does not lose three pods to four quiet minutes.
    spec = _spec(maxReplicas=60)
    state = _history(spec, [136.0, 144.0] * 150, pods=39)
    quiet = [(140.0 + (1.0 if i % 2 else -1.0), 0.0) for i in range(48)]
    ds = _replay(spec, state, quiet + _alternating(136.0, 144.0, 100), start=1500.0, pods=39)
    assert [d.replicas for d in ds if d.direction != "hold"] == [38]
    assert ds[-1].state.noise_mean is not None
    assert 7.0 < ds[-1].state.noise_mean[2] < 8.0


def test_an_open_load_four_times_as_busy_keeps_its_spare_from_the_start() -> None:
    # Twenty minutes of 32-40 in flight (σ ≈ 8.4, 1.4 × Poisson's √36), then
    # a burst of 200 and four times the load with the same spread: 136-152
    # (σ ≈ 16.8, 1.4 × √144). Its spare is there at once: 144 + 1.6 σ fits
    # 43 pods, where the descent from the burst ends. (A moving mean of σ
    # itself, still half-way between the loads' σ, took the fleet to 41.)
    spec = _spec(maxReplicas=60)
    state = _history(spec, _alternating_values(32.0, 40.0, 240), pods=12)
    busier = [(200.0, 0.0)] * 6 + _alternating(136.0, 152.0, 240)
    ds = _replay(spec, state, busier, start=1200.0, pods=12)
    assert ds[0].replicas == 50
    assert [d.replicas for d in ds if d.direction == "down"] == [46, 43]
    assert ds[-1].state.noise_spread is not None
    assert ds[-1].state.noise_spread[2] == pytest.approx(8.0 / 0.954 / 6.0, rel=0.05)


def _fall_to_120_in_flight(p95: float, *, seconds: float = 300.0) -> list[Decision]:
    """40 pods busy at 160 in flight for five minutes, then 120: the demand
    alone would take them to 31, a tenth of the pods (4) at a time."""
    spec = _spec(maxReplicas=60)
    busy = _steady(spec, _signals(160, 0, p95=p95), _pods(40), seconds=300)
    assert {d.replicas for d in busy} == {40}
    return _steady(
        spec, _signals(120, 0, p95=p95), _pods(40), seconds=seconds, start=305, state=busy[-1].state
    )


def test_a_scale_down_goes_no_lower_than_the_p95_allows_on_fewer_pods() -> None:
    # Near the P95 target a fleet's P95 grows in proportion to the pods taken
    # away (P95 × pods hardly moves). A step goes no lower than the fleet on
    # which that stays under 93 % of the target (11.16 s of 12).
    # P95 far under the target: no floor (the window's highest, then as far
    # as the P95 and in-flight grown in proportion fit, then tenths).
    fast = _fall_to_120_in_flight(8.0, seconds=600)
    assert [d.replicas for d in fast if d.direction == "down"] == [39, 35, 32, 31]
    # 10.4 s on 40 pods would be 11.24 s on 37: no lower than 38.
    slower = _fall_to_120_in_flight(10.4)
    downs = [d for d in slower if d.direction == "down"]
    assert [d.replicas for d in downs[:2]] == [39, 38]
    assert "no fewer: p95 10.4s on 40 pods would be 11.2s on 37" in downs[1].reason
    # 11 s on 40 pods would be 11.28 s on 39: the fleet holds, and says why.
    slowest = _fall_to_120_in_flight(11.0)
    assert {d.replicas for d in slowest} == {40}
    assert slowest[-1].reason.endswith("(held: p95 11s on 40 pods would be 11.3s on 39)")
    # A model that takes 10 s alone has a P95 near the target at any load:
    # with a request or two on each pod the P95 says nothing about fewer pods.
    spec = _spec(maxReplicas=60)
    idle = _steady(spec, _signals(10, 0, p95=10.5), _pods(8), seconds=600)
    assert idle[-1].replicas == 3


def test_the_latency_floor_follows_the_p95_the_smaller_fleet_shows() -> None:
    # After the step to 38, the fleet's P95 is what 10.4 s on 40 pods becomes
    # on 38 (10.95 s): 38 is where it stays, for good.
    spec = _spec(maxReplicas=60)
    slower = _fall_to_120_in_flight(10.4, seconds=180)
    assert slower[-1].replicas == 38
    after = _steady(
        spec,
        _signals(120, 0, p95=10.95),
        _pods(38),
        seconds=900,
        start=305 + 185,
        state=slower[-1].state,
    )
    assert {d.replicas for d in after} == {38}
    fleet_p95 = after[-1].state.fleet_p95
    assert fleet_p95 is not None
    assert fleet_p95[2:] == (pytest.approx(10.95), 38)
    # The P95 of a busy fleet says nothing about a load that collapsed: the
    # collapse goes down at once to half the pods.
    busy = _steady(spec, _signals(160, 0, p95=11.0), _pods(40), seconds=300)
    idle = _steady(
        spec, _signals(8, 0, p95=11.0), _pods(40), seconds=60, start=305, state=busy[-1].state
    )
    first_down = next(d for d in idle if d.direction == "down")
    assert first_down.replicas == 20
    assert "load collapsed" in first_down.reason


def test_the_fleet_p95_is_taken_once_changes_and_refusals_have_left_the_window() -> None:
    spec = _spec(maxReplicas=60)
    window = spec.metrics.window_seconds
    settle = GUARD_SETTLE_WINDOWS * window + spec.autoscaling.p95_latency_target_seconds
    state = _history(spec, [40.0] * 2, pods=12)
    # A fresh state: the first P95 counts once the settle time has passed
    # since the arrivals were first calm.
    assert state.fleet_p95 is None
    for t in range(10, int(settle) + 10, 5):
        state = recommend(state, _signals(40, 0, p95=10.0), _pods(12), spec, float(t)).state
    assert state.fleet_p95 is not None
    assert state.fleet_p95[2:] == (10.0, 12)
    # Refusals (a backlog) forget it, and the drain that follows is left out.
    refused = recommend(state, _signals(48, 20, p95=25.0, errors=0.2), _pods(12), spec, 200.0)
    assert refused.state.fleet_p95 is None
    calm = recommend(refused.state, _signals(40, 0, p95=20.0), _pods(12), spec, 205.0).state
    late = recommend(calm, _signals(40, 0, p95=10.0), _pods(12), spec, 205.0 + settle).state
    assert calm.fleet_p95 is None
    assert late.fleet_p95 == (205.0 + settle, 205.0 + settle, 10.0, 12)
    # After a change the last fleet's P95 stands until the new fleet's settles.
    state = dataclasses.replace(late, changed_at=210.0 + settle)
    kept = recommend(state, _signals(40, 0, p95=10.5), _pods(11), spec, 215.0 + settle).state
    assert kept.fleet_p95 == late.fleet_p95
    moved = recommend(kept, _signals(40, 0, p95=10.5), _pods(11), spec, 210.0 + 2 * settle)
    assert moved.state.fleet_p95 == (210.0 + 2 * settle, 210.0 + 2 * settle, 10.5, 11)


def test_the_scale_down_window_keeps_its_maximum_through_a_long_fall() -> None:
    # A 1 s loop on a demand falling by a pod's worth every tick while a pod
    # still loads (no scale-down meanwhile): more falling recommendations in
    # the window than the state keeps. The window's maximum must survive, or
    # the scale-down that follows goes below what the window asked for.
    spec = _spec(maxReplicas=200, syncPeriodSeconds=1)
    window = spec.autoscaling.scale_down.stabilization_window_seconds
    assert window > MAX_HISTORY
    state = PolicyState()
    asked: list[tuple[float, int]] = []  # each tick's own recommendation
    for i in range(3 * MAX_HISTORY):
        d = recommend(state, _signals(600.0 - 4 * i, 0), _pods(150, starting=1), spec, float(i))
        assert d.direction == "hold"
        assert d.state.down[-1][0] == float(i)
        asked.append(d.state.down[-1])
        state = d.state
    assert len(state.down) <= MAX_HISTORY
    now = float(3 * MAX_HISTORY - 1)
    highest_asked = max(n for t, n in asked if t > now - window)
    assert max(n for t, n in state.down if t > now - window) >= highest_asked


def test_hysteresis_keeps_a_pod_while_the_demand_is_within_a_quarter_pod() -> None:
    spec = _spec(scaleDown={"stabilizationWindowSeconds": 0})
    # 7.5 requests fit in 2 pods of 4 but with only 0.5 spare (< 1): keep 3.
    ds = _steady(spec, _signals(7.5, 0), _pods(3), seconds=300)
    assert {d.replicas for d in ds} == {3}
    # 6.5 leaves 1.5 spare in 2 pods: go down.
    ds = _steady(spec, _signals(6.5, 0), _pods(3), seconds=300)
    assert ds[-1].replicas == 2


def test_steady_load_does_not_oscillate() -> None:
    spec = _spec()
    ds = _steady(spec, _signals(15, 0), _pods(4), seconds=1800)
    assert sum(1 for d in ds if d.direction != "hold") == 0


def test_up_stabilization_takes_the_lowest_recommendation() -> None:
    spec = _spec(scaleUp={"stabilizationWindowSeconds": 30})
    d = recommend(PolicyState(), _signals(4, 0), _pods(1), spec, now=0.0)
    state = d.state
    replicas = []
    for t in range(5, 80, 5):
        # 7 requests on one pod: two pods needed, but not a burst.
        d = recommend(state, _signals(4, 3), _pods(1), spec, now=float(t))
        state = d.state
        replicas.append(d.replicas)
    first_up = 5 * (1 + next(i for i, r in enumerate(replicas) if r == 2))
    # The 1-pod recommendation of t=0 must leave the 30 s window first.
    assert first_up >= 30
    without = recommend(PolicyState(), _signals(4, 3), _pods(1), _spec(), now=0.0)
    assert without.replicas == 2


# ------------------------------------------------------------- P95 guard


def test_p95_guard_adds_a_pod_even_when_concurrency_fits() -> None:
    d = recommend(PolicyState(), _signals(6, 0, p95=20.0, rate=2.0), _pods(2), _spec(), 100.0)
    assert d.replicas == 3
    assert "p95 over 12s" in d.reason


def test_p95_guard_never_scales_down() -> None:
    spec = _spec(scaleDown={"stabilizationWindowSeconds": 0})
    ds = _steady(spec, _signals(1, 0, p95=20.0, rate=2.0), _pods(6), seconds=300)
    assert all(d.direction != "down" for d in ds)


def test_p95_guard_waits_for_pods_it_asked_for() -> None:
    spec = _spec()
    # A pod is starting: no second pod for the same slow P95.
    d = recommend(
        PolicyState(), _signals(6, 0, p95=20.0, rate=2.0), _pods(3, 2, 1), spec, now=100.0
    )
    assert d.replicas == 3
    assert "waiting for new pods" in d.reason
    # Just after it became ready the P95 window still shows the old latency.
    d2 = recommend(d.state, _signals(6, 0, p95=20.0, rate=2.0), _pods(3), spec, now=110.0)
    assert d2.replicas == 3
    # The window turns over 72 s after the pod was ready (two windows and the
    # target); the guard then wants a window of P95 signals taken since.
    d3 = recommend(d2.state, _signals(6, 0, p95=20.0, rate=2.0), _pods(3), spec, now=200.0)
    assert d3.replicas == 3
    d4 = recommend(d3.state, _signals(6, 0, p95=20.0, rate=2.0), _pods(3), spec, now=205.0)
    assert d4.replicas == 4
    assert "p95 over 12s" in d4.reason


def test_p95_guard_does_not_buy_on_the_tail_of_a_cold_start_backlog() -> None:
    # 16 users, 7 pods ready at 60 s after a cold start; their backlog took
    # 40 s to drain, so the P95 signals fall from 29 s to just over the target
    # when the guard's wait ends, then to 9.2 s (16 users on 7 pods).
    # Averaging signals from before the wait, the guard bought an eighth pod
    # on the last one, and kept it for the hour as what it had learnt.
    spec = _spec(targetUtilization=0.9)
    d = recommend(PolicyState(), _signals(4, 8, p95=29.0, rate=0.3), _pods(7, 1, 6), spec, 55.0)
    state, current = d.state, d.replicas
    for i in range(16, 60):
        now = 5.0 * i
        p95 = 29.0 if now < 130 else 12.1 if now < 140 else 9.2
        d = recommend(state, _signals(16, 0, p95=p95, rate=2.0), _pods(current), spec, now)
        assert d.direction != "up", (now, d.reason)
        state, current = d.state, d.replicas
    assert state.guard_floor is None
    assert current == 5  # 16 requests at 3.6 a pod


def test_p95_guard_does_not_buy_on_the_tail_of_a_backlog_behind_refusals() -> None:
    # 10 pods at their cap (maxReplicas) hold 3.8 requests a second on target;
    # for 30 s their queues fill and refuse some, then the queued requests
    # finish: the P95 stays at 16 s for 90 s more, then falls back to 10 s.
    # Those are the refusals' queue, not a fleet too small: the guard waits
    # them out as it waits out new pods. A pod bought on them would be kept
    # as its lesson, and held the scale-down window up for a window more.
    spec = _spec(maxReplicas=10)
    state, guarded = PolicyState(), []
    for i in range(121):
        now = 5.0 * i
        if 300 <= now < 330:
            signals = _signals(38, 3, p95=16.0, rate=3.8, errors=0.05)
        else:
            signals = _signals(38, 0, p95=16.0 if 330 <= now < 420 else 10.0, rate=3.8)
        d = recommend(state, signals, _pods(10), spec, now)
        assert d.replicas == 10
        if "p95 over 12s" in d.reason:
            guarded.append(now)
        if now == 400:
            tail_reason = d.reason
        state = d.state
    assert guarded == []
    assert state.guard_floor is None
    assert "waiting for what queued before to leave the 30s window" in tail_reason
    # The same P95 with no refusal before it is the fleet's own: bought on.
    spec, state = _spec(maxReplicas=30), PolicyState()
    for i in range(121):
        now = 5.0 * i
        p95 = 16.0 if 300 <= now < 420 else 10.0
        d = recommend(state, _signals(38, 0, p95=p95, rate=3.8), _pods(10), spec, now)
        state = d.state
        if d.direction == "up":
            break
    assert 300 < now < 420
    assert d.replicas == 11
    assert "p95 over 12s" in d.reason


def test_p95_guard_needs_the_p95_of_several_windows_over_the_target() -> None:
    # Two minutes on target, then one window over it: on a fleet that meets the
    # target over the hour, a single window is over it now and then.
    spec = _spec()
    window = spec.metrics.window_seconds
    calm = [_signals(6, 0, p95=10.0, rate=2.0)] * int(GUARD_P95_WINDOWS * window / 5)
    state = PolicyState()
    for i, signals in enumerate(calm):
        state = recommend(state, signals, _pods(2), spec, 5.0 * i).state
    now = 5.0 * len(calm)
    d = recommend(state, _signals(6, 0, p95=14.0, rate=2.0), _pods(2), spec, now)
    assert d.replicas == 2
    assert "on target" in d.reason
    # Still over the target once it has pulled the mean of the span over it.
    for i in range(1, int(GUARD_P95_WINDOWS * window / 5) + 1):
        d = recommend(d.state, _signals(6, 0, p95=14.0, rate=2.0), _pods(2), spec, now + 5.0 * i)
        if d.replicas > 2:
            break
    assert d.replicas == 3
    assert "p95 over 12s" in d.reason
    # The mean of 10 s and 14 s crossed 12 s about halfway through the span.
    assert GUARD_P95_WINDOWS * window / 3 <= 5.0 * i <= GUARD_P95_WINDOWS * window


def test_p95_guard_keeps_the_pod_it_bought_while_the_load_lasts() -> None:
    # Concurrency says 9 requests fit in 3 pods; the P95 says they do not (an
    # open load's clusters fill single pods). The pod the guard buys is not
    # taken away again at the same demand: it would only be bought back.
    spec = _spec()
    slow, on_target = _signals(9, 0, p95=20.0, rate=2.0), _signals(9, 0, p95=9.0, rate=2.0)
    ds = _steady(spec, slow, _pods(3), seconds=600)
    bought = next(d for d in ds if d.replicas == 4)
    assert "p95 over 12s" in bought.reason
    assert bought.state.guard_floor is not None
    at, pods, demand = bought.state.guard_floor
    assert (pods, demand) == (4, 9.0)
    ds = _steady(spec, on_target, _pods(4), seconds=1800, start=at + 5, state=bought.state)
    assert {x.replicas for x in ds} == {4}
    assert "held: p95 was over target on 3 pods at demand 9" in ds[-1].reason
    # A restarted operator remembers it.
    restored = PolicyState.from_dict(json.loads(json.dumps(ds[-1].state.to_dict())))
    assert restored.guard_floor == bought.state.guard_floor
    # Once the load has clearly fallen, the lesson no longer applies.
    low = _steady(
        spec,
        _signals(3, 0, p95=8.0, rate=1.0),
        _pods(4),
        seconds=600,
        start=at + 1810,
        state=restored,
    )
    assert low[-1].replicas == 1
    assert low[-1].state.guard_floor is None


def test_a_drained_backlogs_recommendations_leave_the_window_at_once() -> None:
    # 20 pods (the most allowed) behind a backlog: 180 requests and refusals
    # for a minute ask for some 50 pods, and the window keeps them two
    # minutes. Then the backlog is gone: 40 in flight at 4 requests/s, which
    # keep 45 in flight at most (12 pods), so the 50 were the backlog's. No collapse
    # (12 is over half of 20), yet the window forgets them and the fleet steps
    # down to what the arrivals need within a rate window of the drain, not
    # two minutes later.
    spec = _spec(maxReplicas=20)
    window = spec.metrics.window_seconds
    down_window = spec.autoscaling.scale_down.stabilization_window_seconds
    state = _history(spec, [40.0] * 40, pods=20)
    backlog = [_signals(80, 100, rate=4.0, errors=0.2)] * 12
    drained = [_signals(40, 0, rate=4.0)] * 24
    ds = _run(spec, state, backlog + drained, start=200.0, pods=20)
    assert {d.replicas for d in ds[:12]} == {20}
    down = next(d for d in ds if d.direction == "down")
    assert down.replicas == 12
    assert "arrivals 4.0/s need 12" in down.reason
    at = 200.0 + 5.0 * ds.index(down)
    assert at - 260.0 <= window < down_window
    assert max(n for _, n in down.state.down) <= 12
    # A load that fell by itself, with no refusal or burst, forgets nothing:
    # 80 in flight on 21 pods, then 40 at 4 requests/s. The window keeps its
    # 21 until it has passed.
    spec = _spec(maxReplicas=21)
    steady = [_signals(80, 0, rate=8.0)] * 60
    fell = _run(spec, PolicyState(), steady + drained * 2, start=0.0, pods=21)
    first = next(d for d in fell if d.direction == "down")
    assert 5.0 * fell.index(first) >= 5.0 * (len(steady) - 1) + down_window
    assert first.replicas < 21


def test_the_p95_guard_keeps_its_pod_at_the_demand_the_fleet_ran() -> None:
    # 11 pods run 40 in flight; then the P95 goes just over the target, and
    # slower answers hold more in flight (44, the fleet's capacity). By the
    # time the mean P95 of four windows is over the target, the window's mean
    # demand is nearly all 44s. The guard buys the 12th and keeps it at the
    # demand the fleet ran since its last change: back at 37, the 12 hold,
    # where a floor at the window's mean was forgotten (37, a pod and the
    # spare fall under it).
    spec = _spec(maxReplicas=60)
    state = _history(spec, [40.0] * 200, pods=11)
    slow = [_signals(44, 0, p95=12.5, rate=4.0)] * 60
    ds = _run(spec, state, slow, start=1000.0, pods=11)
    bought = next(d for d in ds if d.direction == "up")
    assert bought.replicas == 12
    assert "p95 over 12s" in bought.reason
    assert bought.state.guard_floor is not None
    _, pods, demand = bought.state.guard_floor
    assert pods == 12
    assert 40.0 < demand < 41.5
    at = 1000.0 + 5.0 * ds.index(bought)
    back = [_signals(37, 0, p95=9.0, rate=4.0)] * 240
    after = _run(spec, bought.state, back, start=at + 5.0, pods=12)
    assert {d.replicas for d in after} == {12}
    assert "held: p95 was over target on 11 pods at demand" in after[-1].reason


def test_p95_guard_lesson_shrinks_with_the_load() -> None:
    # Learnt on 2 pods at a demand of 5: the demand can never fall a pod's
    # target and the spare below 5, yet an idle service must not keep 3 pods.
    spec = _spec()
    ds = _steady(spec, _signals(5, 0, p95=20.0, rate=2.0), _pods(2), seconds=600)
    bought = next(d for d in ds if d.replicas == 3)
    assert bought.state.guard_floor is not None
    at = bought.state.guard_floor[0]

    def then(signals: Signals) -> list[Decision]:
        return _steady(spec, signals, _pods(3), seconds=600, start=at + 5, state=bought.state)

    # A demand of 2 (with the spare, 3 of 5): the lesson still holds the pods
    # that carry as much each as the 3 did at 5, which is 2, not the 1 that
    # concurrency alone would keep.
    half = then(_signals(2, 0, p95=8.0, rate=1.0))
    assert half[-1].replicas == 2
    assert any("2 carry as much each" in d.reason for d in half)
    assert half[-1].state.guard_floor is not None
    idle = then(_signals(0, 0, p95=None, rate=0.0))
    assert idle[-1].replicas == 1
    assert [d.replicas for d in idle if d.direction == "down"] == [2, 1]


def test_without_the_p95_guard_the_same_fleet_steps_down() -> None:
    # The counterpart of the test above: it is the guard's lesson that holds.
    spec = _spec()
    on_target = _signals(9, 0, p95=9.0, rate=2.0)
    ds = _steady(spec, on_target, _pods(4), seconds=600)
    assert ds[-1].replicas == 3
    assert ds[-1].state.guard_floor is None


def test_p95_guard_ignores_a_p95_of_a_handful_of_answers() -> None:
    d = recommend(PolicyState(), _signals(2, 0, p95=20.0, rate=0.2), _pods(1), _spec(), 100.0)
    assert d.replicas == 1


# ------------------------------------------------------- start-up aware


def test_starting_pods_count_as_capacity_on_its_way() -> None:
    spec = _spec()
    first = recommend(PolicyState(), _signals(4, 12), _pods(1), spec, now=0.0)
    assert first.replicas == 4
    # A minute of model loading later the queue is still there: no second scale-up.
    state = first.state
    for t in range(5, 60, 5):
        d = recommend(state, _signals(4, 12), _pods(4, 1, 3), spec, now=float(t))
        assert d.replicas == 4, d.reason
        state = d.state


def test_a_rolling_updates_surge_pod_is_no_capacity_on_its_way() -> None:
    # The Deployment wants 4 and has 4 ready; the fifth pod, not ready, is a new
    # template's replacing an old one (maxSurge 1): 24 requests need 6 pods now, not
    # once the rollout, a model load per pod, is over.
    spec = _spec()
    surge = PodCounts(current=4, ready=4, starting=1)
    d = recommend(PolicyState(), _signals(16, 8), surge, spec, now=0.0)
    assert d.replicas == 6, d.reason
    # Pods the Deployment asked for are on their way, replacements beside them or not.
    coming = PodCounts(current=6, ready=4, starting=3)
    state = d.state
    for t in range(5, 60, 5):
        d = recommend(state, _signals(16, 8), coming, spec, now=float(t))
        assert d.replicas == 6, d.reason
        state = d.state


def test_stuck_pods_are_not_capacity_and_mark_scaling_limited() -> None:
    spec = _spec()
    d = recommend(
        PolicyState(), _signals(8, 0, p95=20.0, rate=2.0), _pods(3, 2, 1, stuck=1), spec, 100.0
    )
    # The stuck pod is not on its way, so the P95 guard may add one over the capacity (2 + 1).
    assert d.replicas == 3
    assert d.limited is not None
    assert "Pending" in d.limited


# ------------------------------------------------------ missing signals


@pytest.mark.parametrize(
    ("signals", "why"),
    [
        (_signals(None, None, None, rate=None, error="connection refused"), "metrics error"),
        (_signals(1, 0, age=120.0), "stale"),
        (_signals(math.nan, 0), "running"),
        (_signals(1, None), "waiting"),
        (_signals(1, 0, p95=math.nan), "p95"),
        (_signals(-1, 0), "running"),
    ],
)
def test_missing_signals_never_scale_down(signals: Signals, why: str) -> None:
    spec = _spec(scaleDown={"stabilizationWindowSeconds": 0})
    ds = _steady(spec, signals, _pods(5), seconds=300)
    assert all(d.replicas == 5 for d in ds)
    assert not ds[-1].signals_ok
    assert why in ds[-1].reason
    assert "never scaling down" in ds[-1].reason


@pytest.mark.parametrize(
    "signals",
    [
        _signals(1e308, 1e308),
        _signals(4, 0, rate=1e308),
        _signals(4, 0, p95=1e308),
        _signals(4, 0, errors=1e308),
        _signals(4, 0, age=math.inf),
        _signals(4, 0, age=math.nan),
    ],
)
def test_absurd_signals_are_no_signals(signals: Signals) -> None:
    # A billion requests in flight, or a scrape of infinite age, is a broken
    # exporter or query; arithmetic on it would overflow.
    spec = _spec(scaleDown={"stabilizationWindowSeconds": 0})
    ds = _steady(spec, signals, _pods(5), seconds=120)
    assert all(d.replicas == 5 for d in ds)
    assert not ds[-1].signals_ok
    assert "never scaling down" in ds[-1].reason
    json.dumps(ds[-1].state.to_dict(), allow_nan=False)  # strict JSON for the status


def test_an_outage_scales_nothing_up_on_the_samples_from_before() -> None:
    # The window still holds a busy load's samples; nothing is read now.
    busy = PolicyState(demand=((990.0, 40.0), (995.0, 40.0)))
    for broken in (
        _signals(None, None, None, rate=None, error="prometheus down"),
        _signals(40, 0, age=600.0),
    ):
        d = recommend(busy, broken, _pods(4), _spec(), 1000.0)
        assert d.replicas == 4, d.reason
        assert "still seen" not in d.reason


def test_missing_p95_still_scales_up_on_the_queue() -> None:
    d = recommend(PolicyState(), _signals(8, 20, p95=None, rate=None), _pods(2), _spec(), 0.0)
    assert d.replicas == 7
    assert not d.signals_ok
    assert "still seen" in d.reason


def test_fallback_raises_but_never_lowers() -> None:
    spec = _spec(missingSignals={"action": "Fallback", "fallbackReplicas": 4})
    error = _signals(None, None, None, rate=None, error="timeout")
    assert recommend(PolicyState(), error, _pods(2), spec, 0.0).replicas == 4
    assert recommend(PolicyState(), error, _pods(6), spec, 0.0).replicas == 6


def test_idle_service_p95_nan_is_not_missing() -> None:
    # Nothing finished in the window: P95 is NaN by construction; scaling down is fine.
    spec = _spec(scaleDown={"stabilizationWindowSeconds": 0})
    ds = _steady(spec, _signals(0, 0, p95=None, rate=0.0), _pods(3), seconds=200)
    assert ds[-1].replicas == 1
    assert ds[-1].signals_ok


def test_the_first_requests_after_idling_are_no_lost_signal() -> None:
    # They run, none has finished yet: P95 NaN, arrival rate 0, as when idle. Read as
    # missing, every first request after a quiet spell warned of lost signals.
    spec = _spec()
    d = recommend(PolicyState(), _signals(1, 0, p95=None, rate=0.0), _pods(1), spec, 0.0)
    assert d.signals_ok, d.reason
    assert "no signal" not in d.reason
    # Requests finishing while the P95 is missing: that is a missing signal.
    d = recommend(PolicyState(), _signals(1, 0, p95=None, rate=0.5), _pods(1), spec, 0.0)
    assert not d.signals_ok
    assert "no signal: p95" in d.reason


# ----------------------------------------------------------------- bounds


def test_max_replicas_caps_and_says_so() -> None:
    d = recommend(PolicyState(), _signals(4, 100), _pods(4), _spec(maxReplicas=10), 0.0)
    assert d.replicas == 10
    assert d.limited == "maxReplicas=10 reached"


def test_min_replicas_floor() -> None:
    spec = _spec(minReplicas=3, scaleDown={"stabilizationWindowSeconds": 0})
    ds = _steady(spec, _signals(0, 0, p95=None, rate=0.0), _pods(6), seconds=300)
    assert ds[-1].replicas == 3
    assert recommend(PolicyState(), _signals(0, 0), _pods(1), spec, 0.0).replicas == 3


def test_autoscaling_disabled_uses_spec_replicas() -> None:
    data = {"model": {"id": "m"}, "replicas": 3, "autoscaling": {"enabled": False}}
    spec = VLMServiceSpec.model_validate(data)
    d = recommend(PolicyState(), _signals(100, 100), _pods(1), spec, 0.0)
    assert (d.replicas, d.direction) == (3, "up")
    assert "autoscaling disabled" in d.reason
    off = VLMServiceSpec.model_validate({"model": {"id": "m"}, "autoscaling": {"enabled": False}})
    assert recommend(PolicyState(), _signals(100, 100), _pods(2), off, 0.0).replicas == 2


def test_autoscaling_disabled_still_reports_missing_signals() -> None:
    # The replicas are the spec's whatever the signals; the status must not call
    # signals read that are not.
    data = {"model": {"id": "m"}, "replicas": 3, "autoscaling": {"enabled": False}}
    spec = VLMServiceSpec.model_validate(data)
    empty = Signals(running=None, waiting=None, p95_seconds=None, arrival_rate=None,
                    error_rate=None)  # fmt: skip
    d = recommend(PolicyState(), empty, _pods(3), spec, 0.0)
    assert (d.replicas, d.signals_ok, d.autoscaling) == (3, False, False)
    assert d.signal_problems == "no signal: running, waiting, p95, arrival_rate"
    d = recommend(PolicyState(), _signals(1, 0), _pods(3), spec, 0.0)
    assert (d.replicas, d.signals_ok, d.signal_problems) == (3, True, None)


# ------------------------------------------------------------------ state


def test_state_round_trips_through_json_and_stays_small() -> None:
    spec = _spec()
    ds = _steady(spec, _signals(9, 3), _pods(2), seconds=3600, period=1.0)
    state = ds[-1].state
    text = json.dumps(state.to_dict())
    assert len(text) < 4000
    again = PolicyState.from_dict(json.loads(text))
    assert len(again.demand) <= MAX_HISTORY
    assert 0 < len(again.p95) <= MAX_HISTORY
    assert again == state
    # Same decision from the restored state as from the original.
    sig = _signals(2, 0)
    a = recommend(state, sig, _pods(4), spec, 3601.0)
    b = recommend(again, sig, _pods(4), spec, 3601.0)
    assert (a.replicas, a.reason) == (b.replicas, b.reason)


@pytest.mark.parametrize(
    "garbage",
    [
        {},
        None,
        "text",
        {"version": 99},
        {"version": 1, "down": "x"},
        {"version": 1, "demand": [[1, "a"]]},
        {"version": 1, "down": [[1.0, -3]]},
        {"version": 1, "settledAt": float("inf")},
        {"version": 1, "p95": [[1.0, None]]},
        {"version": 1, "guardFloor": [1.0, -1, 9.0]},
        {"version": 1, "guardFloor": [1.0, 4]},
        {"version": 1, "guardFloor": "x"},
        {"version": 1, "keptFloor": [1.0, -1, 9.0]},
        {"version": 1, "keptFloor": [1.0, 4]},
        {"version": 1, "demandSinceChange": [1.0, 2.0]},
        {"version": 1, "calmSince": "x"},
        {"version": 1, "arrivalTrend": [1.0, 2.0, 3.0, float("nan")]},
        {"version": 1, "arrivalTrend": [9.0, 2.0, 3.0, 3.0]},
        {"version": 1, "demandSinceChange": [9.0, 2.0, 30.0]},
        {"version": 1, "fleetP95": [1.0, 2.0, 10.0, 0]},
        {"version": 1, "fleetP95": [9.0, 2.0, 10.0, 12]},
        {"version": 1, "fleetP95": [1.0, 2.0, 10.0]},
        {"version": 1, "trusted": [9.0, 2.0]},
        {"version": 1, "trusted": [1.0]},
        {"version": 1, "readAt": "x"},
    ],
)
def test_state_from_garbage_is_fresh(garbage: Any) -> None:
    assert PolicyState.from_dict(garbage) == PolicyState()


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("settledAt", 10**400),
        ("demand", [[1.0, -100.0]]),
        ("demand", [[1.0, 10**400]]),
        ("p95", [[1.0, -2.0]]),
        ("guardFloor", [0.0, 10**400, 6.0]),
        ("guardFloor", [0.0, 3, -6.0]),
        ("keptFloor", [0.0, 3, float("nan")]),
        ("fleetP95", [990.0, 999.0, 11.5, 10**400]),
        ("fleetP95", [990.0, 999.0, 1e308, 3]),
        ("arrivalTrend", [1.0, 2.0, -3.0, 3.0]),
        ("noiseMean", [5.0, 1.0, 3.0]),
        ("noiseMean", [1.0, 2.0, float("inf")]),
        ("noiseMean", [1.0, 2.0]),
        ("noiseSpread", [5.0, 1.0, 3.0]),
        ("noiseSpread", [1.0, 2.0, -1.0]),
    ],
)
def test_a_bad_stored_field_is_forgotten_alone(key: str, bad: Any) -> None:
    # A status edited by hand loses the field, not the stabilization windows.
    good = {"version": 1, "down": [[100.0, 6]], "changedAt": 90.0}
    state = PolicyState.from_dict({**good, key: bad})
    assert state.down == ((100.0, 6),)
    assert state.changed_at == 90.0
    assert state == PolicyState.from_dict(good)
    recommend(state, _signals(4, 0), _pods(6), _spec(), 101.0)


def test_a_fleet_of_no_pods_keeps_its_state_through_the_status() -> None:
    # Scaled to 0 by hand: no fleet P95 is kept for 0 pods, so the round trip
    # through the status (which refuses one) loses nothing.
    state = PolicyState(calm_since=0.0)
    for now in (1000.0, 1005.0):
        d = recommend(state, _signals(0, 0, p95=3.0, rate=0.5), _pods(0), _spec(), now)
        assert d.replicas == 1  # minReplicas
        state = d.state
    assert state.fleet_p95 is None
    assert PolicyState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_restart_keeps_stabilization() -> None:
    spec = _spec(scaleDown={"stabilizationWindowSeconds": 120})
    busy = _steady(spec, _signals(32, 0), _pods(8), seconds=200)
    restored = PolicyState.from_dict(json.loads(json.dumps(busy[-1].state.to_dict())))
    d = recommend(restored, _signals(1, 0), _pods(8), spec, 205.0)
    assert d.replicas == 8
    assert "stabilizing" in d.reason
    # A fresh state would not even have seen the window: it holds, too (never blind).
    fresh = recommend(PolicyState(), _signals(1, 0), _pods(8), spec, 205.0)
    assert fresh.replicas == 8


def test_decisions_are_deterministic() -> None:
    spec = _spec()
    a = _steady(spec, _signals(13, 4, p95=13.0, rate=3.0), _pods(2), seconds=600)
    b = _steady(spec, _signals(13, 4, p95=13.0, rate=3.0), _pods(2), seconds=600)
    assert [(d.replicas, d.reason) for d in a] == [(d.replicas, d.reason) for d in b]


def test_no_second_step_down_before_the_first_shows_in_the_signals() -> None:
    spec = _spec(scaleDown={"stabilizationWindowSeconds": 0, "maxPodsPerStep": 1})
    ds = _steady(spec, _signals(1, 0), _pods(5), seconds=300)
    downs = [i * 5.0 for i, d in enumerate(ds) if d.direction == "down"]
    assert len(downs) == 4  # 5 → 1, one pod at a time
    gaps = [b - a for a, b in itertools.pairwise(downs)]
    assert min(gaps) >= spec.metrics.window_seconds


def test_a_queue_growing_while_pods_load_buys_no_more_pods() -> None:
    spec = _spec()
    first = recommend(PolicyState(), _signals(8, 4), _pods(2), spec, now=0.0)
    assert first.replicas == 3
    state = first.state
    for i, t in enumerate(range(5, 60, 5)):
        # The queue grows while the third pod loads (to 15 requests: 4 pods'
        # worth, but short of a burst, which would be twice the ready pods).
        d = recommend(state, _signals(8, min(5 + i, 7)), _pods(3, 2, 1), spec, now=float(t))
        assert d.replicas == 3, d.reason
        state = d.state


def test_a_noisy_steady_load_does_not_churn() -> None:
    # Open-loop demand wanders by several requests from scrape to scrape.
    spec = _spec(maxReplicas=60)
    wander = [26.0, 34.0, 29.0, 23.0, 35.0, 30.0, 27.0, 33.0, 24.0, 31.0]
    state = PolicyState()
    current = 8
    changes = []
    for i in range(360):  # 30 minutes at 5 s
        demand = wander[i % len(wander)]
        d = recommend(state, _signals(demand, 0), PodCounts(current, current, 0), spec, i * 5.0)
        if d.replicas != current:
            changes.append((i * 5.0, current, d.replicas))
        state, current = d.state, d.replicas
    after_settle = [c for c in changes if c[0] >= 300]
    assert after_settle == []


def test_a_real_step_is_not_mistaken_for_noise() -> None:
    spec = _spec(maxReplicas=60)
    state = PolicyState()
    for i in range(40):  # steady 20 for 200 s
        state = recommend(state, _signals(20, 0), _pods(5), spec, i * 5.0).state
    d1 = recommend(state, _signals(40, 0), _pods(5), spec, 200.0)
    d2 = recommend(d1.state, _signals(40, 0), _pods(5), spec, 205.0)
    # Two samples in a row at 40 need 10 pods: the single step does not widen the band.
    assert d2.replicas == 10


def test_a_burst_blocks_scale_down_for_the_burst_window() -> None:
    spec = _spec(maxReplicas=60, scaleDown={"stabilizationWindowSeconds": 0})
    state = PolicyState()
    for i in range(40):  # a long quiet history on 6 pods
        state = recommend(state, _signals(1, 0), _pods(6), spec, i * 5.0).state
    # One sample needing twice the ready pods (its scale-up not applied), then quiet.
    burst = recommend(state, _signals(4, 50), _pods(6), spec, 200.0)
    assert "burst" in burst.reason
    state = dataclasses.replace(burst.state, changed_at=None)  # isolate from the cooldown
    d = recommend(state, _signals(1, 0), _pods(6), spec, 205.0)
    assert d.direction == "hold"
    later = recommend(d.state, _signals(1, 0), _pods(6), spec, 215.0)
    assert later.direction == "down"


def test_a_pod_not_ready_past_the_timeout_on_a_node_is_not_capacity_on_its_way() -> None:
    # Two pods ready and a third in a crash loop: demand for 4 pods is met by a scale-up, not
    # held back as if the third were loading its model.
    spec = _spec()
    signals = _signals(8, 6, p95=30.0, rate=1.0)
    loading = PodCounts(current=3, ready=2, starting=1)
    held = recommend(PolicyState(), signals, loading, spec, 100.0)
    assert held.replicas == 3, held.reason
    failing = PodCounts(current=3, ready=2, starting=1, unready=1)
    d = recommend(PolicyState(), signals, failing, spec, 100.0)
    assert d.replicas > 3, d.reason
    assert d.limited is not None
    assert "not ready" in d.limited


# ------------------------------------------------------- gaps in the signals


def _back_after(
    spec: VLMServiceSpec, quiet: Signals, *, gone: float, outage: bool
) -> list[Decision]:
    """10 pods at 38 requests for 300 s; then ``gone`` seconds of failed reads
    (``outage``) or of no ticks at all (the loop was down); then ``quiet`` for 200 s."""
    busy = _steady(spec, _signals(38, 0, rate=3.0), _pods(10), seconds=300)
    state = busy[-1].state
    if outage:
        failed = _signals(None, None, None, rate=None, error="timeout")
        state = _steady(spec, failed, _pods(10), seconds=gone - 5, start=305, state=state)[-1].state
    return _steady(spec, quiet, _pods(10), seconds=200, start=305 + gone, state=state)


@pytest.mark.parametrize("outage", [True, False])
def test_after_a_gap_in_the_signals_a_step_down_waits_a_whole_window_again(outage: bool) -> None:
    # The demand fell while the signals were gone (26 requests fit 7 pods).
    # Back, the scale-down window holds one fresh recommendation: it stands
    # for the whole window only once a whole window was seen again.
    spec = _spec()
    window = spec.autoscaling.scale_down.stabilization_window_seconds
    back = _back_after(spec, _signals(26, 0, rate=2.0), gone=115.0, outage=outage)
    first_down = next(i for i, d in enumerate(back) if d.direction == "down")
    assert first_down * 5.0 == window
    assert "not seen long enough since a gap" in back[0].reason
    # Worded the same every tick it lasts (a reason that changes is a status write).
    assert len({d.reason for d in back[:first_down]}) == 1
    assert back[first_down].replicas == 9
    # The span the window was seen survives a restart (it is kept in the status).
    before = back[first_down - 1].state
    restored = PolicyState.from_dict(json.loads(json.dumps(before.to_dict())))
    assert restored.trusted == before.trusted is not None
    again = recommend(restored, _signals(26, 0, rate=2.0), _pods(10), spec, 305.0 + 115.0 + window)
    assert again.replicas == 9


def test_a_restarts_pause_is_no_gap_but_half_a_window_is() -> None:
    spec = _spec()  # syncPeriodSeconds 5, a 120 s scale-down window
    state = _steady(spec, _signals(8, 0), _pods(2), seconds=100)[-1].state
    assert state.trusted == (0.0, 100.0, 0.0)
    late = recommend(state, _signals(8, 0), _pods(2), spec, 111.0)  # 105 missed, woken late
    assert late.state.trusted == (0.0, 111.0, 0.0)
    # 60 s down: the window goes on, but a collapse waits a rate window from here.
    restarted = recommend(late.state, _signals(8, 0), _pods(2), spec, 171.0)
    assert restarted.state.trusted == (0.0, 171.0, 171.0)
    gap = recommend(restarted.state, _signals(8, 0), _pods(2), spec, 232.0)  # 61 s down
    assert gap.state.trusted == (232.0, 232.0, 232.0)
    # A short window: a couple of sync periods still are no gap.
    short = _spec(scaleDown={"stabilizationWindowSeconds": 10})
    state = _steady(short, _signals(8, 0), _pods(2), seconds=100)[-1].state
    kept = recommend(state, _signals(8, 0), _pods(2), short, 112.0).state.trusted
    assert kept == (0.0, 112.0, 0.0)
    assert recommend(state, _signals(8, 0), _pods(2), short, 113.0).state.trusted == (
        113.0,
        113.0,
        113.0,
    )


def test_a_failed_read_now_and_then_does_not_hold_the_fleet_for_good() -> None:
    # The demand falls from what fits 10 pods to what fits 7, and one read in
    # twenty fails: each failure is a tick of no signals, not a new window to
    # observe, and the fleet steps down as it would without them.
    spec = _spec()
    window = spec.autoscaling.scale_down.stabilization_window_seconds
    state = _steady(spec, _signals(38, 0, rate=3.0), _pods(10), seconds=300)[-1].state
    failed = _signals(None, None, None, rate=None, error="timeout")
    current, first_down = 10, None
    for i in range(1, 121):
        t = 300.0 + 5.0 * i
        signals = failed if i % 20 == 0 else _signals(26, 0, rate=2.0)
        d = recommend(state, signals, _pods(current), spec, t)
        if d.replicas < current and first_down is None:
            first_down = t
        state, current = d.state, d.replicas
    assert first_down is not None
    assert first_down <= 300.0 + window + 10.0
    assert current < 10


def test_after_an_outage_a_collapse_waits_a_rate_window() -> None:
    # A short outage: the busy recommendations are still in the window, and
    # the load collapsed meanwhile. It goes down once a rate window (all a
    # collapse reads) was seen again, not on the first tick back.
    spec = _spec()
    window = spec.metrics.window_seconds
    back = _back_after(spec, _signals(4, 0, rate=0.3), gone=30.0, outage=True)
    first_down = next(i for i, d in enumerate(back) if d.direction == "down")
    assert first_down * 5.0 == window
    assert "load collapsed" in back[first_down].reason


def test_a_read_seen_again_is_no_new_sample() -> None:
    # A load wandering between 38 and 46 in flight on 11 pods is within its
    # noise band. Then the reads stall (stale, but not past staleAfterSeconds):
    # the same read of 46, seen tick after tick, is no steady load of 46 to
    # scale up for.
    spec = _spec(maxReplicas=20, missingSignals={"staleAfterSeconds": 120})
    state, t = PolicyState(), 0.0
    for i in range(60):
        d = recommend(state, _signals(38 + 8 * (i % 2), 0), _pods(11), spec, t)
        assert d.replicas == 11, d.reason
        state, t = d.state, t + 5.0
    recorded = len(state.demand)
    for age in range(1, 111, 5):  # one read, older every tick
        d = recommend(state, _signals(46, 0, age=float(age)), _pods(11), spec, t)
        assert d.signals_ok
        assert d.replicas == 11, d.reason
        state, t = d.state, t + 5.0
    assert len(state.demand) <= recorded + 1


def test_a_demand_with_a_part_missing_scales_up_but_is_not_recorded() -> None:
    # 36 running and 4 waiting on 10 pods; the waiting query then fails every
    # other tick for a minute. The running count alone is a lower bound: it may
    # scale up on its tick (60 running need 15 pods), but recorded it would
    # read as the demand jumping by 4 requests every tick, a noise band that
    # hides the rise that follows.
    spec = _spec(maxReplicas=30)
    partial = recommend(PolicyState(), _signals(60, None), _pods(10), spec, 0.0)
    assert partial.replicas == 15, partial.reason
    assert "still seen" in partial.reason
    state = _steady(spec, _signals(36, 4), _pods(10), seconds=300)[-1].state
    t = 305.0
    for i in range(12):
        d = recommend(state, _signals(36, None if i % 2 == 0 else 4), _pods(10), spec, t)
        assert d.replicas == 10, d.reason
        state, t = d.state, t + 5.0
    # 40 running and 8 waiting: 12 pods, at once.
    rise = recommend(state, _signals(40, 8), _pods(10), spec, t)
    assert rise.replicas == 12, rise.reason
    assert partial.state.demand == ()


def test_a_long_scale_down_window_keeps_the_rate_window_in_its_samples() -> None:
    # An hour's scale-down window: the history is long, but the rate window's
    # samples are all kept, so a queue is seen on the tick it shows.
    spec = _spec(maxReplicas=20, scaleDown={"stabilizationWindowSeconds": 3600})
    quiet = _steady(spec, _signals(2, 0), _pods(2), seconds=600, start=1000.0)
    state = quiet[-1].state
    d = recommend(state, _signals(8, 3), _pods(2), spec, 1605.0)
    assert d.replicas == 3, d.reason
    assert len(state.demand) <= MAX_HISTORY
    window = spec.metrics.window_seconds
    assert len([t for t, _ in state.demand if t > 1600.0 - window]) == window / 5.0


def test_a_fast_loop_on_a_long_window_keeps_its_state_small_and_the_window_covered() -> None:
    spec = _spec(syncPeriodSeconds=1, scaleDown={"stabilizationWindowSeconds": 7200})
    state = PolicyState()
    for i in range(7300):
        state = recommend(state, _signals(8 + i % 3, 0), _pods(3), spec, float(i)).state
        assert len(state.demand) <= MAX_HISTORY
    now = 7299.0
    assert now - state.demand[0][0] >= 7200.0 - 7200.0 / 20  # the history, to a merge's spacing
    assert state.demand[-1] == (now, 8.0 + 7299 % 3)  # the newest, never merged
    assert len(json.dumps(state.to_dict())) < 4000


def _through_status(state: PolicyState) -> PolicyState:
    return PolicyState.from_dict(json.loads(json.dumps(state.to_dict(), allow_nan=False)))


def test_a_restart_on_a_jittery_clock_decides_as_the_running_loop_would() -> None:
    # A loop on a 5 s timer ticks a few milliseconds late; stored rounded to the
    # millisecond, a window's entry read back expired up to half a millisecond
    # early, and the restarted loop stepped down a tick before the running one.
    spec = _spec(maxReplicas=20)
    state, current = PolicyState(), 10
    for k in range(60):
        now = 1_700_000_000.0 + 5 * k + (0.0014 if k <= 30 else 0.0012)
        signals = _signals(38.0 if k <= 20 else 26.0)  # 10 pods' worth, then 7
        running = recommend(state, signals, _pods(current), spec, now)
        restarted = recommend(_through_status(state), signals, _pods(current), spec, now)
        assert (restarted.replicas, restarted.reason) == (running.replicas, running.reason), k
        state, current = running.state, running.replicas
    assert current < 10  # the load did fall, and both followed it
    assert _through_status(state) == state


def test_a_stored_field_that_does_not_parse_makes_the_window_be_seen_again() -> None:
    # The window's highest recommendation (or the wait after a change) may be
    # what was lost: no step down until a whole window has been seen again.
    spec = _spec(maxReplicas=20)
    busy = _steady(spec, _signals(38.0), _pods(10), seconds=300)
    stored = busy[-1].state.to_dict()
    intact = recommend(PolicyState.from_dict(stored), _signals(12.0), _pods(10), spec, 305.0)
    assert intact.replicas == 10
    assert "highest in 120s: 10" in intact.reason
    for key, bad in (("down", [[295.0]]), ("down", [[295.0, 10.0]]), ("changedAt", "300")):
        state = PolicyState.from_dict({**stored, key: bad})
        assert state.trusted is None, key
        d = recommend(state, _signals(12.0), _pods(10), spec, 305.0)
        assert d.replicas == 10, (key, d.reason)
    # A state with nothing wrong keeps its span; one without a field at all is no loss.
    assert PolicyState.from_dict(stored).trusted is not None
    assert PolicyState.from_dict({**stored, "guardFloor": None}).trusted is not None


def test_window_queues_longer_than_kept_merge_their_oldest_entries() -> None:
    # A queue's oldest entry is its window's extreme: cut to the newest entries
    # (read back from a longer one, or grown a step every tick), the maximum
    # the scale-down holds to, or the minimum a scale-up waits for, was lost.
    spec = _spec(maxReplicas=1000, scaleDown={"stabilizationWindowSeconds": 600})
    falling = [[float(i * 5), 120 - i] for i in range(60)]
    state = PolicyState.from_dict({**PolicyState().to_dict(), "down": falling})
    assert len(state.down) == MAX_HISTORY
    assert state.down[0][1] == 120
    held = recommend(state, _signals(240.0), _pods(120), spec, 300.0)
    assert held.replicas == 120, held.reason
    # Up: a demand rising a pod's worth a tick, under a 600 s scale-up window,
    # waits for the window's lowest recommendation to leave it.
    rising = _spec(maxReplicas=1000, scaleUp={"stabilizationWindowSeconds": 600})
    state, current = PolicyState(), 100
    for i in range(60):
        demand = 396.0 + 4 * i
        running = min(demand, 400.0)
        d = recommend(state, _signals(running, demand - running), _pods(current), rising, 5.0 * i)
        assert d.replicas == 100, (i, d.reason)
        state = d.state
    assert len(state.up) == MAX_HISTORY
    assert state.up[0][1] < 100


def test_a_restored_trend_a_float_step_before_now_is_no_division_by_zero() -> None:
    state = PolicyState.from_dict(
        {**PolicyState().to_dict(), "calmSince": 200.0, "arrivalTrend": [287.4, 287.4, 2.0, 2.0]}
    )
    d = recommend(state, _signals(4.0, rate=2.0), _pods(2), _spec(), 287.40000000000003)
    assert d.replicas == 2
    assert d.state.arrival_trend is not None
    assert d.state.arrival_trend[2] == 2.0


def test_with_a_signal_missing_it_scales_up_only_as_far_as_this_ticks_readings_ask() -> None:
    # The window's samples of 60 in flight were read while two pods loaded; now
    # all are ready, the queue's signal is missing and 6 run: no pod is bought
    # on what the window read before.
    spec = _spec(maxReplicas=50)
    state = PolicyState()
    for now in (0.0, 5.0):
        state = recommend(state, _signals(24.0, 36.0), _pods(10, starting=2), spec, now).state
    d = recommend(state, _signals(6.0, None), _pods(10), spec, 10.0)
    assert d.replicas == 10, d.reason
    assert "never scaling down" in d.reason
    assert "still seen" not in d.reason
    # A queue still seen, and more than the fleet holds, is still a scale-up.
    d = recommend(state, _signals(None, 48.0), _pods(10), spec, 10.0)
    assert d.replicas == 12, d.reason
    assert "up on the waiting+p95 still seen" in d.reason


def test_a_move_made_by_the_bounds_alone_says_so() -> None:
    # Signals failing on a fleet above a lowered maxReplicas: the one scale-down
    # made is the bound's.
    down = recommend(PolicyState(), _signals(error="refused"), _pods(8), _spec(maxReplicas=5), 0.0)
    assert down.replicas == 5
    assert "never scaling down but to maxReplicas=5" in down.reason
    # The same with the demand over the bound, read in part: no "up" in the reason.
    high = recommend(PolicyState(), _signals(40.0, None), _pods(8), _spec(maxReplicas=5), 0.0)
    assert high.replicas == 5
    assert "never scaling down but to maxReplicas=5)" in high.reason
    # A raised minReplicas moves a fleet the window holds: not "stabilizing" alone.
    up = recommend(PolicyState(), _signals(2.0), _pods(2), _spec(minReplicas=4), 0.0)
    assert up.replicas == 4
    assert "(up to minReplicas=4; stabilizing" in up.reason
