"""Status, conditions and Events of one autoscaling cycle (pure logic)."""

from __future__ import annotations

from typing import Any

from vlm_operator.models import VLMServiceSpec
from vlm_operator.policy import Decision, PodCounts, PolicyState, Signals, recommend
from vlm_operator.reconcile import deployment_index_entry, pod_counts, pod_index_entry
from vlm_operator.status import (
    INVALID_SPEC,
    METRICS_AVAILABLE,
    READY,
    SCALING_LIMITED,
    cycle_status,
    differs,
    find_condition,
    invalid_spec_conditions,
    merge_patched,
    rfc3339,
    set_condition,
    transition_events,
)

T0 = 1_800_000_000.0
GOOD = Signals(running=6.0, waiting=2.0, p95_seconds=9.0, arrival_rate=0.5, error_rate=0.0)
LOST = Signals(
    running=None, waiting=None, p95_seconds=None, arrival_rate=None, error_rate=None, error="boom"
)


def decision(replicas: int, direction: str = "hold", **kw: Any) -> Decision:
    return Decision(
        replicas=replicas,
        direction=direction,  # type: ignore[arg-type]
        reason=kw.pop("reason", f"→ {replicas} pods"),
        state=kw.pop("state", PolicyState()),
        signals_ok=kw.pop("signals_ok", True),
        limited=kw.pop("limited", None),
    )


def cycle(
    previous: dict[str, Any],
    d: Decision,
    *,
    signals: Signals = GOOD,
    pods: PodCounts | None = None,
    scaled: bool = False,
    now: float = T0,
    unscraped: int | None = 0,
) -> dict[str, Any]:
    pods = pods or PodCounts(current=2, ready=2, starting=0)
    return cycle_status(
        previous,
        decision=d,
        signals=signals,
        pods=pods,
        replicas=d.replicas if scaled else pods.current,
        scaled=scaled,
        unscraped=unscraped,
        pending_timeout_seconds=600,
        generation=3,
        now=now,
    )


def test_missing_signals_with_autoscaling_disabled_say_so_without_a_hold() -> None:
    spec = VLMServiceSpec.model_validate(
        {"model": {"id": "m"}, "replicas": 2, "autoscaling": {"enabled": False}}
    )
    empty = Signals(running=None, waiting=None, p95_seconds=None, arrival_rate=None,
                    error_rate=None)  # fmt: skip
    d = recommend(PolicyState(), empty, PodCounts(current=2, ready=2, starting=0), spec, T0)
    status = cycle({}, d, signals=empty)
    condition = find_condition(status["conditions"], METRICS_AVAILABLE)
    assert condition is not None
    assert (condition["status"], condition["reason"]) == ("False", "NoSignal")
    assert "autoscaling is disabled" in condition["message"]
    assert "never scaling down" not in condition["message"]
    # Its Event holds nothing either.
    (lost,) = transition_events({}, status, decision=d, before=2, scaled=False)
    assert (lost.type, lost.reason) == ("Warning", "SignalsLost")
    assert "holding" not in lost.message


def test_transition_time_moves_only_when_the_status_flips() -> None:
    first = set_condition([], READY, "True", "AllPodsReady", "2/2", now="t1")
    same = set_condition(first, READY, "True", "PartiallyReady", "1/2", now="t2")
    assert same[0]["lastTransitionTime"] == "t1"
    assert same[0]["reason"] == "PartiallyReady"
    flipped = set_condition(same, READY, "False", "NoPodReady", "0/2", now="t3")
    assert flipped[0]["lastTransitionTime"] == "t3"


def test_other_conditions_are_kept_and_ordered() -> None:
    foreign = [{"type": "Custom", "status": "True"}]
    out = set_condition(foreign, SCALING_LIMITED, "False", "WithinLimits", "", now="t")
    out = set_condition(out, READY, "True", "AllPodsReady", "", now="t")
    assert [c["type"] for c in out] == [READY, SCALING_LIMITED, "Custom"]


def test_invalid_spec_condition_names_the_field() -> None:
    out = invalid_spec_conditions(
        [], "spec.autoscaling.minReplicas: must be >= 0", now="t", generation=4
    )
    c = find_condition(out, INVALID_SPEC)
    assert c is not None
    assert c["status"] == "True"
    assert "minReplicas" in c["message"]
    assert c["observedGeneration"] == 4
    fixed = invalid_spec_conditions(out, None, now="t2", generation=5)
    assert find_condition(fixed, INVALID_SPEC)["status"] == "False"  # type: ignore[index]


def test_cycle_status_reports_signals_and_in_flight_per_pod() -> None:
    status = cycle({}, decision(2))
    assert status["signals"]["inFlight"] == 6.0
    assert status["signals"]["inFlightPerPod"] == 3.0
    assert status["desiredReplicas"] == 2
    assert status["lastDecision"]["reason"] == "→ 2 pods"
    assert find_condition(status["conditions"], METRICS_AVAILABLE)["status"] == "True"  # type: ignore[index]
    assert status["lastScaleTime"] is None


def test_missing_values_stay_absent_and_lost_signals_say_why() -> None:
    status = cycle({}, decision(2, signals_ok=False, reason="metrics error"), signals=LOST)
    # Explicit nulls: the status is a merge patch, and null deletes a stored value.
    assert {k for k, v in status["signals"].items() if v is not None} == {"observedAt"}
    assert status["signals"]["p95Seconds"] is None
    metrics = find_condition(status["conditions"], METRICS_AVAILABLE)
    assert metrics is not None
    assert (metrics["status"], metrics["reason"]) == ("False", "PrometheusUnavailable")
    assert metrics["message"] == "boom"


def test_events_only_on_transitions() -> None:
    steady = cycle({}, decision(2))
    up = decision(4, "up", reason="waiting=8 → 4 pods")
    after_up = cycle(steady, up, scaled=True, now=T0 + 5)
    events = transition_events(steady, after_up, decision=up, before=2, scaled=True)
    assert [(e.type, e.reason) for e in events] == [("Normal", "ScaledUp")]
    assert "2 → 4" in events[0].message
    assert after_up["lastScaleTime"] == rfc3339(T0 + 5)

    lost = decision(4, signals_ok=False, reason="metrics error")
    after_loss = cycle(after_up, lost, signals=LOST, now=T0 + 10)
    events = transition_events(after_up, after_loss, decision=lost, before=4, scaled=False)
    assert [(e.type, e.reason) for e in events] == [("Warning", "SignalsLost")]
    # Still lost one cycle later: no new Event.
    again = cycle(after_loss, lost, signals=LOST, now=T0 + 15)
    assert transition_events(after_loss, again, decision=lost, before=4, scaled=False) == []
    back = cycle(again, decision(4), now=T0 + 20)
    events = transition_events(again, back, decision=decision(4), before=4, scaled=False)
    assert [e.reason for e in events] == ["SignalsRestored"]
    metrics = find_condition(back["conditions"], METRICS_AVAILABLE)
    assert metrics is not None
    assert metrics["lastTransitionTime"] == rfc3339(T0 + 20)


def test_scaling_limited_by_stuck_pods_and_max_replicas() -> None:
    stuck = PodCounts(current=4, ready=2, starting=2, stuck=2)
    status = cycle({}, decision(4, limited="maxReplicas=4 reached"), pods=stuck)
    limited = find_condition(status["conditions"], SCALING_LIMITED)
    assert limited is not None
    assert (limited["status"], limited["reason"]) == ("True", "PodsPending")
    assert "maxReplicas=4" in limited["message"]
    status = cycle({}, decision(4, limited="maxReplicas=4 reached"))
    limited = find_condition(status["conditions"], SCALING_LIMITED)
    assert limited is not None
    assert limited["reason"] == "MaxReplicas"
    unready = PodCounts(current=4, ready=3, starting=1, unready=1)
    status = cycle(
        {}, decision(4, limited="1 pods not ready past their start-up time"), pods=unready
    )
    limited = find_condition(status["conditions"], SCALING_LIMITED)
    assert limited is not None
    assert (limited["status"], limited["reason"]) == ("True", "PodsNotReady")
    assert "not ready" in limited["message"]


def test_partial_scrape_keeps_metrics_available_with_reason() -> None:
    status = cycle({}, decision(2), unscraped=1)
    metrics = find_condition(status["conditions"], METRICS_AVAILABLE)
    assert metrics is not None
    assert (metrics["status"], metrics["reason"]) == ("True", "PartialScrape")


def test_a_cycle_that_only_refreshes_timestamps_is_not_a_change() -> None:
    first = cycle({}, decision(2))
    later = cycle(first, decision(2), now=T0 + 5)
    assert not differs(first, later)
    moved = cycle(first, decision(2), signals=GOOD.__class__(**{**GOOD.__dict__, "waiting": 3.0}))
    assert differs(first, moved)


def test_a_steady_fleet_with_jittering_signals_is_not_written_every_tick() -> None:
    # The policy's reasons quote the tick's signals; they jitter within the
    # signals' tolerance, so the status has nothing new to say.
    spec = VLMServiceSpec.model_validate({"model": {"id": "m", "runtime": "fake"}})
    pods = PodCounts(current=2, ready=2, starting=0)
    state, previous, writes = PolicyState(), dict[str, Any](), 0
    for tick in range(40):
        jitter = tick % 2
        signals = Signals(running=5.0 + 0.2 * jitter, waiting=0.0, p95_seconds=9.0 + 0.1 * jitter,
                          arrival_rate=0.6, error_rate=0.0)  # fmt: skip
        d = recommend(state, signals, pods, spec, T0 + 5 * tick)
        state = d.state
        assert d.replicas == 2
        new = cycle(previous, d, signals=signals, pods=pods, now=T0 + 5 * tick)
        if differs(previous, new):
            writes += 1
        previous = merge_patched(previous, new)
    assert writes <= 2, writes  # the first, and the reason settling once
    # A decision that changes what it says is written, with its own numbers.
    busy = Signals(running=8.0, waiting=6.0, p95_seconds=9.0, arrival_rate=0.6, error_rate=0.0)
    d = recommend(state, busy, pods, spec, T0 + 5 * 40)
    assert d.replicas > 2
    new = cycle(previous, d, signals=busy, pods=pods, now=T0 + 5 * 40, scaled=True)
    assert differs(previous, new)
    assert new["lastDecision"]["reason"] == d.reason


def test_a_lost_signal_is_not_written_every_tick_its_values_move() -> None:
    # The P95 missing while requests finish: the values the reason quotes move
    # every tick, the condition's message does not.
    spec = VLMServiceSpec.model_validate({"model": {"id": "m", "runtime": "fake"}})
    pods = PodCounts(current=2, ready=2, starting=0)
    state, previous, writes = PolicyState(), dict[str, Any](), 0
    for tick in range(12):
        signals = Signals(running=5.0 + 0.2 * (tick % 2), waiting=0.0, p95_seconds=None,
                          arrival_rate=0.5, error_rate=0.0)  # fmt: skip
        d = recommend(state, signals, pods, spec, T0 + 5 * tick)
        state = d.state
        assert not d.signals_ok
        new = cycle(previous, d, signals=signals, pods=pods, now=T0 + 5 * tick)
        if differs(previous, new):
            writes += 1
        previous = merge_patched(previous, new)
    assert writes <= 2, writes
    metrics = find_condition(previous["conditions"], METRICS_AVAILABLE)
    assert metrics is not None
    assert (metrics["status"], metrics["reason"]) == ("False", "NoSignal")
    assert metrics["message"].startswith("no signal: p95: never scaling down")


def test_a_new_cause_of_a_hold_is_written_though_the_policy_says_the_same() -> None:
    policy = "waiting=0 running=5.2 ready=2 starting=0 → 1 pods (demand fell)"
    first = cycle({}, decision(2, reason=f"2 pod(s) not scraped: not scaling down ({policy})"))
    later = cycle(first, decision(2, reason=f"3 pod(s) not scraped: not scaling down ({policy})"))
    assert not differs(first, later)  # the same words: only a count moved
    other = cycle(
        first, decision(2, reason=f"Prometheus answered in part: not scaling down ({policy})")
    )
    assert differs(first, other)
    assert other["lastDecision"]["reason"].startswith("Prometheus answered in part")


def test_pod_counts_from_the_indices() -> None:
    def pod(name: str, **status: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "metadata": {
                "name": name,
                "namespace": "ns",
                "labels": {"vlm-operator.io/service": "svc"},
                "creationTimestamp": rfc3339(T0),
            },
            "spec": {},
            "status": status,
        }
        return body

    ready = pod("a", phase="Running", conditions=[{"type": "Ready", "status": "True"}])
    ready["spec"]["nodeName"] = "n1"
    loading = pod("b", phase="Running", conditions=[{"type": "Ready", "status": "False"}])
    loading["spec"]["nodeName"] = "n1"
    pending = pod("c", phase="Pending", conditions=[{"type": "PodScheduled", "status": "False"}])
    leaving = pod("d", phase="Running")
    leaving["metadata"]["deletionTimestamp"] = rfc3339(T0)
    # Evicted under memory pressure: Failed, kept as an object until pod GC.
    evicted = pod("f", phase="Failed", reason="Evicted",
                  conditions=[{"type": "Ready", "status": "False"}])  # fmt: skip
    evicted["spec"]["nodeName"] = "n1"
    entries = [
        pod_index_entry(p)[("ns", "svc")] for p in (ready, loading, pending, leaving, evicted)
    ]
    deployment = deployment_index_entry(
        {
            "metadata": {
                "name": "svc",
                "namespace": "ns",
                "labels": {"vlm-operator.io/service": "svc"},
            },
            "spec": {"replicas": 3},
            "status": {"readyReplicas": 1},
        }
    )[("ns", "svc")]
    early = pod_counts(deployment, entries, now=T0 + 10, pending_timeout_seconds=600)
    assert early == PodCounts(current=3, ready=1, starting=2, stuck=0)
    late = pod_counts(deployment, entries, now=T0 + 601, pending_timeout_seconds=600)
    # The pod without a node is stuck; the one on a node, never ready, no longer on its way.
    assert late == PodCounts(current=3, ready=1, starting=2, stuck=1, unready=1)
    # A pod that was ready until recently (a crash loop begins) counts from then.
    relapsed = pod(
        "e",
        phase="Running",
        conditions=[{"type": "Ready", "status": "False", "lastTransitionTime": rfc3339(T0 + 500)}],
    )
    relapsed["spec"]["nodeName"] = "n1"
    entry = pod_index_entry(relapsed)[("ns", "svc")]
    assert pod_counts(deployment, [entry], now=T0 + 601, pending_timeout_seconds=600).unready == 0
    assert pod_counts(deployment, [entry], now=T0 + 1101, pending_timeout_seconds=600).unready == 1
    # A model whose start-up probe allows 900 s is still loading at 601 s, not failing.
    loading_long = pod_counts(
        deployment,
        entries,
        now=T0 + 601,
        pending_timeout_seconds=600,
        startup_budget_seconds=900,
    )
    assert (loading_long.stuck, loading_long.unready) == (1, 0)
    late = pod_counts(
        deployment, entries, now=T0 + 901, pending_timeout_seconds=600, startup_budget_seconds=900
    )
    assert late.unready == 1
    assert pod_index_entry({"metadata": {"name": "x", "labels": {}}}) == {}


def test_late_loops_still_share_their_ticks_queries() -> None:
    from vlm_operator.reconcile import signal_max_age

    tick = 1_800_000_000.0  # a multiple of 5
    assert signal_max_age(tick + 0.01, 5.0, 60) == 2.5  # on time: half a period
    assert signal_max_age(tick + 3.0, 5.0, 60) == 3.5  # 3 s late: still this tick's answers
    assert signal_max_age(tick - 0.001, 5.0, 60) == 2.5  # a hair early: this tick, not the last
    # Never as old as the previous tick's answers (fetched just after tick - 5).
    for late in (0.0, 1.0, 2.0, 4.0, 4.9):
        assert signal_max_age(tick + late, 5.0, 60) < late + 5.0 - 0.5
    # A long period with a short staleAfterSeconds: another service's answer, shared through
    # the cache, is reused only while it is far from stale.
    assert signal_max_age(tick + 0.01, 300.0, 60) == 30.0


def test_cleared_fields_are_deleted_by_the_merge_patch() -> None:
    """A field the operator stops reporting is a null in the patch, so the store drops it."""
    floor = PolicyState(
        guard_floor=(T0, 9, 30.0),
        kept_floor=(T0, 8, 30.0),
        queued_at=T0,
        demand_since_change=(1, 2, 3),
        noise_mean=(1, 2, 3.0),
        noise_spread=(1, 2, 0.5),
    )
    first = cycle({}, decision(9, state=floor))
    stored = merge_patched({}, first)
    assert stored["autoscalerState"]["guardFloor"] == [T0, 9, 30.0]
    assert stored["autoscalerState"]["keptFloor"] == [T0, 8, 30.0]
    assert stored["signals"]["p95Seconds"] == 9.0

    # Prometheus lost and the guard floor cleared: both must go from the stored status.
    second = cycle(stored, decision(6, state=PolicyState(), signals_ok=False), signals=LOST)
    assert second["autoscalerState"]["guardFloor"] is None
    stored = merge_patched(stored, second)
    for key in (
        "guardFloor",
        "keptFloor",
        "queuedAt",
        "demandSinceChange",
        "noiseMean",
        "noiseSpread",
    ):
        assert key not in stored["autoscalerState"]
    assert "p95Seconds" not in stored["signals"]
    assert "inFlightPerPod" not in stored["signals"]
    # A restarted operator reads back the state the policy holds, not a stale floor.
    assert PolicyState.from_dict(stored["autoscalerState"]) == PolicyState()
    assert PolicyState.from_dict(second["autoscalerState"]) == PolicyState()
    # And an idle cycle comparing against what is stored sees nothing new.
    third = cycle(stored, decision(6, state=PolicyState(), signals_ok=False), signals=LOST)
    assert not differs(stored, third)
