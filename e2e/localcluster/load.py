"""Replaying a trace against the local cluster, with time compressed, phase by phase.

The simulator's traces (:mod:`vlm_operator.traces`) drive the real processes here through the
project's own load generator (:mod:`vlm_operator.loadgen`): a closed phase runs its users, an open
phase its Poisson arrivals (ramps included), each at its own offset from the start of the run.

Closed-loop users carry over from one phase to the next (the 8 users of one phase are 8 of the
16 of the next), as the simulator's are; a request counts for the phase in which it was sent.

Everything inside runs ``time_scale`` times faster than real time. Reports convert back: latency
× scale, throughput ÷ scale, so that the numbers read like the measured table in docs/design.md.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from vlm_operator.loadgen import (
    ERROR_PAUSE_S,
    RequestRecord,
    Summary,
    closed_loop,
    open_loop,
    summarize,
)
from vlm_operator.traces import Phase, Trace

__all__ = ["PhaseReport", "TraceRun", "replay"]


@dataclass(frozen=True)
class PhaseReport:
    """One phase, in real-time units (latency × scale, req/s ÷ scale)."""

    name: str
    users: int | None
    rate: float | None  # requests per second, real time
    requests: int
    ok: int
    errors: int
    error_rate: float
    p50_s: float | None
    p95_s: float | None
    throughput: float  # successful requests per second, real time


@dataclass
class TraceRun:
    """The records of a replay, per phase, and when it started (time.monotonic)."""

    trace: Trace  # as given (real time)
    time_scale: float
    started_at: float
    records: dict[str, list[RequestRecord]]

    def phases(self) -> list[PhaseReport]:
        return [self._report(p) for p in self.trace.phases]

    def _report(self, phase: Phase) -> PhaseReport:
        records = self.records.get(phase.name, [])
        s: Summary = summarize(records)
        k = self.time_scale
        # Throughput over the phase's own (compressed) duration: every request of the phase
        # started inside it, and stragglers finishing after it still count for it.
        ok_inside = sum(r.ok for r in records)
        compressed = phase.duration_s / k
        return PhaseReport(
            name=phase.name,
            users=phase.users,
            rate=phase.rate,
            requests=s.count,
            ok=s.ok,
            errors=s.errors,
            error_rate=s.error_rate,
            p50_s=None if s.p50 is None else s.p50 * k,
            p95_s=None if s.p95 is None else s.p95 * k,
            throughput=(ok_inside / compressed) / k if compressed > 0 else 0.0,
        )

    def all_records(self) -> list[RequestRecord]:
        return [r for rs in self.records.values() for r in rs]


def _user_slots(phases: list[Phase]) -> list[list[tuple[float, float]]]:
    """For each closed-loop user, the (start, end) stretches it is active, merged across
    phases, so that a user present in consecutive phases keeps asking without a break."""
    slots: list[list[tuple[float, float]]] = []
    for phase in phases:
        for i in range(phase.users or 0):
            if i == len(slots):
                slots.append([])
            stretches = slots[i]
            if stretches and math.isclose(stretches[-1][1], phase.start_s, abs_tol=1e-6):
                stretches[-1] = (stretches[-1][0], phase.end_s)
            else:
                stretches.append((phase.start_s, phase.end_s))
    return slots


async def replay(
    trace: Trace,
    url: str,
    *,
    time_scale: float,
    timeout_s: float,
    payload: Any,
    on_phase: Callable[[Phase], None] | None = None,
    seed: int = 0,
) -> TraceRun:
    """Run ``trace`` (real-time phases) against ``url``, ``time_scale`` times faster.

    ``timeout_s`` is the client timeout in real seconds (the measured test used 30 s); it is
    compressed like everything else. ``on_phase`` is called as each phase starts. A request
    belongs to the phase in which it was sent.
    """
    compressed = trace.scaled(time_scale)
    started = time.monotonic()
    run = TraceRun(trace=trace, time_scale=time_scale, started_at=started, records={})
    client_timeout = timeout_s / time_scale
    records: list[RequestRecord] = []

    async def at(offset: float) -> None:
        delay = started + offset - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def announce() -> None:
        for phase, real in zip(compressed.phases, trace.phases, strict=True):
            await at(phase.start_s)
            if on_phase is not None:
                on_phase(real)

    async def user(stretch: tuple[float, float]) -> None:
        await at(stretch[0])
        records.extend(
            await closed_loop(
                url, 1, duration_s=stretch[1] - stretch[0], timeout_s=client_timeout,
                payload=payload, error_pause_s=ERROR_PAUSE_S / time_scale,
            )
        )  # fmt: skip

    async def arrivals(index: int, phase: Phase) -> None:
        await at(phase.start_s)
        records.extend(
            await open_loop(
                url,
                lambda t, p=phase: p.rate_at(p.start_s + t),
                duration_s=phase.duration_s,
                timeout_s=client_timeout,
                payload=payload,
                seed=seed + index,
                peak_rate=phase.peak_rate(),
            )
        )

    work: list[Awaitable[None]] = [announce()]
    if trace.kind == "closed":
        work += [user(s) for slot in _user_slots(compressed.phases) for s in slot]
    else:
        work += [arrivals(i, p) for i, p in enumerate(compressed.phases)]
    await asyncio.gather(*work)

    for phase, real in zip(compressed.phases, trace.phases, strict=True):
        run.records[real.name] = [
            r for r in records if phase.start_s <= r.start - started < phase.end_s
        ]
    return run
