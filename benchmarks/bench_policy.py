"""Scaling policy versus the anchors, in the simulator: every shipped trace, every goal.

Run: ``make bench-policy`` or ``.venv/bin/python benchmarks/bench_policy.py [--seed N]``.
Prints one comparison table per trace, then each goal with the measured
numbers and whether it holds, then the simulator's speed. Deterministic for
the seeds below; only the wall-clock figures vary between machines.
"""

from __future__ import annotations

import argparse
import time

from vlm_operator.commands.simulate import COMPARED, comparison_table
from vlm_operator.simulator import Report, run_policy
from vlm_operator.traces import list_traces, load_trace, parse_trace

GRADIENT_SEEDS = (1, 2, 3)


def _goal(ok: bool, text: str) -> str:
    return f"[{'met' if ok else 'NOT met'}] {text}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-diurnal", action="store_true", help="leave out the 24 h trace")
    args = parser.parse_args()

    goals: list[str] = []
    by_trace: dict[str, list[Report]] = {}
    wall: dict[str, float] = {}
    for name in list_traces():
        if args.skip_diurnal and name == "diurnal-24h":
            continue
        trace = load_trace(name)
        reports = [run_policy(trace, p, seed=args.seed)[0] for p in COMPARED]
        by_trace[name] = reports
        wall[name] = reports[0].wall_seconds or 0.0
        print(comparison_table(trace, reports, args.seed))
        print()

    # Measured gradient: every phase after its first minute, over several seeds.
    grad = [run_policy("measured-gradient", "ours", seed=s)[0] for s in GRADIENT_SEEDS]
    errors = sum(r.errors for r in grad)
    goals.append(
        _goal(errors == 0, f"measured gradient: {errors} errors over seeds {GRADIENT_SEEDS}")
    )
    for i, phase in enumerate(grad[0].phases):
        p95s = [r.phases[i].p95_after_first_minute or 0.0 for r in grad]
        goals.append(
            _goal(
                max(p95s) <= 12.0,
                f"measured gradient, {phase.name}: P95 after the first minute "
                + ", ".join(f"{x:.2f}" for x in p95s)
                + " s (goal <= 12)",
            )
        )
    goodput = [r.phases[-1].goodput for r in grad]
    goals.append(
        _goal(
            min(goodput) >= 1.6,
            "measured gradient, 16 users: goodput "
            + ", ".join(f"{x:.2f}" for x in goodput)
            + " req/s (goal >= 1.6; one pod measured 1.04 with 34.8% errors)",
        )
    )
    ratios = [r.cost_ratio for r in grad]
    goals.append(
        _goal(
            max(ratios) <= 1.15,
            "measured gradient: cost " + ", ".join(f"{x:.3f}" for x in ratios) + " x oracle",
        )
    )

    # Every trace: errors against every anchor, cost against the oracle and KPA / HPA-CPU.
    for name, reports in by_trace.items():
        ours = reports[0]
        worse = [r.policy for r in reports[1:] if r.error_rate < ours.error_rate]
        goals.append(
            _goal(
                not worse,
                f"{name}: ours {ours.error_rate:.2%} errors"
                + (
                    "; fewer errors: "
                    + ", ".join(
                        f"{r.policy} {r.error_rate:.2%} at {r.cost_ratio:.2f}x"
                        for r in reports[1:]
                        if r.policy in worse
                    )
                    if worse
                    else "; no anchor has fewer"
                ),
            )
        )
        goals.append(
            _goal(ours.cost_ratio <= 1.15, f"{name}: ours costs {ours.cost_ratio:.3f}x the oracle")
        )
        for anchor in ("kpa", "hpa-cpu"):
            other = next(r for r in reports if r.policy == anchor)
            if other.error_rate <= ours.error_rate:
                goals.append(
                    _goal(
                        ours.replica_seconds < other.replica_seconds,
                        f"{name}: ours {ours.cost_ratio:.2f}x vs {anchor} {other.cost_ratio:.2f}x "
                        f"({anchor} errors {other.error_rate:.2%} <= ours)",
                    )
                )

    # Oscillation on steady loads: scale-downs after the settle time.
    for kind, level in (("open", 1.0), ("open", 10.0), ("closed", 8), ("closed", 16)):
        phase = {"duration": 3600, "rate" if kind == "open" else "users": level}
        trace = parse_trace(
            {
                "name": f"steady-{kind}-{level}",
                "kind": kind,
                "service": {"autoscaling": {"maxReplicas": 60}},
                "phases": [phase],
            }
        )
        report, result = run_policy(trace, "ours", seed=args.seed)
        settle = 600.0
        downs = sum(1 for t, b, a in result.scale_events if a < b and t >= settle)
        ups = sum(1 for t, b, a in result.scale_events if a > b and t >= settle)
        goals.append(
            _goal(
                downs <= 1,
                f"steady {kind} load {level}: {downs} scale-downs and {ups} scale-ups after "
                f"{settle:.0f} s; cost {report.cost_ratio:.2f}x",
            )
        )

    # Speed.
    started = time.perf_counter()
    speed_report, _ = run_policy("diurnal-24h", "ours", seed=args.seed)
    elapsed = time.perf_counter() - started
    rate = speed_report.requests / (speed_report.wall_seconds or elapsed)
    goals.append(_goal(rate >= 100_000, f"speed: {rate:,.0f} simulated requests per second"))
    goals.append(
        _goal(elapsed < 120, f"diurnal 24 h ({speed_report.requests:,} requests): {elapsed:.1f} s")
    )

    print("Goals")
    for line in goals:
        print("  " + line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
