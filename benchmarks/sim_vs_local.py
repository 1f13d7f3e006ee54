"""The simulator against the local cluster: the same trace, the same spec, side by side.

The local cluster (``e2e.localcluster``) runs the real operator against real gate and fake-model
processes and a real Prometheus, time-compressed; the simulator (``vlm_operator.simulator``)
models the same thing as discrete events in real time. If the simulator is to be trusted on
traces no machine can replay for real, the two must agree on the short ones that can be. This
runs the trace on the local cluster first, then simulates it with matching parameters: the
spec the local run applied (durations expanded back to real time), the same latency model, the
client timeout, users that pause 1 s after an error (as the load generator's do, the local
cluster scaling the pause with its time scale), the local cluster's scrape interval, and the
pods' start-up delay. Reported per phase: P95 (linear interpolation, the same function for
both), errors, the replicas the autoscaler asked for; and the replica-seconds of the trace.

The simulator runs twice: with the nominal start-up (``startupSeconds`` of the spec), and with
the start-up the local pods really took (the model load plus the time a Python process needs to
start and bind, which time compression does not shrink), so the effect of that difference is
visible on its own.

    .venv/bin/python benchmarks/sim_vs_local.py [--time-scale 5] [--trace measured-gradient]
    .venv/bin/python benchmarks/sim_vs_local.py --quick          # 10x, 2-minute phases (~1 min)
    .venv/bin/python benchmarks/sim_vs_local.py --least-request  # both behind a least-request
                                                                 # balancer, the service told so
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vlm_operator.baselines import make_autoscaler  # noqa: E402
from vlm_operator.latency import LatencyModel  # noqa: E402
from vlm_operator.models import VLMServiceSpec  # noqa: E402
from vlm_operator.simulator import SimConfig, SimResult, simulate  # noqa: E402
from vlm_operator.simulator.engine import OK, Routing  # noqa: E402
from vlm_operator.traces import Trace, load_trace  # noqa: E402

from e2e.demo import DemoResult, demo_manifest, quick_trace, run_demo  # noqa: E402
from e2e.localcluster import compress_spec, expand_spec, scrape_interval  # noqa: E402

CLIENT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Side:
    """One run's figures per phase (real time) and in total."""

    label: str
    p95: list[float | None]
    errors: list[float]
    desired: list[float | None]
    signal: list[float | None]  # the P95 the autoscaler saw, mean over the phase
    replica_seconds: float


def p95(latencies: list[float]) -> float | None:
    """Linear-interpolated P95 (the same on both sides)."""
    if len(latencies) < 2:
        return latencies[0] if latencies else None
    return statistics.quantiles(latencies, n=100, method="inclusive")[94]


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else None


def local_side(result: DemoResult) -> Side:
    p95s, errors, desired, signal = [], [], [], []
    k = result.time_scale
    for phase in result.run.trace.phases:
        records = result.run.records.get(phase.name, [])
        p95s.append(_scaled(p95([r.latency for r in records if r.ok]), k))
        errors.append(sum(not r.ok for r in records) / len(records) if records else 0.0)
        desired.append(result.mean_desired(phase))
        seen = [s.p95_s * k for s in result.phase_samples(phase) if s.p95_s is not None]
        signal.append(_mean(seen))
    return Side("local cluster", p95s, errors, desired, signal, result.replica_seconds())


def _scaled(value: float | None, k: float) -> float | None:
    return None if value is None else value * k


def sim_side(label: str, result: SimResult) -> Side:
    p95s, errors, desired, signal = [], [], [], []
    n = len(result.status)
    for phase in result.trace.phases:
        idx = [i for i in range(n) if phase.start_s <= result.sent[i] < phase.end_s]
        p95s.append(p95([result.ended[i] - result.sent[i] for i in idx if result.status[i] == OK]))
        errors.append(sum(result.status[i] != OK for i in idx) / len(idx) if idx else 0.0)
        ticks = [
            r
            for t, r in zip(result.series.t, result.series.replicas, strict=True)
            if phase.start_s <= t < phase.end_s
        ]
        desired.append(sum(ticks) / len(ticks) if ticks else None)
        seen = [
            p
            for t, p in zip(result.series.t, result.series.p95, strict=True)
            if phase.start_s <= t < phase.end_s
        ]
        signal.append(_mean(seen))
    return Side(label, p95s, errors, desired, signal, result.replica_seconds)


def simulate_like(
    trace: Trace,
    spec: VLMServiceSpec,
    *,
    startup_s: float,
    scrape_s: float,
    seed: int,
    routing: Routing = "round-robin",
) -> SimResult:
    fake = spec.model.fake
    config = SimConfig(
        routing=routing,
        startup_seconds=startup_s,
        client_timeout_seconds=CLIENT_TIMEOUT_S,
        latency=LatencyModel(base_seconds=fake.base_seconds, alpha=fake.alpha),
        scrape_interval_seconds=scrape_s,
        signal_age_seconds=scrape_s / 2,  # the operator reads the last scrape, on average half old
    )
    return simulate(trace, make_autoscaler("ours", spec), spec=spec, seed=seed, config=config)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def _diff(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{(a - b) / b:+.0%}"


def table(trace: Trace, sides: list[Side]) -> str:
    """P95 (with the difference to the local run), errors and pods asked for, per phase."""
    local = sides[0]
    w = max(9, *(len(p.name) for p in trace.phases))
    names = ["local"] + [f"sim {chr(ord('A') + i)}" for i in range(len(sides) - 1)]
    p95_cols = "".join(f" {n:>7}" if i == 0 else f" {n:>12}" for i, n in enumerate(names))
    other_cols = "".join(f" {n:>7}" for n in names)
    lines = [
        f"{'':<{w}} |{'P95 (s, real time)':^{len(p95_cols)}}|{'errors':^{len(other_cols)}}"
        f"|{'pods asked for (mean)':^{len(other_cols)}}|{'P95 signal (mean)':^{len(other_cols)}}",
        f"{'phase':<{w}} |{p95_cols}|{other_cols}|{other_cols}|{other_cols}",
    ]
    lines.append("-" * len(lines[1]))
    for i, phase in enumerate(trace.phases):
        p95_cells = f" {_fmt(local.p95[i], '7.1f')}" + "".join(
            f" {_fmt(s.p95[i], '6.1f')} {_diff(s.p95[i], local.p95[i]):>5}" for s in sides[1:]
        )
        errors = "".join(f" {s.errors[i]:>7.1%}" for s in sides)
        pods = "".join(f" {_fmt(s.desired[i], '7.2f')}" for s in sides)
        seen = "".join(f" {_fmt(s.signal[i], '7.1f')}" for s in sides)
        lines.append(f"{phase.name:<{w}} |{p95_cells}|{errors}|{pods}|{seen}")
    totals = "  ".join(
        f"{n} {s.replica_seconds:.0f}"
        + ("" if s is local else f" ({_diff(s.replica_seconds, local.replica_seconds)})")
        for n, s in zip(names, sides, strict=True)
    )
    lines.append(f"replica-seconds (starting, ready and draining pods): {totals}")
    lines += [f"{n}: {s.label}" for n, s in zip(names, sides, strict=True)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--time-scale", type=float, help="compression of the local run (5)")
    parser.add_argument("--trace", default="measured-gradient", help="trace name or file")
    parser.add_argument("--quick", action="store_true", help="10x, 2-minute phases")
    parser.add_argument("--seed", type=int, default=0, help="simulator seed")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--verbose", action="store_true", help="print the local run's lines")
    parser.add_argument(
        "--unscaled-buckets",
        action="store_true",
        help="run the gates with latency buckets in real seconds (VLM_GATE_BUCKET_SCALE=1) "
        "instead of divided by the time scale: shows how coarse the P95 signal gets",
    )
    parser.add_argument(
        "--least-request",
        action="store_true",
        help="a least-request balancer on both sides (the local Service least-in-flight, the "
        "simulator least-loaded) and the VLMService told so (autoscaling.loadBalancing: "
        "LeastRequest)",
    )
    args = parser.parse_args(argv)
    k = args.time_scale or (10.0 if args.quick else 5.0)
    trace = quick_trace() if args.quick else load_trace(args.trace)
    routing: Routing = "round-robin"
    options: dict[str, Any] = {}
    if args.least_request:
        autoscaling = {**trace.service.get("autoscaling", {}), "loadBalancing": "LeastRequest"}
        trace = replace(trace, service={**trace.service, "autoscaling": autoscaling})
        routing = "least-loaded"
        options["service_strategy"] = "least-in-flight"
        print("a least-request balancer in front of the pods, and the VLMService told so")

    manifest = demo_manifest(trace)
    local_spec, notes = compress_spec(manifest["spec"], k)
    spec = VLMServiceSpec.model_validate(expand_spec(local_spec, k))
    scrape_real_s = float(scrape_interval(k).removesuffix("ms")) / 1000 * k
    print(f"trace {trace.name}, local cluster at {k:g}x; simulator in real time", flush=True)
    for note in notes:
        print(f"note: {note}")

    out = sys.stdout if args.verbose else io.StringIO()
    if args.unscaled_buckets:
        # The rendered pods set VLM_GATE_BUCKET_SCALE to the fake model's time scale;
        # the runner's extra environment overrides it.
        print("the gates' latency buckets in real seconds, not divided by the time scale")
        options["extra_env"] = {"VLM_GATE_BUCKET_SCALE": "1"}
    result = asyncio.run(run_demo(time_scale=k, trace=trace, out=out, cluster_options=options))
    local = local_side(result)
    nominal = spec.model.fake.startup_seconds
    measured = statistics.median(result.startup_seconds) if result.startup_seconds else nominal
    sims = [
        sim_side(
            f"simulator, start-up {nominal:g} s",
            simulate_like(
                trace,
                spec,
                startup_s=nominal,
                scrape_s=scrape_real_s,
                seed=args.seed,
                routing=routing,
            ),
        ),
        sim_side(
            f"simulator, start-up {measured:.0f} s",
            simulate_like(
                trace,
                spec,
                startup_s=measured,
                scrape_s=scrape_real_s,
                seed=args.seed,
                routing=routing,
            ),
        ),
    ]
    print(
        f"pods' start-up on the local cluster: median {measured:.1f} s real "
        f"({len(result.startup_seconds)} pods; nominal {nominal:g} s)"
    )
    print(table(trace, [local, *sims]))
    if args.json:
        payload: dict[str, Any] = {
            "trace": trace.name,
            "time_scale": k,
            "startup_seconds": result.startup_seconds,
            "sides": [s.__dict__ for s in [local, *sims]],
        }
        Path(args.json).write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
