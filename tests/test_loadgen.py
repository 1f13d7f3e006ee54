"""The load generator: bounds in time and count, concurrency, seeded arrivals, summaries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

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
        target.url + "?status=503",
        1,
        duration_s=5,
        timeout_s=1,
        payload={},
        max_requests=3,
        error_pause_s=0.01,
    )
    summary = summarize(failed)
    assert summary.statuses == {503: 3}
    assert summary.error_rate == 1.0
    assert summary.p50 is None


async def test_a_user_pauses_after_a_failure_instead_of_flooding(target: Target) -> None:
    # A refusal comes back in ~10 ms: sent again at once, 2 users would send ~100 in 0.5 s.
    records = await closed_loop(
        target.url + "?status=429", 2, duration_s=0.5, timeout_s=1, payload={}, error_pause_s=0.2
    )
    assert 4 <= len(records) <= 8  # 2 users x (0.5 s / ~0.21 s), and one each at least
    assert {r.status for r in records} == {429}
    ok = await closed_loop(target.url, 1, duration_s=0.3, timeout_s=1, payload={}, error_pause_s=5)
    assert len(ok) >= 10  # no pause after a success


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"duration_s": float("nan")}, "duration_s must be a finite number >= 0, got nan"),
        ({"duration_s": -1.0}, "duration_s must be a finite number >= 0"),
        ({"timeout_s": 0.0}, "timeout_s must be a finite number > 0, got 0.0"),
        ({"timeout_s": float("nan")}, "timeout_s must be a finite number > 0"),
        ({"rate": float("inf")}, "rate must be a number from 0 to 10000, got inf"),
        ({"rate": -5.0}, "rate must be a number from 0 to 10000"),
        ({"rate": 1e7}, "rate must be a number from 0 to 10000"),
        ({"rate": lambda t: float("nan")}, "rate must be a number from 0 to 10000 at 0.000 s"),
    ],
)
async def test_arguments_that_would_run_for_ever_or_unbounded_are_refused(
    kwargs: dict[str, Any], message: str
) -> None:
    # The URL is never reached: refused before a request.
    args: dict[str, Any] = {"duration_s": 1.0, "timeout_s": 1.0, "payload": {}, "rate": 1.0}
    args.update(kwargs)
    rate = args.pop("rate")
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        await open_loop("http://127.0.0.1:9/", rate, **args)
    if "rate" not in kwargs:
        with pytest.raises(ValueError, match=message):
            await closed_loop("http://127.0.0.1:9/", 1, **args)


def test_a_late_failure_does_not_stretch_the_throughput() -> None:
    records = [RequestRecord(float(i) / 10, float(i) / 10 + 0.1, 200) for i in range(10)]
    records.append(RequestRecord(0.95, 30.95, 0, "timeout"))  # sent last, timed out 30 s on
    assert summarize(records).throughput == pytest.approx(10 / 1.0)
    # Requests that kept failing after the last success still count their stretch.
    failing = [RequestRecord(1.0 + i, 1.0 + i + 0.01, 503) for i in range(59)]
    assert summarize(records[:10] + failing).throughput == pytest.approx(10 / 59.0)


def _steep_rise(t: float) -> float:
    return 1.0 if t < 0.5 else 200.0


@pytest.mark.parametrize("peak_rate", [200.0, None], ids=["thinned", "rate-read-each-step"])
async def test_a_steep_rise_gets_its_arrivals(target: Target, peak_rate: float | None) -> None:
    # 1 req/s, then 200 from 0.5 s: ~100.5 arrivals a run. A gap drawn at 1 req/s
    # (mean 1 s) steps over the rise; candidates at the peak rate do not, nor do gaps
    # drawn a step at a time when no peak is given.
    counts = []
    for seed in range(5):
        records = await open_loop(
            target.url, _steep_rise, duration_s=1.0, timeout_s=5, payload={}, seed=seed,
            peak_rate=peak_rate,
        )  # fmt: skip
        counts.append(len(records))
    assert 400 <= sum(counts) <= 610, counts  # 502 expected, sigma ~22


async def test_a_rate_above_its_peak_is_refused(target: Target) -> None:
    with pytest.raises(ValueError, match=r"rate 200 at .* is above peak_rate 100"):
        await open_loop(
            target.url, _steep_rise, duration_s=1.0, timeout_s=5, payload={}, peak_rate=100
        )


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
