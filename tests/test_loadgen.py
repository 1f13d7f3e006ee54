"""The load generator: bounds in time and count, concurrency, seeded arrivals, summaries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from vlm_operator.loadgen import RequestRecord, closed_loop, open_loop, summarize


class Target:
    def __init__(self) -> None:
        self.current = 0
        self.peak = 0
        self.count = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.current += 1
        self.count += 1
        self.peak = max(self.peak, self.current)
        try:
            await request.read()
            await asyncio.sleep(float(request.query.get("s", "0.01")))
            return web.json_response({}, status=int(request.query.get("status", "200")))
        finally:
            self.current -= 1


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    t = Target()
    app = web.Application()
    app.router.add_post("/", t.handle)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    t.url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    yield t
    await runner.cleanup()


async def test_closed_loop_keeps_exactly_users_in_flight_and_stops_at_the_count(
    target: Target,
) -> None:
    records = await closed_loop(
        target.url, 4, duration_s=30, timeout_s=5, payload={"x": 1}, max_requests=40
    )
    assert len(records) == 40
    assert target.count == 40
    assert target.peak == 4
    summary = summarize(records)
    assert summary.ok == 40
    assert summary.error_rate == 0
    assert summary.p50 is not None
    assert 0.01 <= summary.p50 < 1
    # 4 users, ~10 ms each: well above one user's rate
    assert summary.throughput > 100


async def test_closed_loop_stops_at_the_duration(target: Target) -> None:
    start = time.monotonic()
    records = await closed_loop(target.url + "?s=0.05", 2, duration_s=0.3, timeout_s=5, payload={})
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 0.3 + 1.0
    assert all(r.start < start + 0.3 for r in records)
    assert 6 <= len(records) <= 14


async def test_open_loop_arrivals_are_seeded_poisson_and_independent_of_answers(
    target: Target,
) -> None:
    slow = target.url + "?s=0.2"  # answers slower than arrivals: open loop does not wait
    first = await open_loop(slow, 100.0, duration_s=0.5, timeout_s=5, payload={}, seed=7)
    second = await open_loop(slow, 100.0, duration_s=0.5, timeout_s=5, payload={}, seed=7)
    assert len(first) == len(second)
    assert 25 <= len(first) <= 80  # Poisson(50): far outside is a broken generator
    assert target.peak > 5
    assert summarize(first).ok == len(first)


async def test_open_loop_follows_a_rate_function_and_the_count_bound(target: Target) -> None:
    def rate(elapsed: float) -> float:
        return 0.0 if elapsed < 0.3 else 200.0

    start = time.monotonic()
    records = await open_loop(target.url, rate, duration_s=0.6, timeout_s=5, payload={})
    assert records
    assert min(r.start for r in records) >= start + 0.29
    capped = await open_loop(
        target.url, 1000.0, duration_s=10, timeout_s=5, payload={}, max_requests=12
    )
    assert len(capped) == 12


async def test_errors_and_timeouts_are_recorded_as_status_zero(target: Target) -> None:
    refused = await closed_loop(
        "http://127.0.0.1:9/", 1, duration_s=5, timeout_s=1, payload={}, max_requests=2
    )
    assert [r.status for r in refused] == [0, 0]
    assert all(r.error for r in refused)
    late = await closed_loop(
        target.url + "?s=5", 1, duration_s=5, timeout_s=0.1, payload={}, max_requests=1
    )
    assert late[0].status == 0
    assert late[0].error == "timeout"
    failed = await closed_loop(
        target.url + "?status=503", 1, duration_s=5, timeout_s=1, payload={}, max_requests=3
    )
    summary = summarize(failed)
    assert summary.statuses == {503: 3}
    assert summary.error_rate == 1.0
    assert summary.p50 is None


def test_summary_percentiles_use_nearest_rank() -> None:
    records = [RequestRecord(0.0, float(i), 200) for i in range(1, 101)]
    records.append(RequestRecord(0.0, 1.0, 0, "timeout"))
    summary = summarize(records)
    assert (summary.count, summary.ok, summary.errors) == (101, 100, 1)
    assert summary.p50 == 50.0
    assert summary.p95 == 95.0
    assert summary.p99 == 99.0
    assert summary.throughput == pytest.approx(100 / 100.0)
    assert summarize([]).count == 0
