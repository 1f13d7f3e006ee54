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

#: While the offered rate is 0, how often to look again.
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
    throughput: float  # successful requests per second over the run's span
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
    span = (max(r.end for r in records) - min(r.start for r in records)) if records else 0.0
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


async def closed_loop(
    url: str,
    users: int,
    *,
    duration_s: float,
    timeout_s: float,
    payload: Any,
    max_requests: int | None = None,
) -> list[RequestRecord]:
    """``users`` users each send a request, wait for its answer, and send again.

    No request starts after ``duration_s`` or beyond ``max_requests``; the ones
    in flight then are waited for (each bounded by ``timeout_s``).
    """
    if users < 1:
        raise ValueError(f"users must be >= 1, got {users}")
    records: list[RequestRecord] = []
    deadline = time.monotonic() + duration_s
    budget = [max_requests if max_requests is not None else math.inf]

    async with _Client(url, payload, timeout_s, users) as client:

        async def user() -> None:
            while time.monotonic() < deadline and budget[0] > 0:
                budget[0] -= 1
                records.append(await client.one())

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
) -> list[RequestRecord]:
    """Poisson arrivals at ``rate`` per second (a number, or a function of elapsed seconds).

    Requests start whether or not earlier ones have been answered; arrivals stop
    after ``duration_s`` or ``max_requests``, and the outstanding ones are waited
    for (each bounded by ``timeout_s``).
    """
    if callable(rate):
        rate_of = rate
    else:
        constant = float(rate)

        def rate_of(_elapsed: float) -> float:
            return constant

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
        while started < limit:
            current = rate_of(next_at)
            if not current > 0:
                next_at += _IDLE_STEP_S
            else:
                next_at += rng.expovariate(current)
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
