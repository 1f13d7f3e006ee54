"""Replaying a trace against the local cluster, with time compressed, phase by phase.

The simulator's traces (:mod:`vlm_operator.traces`) drive the real processes here through the
project's own load generator (:mod:`vlm_operator.loadgen`): a closed phase runs its users, an open
phase its Poisson arrivals (ramps included). Every phase starts at its own offset from the
start of the run, whatever the previous phase's stragglers are doing, so that a gradient stays a
gradient: the last requests of the 8-user phase overlap the first of the 16-user phase, as they
would with real users.

Everything inside runs ``time_scale`` times faster than real time. Reports convert back: latency
× scale, throughput ÷ scale, so that the numbers read like the measured table in DESIGN.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vlm_operator.loadgen import RequestRecord, Summary, closed_loop, open_loop, summarize
from vlm_operator.traces import Phase, Trace

__all__ = ["PhaseReport", "TraceRun", "format_phase_table", "replay"]


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
    compressed like everything else. ``on_phase`` is called as each phase starts.
    """
    compressed = trace.scaled(time_scale)
    started = time.monotonic()
    run = TraceRun(trace=trace, time_scale=time_scale, started_at=started, records={})
    client_timeout = timeout_s / time_scale

    async def one_phase(index: int, phase: Phase, real: Phase) -> None:
        delay = started + phase.start_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if on_phase is not None:
            on_phase(real)
        if trace.kind == "closed":
            if not phase.users:
                run.records[real.name] = []
                return
            records = await closed_loop(
                url, phase.users, duration_s=phase.duration_s, timeout_s=client_timeout,
                payload=payload,
            )  # fmt: skip
        else:
            records = await open_loop(
                url,
                lambda t, p=phase: p.rate_at(p.start_s + t),
                duration_s=phase.duration_s,
                timeout_s=client_timeout,
                payload=payload,
                seed=seed + index,
            )
        run.records[real.name] = records

    await asyncio.gather(
        *(
            one_phase(i, p, r)
            for i, (p, r) in enumerate(zip(compressed.phases, trace.phases, strict=True))
        )
    )
    return run


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_phase_table(
    reports: list[PhaseReport], reference: dict[int, tuple[float, float, float]] | None = None
) -> str:
    """A plain-text table of phases; ``reference`` (users → P95 s, error fraction, req/s) adds
    the measured single pod side by side."""
    header = f"{'phase':<12} {'load':>8} {'P95 (s)':>8} {'errors':>7} {'req/s':>6}"
    if reference:
        header += f"   | single pod: {'P95 (s)':>8} {'errors':>7} {'req/s':>6}"
    lines = [header, "-" * len(header)]
    for r in reports:
        load = f"{r.users} users" if r.users is not None else f"{_fmt(r.rate, '.2f')}/s"
        line = (
            f"{r.name:<12} {load:>8} {_fmt(r.p95_s, '8.1f')} {r.error_rate:>7.1%} "
            f"{r.throughput:>6.2f}"
        )
        if reference and r.users in reference:
            p95, err, qps = reference[r.users]
            line += f"   |             {p95:>8.1f} {err:>7.1%} {qps:>6.2f}"
        lines.append(line)
    return "\n".join(lines)
