"""A small load generator: closed-loop users and open-loop Poisson arrivals.

Closed loop models people who wait for an answer before asking again (the
measured table in docs/design.md was taken this way); open loop models traffic that
arrives regardless of how the service is doing (bursts, diurnal load), which is
what exposes queueing. Both are bounded in time and in count, share one aiohttp
session sized to the load, serialise the payload once, and record every
request: status 0 means a timeout or connection error.

Arrivals are seeded, so two runs with the same seed offer the same load.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

__all__ = [
    "RequestRecord",
    "Summary",
    "chat_payload",
    "closed_loop",
    "open_loop",
    "summarize",
]

Rate = float | Callable[[float], float]

#: While the offered rate is 0, how often to look again; and, for a rate that
#: changes (a function given no peak), the longest a gap is drawn at one rate.
_IDLE_STEP_S = 0.05


@dataclass(frozen=True)
class RequestRecord:
    """One request: monotonic start and end (seconds), HTTP status, error text."""

    start: float
    end: float
    status: int  # 0: timeout or connection error
    error: str | None = None

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True)
class Summary:
    """Counts, error rate, latency percentiles of successful requests (None if none)."""

    count: int
    ok: int
    errors: int
    error_rate: float
    p50: float | None
    p95: float | None
    p99: float | None
    throughput: float  # successful requests per second, first send to last success
    statuses: dict[int, int] = field(default_factory=dict)

    def line(self) -> str:
        """One human-readable line."""

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value * 1000:.1f} ms"

        return (
            f"{self.count} requests, {self.ok} ok, error rate {self.error_rate:.1%}, "
            f"{self.throughput:.1f} req/s, p50 {ms(self.p50)}, p95 {ms(self.p95)}, "
            f"p99 {ms(self.p99)}"
        )


def _percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(records: list[RequestRecord]) -> Summary:
    """Summary of a run's records."""
    latencies = sorted(r.latency for r in records if r.ok)
    statuses: dict[int, int] = {}
    for r in records:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    count = len(records)
    ok = len(latencies)
    # From the first request sent to the last success or the last request sent,
    # whichever is later: a request that failed late (a timeout sent just before
    # the end) does not stretch the time the successes are divided by, and a run
    # whose requests fail after some point still counts that stretch.
    ends = [r.end for r in records if r.ok]
    span = (
        max(max(ends), max(r.start for r in records)) - min(r.start for r in records)
        if ends
        else 0.0
    )
    return Summary(
        count=count,
        ok=ok,
        errors=count - ok,
        error_rate=(count - ok) / count if count else 0.0,
        p50=_percentile(latencies, 50),
        p95=_percentile(latencies, 95),
        p99=_percentile(latencies, 99),
        throughput=ok / span if span > 0 else 0.0,
        statuses=dict(sorted(statuses.items())),
    )


def chat_payload(
    model: str, prompt: str = "Describe this image.", image_png: bytes | None = None
) -> dict[str, Any]:
    """An OpenAI chat request, with the image as a base64 data URL when given."""
    content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
    if image_png is not None:
        encoded = base64.b64encode(image_png).decode()
        content.append(
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{encoded}"}}
        )
    return {"model": model, "messages": [{"role": "user", "content": content}]}


class _Client:
    def __init__(self, url: str, payload: Any, timeout_s: float, connections: int) -> None:
        self.url = url
        self.body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.connections = connections
        self.headers = {"Content-Type": "application/json"}

    async def __aenter__(self) -> _Client:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.connections, force_close=False),
            timeout=self.timeout,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def one(self) -> RequestRecord:
        start = time.monotonic()
        try:
            async with self.session.post(self.url, data=self.body, headers=self.headers) as resp:
                await resp.read()
                return RequestRecord(start, time.monotonic(), resp.status)
        except TimeoutError:
            return RequestRecord(start, time.monotonic(), 0, "timeout")
        except (aiohttp.ClientError, OSError) as exc:
            return RequestRecord(start, time.monotonic(), 0, f"{type(exc).__name__}: {exc}")


#: The highest arrival rate an open loop takes: one client process sends no more.
MAX_RATE = 10_000.0
#: How long a closed-loop user waits after a failed request before the next, as the
#: simulator's users do (``SimConfig.error_pause_seconds``).
ERROR_PAUSE_S = 1.0


def _check_times(duration_s: float, timeout_s: float) -> None:
    """Refuse what would run for ever or without a client timeout (aiohttp reads a
    total of 0 or less as none, and NaN never expires)."""
    if not (math.isfinite(duration_s) and duration_s >= 0):
        raise ValueError(f"duration_s must be a finite number >= 0, got {duration_s}")
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a finite number > 0, got {timeout_s}")


def _check_rate(rate: float, at: float | None = None) -> float:
    if not (math.isfinite(rate) and 0 <= rate <= MAX_RATE):
        where = "" if at is None else f" at {at:.3f} s"
        raise ValueError(f"rate must be a number from 0 to {MAX_RATE:g}{where}, got {rate}")
    return rate


async def closed_loop(
    url: str,
    users: int,
    *,
    duration_s: float,
    timeout_s: float,
    payload: Any,
    max_requests: int | None = None,
    error_pause_s: float = ERROR_PAUSE_S,
) -> list[RequestRecord]:
    """``users`` users each send a request, wait for its answer, and send again.

    After a failed request (an answer other than 2xx, or none) a user waits
    ``error_pause_s`` first: a refusal comes back in a millisecond, and users
    who sent again at once would turn an overload into a flood of requests.
    No request starts after ``duration_s`` or beyond ``max_requests``; the ones
    in flight then are waited for (each bounded by ``timeout_s``).
    """
    if users < 1:
        raise ValueError(f"users must be >= 1, got {users}")
    _check_times(duration_s, timeout_s)
    if not (math.isfinite(error_pause_s) and error_pause_s >= 0):
        raise ValueError(f"error_pause_s must be a finite number >= 0, got {error_pause_s}")
    records: list[RequestRecord] = []
    deadline = time.monotonic() + duration_s
    budget = [max_requests if max_requests is not None else math.inf]

    async with _Client(url, payload, timeout_s, users) as client:

        async def user() -> None:
            while time.monotonic() < deadline and budget[0] > 0:
                budget[0] -= 1
                record = await client.one()
                records.append(record)
                if not 200 <= record.status < 300 and error_pause_s > 0:
                    await asyncio.sleep(min(error_pause_s, max(0.0, deadline - time.monotonic())))

        await asyncio.gather(*(user() for _ in range(users)))
    return records


async def open_loop(
    url: str,
    rate: Rate,
    *,
    duration_s: float,
    timeout_s: float,
    payload: Any,
    max_requests: int | None = None,
    seed: int = 0,
    peak_rate: float | None = None,
) -> list[RequestRecord]:
    """Poisson arrivals at ``rate`` per second (a number, or a function of elapsed seconds).

    A function with its ``peak_rate`` (the highest it reaches) gets arrivals by
    thinning, as the simulator draws them: candidates at the peak rate, each kept
    with probability rate / peak. Without one, the rate is read again every 50 ms
    (a gap drawn longer is a step with no arrival: the arrivals are memoryless),
    which is exact for a rate that holds over each step: a gap drawn at a low rate
    no longer steps over a sudden rise.
    Requests start whether or not earlier ones have been answered; arrivals stop
    after ``duration_s`` or ``max_requests``, and the outstanding ones are waited
    for (each bounded by ``timeout_s``).
    """
    _check_times(duration_s, timeout_s)
    if peak_rate is not None:
        _check_rate(peak_rate)
    given: Callable[[float], float] | None = rate if callable(rate) else None
    constant = 0.0 if callable(rate) else _check_rate(float(rate))

    def rate_of(elapsed: float) -> float:
        if given is None:
            return constant
        return _check_rate(float(given(elapsed)), elapsed)

    rng = random.Random(seed)
    records: list[RequestRecord] = []
    limit = max_requests if max_requests is not None else math.inf
    started = 0
    pending: set[asyncio.Task[RequestRecord]] = set()

    def collect(task: asyncio.Task[RequestRecord]) -> None:
        pending.discard(task)
        if not task.cancelled():
            records.append(task.result())

    async with _Client(url, payload, timeout_s, 0) as client:
        begin = time.monotonic()
        next_at = 0.0
        rejected = 0
        while started < limit:
            if given is not None and peak_rate is not None:
                if not peak_rate > 0:
                    break  # never an arrival
                next_at += rng.expovariate(peak_rate)
                if next_at >= duration_s:
                    break
                current = rate_of(next_at)
                if current > peak_rate * (1 + 1e-9):
                    raise ValueError(
                        f"rate {current:g} at {next_at:.3f} s is above peak_rate {peak_rate:g}"
                    )
                if rng.random() * peak_rate >= current:
                    rejected += 1
                    if rejected % 256 == 0:
                        await asyncio.sleep(0)  # a long quiet stretch: let the answers in
                    continue
            else:
                current = rate_of(next_at)
                gap = rng.expovariate(current) if current > 0 else math.inf
                if gap > _IDLE_STEP_S and (given is not None or not current > 0):
                    # No arrival in this step; the rate is read again after it.
                    next_at += _IDLE_STEP_S
                    current = 0.0
                else:
                    next_at += gap
                if next_at >= duration_s:
                    break
            delay = begin + next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if not current > 0:
                continue
            task = asyncio.create_task(client.one())
            pending.add(task)
            task.add_done_callback(collect)
            started += 1
        if pending:
            await asyncio.wait(set(pending))
    return records
