"""The closed loop on the local cluster: load in, replicas up; load gone, replicas down.

Real processes everywhere (gates, fake models, Prometheus, the operator), 10x compressed; every
wait is a poll with a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from e2e.conftest import deploy
from e2e.conftest import start_load as load
from e2e.localcluster import LocalCluster, Snapshot

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


async def test_scales_up_under_load_then_down_without_failing_a_request(
    cluster: LocalCluster, service_manifest: Callable[..., dict[str, Any]]
) -> None:
    url = await deploy(cluster, service_manifest())

    # 12 users: 12 in flight and queued on one pod; 3 pods at 4 each is the answer.
    heavy = load(url, 12, 25.0)

    async def scaled_up() -> int | None:
        desired = await cluster.desired_replicas("vlm")
        return desired if desired is not None and desired >= 3 else None

    await cluster.wait_for(scaled_up, deadline_s=10, what="desired replicas >= 3")

    # After the start-up delay every pod is back at <= 4 in flight, and nothing waits.
    async def settled() -> Snapshot | None:
        snap = await cluster.snapshot("vlm")
        ok = snap.ready >= 3 and snap.waiting == 0 and snap.max_in_flight_per_pod <= 4
        return snap if ok and snap.in_flight >= 8 else None

    snap = await cluster.wait_for(settled, deadline_s=20, what="3+ ready pods, empty queues")
    records = await heavy
    after = [r for r in records if r.start >= snap.at]
    assert after, "the load ended before the pods settled"
    assert [r for r in after if not r.ok] == [], "requests failed once capacity was there"

    # Load falls to 2 users: the operator scales down to one pod while they keep asking, and
    # the pods that go drain (out of the Service first, then SIGTERM): nothing fails.
    light = load(url, 2, 25.0)
    started = time.monotonic()

    async def scaled_down() -> float | None:
        pods = cluster.runner.pods("vlm", include_terminating=True)
        done = await cluster.desired_replicas("vlm") == 1 and len(pods) == 1
        return time.monotonic() if done else None

    down_at = await cluster.wait_for(scaled_down, deadline_s=25, what="one pod left")
    records = await light
    assert down_at < started + 25.0, "scale-down finished after the load stopped"
    failed = [r for r in records if not r.ok]
    assert failed == [], f"{len(failed)} of {len(records)} requests failed during scale-down"
    assert len(records) >= 10
