"""The operator's cycles (:mod:`vlm_operator.reconcile`) in process, against stand-ins.

The API stand-in stores the status with the semantics of a real API server's JSON
merge patch (RFC 7386: a null deletes a key, a key left out keeps its value), records
every write, and can reject a child the way an API server does (422). Prometheus is
a stand-in returning chosen signals. Each test drives ``autoscale_once`` /
``apply_spec`` cycle by cycle with explicit clocks: no sleeps, no servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import random
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any, TypeVar

import kopf
import pytest
from kopf._core.engines import posting
from vlm_operator import reconcile
from vlm_operator.kube import (
    APPLIED_KEYS_ANNOTATION,
    ApiError,
    KubeClient,
    object_path,
    predecessor_of,
)
from vlm_operator.operator_metrics import OperatorMetrics
from vlm_operator.policy import PodCounts, PolicyState, Signals, recommend
from vlm_operator.status import find_condition
from vlm_operator.validation import parse_spec

from e2e.kubeapi.builtins import canonicalize_quantities
from e2e.kubeapi.patch import merge_patch as merge
from e2e.kubeapi.resources import ResourceKind

LOG = logging.getLogger("test-reconcile")
DELETION_COST = reconcile.DELETION_COST_ANNOTATION
T0 = 1_000_000.0


class FakeKube:
    """The writes the operator makes, on an in-memory store with merge-patch semantics."""

    def __init__(self, body: dict[str, Any], replicas: int = 1) -> None:
        self.body = body
        self.replicas = replicas
        self.status_writes: list[dict[str, Any]] = []
        self.objects: dict[str, dict[str, Any]] = {}
        self.applied: list[tuple[str, dict[str, Any], tuple[tuple[str, ...], ...]]] = []
        self.deleted: list[str] = []
        self.reject: dict[str, ApiError] = {}
        #: (pod, annotations) of every annotate call.
        self.annotated: list[tuple[str, dict[str, Any]]] = []

    async def patch_status(
        self, api_version: str, plural: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        self.status_writes.append(copy.deepcopy(dict(status)))
        self.body["status"] = merge(self.body.get("status") or {}, copy.deepcopy(dict(status)))

    async def scale(self, namespace: str, name: str, replicas: int) -> None:
        self.replicas = replicas

    async def annotate(
        self, api_version: str, plural: str, namespace: str, name: str, annotations: Any
    ) -> None:
        self.annotated.append((name, dict(annotations)))

    async def apply(
        self,
        obj: Mapping[str, Any],
        *,
        omit: tuple[tuple[str, ...], ...] = (),
        create_first: bool = False,
    ) -> str:
        kind = str(obj["kind"])
        if kind in self.reject:
            raise self.reject[kind]
        path = object_path(obj)
        self.applied.append((kind, copy.deepcopy(dict(obj)), omit))
        if path in self.objects:
            patch = copy.deepcopy(dict(obj))
            for field in omit:
                node: Any = patch
                for key in field[:-1]:
                    node = node.get(key) if isinstance(node, dict) else None
                if isinstance(node, dict):
                    node.pop(field[-1], None)
            self.objects[path] = merge(self.objects[path], patch)
            return "patched"
        self.objects[path] = merge({}, copy.deepcopy(dict(obj)))
        return "created"

    async def get(self, path: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get(path))

    async def delete(self, path: str, *, uid: str | None = None) -> bool:
        self.deleted.append(path)
        return self.objects.pop(path, None) is not None


class FakeSignals:
    def __init__(self) -> None:
        self.current = Signals(
            running=0.0, waiting=0.0, p95_seconds=None, arrival_rate=0.0, error_rate=None
        )
        self.unscraped: int | None = 0
        self.load: dict[str, float] | None = {}
        #: The pods each read was told exist.
        self.pods: list[Any] = []

    async def read(self, *args: Any, **kwargs: Any) -> Signals:
        self.pods.append(kwargs.get("pods"))
        return self.current

    async def unscraped_pods(self, *args: Any, **kwargs: Any) -> int | None:
        self.pods.append(kwargs.get("pods"))
        return self.unscraped

    async def pod_load(self, *args: Any, **kwargs: Any) -> dict[str, float] | None:
        return self.load


@pytest.fixture(autouse=True)
async def kopf_posting() -> AsyncIterator[asyncio.Queue[Any]]:
    """kopf.event needs kopf's posting context; the Events land in this queue."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    posting.settings_var.set(kopf.OperatorSettings())
    posting.event_queue_var.set(queue)
    posting.event_queue_loop_var.set(asyncio.get_running_loop())
    return queue


def events(queue: asyncio.Queue[Any]) -> list[Any]:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


def vlmservice(spec: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "vlm-operator.io/v1alpha1",
        "kind": "VLMService",
        "metadata": {"name": "x", "namespace": "d", "uid": "u", "generation": generation},
        "spec": spec,
    }


def context(kube: FakeKube | KubeClient, signals: FakeSignals) -> reconcile.OperatorContext:
    return reconcile.OperatorContext(
        kube=kube,  # type: ignore[arg-type]
        signals=signals,  # type: ignore[arg-type]
        metrics=OperatorMetrics(),
    )


async def run_cycle(
    ctx: reconcile.OperatorContext,
    kube: FakeKube,
    memory: reconcile._Memory,
    now: float,
    *,
    ready: int | None = None,
) -> Any:
    deployment = {
        "replicas": kube.replicas,
        "readyReplicas": kube.replicas if ready is None else ready,
    }
    decision = await reconcile.autoscale_once(
        ctx,
        kube.body,
        memory,
        pods=[],
        deployment=deployment,
        now=now,  # type: ignore[arg-type]
    )
    memory.scaled_to = None  # the watch shows the scale at once
    return decision


def signals(running: float, p95: float | None) -> Signals:
    return Signals(
        running=running, waiting=0.0, p95_seconds=p95, arrival_rate=running / 9, error_rate=0.0
    )


# ----------------------------------------------------------------- item 1


async def test_signals_gone_from_prometheus_leave_the_stored_status() -> None:
    """p95Seconds read once and then absent must not stay in the status (nor rewrite it)."""
    body = vlmservice({"model": {"id": "m", "runtime": "fake"},
                       "autoscaling": {"syncPeriodSeconds": 1}})  # fmt: skip
    kube, sig = FakeKube(body), FakeSignals()
    ctx, memory = context(kube, sig), reconcile._Memory()
    sig.current = signals(0.0, 9.0)
    await run_cycle(ctx, kube, memory, T0)
    assert body["status"]["signals"]["p95Seconds"] == 9.0

    sig.current = signals(0.0, None)  # idle: no request finished, no P95
    writes = len(kube.status_writes)
    for i in range(1, 21):
        await run_cycle(ctx, kube, memory, T0 + i)
        assert "p95Seconds" not in body["status"]["signals"]
    # One write saying the P95 went away, none for the idle cycles after it.
    assert len(kube.status_writes) - writes == 1


# ----------------------------------------------------------------- item 2


def falling_demand(
    seed: int, high: float, low: float, sigma: float, ticks: int = 720
) -> list[Signals]:
    rnd = random.Random(seed)
    out = []
    for i in range(ticks):
        level = high if i < ticks // 2 else low  # demand falls half way
        running = max(0.0, rnd.gauss(level, sigma))
        out.append(signals(round(running), 9.0 + rnd.gauss(0, 0.2)))
    return out


@pytest.mark.parametrize(
    ("seed", "high", "low", "sigma", "start", "most"),
    [(1, 140.0, 110.0, 4.0, 40, 60), (2, 140.0, 110.0, 4.0, 40, 60)],
)
async def test_the_operator_runs_the_policy_as_the_simulator_carries_it(
    seed: int, high: float, low: float, sigma: float, start: int, most: int
) -> None:
    """Cycles whose status is not written still advance the policy's state."""
    spec_raw = {"model": {"id": "m", "runtime": "fake"}, "autoscaling": {"maxReplicas": most}}
    spec, trace = parse_spec(spec_raw), falling_demand(seed, high, low, sigma)
    state, current, carried = PolicyState(), start, []
    for i, sig in enumerate(trace):
        d = recommend(state, sig, PodCounts(current=current, ready=current, starting=0), spec,
                      T0 + 5 * i)  # fmt: skip
        state, current = d.state, d.replicas
        carried.append(current)

    kube, fake = FakeKube(vlmservice(spec_raw), replicas=start), FakeSignals()
    ctx, memory, operated = context(kube, fake), reconcile._Memory(), []
    for i, sig in enumerate(trace):
        fake.current = sig
        await run_cycle(ctx, kube, memory, T0 + 5 * i)
        operated.append(kube.replicas)
    assert len(kube.status_writes) < len(trace)  # the case at hand: unwritten cycles
    assert operated == carried
    # The status still carries the state, for a restart.
    stored = PolicyState.from_dict(kube.body["status"]["autoscalerState"])
    assert stored.down[-1][0] >= T0 + 5 * (len(trace) - 1) - 30


# ----------------------------------------------------------------- item 3


async def test_a_partial_answer_blocks_scale_down() -> None:
    spec_raw = {
        "model": {"id": "m", "runtime": "fake"},
        "autoscaling": {"syncPeriodSeconds": 1, "scaleDown": {"stabilizationWindowSeconds": 2}},
    }
    kube, fake = FakeKube(vlmservice(spec_raw), replicas=3), FakeSignals()
    ctx, memory = context(kube, fake), reconcile._Memory()
    fake.current = replace(signals(1.0, 8.0), partial="store eu-1 is down")
    for i in range(30):  # well past the 2 s stabilization
        await run_cycle(ctx, kube, memory, T0 + i)
    assert kube.replicas == 3
    status = kube.body["status"]
    assert "answered in part (store eu-1 is down)" in status["lastDecision"]["reason"]
    metrics = next(c for c in status["conditions"] if c["type"] == "MetricsAvailable")
    assert (metrics["status"], metrics["reason"]) == ("True", "PartialAnswer")
    # A rise still scales up on what was seen.
    fake.current = replace(signals(12.0, 8.0), waiting=6.0, partial="store eu-1 is down")
    for i in range(30, 33):
        await run_cycle(ctx, kube, memory, T0 + i)
    assert kube.replicas > 3


async def test_the_signals_are_read_for_the_pods_that_exist() -> None:
    # Series of pods gone (deleted while Prometheus was down) are not load: the reader
    # is told which pods exist, a terminating one included (it still serves).
    spec_raw = {"model": {"id": "m", "runtime": "fake"}, "autoscaling": {"syncPeriodSeconds": 1}}
    kube, fake = FakeKube(vlmservice(spec_raw), replicas=2), FakeSignals()
    ctx, memory = context(kube, fake), reconcile._Memory()
    pods = [
        {"name": "x-1", "ready": True},
        {"name": "x-2", "ready": True, "terminating": True},
        {"name": "x-3", "ready": False, "unreadySince": T0},
    ]
    deployment = {"replicas": 2, "readyReplicas": 2}
    await reconcile.autoscale_once(ctx, kube.body, memory, pods=pods, deployment=deployment, now=T0)
    assert fake.pods == [{"x-1", "x-2", "x-3"}] * 2  # the signals, the failed scrapes


@pytest.mark.parametrize("unscraped", [None, 0])
async def test_an_unknown_unscraped_count_blocks_scale_down(unscraped: int | None) -> None:
    spec_raw = {
        "model": {"id": "m", "runtime": "fake"},
        "autoscaling": {"syncPeriodSeconds": 1, "scaleDown": {"stabilizationWindowSeconds": 2}},
    }
    kube, fake = FakeKube(vlmservice(spec_raw), replicas=3), FakeSignals()
    ctx, memory = context(kube, fake), reconcile._Memory()
    fake.current, fake.unscraped = signals(1.0, 8.0), unscraped
    for i in range(30):  # well past the 2 s stabilization
        await run_cycle(ctx, kube, memory, T0 + i)
    status = kube.body["status"]
    metrics = next(c for c in status["conditions"] if c["type"] == "MetricsAvailable")
    if unscraped is None:  # the `up == 0` query failed
        assert kube.replicas == 3
        assert "unknown" in status["lastDecision"]["reason"]
        assert "not scaling down" in status["lastDecision"]["reason"]
        assert metrics["reason"] == "ScrapeStatusUnknown"
        assert "no scale-down" in metrics["message"]
        # Every pod known scraped again: the window is seen whole again before a step down.
        fake.unscraped = 0
        await run_cycle(ctx, kube, memory, T0 + 30)
        assert kube.replicas == 3
        for i in range(31, 40):
            await run_cycle(ctx, kube, memory, T0 + i)
        assert kube.replicas < 3
    else:  # the control: known to be all scraped, the same load scales down
        assert kube.replicas < 3
        assert metrics["reason"] == "SignalsRead"


async def test_a_scale_down_ranks_pods_by_their_load_or_by_none() -> None:
    spec_raw = {
        "model": {"id": "m", "runtime": "fake"},
        "autoscaling": {"syncPeriodSeconds": 1, "scaleDown": {"stabilizationWindowSeconds": 2}},
    }
    kube, fake = FakeKube(vlmservice(spec_raw), replicas=3), FakeSignals()
    ctx = context(kube, fake)
    pods = [
        {"name": "x-1", "ready": True, "deletionCost": "0"},
        {"name": "x-2", "ready": True, "deletionCost": "400"},
        {"name": "x-3", "ready": True},
    ]
    fake.current = signals(1.0, 8.0)

    async def scale_down() -> None:
        memory = reconcile._Memory()
        kube.replicas = 3
        for i in range(30):  # well past the window
            deployment = {"replicas": kube.replicas, "readyReplicas": kube.replicas}
            await reconcile.autoscale_once(
                ctx, kube.body, memory, pods=pods, deployment=deployment, now=T0 + i
            )
            memory.scaled_to = None
            if kube.replicas < 3:
                return
        raise AssertionError("no scale-down")

    fake.load = {"x-1": 4.0}
    await scale_down()
    assert sorted(kube.annotated) == [
        ("x-1", {DELETION_COST: "400"}),
        ("x-2", {DELETION_COST: "0"}),
        ("x-3", {DELETION_COST: "0"}),
    ]
    # The load unknown: what an earlier scale-down marked is taken off, not trusted.
    kube.annotated.clear()
    fake.load = None
    await scale_down()
    cleared = {DELETION_COST: None}
    assert sorted(kube.annotated) == [("x-1", cleared), ("x-2", cleared)]


@pytest.mark.parametrize("unscraped", [None, 1])
async def test_a_hold_on_partial_signals_still_obeys_a_lowered_max_replicas(
    unscraped: int | None,
) -> None:
    spec_raw = {
        "model": {"id": "m", "runtime": "fake"},
        "autoscaling": {"syncPeriodSeconds": 1, "maxReplicas": 3},
    }
    kube, fake = FakeKube(vlmservice(spec_raw), replicas=6), FakeSignals()
    ctx, memory = context(kube, fake), reconcile._Memory()
    fake.current, fake.unscraped = signals(20.0, 8.0), unscraped
    await run_cycle(ctx, kube, memory, T0)
    assert kube.replicas == 3
    reason = kube.body["status"]["lastDecision"]["reason"]
    assert "not scaling down but to maxReplicas=3" in reason
    # Below the cap the hold holds.
    fake.current = signals(1.0, 8.0)
    for i in range(1, 30):
        await run_cycle(ctx, kube, memory, T0 + i)
    assert kube.replicas == 3


async def test_pods_ready_long_enough_must_have_series_and_a_lagging_index_holds() -> None:
    # Idle load on 6 pods: the policy wants fewer.
    spec_raw = {"model": {"id": "m", "runtime": "fake"}, "autoscaling": {"syncPeriodSeconds": 5}}
    kube, fake = FakeKube(vlmservice(spec_raw), replicas=6), FakeSignals()
    ctx, memory = context(kube, fake), reconcile._Memory()
    fake.current = signals(1.0, 8.0)
    ready_for = {"x-0": 3600.0, "x-1": 3600.0, "x-2": 59.0}  # staleAfterSeconds: 60
    told: list[Any] = []
    unscraped_pods = fake.unscraped_pods

    async def recorded(*args: Any, **kwargs: Any) -> int | None:
        told.append(sorted(kwargs["ready"]))
        return await unscraped_pods(*args, **kwargs)

    fake.unscraped_pods = recorded  # type: ignore[method-assign]

    async def cycle(now: float, ready_replicas: int) -> None:
        pods = [
            {"name": pod, "ready": True, "unreadySince": now - age}
            for pod, age in ready_for.items()
        ]
        deployment = {"replicas": kube.replicas, "readyReplicas": ready_replicas}
        await reconcile.autoscale_once(ctx, kube.body, memory, pods=pods, deployment=deployment,
                                       now=now)  # fmt: skip

    await cycle(T0, 3)
    # The pods whose series the signals must show: ready for staleAfterSeconds.
    assert told == [["x-0", "x-1"]]
    # The Deployment counts 6 ready pods, the index 3, and the gauges hold series of
    # pods the index does not show: dropped as gone, they may be live. No scale-down.
    fake.load = {"x-0": 1.0, "x-3": 2.0}
    for i in range(1, 80):  # 400 s of 5 s cycles: past any stabilization window
        await cycle(T0 + 5 * i, 6)
    assert kube.replicas == 6
    condition = find_condition(kube.body["status"]["conditions"], "MetricsAvailable")
    assert condition is not None
    assert condition["reason"] == "PartialScrape"
    # Caught up (or no series of an unseen pod): the scale-down goes ahead.
    for i in range(80, 160):
        await cycle(T0 + 5 * i, 3)
    assert kube.replicas < 6


async def test_with_autoscaling_off_partial_signals_hold_nothing() -> None:
    spec_raw = {
        "model": {"id": "m", "runtime": "fake"},
        "replicas": 2,
        "autoscaling": {"enabled": False, "syncPeriodSeconds": 1},
    }
    kube, fake = FakeKube(vlmservice(spec_raw), replicas=5), FakeSignals()
    ctx, memory = context(kube, fake), reconcile._Memory()
    fake.current, fake.unscraped = signals(1.0, 8.0), 1
    await run_cycle(ctx, kube, memory, T0)
    assert kube.replicas == 2


async def test_failed_signals_are_reported_as_the_policy_says_not_as_unscraped_pods() -> None:
    # With the signals failed, the `up == 0` query is never sent: its unknown answer
    # is no news, and the reason names the failure.
    spec_raw = {"model": {"id": "m", "runtime": "fake"}, "autoscaling": {"syncPeriodSeconds": 1}}
    kube, fake = FakeKube(vlmservice(spec_raw), replicas=3), FakeSignals()
    ctx, memory = context(kube, fake), reconcile._Memory()
    fake.current = Signals(
        running=None,
        waiting=None,
        p95_seconds=None,
        arrival_rate=None,
        error_rate=None,
        error="connection refused",
    )
    for i in range(5):
        await run_cycle(ctx, kube, memory, T0 + i)
    reason = kube.body["status"]["lastDecision"]["reason"]
    assert kube.replicas == 3
    assert "connection refused" in reason
    assert "scraped" not in reason

    def available() -> tuple[str, float | None]:
        condition = find_condition(kube.body["status"]["conditions"], "MetricsAvailable")
        assert condition is not None
        gauge = ctx.metrics.registry.get_sample_value(
            "vlm_operator_signals_available", {"namespace": "d", "vlmservice": "x"}
        )
        return condition["status"], gauge

    # The operator's gauge says what the condition says, for the service's alert.
    assert available() == ("False", 0.0)
    fake.current = signals(4.0, 9.0)
    await run_cycle(ctx, kube, memory, T0 + 5)
    assert available() == ("True", 1.0)


# ----------------------------------------------------------------- item 4

DEPLOYMENT = "/apis/apps/v1/namespaces/d/deployments/x"


async def test_autoscaling_off_without_replicas_keeps_the_fleet() -> None:
    spec_raw: dict[str, Any] = {"model": {"id": "m", "runtime": "fake"}}
    body = vlmservice(spec_raw)
    kube = FakeKube(body)
    ctx = context(kube, FakeSignals())
    await reconcile.apply_spec(ctx, body, created=True, logger=LOG)
    assert kube.objects[DEPLOYMENT]["spec"]["replicas"] == 1  # minReplicas
    kube.objects[DEPLOYMENT]["spec"]["replicas"] = 7  # the autoscaler's choice

    body["spec"] = {**spec_raw, "autoscaling": {"enabled": False}}
    body["metadata"]["generation"] = 2
    await reconcile.apply_spec(ctx, body, created=False, logger=LOG)
    assert kube.objects[DEPLOYMENT]["spec"]["replicas"] == 7  # kept, not dropped to 1
    decision = await reconcile.autoscale_once(
        ctx, body, reconcile._Memory(), pods=[],
        deployment={"replicas": 7, "readyReplicas": 7}, now=T0,
    )  # fmt: skip
    assert decision is not None
    assert decision.replicas == 7
    assert "kept 7" in decision.reason

    # spec.replicas set: the spec rules.
    body["spec"] = {**spec_raw, "replicas": 2, "autoscaling": {"enabled": False}}
    body["metadata"]["generation"] = 3
    await reconcile.apply_spec(ctx, body, created=False, logger=LOG)
    assert kube.objects[DEPLOYMENT]["spec"]["replicas"] == 2


# ----------------------------------------------------------------- item 5

SERVICE = "/api/v1/namespaces/d/services/x"


async def test_children_deleted_or_edited_by_hand_come_back(
    kopf_posting: asyncio.Queue[Any],
) -> None:
    spec_raw = {"model": {"id": "m", "runtime": "fake"}, "autoscaling": {"syncPeriodSeconds": 5}}
    body = vlmservice(spec_raw)
    kube, fake = FakeKube(body, replicas=4), FakeSignals()
    ctx, memory = context(kube, fake), reconcile._Memory()
    await reconcile.apply_spec(ctx, body, created=True, logger=LOG)
    fake.current = signals(8.0, 8.0)
    await run_cycle(ctx, kube, memory, T0 - 5)  # four pods, all ready
    assert condition_of(body["status"], "Ready") == ("True", "AllPodsReady")
    events(kopf_posting)
    rendered_ports = copy.deepcopy(kube.objects[SERVICE]["spec"]["ports"])
    kube.objects[DEPLOYMENT]["spec"]["replicas"] = 4  # the autoscaler's count

    # The Deployment deleted by hand (the index no longer has it): recreated once
    # it has been missing for the grace (a shorter absence is the watch lagging).
    del kube.objects[DEPLOYMENT]
    del kube.objects[SERVICE]
    recreated_at = None
    for i in range(int(ctx.missing_grace_seconds // 5) + 3):  # 5 s cycles, bounded
        now = T0 + 5 * i
        assert (
            await reconcile.autoscale_once(ctx, body, memory, pods=[], deployment=None, now=now)
            is None
        )
        if DEPLOYMENT in kube.objects:
            recreated_at = 5 * i
            break
    assert recreated_at is not None
    assert ctx.missing_grace_seconds <= recreated_at <= ctx.missing_grace_seconds + 5
    assert SERVICE in kube.objects
    # With as many pods as the autoscaler had, not minReplicas' one.
    assert kube.objects[DEPLOYMENT]["spec"]["replicas"] == memory.replicas == 4
    # Said so, once; and the status no longer claims the gone pods ready.
    told = [(e.type, e.reason) for e in events(kopf_posting)]
    assert told == [("Warning", "DeploymentMissing")]
    assert condition_of(body["status"], "Ready") == ("False", "DeploymentMissing")

    # A hand edit of a child is reverted by the periodic re-apply, replicas left alone.
    kube.objects[SERVICE]["spec"]["ports"] = [{"name": "hacked", "port": 1}]
    kube.objects[DEPLOYMENT]["spec"]["replicas"] = 4
    kube.objects[DEPLOYMENT]["spec"]["minReadySeconds"] = 99  # not ours: left alone
    reverted_at = None
    for i in range(1, int(ctx.children_refresh_seconds // 5) + 3):  # 5 s cycles, bounded
        await run_cycle(ctx, kube, memory, T0 + recreated_at + 5 * i)
        if kube.objects[SERVICE]["spec"]["ports"] == rendered_ports:
            reverted_at = 5 * i
            break
    assert reverted_at is not None
    assert reverted_at <= ctx.children_refresh_seconds + 5
    assert kube.objects[DEPLOYMENT]["spec"]["replicas"] == 4
    assert ("spec", "replicas") in kube.applied[-3][2]  # omitted from the Deployment's patch


@pytest.mark.parametrize(("status_replicas", "restored"), [(7, 5), (0, 2), (None, 2)])
async def test_a_restarted_operator_restores_a_deleted_deployment_at_the_status_count(
    status_replicas: int | None, restored: int
) -> None:
    # No cycle of this operator counted the pods: the status's count, within the bounds
    # (minReplicas 2, maxReplicas 5); none known, the rendering's minReplicas.
    spec_raw = {
        "model": {"id": "m", "runtime": "fake"},
        "autoscaling": {"syncPeriodSeconds": 5, "minReplicas": 2, "maxReplicas": 5},
    }
    body = vlmservice(spec_raw)
    kube = FakeKube(body)
    ctx, memory = context(kube, FakeSignals()), reconcile._Memory()
    await reconcile.apply_spec(ctx, body, created=True, logger=LOG)
    if status_replicas is not None:
        body["status"] = {"replicas": status_replicas}
    del kube.objects[DEPLOYMENT]
    for i in range(int(ctx.missing_grace_seconds // 5) + 3):  # 5 s cycles, bounded
        await reconcile.autoscale_once(ctx, body, memory, pods=[], deployment=None, now=T0 + 5 * i)
        if DEPLOYMENT in kube.objects:
            break
    assert kube.objects[DEPLOYMENT]["spec"]["replicas"] == restored


PDB = "/apis/policy/v1/namespaces/d/poddisruptionbudgets/x"


async def test_a_deleted_service_or_budget_comes_back_at_the_next_cycle() -> None:
    spec_raw = {"model": {"id": "m", "runtime": "fake"}, "autoscaling": {"syncPeriodSeconds": 5}}
    body = vlmservice(spec_raw)
    kube = FakeKube(body)
    ctx, memory = context(kube, FakeSignals()), reconcile._Memory()
    await reconcile.apply_spec(ctx, body, created=True, logger=LOG)
    await run_cycle(ctx, kube, memory, T0)  # the loop's first cycle
    service = kube.objects.pop(SERVICE)
    reconcile.child_deleted(ctx, service)  # no loop runs for "x" in this context: no one to tell
    await run_cycle(ctx, kube, memory, T0 + 5)
    assert SERVICE not in kube.objects

    ctx.loops[("d", "x")] = memory
    other = copy.deepcopy(service)
    other["metadata"]["labels"] = {}  # not a VLMService's child
    reconcile.child_deleted(ctx, other)
    await run_cycle(ctx, kube, memory, T0 + 10)
    assert SERVICE not in kube.objects
    reconcile.child_deleted(ctx, service)
    await run_cycle(ctx, kube, memory, T0 + 15)
    assert SERVICE in kube.objects  # the next cycle, not the 10-minute refresh

    budget = kube.objects.pop(PDB)
    reconcile.child_deleted(ctx, budget)
    kube.reject["Service"] = ApiError(500, "Internal Server Error", "etcd is slow")
    await run_cycle(ctx, kube, memory, T0 + 20)  # the re-apply fails half-way
    assert PDB not in kube.objects
    del kube.reject["Service"]
    await run_cycle(ctx, kube, memory, T0 + 25)  # the next cycle tries again
    assert PDB in kube.objects
    applied = len(kube.applied)
    await run_cycle(ctx, kube, memory, T0 + 30)  # once per deletion seen
    assert len(kube.applied) == applied


# ----------------------------------------------------------------- item 6

REJECTION = {
    "kind": "Status",
    "status": "Failure",
    "reason": "Invalid",
    "message": 'Deployment.apps "x" is invalid',
    "details": {
        "causes": [
            {
                "field": "spec.template.spec.containers[0].resources.limits",
                "message": "Invalid value: must be less than or equal to cpu limit",
            }
        ]
    },
}


async def test_a_child_the_api_rejects_is_reported_and_retried_with_backoff(
    kopf_posting: asyncio.Queue[Any],
) -> None:
    spec_raw = {"model": {"id": "m", "runtime": "fake"}, "autoscaling": {"syncPeriodSeconds": 1}}
    body = vlmservice(spec_raw)
    kube = FakeKube(body)
    kube.reject["Deployment"] = ApiError(422, "Unprocessable Entity", json.dumps(REJECTION))
    ctx, memory = context(kube, FakeSignals()), reconcile._Memory()
    await reconcile.apply_spec(ctx, body, created=True, logger=LOG)  # no TemporaryError
    condition = next(c for c in body["status"]["conditions"] if c["type"] == "InvalidSpec")
    assert (condition["status"], condition["reason"]) == ("True", "ChildRejected")
    assert "Deployment x" in condition["message"]
    assert "spec.template.spec.containers[0].resources.limits" in condition["message"]
    assert "less than or equal to cpu limit" in condition["message"]
    posted = events(kopf_posting)
    assert [(e.type, e.reason) for e in posted] == [("Warning", "ChildRejected")]
    assert SERVICE in kube.objects  # the other children still applied

    # The loop retries (the Deployment is missing), backing off: not every 1 s cycle.
    before = len(kube.applied)
    for i in range(1, 121):
        await reconcile.autoscale_once(ctx, body, memory, pods=[], deployment=None, now=T0 + i)
    attempts = (len(kube.applied) - before) // 2  # Service and PDB go through each time
    assert 1 <= attempts <= 5
    assert len(events(kopf_posting)) <= 1  # the same rejection is not re-announced

    # Accepted again: the condition clears on the next attempt.
    del kube.reject["Deployment"]
    for i in range(121, 800):
        await reconcile.autoscale_once(ctx, body, memory, pods=[], deployment=None, now=T0 + i)
        if DEPLOYMENT in kube.objects:
            break
    assert DEPLOYMENT in kube.objects
    condition = next(c for c in body["status"]["conditions"] if c["type"] == "InvalidSpec")
    assert condition["status"] == "False"


@pytest.mark.parametrize(
    ("message", "rejected"),
    [
        # An admission webhook (Kyverno, Gatekeeper) denies with 403 unless it sets a code.
        ('admission webhook "policy.example.com" denied the request: no hostPath', True),
        # RBAC's 403 is the operator's permissions: retried, the spec is not blamed.
        ('deployments.apps "x" is forbidden: User "system:serviceaccount:vlm:op" cannot '
         'create resource "deployments" in API group "apps" in the namespace "ns"', False),
    ],
)  # fmt: skip
async def test_a_child_an_admission_webhook_refuses_is_the_specs(
    kopf_posting: asyncio.Queue[Any], message: str, rejected: bool
) -> None:
    body = vlmservice({"model": {"id": "m", "runtime": "fake"}})
    kube = FakeKube(body)
    denial = {"kind": "Status", "status": "Failure", "reason": "Forbidden", "message": message}
    kube.reject["Deployment"] = ApiError(403, "Forbidden", json.dumps(denial))
    ctx = context(kube, FakeSignals())
    if not rejected:
        # Tried again, after a wait that doubles with kopf's count of failures: no
        # retry mends a missing permission before someone grants it.
        first, longest = ctx.rejected_backoff_seconds
        for retry, wait in ((0, first), (1, 2 * first), (3, 8 * first), (40, longest)):
            with pytest.raises(kopf.TemporaryError) as failed:
                await reconcile.apply_spec(ctx, body, created=True, logger=LOG, retry=retry)
            assert failed.value.delay == wait
            assert "cannot create resource" in str(failed.value)
        # A passing failure (the API server restarting) is tried again soon, whatever the count.
        kube.reject["Deployment"] = ApiError(503, "Service Unavailable", "etcd leader changed")
        with pytest.raises(kopf.TemporaryError) as failed:
            await reconcile.apply_spec(ctx, body, created=True, logger=LOG, retry=5)
        assert failed.value.delay == 5
        return
    await reconcile.apply_spec(ctx, body, created=True, logger=LOG)  # no TemporaryError
    condition = next(c for c in body["status"]["conditions"] if c["type"] == "InvalidSpec")
    assert (condition["status"], condition["reason"]) == ("True", "ChildRejected")
    assert "denied the request: no hostPath" in condition["message"]
    assert SERVICE in kube.objects  # the children after it still applied


async def test_spec_warnings_are_reported(kopf_posting: asyncio.Queue[Any]) -> None:
    body = vlmservice({"model": {"id": "m", "runtime": "llamacpp"}})  # no storage for its files
    kube = FakeKube(body)
    await reconcile.apply_spec(context(kube, FakeSignals()), body, created=True, logger=LOG)
    condition = next(c for c in body["status"]["conditions"] if c["type"] == "SpecWarnings")
    assert condition["status"] == "True"
    assert "spec.model.storage" in condition["message"]
    posted = [(e.type, e.reason) for e in events(kopf_posting)]
    assert ("Warning", "SpecWarning") in posted


# ----------------------------------------------------------------- item 7


class GatedSignals(FakeSignals):
    """Prometheus answers only when the test lets it."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        #: Set once a read waits at the gate.
        self.waiting = asyncio.Event()

    async def read(self, *args: Any, **kwargs: Any) -> Signals:
        self.waiting.set()
        await self.gate.wait()
        return self.current

    async def wait_for_a_read(self) -> None:
        await asyncio.wait_for(self.waiting.wait(), timeout=10)
        self.waiting.clear()


def invalid_spec(body: Mapping[str, Any]) -> tuple[str, str]:
    condition = next(c for c in body["status"]["conditions"] if c["type"] == "InvalidSpec")
    return condition["status"], condition["reason"]


async def test_a_cycle_does_not_overwrite_the_validity_of_a_newer_spec() -> None:
    body = vlmservice({"model": {"id": "m", "runtime": "fake"}})
    kube, sig = FakeKube(body), GatedSignals()
    ctx, memory = context(kube, sig), reconcile._Memory()
    await reconcile.apply_spec(ctx, body, created=True, logger=LOG)
    assert invalid_spec(body) == ("False", "SpecValid")
    deployment = {"replicas": 1, "readyReplicas": 1}
    cycle = asyncio.create_task(
        reconcile.autoscale_once(ctx, body, memory, pods=[], deployment=deployment, now=T0)
    )
    await sig.wait_for_a_read()  # the cycle waits on Prometheus
    body["spec"]["autoscaling"] = {"minReplicas": 6, "maxReplicas": 2}
    body["metadata"]["generation"] = 2
    await reconcile.apply_spec(ctx, body, created=False, logger=LOG)
    assert invalid_spec(body) == ("True", "ValidationFailed")
    sig.gate.set()
    await asyncio.wait_for(cycle, timeout=10)
    assert invalid_spec(body) == ("True", "ValidationFailed")

    # Same generation, but the spec's handler wrote after the cycle started
    # (a resume, or the watch showing the spec change late): its condition stays.
    body["spec"]["autoscaling"] = {}
    await reconcile.apply_spec(ctx, body, created=False, logger=LOG)
    assert invalid_spec(body) == ("False", "SpecValid")
    sig.gate.clear()
    cycle = asyncio.create_task(
        reconcile.autoscale_once(ctx, body, memory, pods=[], deployment=deployment, now=T0 + 5)
    )
    await sig.wait_for_a_read()
    kube.reject["Deployment"] = ApiError(422, "Unprocessable Entity", json.dumps(REJECTION))
    await reconcile.apply_spec(ctx, body, created=False, logger=LOG)
    assert invalid_spec(body) == ("True", "ChildRejected")
    sig.gate.set()
    await asyncio.wait_for(cycle, timeout=10)
    assert kube.status_writes[-1].get("conditions") is not None  # the cycle did write
    assert invalid_spec(body) == ("True", "ChildRejected")


@pytest.mark.parametrize(
    "changed",
    [{"autoscaling": {"enabled": False}, "replicas": 2}, {"autoscaling": {"maxReplicas": 3}}],
    ids=["autoscaling turned off", "maxReplicas lowered"],
)
async def test_a_cycle_does_not_scale_on_the_spec_it_started_with_once_it_changed(
    changed: dict[str, Any],
) -> None:
    body = vlmservice({"model": {"id": "m", "runtime": "fake"}, "autoscaling": {"maxReplicas": 10}})
    kube, sig = FakeKube(body, replicas=2), GatedSignals()
    ctx, memory = context(kube, sig), reconcile._Memory()
    await reconcile.apply_spec(ctx, body, created=True, logger=LOG)
    sig.current = replace(signals(30.0, 8.0), waiting=10.0)  # asks for about ten pods
    deployment = {"replicas": 2, "readyReplicas": 2}
    cycle = asyncio.create_task(
        reconcile.autoscale_once(ctx, body, memory, pods=[], deployment=deployment, now=T0)
    )
    await sig.wait_for_a_read()
    body["spec"] = {"model": {"id": "m", "runtime": "fake"}, **changed}
    body["metadata"]["generation"] = 2
    await reconcile.apply_spec(ctx, body, created=False, logger=LOG)
    sig.gate.set()
    assert await asyncio.wait_for(cycle, timeout=10) is None
    assert kube.replicas == 2  # not scaled on the old spec's maxReplicas
    # The next cycle decides on the new spec.
    decision = await reconcile.autoscale_once(
        ctx, body, memory, pods=[], deployment=deployment, now=T0 + 5
    )
    assert decision is not None
    assert kube.replicas == decision.replicas == (2 if "replicas" in changed else 3)


class SpecChangingKube(FakeKube):
    """The spec changes while the Deployment's scale is being written."""

    async def scale(self, namespace: str, name: str, replicas: int) -> None:
        self.body["metadata"]["generation"] += 1
        await super().scale(namespace, name, replicas)


async def test_a_scale_made_as_the_spec_changed_is_still_told(
    kopf_posting: asyncio.Queue[Any],
) -> None:
    body = vlmservice({"model": {"id": "m", "runtime": "fake"}, "autoscaling": {"maxReplicas": 10}})
    kube = SpecChangingKube(body, replicas=2)
    fake = FakeSignals()
    ctx = context(kube, fake)
    await reconcile.apply_spec(ctx, body, created=True, logger=LOG)
    events(kopf_posting)
    writes = len(kube.status_writes)
    fake.current = replace(signals(30.0, 8.0), waiting=10.0)
    decision = await reconcile.autoscale_once(
        ctx, body, reconcile._Memory(), pods=[], deployment={"replicas": 2}, now=T0
    )
    assert decision is not None
    assert kube.replicas == decision.replicas > 2
    assert [(e.type, e.reason) for e in events(kopf_posting)] == [("Normal", "ScaledUp")]
    assert len(kube.status_writes) == writes  # the new spec's handler reports


class LaggingKube(FakeKube):
    """Status writes reach the store at once, kopf's view of the object only on ``deliver``."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.stored: dict[str, Any] = {}

    async def patch_status(
        self, api_version: str, plural: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        self.status_writes.append(copy.deepcopy(dict(status)))
        self.stored = merge(self.stored, copy.deepcopy(dict(status)))

    def deliver(self) -> None:
        self.body["status"] = copy.deepcopy(self.stored)


async def test_a_cycle_before_the_watch_shows_the_new_verdict_does_not_restore_the_old() -> None:
    # The spec is fixed and its handler writes "valid"; a cycle runs before the watch shows
    # that write, its object still showing the old "invalid": the old verdict must not return.
    body = vlmservice(
        {
            "model": {"id": "m", "runtime": "fake"},
            "autoscaling": {"minReplicas": 6, "maxReplicas": 2},
        }
    )
    kube = LaggingKube(body)
    ctx, memory = context(kube, FakeSignals()), reconcile._Memory()
    await reconcile.apply_spec(ctx, body, created=True, logger=LOG)
    kube.deliver()
    assert invalid_spec(body) == ("True", "ValidationFailed")
    body["spec"]["autoscaling"] = {}
    body["metadata"]["generation"] = 2
    await reconcile.apply_spec(ctx, body, created=False, logger=LOG)
    deployment = {"replicas": 1, "readyReplicas": 1}
    await reconcile.autoscale_once(ctx, body, memory, pods=[], deployment=deployment, now=T0)
    kube.deliver()
    assert invalid_spec(body) == ("False", "SpecValid")


def condition_of(status: Mapping[str, Any], type_: str) -> tuple[str, str] | None:
    found = find_condition(status.get("conditions") or [], type_)
    return None if found is None else (found["status"], found["reason"])


class LostSignals:
    """A service whose loop runs over a lagging watch: its last cycle found Prometheus
    gone and wrote MetricsAvailable=False, which the watch does not show yet."""

    def __init__(self) -> None:
        body = vlmservice(
            {"model": {"id": "m", "runtime": "fake"}, "autoscaling": {"syncPeriodSeconds": 1}}
        )
        self.body, self.kube, self.fake = body, LaggingKube(body), FakeSignals()
        self.ctx = context(self.kube, self.fake)
        self.memory = self.ctx.loops[("d", "x")] = reconcile._Memory(live=body)

    async def cycle(self, now: float) -> None:
        deployment = {"replicas": 1, "readyReplicas": 1}
        await reconcile.autoscale_once(
            self.ctx, self.body, self.memory, pods=[], deployment=deployment, now=now
        )

    async def start(self) -> dict[str, Any]:
        """Run up to the lost signals; returns the object as the watch showed it before."""
        await reconcile.apply_spec(self.ctx, self.body, created=True, logger=LOG)
        self.fake.current = signals(2.0, 9.0)
        await self.cycle(T0)
        self.kube.deliver()
        assert condition_of(self.body["status"], "MetricsAvailable") == ("True", "SignalsRead")
        seen = copy.deepcopy(self.body)
        self.fake.current = replace(self.fake.current, error="connection refused")
        await self.cycle(T0 + 1)
        assert self.lost()
        return seen

    def lost(self) -> bool:
        found = condition_of(self.kube.stored, "MetricsAvailable")
        return found == ("False", "PrometheusUnavailable")


async def test_a_spec_handler_keeps_the_conditions_a_cycle_wrote_meanwhile() -> None:
    # A cycle writes MetricsAvailable=False while a spec change's handler applies the
    # children; the handler's event showed the status before that write. Its patch
    # replaces the list whole, and must carry the cycle's condition, not the old one.
    service = LostSignals()
    event = await service.start()  # the spec change's event, from before the cycle
    event["spec"]["model"]["runtime"] = "llamacpp"  # no storage for its files: a warning
    event["metadata"]["generation"] = service.body["metadata"]["generation"] = 2
    await reconcile.apply_spec(service.ctx, event, created=False, logger=LOG)
    assert condition_of(service.kube.stored, "SpecWarnings") == ("True", "PodsMayNotStart")
    assert service.lost()


async def test_a_child_rejected_at_a_refresh_keeps_the_conditions_of_the_last_cycle() -> None:
    # The last cycle's write is not in the watch yet when the next cycle's refresh of the
    # children reports a rejection: that patch must carry the last cycle's conditions.
    service = LostSignals()
    await service.start()
    service.memory.child_lost = True  # a Service seen deleted: re-applied at the next cycle
    rejection = ApiError(422, "Unprocessable Entity", json.dumps(REJECTION))
    service.kube.reject["Deployment"] = rejection
    await service.cycle(T0 + 2)
    assert condition_of(service.kube.stored, "InvalidSpec") == ("True", "ChildRejected")
    assert service.lost()


# ----------------------------------------------------------------- item 8


class _NoClient:
    def close(self) -> None:
        return None


class StoreClient(KubeClient):
    """The real :class:`KubeClient` (apply, get, delete) over an in-memory API server."""

    def __init__(self) -> None:
        super().__init__(_NoClient(), workers=1)
        self.objects: dict[str, dict[str, Any]] = {}
        self.status: dict[str, Any] = {}
        #: The methods of the requests for the children (not the status).
        self.methods: list[str] = []

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        want_body: bool = True,
    ) -> dict[str, Any]:
        if path.endswith("/status"):
            self.status = merge(self.status, body["status"])
            return {}
        self.methods.append(method)
        if method == "POST":
            path = f"{path}/{body['metadata']['name']}"
            if path in self.objects:
                raise ApiError(409, "Conflict", "exists")
            self.objects[path] = merge({}, copy.deepcopy(body))
            self.objects[path]["metadata"]["uid"] = f"uid-{len(self.objects)}"
            return {}
        if path not in self.objects:
            raise ApiError(404, "Not Found", path)
        if method == "GET":
            return copy.deepcopy(self.objects[path])
        if method == "PATCH":
            self.objects[path] = merge(self.objects[path], copy.deepcopy(body))
            return {}
        if method == "DELETE":
            del self.objects[path]
            return {}
        raise AssertionError(method)


async def test_an_object_of_a_childs_name_made_by_another_is_not_patched() -> None:
    body = vlmservice({"model": {"id": "m", "runtime": "fake"}})
    kube = StoreClient()
    ctx = context(kube, FakeSignals())
    # Another app's Service of the same name, made by hand (no owner, no record of ours).
    theirs = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "d"},
              "spec": {"selector": {"app": "web"}}}  # fmt: skip
    kube.objects[SERVICE] = copy.deepcopy(theirs)
    try:
        await reconcile.apply_spec(ctx, body, created=True, logger=LOG)
        assert kube.objects[SERVICE] == theirs
        assert DEPLOYMENT in kube.objects  # the other children are applied
        condition = next(c for c in kube.status["conditions"] if c["type"] == "InvalidSpec")
        assert (condition["status"], condition["reason"]) == ("True", "ChildRejected")
        assert "Service x exists and was not made by vlm-operator" in condition["message"]

        # Once it is gone, the Service is the VLMService's; orphaned (kubectl delete
        # --cascade=orphan: no owner left, the record of what was applied kept), it is
        # adopted again by the next VLMService of the name.
        del kube.objects[SERVICE]
        await reconcile.apply_spec(ctx, body, created=False, logger=LOG)
        assert kube.objects[SERVICE]["spec"]["selector"] != {"app": "web"}
        del kube.objects[SERVICE]["metadata"]["ownerReferences"]
        # The other children stay the first VLMService's: no collector runs here.
        ctx.predecessor_wait_seconds = 0.0
        reborn = vlmservice({"model": {"id": "m", "runtime": "fake"}})
        reborn["metadata"]["uid"] = "u2"
        await reconcile.apply_spec(ctx, reborn, created=True, logger=LOG)
        refs = kube.objects[SERVICE]["metadata"]["ownerReferences"]
        assert [r["uid"] for r in refs] == ["u2"]
        # A child still controlled by the old VLMService (its deletion pending) is not
        # taken: past the wait for the garbage collector, it is reported.
        kube.objects[SERVICE]["metadata"]["ownerReferences"][0]["uid"] = "u"
        await reconcile.apply_spec(ctx, reborn, created=False, logger=LOG)
        assert [r["uid"] for r in kube.objects[SERVICE]["metadata"]["ownerReferences"]] == ["u"]
        assert (
            "Service x exists and is still controlled by the previous VLMService x (uid u): "
            "left alone until the garbage collector deletes it"
        ) in str(kube.status["conditions"])
    finally:
        kube.close()


class CollectingStoreClient(StoreClient):
    """A store whose garbage collector deletes each child of the VLMService of uid
    ``u`` once its successor has read it and found it another's ``refusals`` times."""

    def __init__(self, refusals: int) -> None:
        super().__init__()
        self.refusals = refusals
        self.reads: dict[str, int] = {}

    async def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        found = self.objects.get(path)
        refs = (found or {}).get("metadata", {}).get("ownerReferences") or []
        if method == "GET" and refs and refs[0]["uid"] == "u":
            self.reads[path] = self.reads.get(path, 0) + 1
            if self.reads[path] > self.refusals:
                del self.objects[path]  # collected: its owner is gone
        return await super().request(method, path, **kwargs)


async def test_a_vlmservice_made_again_at_once_waits_for_its_predecessors_children(
    kopf_posting: asyncio.Queue[Any],
) -> None:
    # kubectl delete, then kubectl apply: the new VLMService (uid u2) finds the old
    # one's Service, which the garbage collector deletes a moment later.
    old = vlmservice({"model": {"id": "m", "runtime": "fake"}})
    kube = CollectingStoreClient(refusals=2)
    ctx = context(kube, FakeSignals())
    try:
        await reconcile.apply_spec(ctx, old, created=True, logger=LOG)
        reborn = vlmservice({"model": {"id": "m", "runtime": "fake"}})
        reborn["metadata"]["uid"] = "u2"
        kube.status = {}
        await asyncio.wait_for(reconcile.apply_spec(ctx, reborn, created=True, logger=LOG), 10)
        children = [DEPLOYMENT, SERVICE, PDB]
        assert sorted(kube.reads) == sorted(children)
        assert set(kube.reads.values()) == {3}  # each refused twice, then gone
        for path in children:
            refs = kube.objects[path]["metadata"]["ownerReferences"]
            assert [r["uid"] for r in refs] == ["u2"]
        invalid = next(c for c in kube.status["conditions"] if c["type"] == "InvalidSpec")
        assert invalid["status"] == "False"
        assert events(kopf_posting) == []  # no ChildRejected Warning for a wait of a second
    finally:
        kube.close()


def test_a_predecessor_is_an_owner_of_the_same_group_kind_and_name() -> None:
    def owned(api_version: str, kind: str, name: str, uid: str) -> dict[str, Any]:
        ref = {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid}
        return {"metadata": {"ownerReferences": [{**ref, "controller": True}]}}

    ours = owned("vlm-operator.io/v1alpha1", "VLMService", "x", "u2")
    assert predecessor_of(owned("vlm-operator.io/v1alpha1", "VLMService", "x", "u"), ours)
    assert predecessor_of(owned("vlm-operator.io/v1", "VLMService", "x", "u"), ours)  # any version
    assert not predecessor_of(owned("vlm-operator.io/v1alpha1", "VLMService", "x", "u2"), ours)
    assert not predecessor_of(owned("vlm-operator.io/v1alpha1", "VLMService", "y", "u"), ours)
    assert not predecessor_of(owned("other.io/v1alpha1", "VLMService", "x", "u"), ours)
    assert not predecessor_of(owned("v1", "ConfigMap", "x", "u"), ours)
    assert not predecessor_of({"metadata": {}}, ours)  # no owner: not a predecessor's


async def test_another_owners_child_is_reported_at_once() -> None:
    # Controlled by another kind's object (or another name's): no wait for a collector.
    kube = StoreClient()
    ctx = context(kube, FakeSignals())
    ctx.predecessor_wait_seconds = 3600.0
    theirs = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "d",
              "ownerReferences": [{"apiVersion": "vlm-operator.io/v1alpha1", "kind": "VLMService",
                                   "name": "y", "uid": "u9", "controller": True}]}}  # fmt: skip
    kube.objects[SERVICE] = copy.deepcopy(theirs)
    try:
        body = vlmservice({"model": {"id": "m", "runtime": "fake"}})
        await asyncio.wait_for(reconcile.apply_spec(ctx, body, created=True, logger=LOG), 10)
        assert kube.objects[SERVICE] == theirs
        assert "is controlled by VLMService y (uid u9): left alone (delete it" in str(
            kube.status["conditions"]
        )
    finally:
        kube.close()


NETWORK_POLICY = "/apis/networking.k8s.io/v1/namespaces/d/networkpolicies/x"
POD_MONITOR = "/apis/monitoring.coreos.com/v1/namespaces/d/podmonitors/x"


async def test_a_child_recording_its_whole_manifest_moves_to_the_keys() -> None:
    spec_raw: dict[str, Any] = {
        "model": {"id": "m", "runtime": "fake"},
        "placement": {"nodeSelector": {"gpu": "a100"}},
    }
    body = vlmservice(spec_raw)
    kube = StoreClient()
    ctx = context(kube, FakeSignals())
    await reconcile.apply_spec(ctx, body, created=True, logger=LOG)
    deployment = kube.objects[DEPLOYMENT]
    # As development builds left it: the whole manifest applied, under another key.
    annotations = deployment["metadata"]["annotations"]
    del annotations[APPLIED_KEYS_ANNOTATION]
    whole = {"metadata": {"labels": deployment["metadata"]["labels"]}, "spec": deployment["spec"]}
    annotations["vlm-operator.io/last-applied"] = json.dumps(whole)

    body["spec"] = {"model": spec_raw["model"]}  # the placement gone
    body["metadata"]["generation"] = 2
    await reconcile.apply_spec(ctx, body, created=False, logger=LOG)
    deployment = kube.objects[DEPLOYMENT]
    assert "nodeSelector" not in deployment["spec"]["template"]["spec"]  # read from the old record
    annotations = deployment["metadata"]["annotations"]
    assert "vlm-operator.io/last-applied" not in annotations
    assert (
        "nodeSelector"
        not in json.loads(annotations[APPLIED_KEYS_ANNOTATION])["spec"]["template"]["spec"]
    )


async def test_what_the_spec_no_longer_asks_for_leaves_the_children() -> None:
    spec_raw: dict[str, Any] = {
        "model": {"id": "m", "runtime": "fake"},
        "placement": {"nodeSelector": {"gpu": "a100"}},
        "monitoring": {"podMonitor": True},
        "networkPolicy": {"enabled": True},
    }
    body = vlmservice(spec_raw)
    kube = StoreClient()
    ctx = context(kube, FakeSignals())
    try:
        await reconcile.apply_spec(ctx, body, created=True, logger=LOG)
        pod_spec = kube.objects[DEPLOYMENT]["spec"]["template"]["spec"]
        assert pod_spec["nodeSelector"] == {"gpu": "a100"}
        # The child records the keys applied, not their values.
        annotations = kube.objects[DEPLOYMENT]["metadata"]["annotations"]
        applied = json.loads(annotations[APPLIED_KEYS_ANNOTATION])
        assert applied["spec"]["template"]["spec"]["nodeSelector"] == {"gpu": 0}
        # A list of maps is kept element by element (the keys an element loses are seen).
        containers = applied["spec"]["template"]["spec"]["containers"]
        assert isinstance(containers, list)
        assert containers[0]["name"] == 0
        assert "replicas" not in applied["spec"]  # the autoscaler's, never applied
        assert NETWORK_POLICY in kube.objects
        assert POD_MONITOR in kube.objects
        # Others' keys: a label a user added, the count the autoscaler chose.
        kube.objects[DEPLOYMENT]["metadata"]["labels"]["team"] = "vision"
        kube.objects[DEPLOYMENT]["spec"]["replicas"] = 5
        # Someone else's NetworkPolicy of another name is not the operator's business.
        other = "/apis/networking.k8s.io/v1/namespaces/d/networkpolicies/other"
        kube.objects[other] = {"metadata": {"name": "other"}}

        body["spec"] = {"model": spec_raw["model"]}  # placement, PodMonitor, NetworkPolicy gone
        body["metadata"]["generation"] = 2
        await reconcile.apply_spec(ctx, body, created=False, logger=LOG)
        deployment = kube.objects[DEPLOYMENT]
        assert "nodeSelector" not in deployment["spec"]["template"]["spec"]
        assert deployment["metadata"]["labels"]["team"] == "vision"
        assert deployment["spec"]["replicas"] == 5
        assert NETWORK_POLICY not in kube.objects
        assert POD_MONITOR not in kube.objects
        assert other in kube.objects

        # Autoscaling off with spec.replicas, then on again: replicas is never nulled.
        body["spec"] = {"model": spec_raw["model"], "replicas": 3,
                        "autoscaling": {"enabled": False}}  # fmt: skip
        await reconcile.apply_spec(ctx, body, created=False, logger=LOG)
        assert kube.objects[DEPLOYMENT]["spec"]["replicas"] == 3
        body["spec"] = {"model": spec_raw["model"]}
        await reconcile.apply_spec(ctx, body, created=False, logger=LOG)
        assert kube.objects[DEPLOYMENT]["spec"]["replicas"] == 3
    finally:
        kube.close()


async def test_a_key_gone_from_a_container_is_removed_from_the_child() -> None:
    # A merge patch replaces a list whole, and a child is compared only on the keys the patch
    # names: a key that left a container (limits no longer asked for) must still be written.
    spec_raw: dict[str, Any] = {
        "model": {"id": "m", "runtime": "fake"},
        "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "6Gi"}},
    }
    body = vlmservice(spec_raw)
    kube = StoreClient()
    ctx = context(kube, FakeSignals())

    def model_container() -> dict[str, Any]:
        pod = kube.objects[DEPLOYMENT]["spec"]["template"]["spec"]
        containers = pod["initContainers"] + pod["containers"]  # the model is a sidecar
        return next(c for c in containers if c["resources"].get("requests", {}).get("cpu") == "2")

    try:
        await reconcile.apply_spec(ctx, body, created=True, logger=LOG)
        assert model_container()["resources"]["limits"]["memory"] == "6Gi"
        body["spec"] = {**spec_raw, "resources": {"requests": spec_raw["resources"]["requests"]}}
        body["metadata"]["generation"] = 2
        await reconcile.apply_spec(ctx, body, created=False, logger=LOG)
        assert "memory" not in model_container()["resources"].get("limits", {})
        # Written once: the next refresh finds the child as rendered.
        kube.methods.clear()
        await reconcile.apply_spec(ctx, body, created=False, logger=LOG)
        assert set(kube.methods) == {"GET"}, kube.methods
    finally:
        kube.close()


async def test_quantities_the_api_server_rewrote_are_not_written_again() -> None:
    # The API server stores 0.5 as 500m and 2048Mi as 2Gi: the refresh that reads them
    # back must not take them for a change (and write every child on every refresh).
    spec_raw: dict[str, Any] = {
        "model": {"id": "m", "runtime": "fake"},
        "resources": {"requests": {"cpu": "0.5", "memory": "2048Mi"}, "limits": {"cpu": "1000m"}},
    }
    body = vlmservice(spec_raw)
    kube = StoreClient()
    ctx = context(kube, FakeSignals())
    try:
        await reconcile.apply_spec(ctx, body, created=True, logger=LOG)
        deployment = kube.objects[DEPLOYMENT]
        apps = ResourceKind("apps", "v1", "deployments", "Deployment", namespaced=True)
        canonicalize_quantities(apps, deployment)  # as the API server stores it
        model = deployment["spec"]["template"]["spec"]["initContainers"][0]
        assert model["resources"] == {
            "requests": {"cpu": "500m", "memory": "2Gi"},
            "limits": {"cpu": "1"},
        }
        kube.methods.clear()
        await reconcile.apply_spec(ctx, body, created=False, logger=LOG)
        assert set(kube.methods) == {"GET"}, kube.methods
        # A quantity changed in the spec is still a change.
        body["spec"] = {**spec_raw, "resources": {"requests": {"cpu": "0.6"}}}
        kube.methods.clear()
        await reconcile.apply_spec(ctx, body, created=False, logger=LOG)
        assert "PATCH" in kube.methods
    finally:
        kube.close()


async def test_a_child_that_holds_what_is_rendered_is_not_written() -> None:
    # The periodic refresh reads each child; one nobody touched (the API
    # server's defaults added, the autoscaler's replicas) is left alone.
    body = vlmservice({"model": {"id": "m", "runtime": "fake"}})
    kube = StoreClient()
    ctx = context(kube, FakeSignals())
    try:
        await reconcile.apply_spec(ctx, body, created=True, logger=LOG)
        containers = kube.objects[DEPLOYMENT]["spec"]["template"]["spec"]["containers"]
        for container in containers:
            container["terminationMessagePath"] = "/dev/termination-log"  # a server default
        kube.objects[DEPLOYMENT]["spec"]["replicas"] = 5
        kube.methods.clear()
        await reconcile.apply_spec(ctx, body, created=False, logger=LOG)
        assert kube.methods, "the children were read"
        assert set(kube.methods) == {"GET"}, kube.methods
        # A rendered field edited by hand is patched back.
        containers[0]["image"] = "by-hand"
        kube.methods.clear()
        await reconcile.apply_spec(ctx, body, created=False, logger=LOG)
        assert kube.methods.count("PATCH") >= 1
        assert kube.objects[DEPLOYMENT]["spec"]["template"]["spec"]["containers"][0]["image"] != (
            "by-hand"
        )
        assert kube.objects[DEPLOYMENT]["spec"]["replicas"] == 5
    finally:
        kube.close()


class RefusingMarksKube(FakeKube):
    """Every pod's deletion-cost write is refused (a webhook, an etcd time-out)."""

    async def annotate(
        self, api_version: str, plural: str, namespace: str, name: str, annotations: Any
    ) -> None:
        raise ApiError(500, "Internal Server Error", "etcdserver: request timed out")


async def test_a_pod_mark_refused_does_not_stop_a_scale_down() -> None:
    # The marks rank the pods; without them the scale-down still goes (a lowered
    # maxReplicas must), and its status is written.
    spec_raw = {"model": {"id": "m", "runtime": "fake"},
                "autoscaling": {"syncPeriodSeconds": 1, "maxReplicas": 1}}  # fmt: skip
    kube, fake = RefusingMarksKube(vlmservice(spec_raw), replicas=3), FakeSignals()
    ctx, memory = context(kube, fake), reconcile._Memory()
    fake.current, fake.load = signals(1.0, 8.0), {"x-1": 1.0}
    pods = [{"name": f"x-{i}", "ready": True} for i in range(1, 4)]
    deployment = {"replicas": 3, "readyReplicas": 3}
    await reconcile.autoscale_once(ctx, kube.body, memory, pods=pods, deployment=deployment, now=T0)
    assert kube.replicas == 1
    assert kube.body["status"]["lastDecision"]["replicas"] == 1


class FailingStatusKube(FakeKube):
    """The status write after a scale fails once (an API server's 503)."""

    fail = False

    async def patch_status(
        self, api_version: str, plural: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        if self.fail:
            self.fail = False
            raise ApiError(503, "Service Unavailable", "etcd leader changed")
        await super().patch_status(api_version, plural, namespace, name, status)


KubeT = TypeVar("KubeT", bound=FakeKube)


async def rising_on_two_pods(
    kube_class: type[KubeT], queue: asyncio.Queue[Any]
) -> tuple[KubeT, FakeSignals, reconcile.OperatorContext, reconcile._Memory]:
    """Two pods after a quiet cycle at T0 (its Events drained), and a load asking for more."""
    body = vlmservice({"model": {"id": "m", "runtime": "fake"}, "autoscaling": {"maxReplicas": 10}})
    kube, fake = kube_class(body, replicas=2), FakeSignals()
    ctx, memory = context(kube, fake), reconcile._Memory()
    fake.current = signals(2.0, 1.0)
    await run_cycle(ctx, kube, memory, T0)
    events(queue)
    fake.current = replace(signals(30.0, 8.0), waiting=10.0)
    return kube, fake, ctx, memory


async def test_a_scale_is_told_when_the_status_write_after_it_fails(
    kopf_posting: asyncio.Queue[Any],
) -> None:
    kube, _, ctx, memory = await rising_on_two_pods(FailingStatusKube, kopf_posting)
    kube.fail = True
    with pytest.raises(ApiError):
        await run_cycle(ctx, kube, memory, T0 + 5)
    assert kube.replicas > 2
    # No later cycle would know of it: told now, once.
    assert [(e.type, e.reason) for e in events(kopf_posting)] == [("Normal", "ScaledUp")]
    # Nor would the status: the next write carries its time.
    await run_cycle(ctx, kube, memory, T0 + 10)
    assert kube.body["status"].get("lastScaleTime") == reconcile.rfc3339(T0 + 5)
    assert kube.body["status"]["replicas"] == kube.replicas


class SpecChangingMarksKube(FakeKube):
    """The spec changes while the pods are marked for a scale-down."""

    async def annotate(
        self, api_version: str, plural: str, namespace: str, name: str, annotations: Any
    ) -> None:
        self.body["metadata"]["generation"] += 1
        await super().annotate(api_version, plural, namespace, name, annotations)


async def test_a_cycle_does_not_scale_down_on_a_spec_changed_while_it_marked_the_pods() -> None:
    spec_raw = {"model": {"id": "m", "runtime": "fake"},
                "autoscaling": {"syncPeriodSeconds": 1, "maxReplicas": 4}}  # fmt: skip
    kube, fake = SpecChangingMarksKube(vlmservice(spec_raw), replicas=6), FakeSignals()
    ctx = context(kube, fake)
    fake.current, fake.load = signals(1.0, 8.0), {"x-1": 1.0}
    pods = [{"name": f"x-{i}", "ready": True} for i in range(1, 7)]
    deployment = {"replicas": 6, "readyReplicas": 6}
    decision = await reconcile.autoscale_once(
        ctx, kube.body, reconcile._Memory(), pods=pods, deployment=deployment, now=T0
    )
    assert decision is None  # the next cycle decides on the new spec
    assert kube.annotated  # it had begun
    assert kube.replicas == 6


async def test_a_scale_down_the_spec_makes_marks_the_pods_by_their_load_first() -> None:
    # Autoscaling off, replicas lowered: the ReplicaSet ranks the pods by their marks, which
    # an earlier scale-down left by a load long gone (x-3 the busiest now, marked cheapest).
    spec_raw = {"model": {"id": "m", "runtime": "fake"}, "replicas": 2,
                "autoscaling": {"enabled": False}}  # fmt: skip
    body = vlmservice(spec_raw)
    kube, fake = FakeKube(body, replicas=3), FakeSignals()
    ctx = context(kube, fake)
    pods = {("d", "x"): [{"name": "x-1", "ready": True, "deletionCost": "900"},
                         {"name": "x-2", "ready": True, "deletionCost": "900"},
                         {"name": "x-3", "ready": True, "deletionCost": "0"}]}  # fmt: skip
    fake.load = {"x-1": 0.0, "x-2": 1.0, "x-3": 4.0}
    await reconcile.apply_spec(
        ctx, body, created=False, logger=LOG, pods=pods, deployments={("d", "x"): [{"replicas": 3}]}
    )
    assert sorted(kube.annotated) == [
        ("x-1", {DELETION_COST: "0"}),
        ("x-2", {DELETION_COST: "100"}),
        ("x-3", {DELETION_COST: "400"}),
    ]
    assert kube.objects[DEPLOYMENT]["spec"]["replicas"] == 2
    # No scale-down (the same count, or more): no marks.
    kube.annotated.clear()
    for replicas in (2, 1):
        await reconcile.apply_spec(
            ctx, body, created=False, logger=LOG, pods=pods,
            deployments={("d", "x"): [{"replicas": replicas}]},
        )  # fmt: skip
    assert kube.annotated == []


# ------------------------------------------------- failures around the scale


class _RefusingScale(FakeKube):
    """A scale the API server refuses (a webhook) while ``refuse`` is set."""

    refuse = False

    async def scale(self, namespace: str, name: str, replicas: int) -> None:
        if self.refuse:
            message = 'admission webhook "cap" denied: replicas > 4'
            raise ApiError(403, "Forbidden", json.dumps({"kind": "Status", "message": message}))
        await super().scale(namespace, name, replicas)


async def test_a_refused_scale_is_told_and_the_status_goes_on(
    kopf_posting: asyncio.Queue[Any],
) -> None:
    kube, _, ctx, memory = await rising_on_two_pods(_RefusingScale, kopf_posting)
    body = kube.body
    kube.refuse = True
    for tick in range(1, 4):
        decision = await run_cycle(ctx, kube, memory, T0 + 5 * tick)
        assert decision is not None
        assert decision.replicas > 2
    status = body["status"]
    assert kube.replicas == status["replicas"] == 2
    assert status["signals"]["waiting"] == 10.0  # this cycle's signals, not the last good one's
    limited = find_condition(status["conditions"], "ScalingLimited") or {}
    assert (limited.get("status"), limited.get("reason")) == ("True", "ScaleFailed")
    assert "replicas > 4" in limited["message"]
    assert status.get("lastScaleTime") is None
    told = [e for e in events(kopf_posting) if e.reason == "ScalingLimited"]
    assert len(told) == 1  # once, when it started
    assert "ScaleFailed" in told[0].message
    counted = ctx.metrics.decisions
    assert counted.labels("failed")._value.get() == 3
    assert counted.labels("up")._value.get() == 0
    # The policy did not move as if the scale had been made: let through, it is made.
    kube.refuse = False
    await run_cycle(ctx, kube, memory, T0 + 20)
    assert kube.replicas > 2
    assert body["status"]["lastScaleTime"] is not None
    limited = find_condition(body["status"]["conditions"], "ScalingLimited") or {}
    assert limited.get("reason") != "ScaleFailed"


async def test_a_timed_out_request_is_an_api_error() -> None:
    # A listener that never answers: urllib3's ReadTimeoutError, which the loop's
    # handlers (and the best-effort pod marks) would not have taken for an API error.
    import socket
    import threading

    import kubernetes

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while len(accepted) < 4:
                accepted.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    configuration = kubernetes.client.Configuration()
    configuration.host = f"http://127.0.0.1:{listener.getsockname()[1]}"
    configuration.retries = False
    client = KubeClient(kubernetes.client.ApiClient(configuration), request_timeout=(1.0, 0.5))
    try:
        with pytest.raises(ApiError) as raised:
            await client.scale("d", "x", 3)
        assert raised.value.status == 0
        assert "Timeout" in raised.value.reason
    finally:
        client.close()
        listener.close()
        for conn in accepted:
            conn.close()


# ------------------------------------------------------------- the loop's clocks


async def test_the_loops_timers_run_on_the_monotonic_clock() -> None:
    # The wall clock steps back an hour after a scale to 10; then the Deployment shows 3
    # (scaled by hand). The scale of a moment ago on the monotonic clock is long past.
    body = vlmservice({"model": {"id": "m", "runtime": "fake"},
                       "autoscaling": {"maxReplicas": 10, "syncPeriodSeconds": 5}})  # fmt: skip
    kube, fake = FakeKube(body, replicas=2), FakeSignals()
    ctx, memory = context(kube, fake), reconcile._Memory()
    fake.current = replace(signals(30.0, 8.0), waiting=10.0)
    deployment = lambda: {"replicas": kube.replicas, "readyReplicas": kube.replicas}  # noqa: E731
    for tick in range(2):
        await reconcile.autoscale_once(
            ctx, body, memory, pods=[], deployment=deployment(),
            now=T0 + 5 * tick, clock=100.0 + 5 * tick,
        )  # fmt: skip
    assert memory.scaled_to == kube.replicas > 3
    kube.replicas = 3
    fake.current = signals(10.0, 1.0)
    await reconcile.autoscale_once(
        ctx, body, memory, pods=[], deployment=deployment(), now=T0 - 3600 + 20, clock=120.0
    )
    assert body["status"]["replicas"] == 3


async def test_a_scale_the_spec_handler_made_since_is_not_the_loops() -> None:
    spec = {"model": {"id": "m", "runtime": "fake"},
            "autoscaling": {"maxReplicas": 8, "syncPeriodSeconds": 5}}  # fmt: skip
    body = vlmservice(spec)
    kube, fake = FakeKube(body, replicas=2), FakeSignals()
    ctx, memory = context(kube, fake), reconcile._Memory()
    fake.current = replace(signals(30.0, 8.0), waiting=10.0)
    for tick in range(2):
        deployment = {"replicas": kube.replicas, "readyReplicas": kube.replicas}
        await reconcile.autoscale_once(
            ctx, body, memory, pods=[], deployment=deployment, now=T0 + 5 * tick
        )
    assert memory.scaled_to == kube.replicas > 2
    # Autoscaling turned off with 2 replicas; the spec's handler sets them before the
    # watch shows the autoscaler's scale.
    body["spec"] = {**spec, "replicas": 2, "autoscaling": {**spec["autoscaling"], "enabled": False}}
    body["metadata"]["generation"] = 2
    kube.replicas = 2
    scales: list[int] = []
    scale = kube.scale

    async def counted(namespace: str, name: str, replicas: int) -> None:
        scales.append(replicas)
        await scale(namespace, name, replicas)

    kube.scale = counted  # type: ignore[method-assign]
    await reconcile.autoscale_once(
        ctx, body, memory, pods=[], deployment={"replicas": 2, "readyReplicas": 2}, now=T0 + 10
    )
    assert scales == []
    assert body["status"]["replicas"] == 2


async def test_a_refresh_a_spec_change_overtook_is_made_again_with_the_new_spec() -> None:
    spec = {"model": {"id": "m", "runtime": "fake"}, "autoscaling": {"syncPeriodSeconds": 5}}
    body = vlmservice(spec)

    class HandlerMeanwhile(FakeKube):
        """The spec's handler runs while the refresh's Deployment is on its way."""

        during: Any = None

        async def apply(self, obj: Mapping[str, Any], **kwargs: Any) -> str:
            if self.during is not None and obj["kind"] == "Deployment":
                during, self.during = self.during, None
                await during()
            return await super().apply(obj, **kwargs)

    kube, fake = HandlerMeanwhile(body, replicas=2), FakeSignals()
    ctx, memory = context(kube, fake), reconcile._Memory()
    await reconcile.apply_spec(ctx, body, created=True, logger=LOG)
    fake.current = signals(2.0, 1.0)
    ready = {"replicas": 2, "readyReplicas": 2}
    await reconcile.autoscale_once(ctx, body, memory, pods=[], deployment=ready, now=T0)

    def model_id() -> str:
        template = kube.objects[DEPLOYMENT]["spec"]["template"]
        return json.dumps(template["spec"], sort_keys=True)

    old = model_id()

    async def spec_changed() -> None:
        body["spec"] = {**spec, "model": {"id": "m-v2", "runtime": "fake"}}
        body["metadata"]["generation"] = 2
        await reconcile.apply_spec(ctx, body, created=False, logger=LOG)

    kube.during = spec_changed
    refresh = ctx.children_refresh_seconds
    await reconcile.autoscale_once(ctx, body, memory, pods=[], deployment=ready, now=T0 + refresh)
    assert model_id() == old  # the refresh's old spec landed after the handler's new one
    await reconcile.autoscale_once(
        ctx, body, memory, pods=[], deployment=ready, now=T0 + refresh + 5
    )
    assert model_id() != old
    assert "m-v2" in model_id()


async def test_a_stopping_loop_begins_no_scale() -> None:
    # The operator stops (or the service goes) while the cycle read its signals: the
    # scale is left to the next operator, not begun and then cut by the cancellation.
    body = vlmservice({"model": {"id": "m", "runtime": "fake"}, "autoscaling": {"maxReplicas": 10}})
    kube, fake = FakeKube(body, replicas=2), FakeSignals()
    ctx, memory = context(kube, fake), reconcile._Memory()
    fake.current = replace(signals(30.0, 8.0), waiting=10.0)
    ready = {"replicas": 2, "readyReplicas": 2}
    decision = await reconcile.autoscale_once(
        ctx, body, memory, pods=[], deployment=ready, now=T0, stopping=lambda: True
    )
    assert decision is None
    assert kube.replicas == 2
    assert memory.state is None  # as if the cycle had not run
    await reconcile.autoscale_once(
        ctx, body, memory, pods=[], deployment=ready, now=T0 + 5, stopping=lambda: False
    )
    assert kube.replicas > 2
