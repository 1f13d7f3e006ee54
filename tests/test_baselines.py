"""The anchors' published formulas, on hand-computed cases."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from vlm_operator.baselines import (
    HPACPU,
    HPAInFlight,
    KEDAPrometheus,
    KnativeKPA,
    Observation,
    Ours,
    RayServe,
    Scheduled,
    Static,
    hpa_desired,
    make_autoscaler,
)
from vlm_operator.models import VLMServiceSpec


def _spec(**autoscaling: Any) -> VLMServiceSpec:
    data: dict[str, Any] = {"model": {"id": "m"}, "autoscaling": {"maxReplicas": 50, **autoscaling}}
    return VLMServiceSpec.model_validate(data)


def _obs(
    now: float,
    *,
    current: int,
    ready: int | None = None,
    starting: int = 0,
    running: float | None = 0.0,
    waiting: float | None = 0.0,
    cpu: float | None = None,
    cpu_pods: int | None = None,
    p95: float | None = None,
    rate: float | None = None,
) -> Observation:
    return Observation(
        now=now,
        running=running,
        waiting=waiting,
        p95_seconds=p95,
        arrival_rate=rate,
        error_rate=0.0 if rate else None,  # 0/0 with no answers, as Prometheus has it
        cpu_utilization=cpu,
        cpu_pods=cpu_pods,
        age_seconds=1.0,
        current=current,
        ready=current - starting if ready is None else ready,
        starting=starting,
    )


@pytest.mark.parametrize(
    ("current", "ratio", "expected"),
    [
        (3, 1.05, 3),  # within the 10 % tolerance
        (3, 0.95, 3),
        (3, 1.5, 5),  # ⌈4.5⌉
        (10, 0.5, 5),
        (1, 1.11, 2),  # just outside the band: a whole pod (kubernetes#116984)
        (10, 1.09, 10),  # 10 % of 10 pods hides almost a whole pod of demand
    ],
)
def test_hpa_core_formula(current: int, ratio: float, expected: int) -> None:
    assert hpa_desired(current, ratio) == expected


def test_hpa_cpu_climbs_on_a_busy_cpu_model_and_limits_its_steps() -> None:
    hpa = HPACPU(_spec())
    # 100 % busy at 80 % target: ⌈4 × 1.25⌉ = 5.
    assert hpa.decide(_obs(0, current=4, cpu=1.0)) == 5
    # Pods not ready count as 0 %: ⌈ready × cpu / target⌉ over the ready pods only.
    assert hpa.decide(_obs(15, current=5, ready=4, starting=1, cpu=1.0)) == 5
    # Up at most max(4 pods, 100 %) per period.
    hpa2 = HPACPU(_spec(), target=0.1)
    assert hpa2.decide(_obs(0, current=2, cpu=1.0)) == 6
    assert hpa2.decide(_obs(15, current=10, cpu=1.0)) == 20


@pytest.mark.parametrize(
    ("ready", "starting", "cpu_pods", "cpu", "expected"),
    [
        # A pod ready for less than a metric window counts as 0 % on a scale-up:
        # 1 pod at 125 % of target and one at 0 % is 62.5 %, under 1: the scale holds.
        (2, 0, 1, 1.0, 2),
        # 8 pods at 125 % and one new at 0 %: 111 %, past the tolerance: ⌈1.11 × 9⌉.
        (9, 0, 8, 1.0, 10),
        # The same with the ninth pod still starting.
        (8, 1, 8, 1.0, 10),
        # 4 at 125 % and one at 0 %: 100 %, within the tolerance: the scale holds.
        (5, 0, 4, 1.0, 5),
        # A scale-down reads the pods with a sample alone: ⌈3 × 0.25⌉.
        (4, 0, 3, 0.2, 1),
        # No pod with a sample yet: no recommendation, the scale holds.
        (2, 0, 0, None, 2),
    ],
)
def test_hpa_cpu_counts_pods_without_a_whole_window_as_the_replica_calculator_does(
    ready: int, starting: int, cpu_pods: int, cpu: float | None, expected: int
) -> None:
    hpa = HPACPU(_spec())
    obs = _obs(0, current=ready + starting, ready=ready, starting=starting, cpu=cpu,
               cpu_pods=cpu_pods)  # fmt: skip
    assert hpa.decide(obs) == expected


def test_hpa_scale_down_stabilization_keeps_the_window_high() -> None:
    hpa = HPACPU(_spec())
    assert hpa.decide(_obs(0, current=8, cpu=1.0)) == 10
    # Idle for less than 300 s: the 10 of t=0 still holds.
    assert hpa.decide(_obs(150, current=10, cpu=0.0)) == 10
    assert hpa.decide(_obs(299, current=10, cpu=0.0)) == 10
    # After the window: down to the minimum (⌈10 × 0⌉ → minReplicas 1).
    assert hpa.decide(_obs(301, current=10, cpu=0.0)) == 1


def test_hpa_without_a_metric_keeps_the_scale() -> None:
    hpa = HPAInFlight(_spec())
    assert hpa.decide(_obs(0, current=3, running=None)) == 3


def test_hpa_on_in_flight_cannot_see_the_queue() -> None:
    hpa = HPAInFlight(_spec())  # target 0.75 × 4 = 3 per pod
    # Every pod at the gate's cap of 4 and 40 waiting: ⌈2 × 4/3⌉ = 3, the queue unseen.
    assert hpa.decide(_obs(0, current=2, running=8, waiting=40)) == 3


def test_hpa_on_in_flight_measures_the_sum_against_the_current_replicas() -> None:
    hpa = HPAInFlight(_spec())  # target 0.75 × 4 = 3 per pod
    # 6.2 in flight on 4 pods, 2 still starting: ⌈6.2 / 3⌉ = 3 (6.2 is within 10 %
    # of the target on the 2 ready pods, which would take both starting ones away).
    assert hpa.recommendation(_obs(0, current=4, ready=2, starting=2, running=6.2)) == 3
    # 55.2 on 20 pods is within 10 % of 20 × 3: the current 20 stay, not ⌈55.2 / 3⌉ = 19.
    assert hpa.recommendation(_obs(0, current=20, ready=16, starting=4, running=55.2)) == 20


def test_keda_reads_value_over_threshold_and_an_empty_result_as_zero() -> None:
    keda = KEDAPrometheus(_spec())  # threshold maxInFlight = 4
    assert keda.decide(_obs(0, current=1, running=8, waiting=12)) == 5
    # As fresh as the gates' scrapes: the metrics server queries at each HPA sync.
    assert keda.scrape_interval_seconds == 5.0
    # Targets gone: an empty result read as 0 → the minimum (keda#3065), after the window.
    keda2 = KEDAPrometheus(_spec())
    assert keda2.decide(_obs(0, current=6, running=20, waiting=4)) == 6
    assert keda2.decide(_obs(100, current=6, running=None, waiting=None)) == 6
    assert keda2.decide(_obs(301, current=6, running=None, waiting=None)) == 1
    # Prometheus down: the query fails, the scaler errs and the HPA keeps the scale.
    keda3 = KEDAPrometheus(_spec())
    assert keda3.decide(_obs(0, current=6, running=20, waiting=4)) == 6
    down = replace(_obs(301, current=6, running=None, waiting=None), error="connect")
    assert keda3.decide(down) == 6


def test_kpa_panics_at_twice_the_ready_pods_and_only_goes_up() -> None:
    kpa = KnativeKPA(_spec())  # target 0.7 × 4 = 2.8 per pod
    assert kpa.gate.queue_size == 40
    assert kpa.gate.full_status == 503
    # 11 concurrent on 1 pod: panic desired ⌈11 / 2.8⌉ = 4 ≥ 2 × 1.
    assert kpa.decide(_obs(0, current=1, running=4, waiting=7)) == 4
    # Still panicking a few seconds later with less load: never down.
    assert kpa.decide(_obs(2, current=4, ready=1, starting=3, running=2, waiting=0)) == 4


@pytest.mark.parametrize(("ready", "expected"), [(8, 4), (7, 3), (5, 2), (3, 1), (1, 1)])
def test_kpa_stable_mode_scales_down_at_most_by_half(ready: int, expected: int) -> None:
    # ⌊ready / 2⌋ (Knative's maxScaleDown), though the stable window wants the
    # minimum; minReplicas 1 below that.
    kpa = KnativeKPA(_spec())
    for t in range(0, 120, 2):
        decided = kpa.decide(_obs(float(t), current=ready, running=0, waiting=0))
    assert decided == expected


def test_kpa_panic_ends_a_stable_window_after_its_last_tick_over_the_threshold() -> None:
    kpa = KnativeKPA(_spec())  # target 2.8 per pod, stable window 60 s
    assert kpa.decide(_obs(0, current=1, running=4, waiting=7)) == 4  # ⌈11 / 2.8⌉ ≥ 2 × 1
    # 6 in flight on 4 ready pods: ⌈6 / 2.8⌉ = 3, under the threshold, but the
    # panic holds its 4 until a stable window has passed since t=0 (not at 60 s).
    for t in range(2, 62, 2):
        assert kpa.decide(_obs(float(t), current=4, running=6)) == 4
    assert kpa.decide(_obs(62.0, current=4, running=6)) == 3


def test_kpa_panic_takes_the_stable_count_when_higher_not_the_replicas_asked() -> None:
    kpa = KnativeKPA(_spec())
    # 56 in flight on 20 pods for 40 s (20 pods' worth: no panic), then 5.
    for t in range(0, 42, 2):
        assert kpa.decide(_obs(float(t), current=20, running=56)) == 20
    for t in range(42, 52, 2):
        kpa.decide(_obs(float(t), current=20, running=5))
    # 19 pods go: 5 in flight on the panic window are ⌈5 / 2.8⌉ = 2 pods, twice
    # the one ready: panic. The stable window still asks for 16 (its mean of
    # 44.7 in flight), and the panic goes there: it never goes down from its
    # own highest count, which starts at none, not from the 20 replicas asked.
    assert kpa.decide(_obs(52.0, current=20, ready=1, starting=19, running=5)) == 16


def test_ray_waits_its_upscale_and_downscale_delays() -> None:
    ray = RayServe(_spec())  # target 2 ongoing per replica
    assert ray.decide(_obs(0, current=1, running=4, waiting=4)) == 1
    assert ray.decide(_obs(25, current=1, running=4, waiting=4)) == 1
    assert ray.decide(_obs(30, current=1, running=4, waiting=4)) == 4
    ray2 = RayServe(_spec())
    for t in range(0, 600, 5):
        assert ray2.decide(_obs(float(t), current=4, running=0, waiting=0)) == 4
    assert ray2.decide(_obs(600, current=4, running=0, waiting=0)) == 1


def test_ray_scales_on_what_the_handles_last_pushed() -> None:
    # Handles push their look-back mean every 10 s; the controller decides on
    # that, not on the recordings made since.
    ray = RayServe(_spec(), upscale_delay=0.0)
    assert ray.decide(_obs(0, current=1, running=0, waiting=0)) == 1  # pushed: 0
    assert ray.decide(_obs(5, current=1, running=4, waiting=4)) == 1  # recorded, not pushed
    # Pushed at 10 s: the mean of 0, 8 and 8 in flight, 2 per replica.
    assert ray.decide(_obs(10, current=1, running=4, waiting=4)) == 3


def test_static_never_moves_and_has_no_gate() -> None:
    static = Static(_spec(), replicas=2)
    assert static.name == "static-2"
    assert static.gate.max_in_flight is None
    assert static.decide(_obs(0, current=2, running=100)) == 2


def test_scheduled_follows_its_plan_behind_our_gate() -> None:
    spec = _spec()
    plan = Scheduled(spec, [(30.0, 2), (10.0, 3)], initial=1)
    assert plan.gate.max_in_flight == spec.concurrency.max_in_flight
    wanted = [plan.decide(_obs(t, current=1, running=100)) for t in (5.0, 10.0, 25.0, 30.0, 99.0)]
    assert wanted == [1, 3, 3, 2, 2]


def test_ours_adapter_keeps_its_state_between_ticks() -> None:
    ours = Ours(_spec())
    assert ours.decide(_obs(0, current=1, running=4, waiting=12, p95=9.0, rate=0.5)) == 5
    assert "burst" in ours.last_reason
    assert ours.state.demand


def test_factory_knows_every_name() -> None:
    spec = _spec()
    names = ["ours", "static", "hpa-cpu", "hpa-inflight", "keda", "kpa", "ray", "static-3"]
    assert [make_autoscaler(n, spec).name for n in names] == [
        "ours",
        "static-1",
        "hpa-cpu",
        "hpa-inflight",
        "keda",
        "kpa",
        "ray",
        "static-3",
    ]


def test_ours_scrapes_at_the_pod_monitor_interval() -> None:
    assert Ours(_spec()).scrape_interval_seconds == 5.0
    fast = VLMServiceSpec.model_validate(
        {"model": {"id": "m"}, "monitoring": {"interval": "500ms"}}
    )
    assert Ours(fast).scrape_interval_seconds == 0.5
    slow = VLMServiceSpec.model_validate({"model": {"id": "m"}, "monitoring": {"interval": "1m"}})
    assert Ours(slow).scrape_interval_seconds == 60.0
