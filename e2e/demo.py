"""``make demo``: the measured load test, replayed against an autoscaled service on this machine.

One CPU pod of Qwen3-VL-2B was load-tested with 1, 2, 4, 8 and 16 closed-loop users
(docs/design.md): at 16 users a third of the requests failed. This demo replays that
gradient against the local cluster (:mod:`e2e.localcluster`): the real operator scales a
``fake``-runtime VLMService
(same latency curve as the measured model) whose pods are real gate + model processes, from the
signals a real Prometheus scrapes off the gates. Time is compressed (5x by default: 25 minutes of
load in 5), and every number printed is converted back to real time.

It prints a line per interval (users, replicas ready/desired, in-flight per pod, queue, the P95
and error rate the operator sees), then the per-phase table side by side with the measured single
pod, and draws replicas, in-flight per pod and P95 over time to ``out/demo.png``. ``--quick``
runs a one-minute version (10x, 2-minute phases) that the end-to-end tests use.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import logging
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from vlm_operator.loadgen import chat_payload
from vlm_operator.traces import Phase, Trace, load_trace

from e2e.localcluster import procs
from e2e.localcluster.cluster import LocalCluster, OperatorExited, Snapshot
from e2e.localcluster.kubeclient import KubeError
from e2e.localcluster.load import PhaseReport, TraceRun, replay
from e2e.prometheus import PROMETHEUS_BINARY

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "manifests" / "fake-demo.yaml"

#: The measured single pod (docs/design.md): users → (P95 s, error fraction, req/s).
MEASURED_SINGLE_POD: dict[int, tuple[float, float, float]] = {
    1: (6.8, 0.0, 0.16),
    2: (7.9, 0.0, 0.28),
    4: (10.5, 0.0, 0.52),
    8: (16.2, 0.062, 0.93),
    16: (28.1, 0.348, 1.04),
}
CLIENT_TIMEOUT_S = 30.0  # real seconds, as in the measured test


@dataclass(frozen=True)
class Sample:
    """What the demo saw at one instant (``at``: time.monotonic())."""

    at: float
    users: int  # closed-loop traces
    rate: float | None  # open traces: offered requests per second, real time
    snapshot: Snapshot
    p95_s: float | None  # the operator's view (status.signals.p95Seconds), compressed seconds
    error_rate: float | None  # the gates' error rate as the operator sees it


@dataclass
class DemoResult:
    """Everything the demo measured, for the table, the plot and the tests."""

    time_scale: float
    run: TraceRun
    samples: list[Sample]
    reports: list[PhaseReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    startup_seconds: list[float] = field(default_factory=list)  # real time, per pod

    def phase_samples(self, phase: Phase) -> list[Sample]:
        k = self.time_scale
        begin = self.run.started_at + phase.start_s / k
        return [s for s in self.samples if begin <= s.at < begin + phase.duration_s / k]

    def mean_desired(self, phase: Phase) -> float | None:
        """Average replicas the operator asked for during ``phase``."""
        values = [s.snapshot.desired for s in self.phase_samples(phase)]
        known = [v for v in values if v is not None]
        return sum(known) / len(known) if known else None

    def replica_seconds(self, phase: Phase | None = None) -> float:
        """Real-time pod-seconds (starting, ready and draining pods, as a cluster bills them),
        of ``phase`` or of the whole trace: not of the wait for the last answers after it,
        which the simulator, whose figures these are compared with, does not count. Each
        sample's pods count until the next sample, clipped to the span (the last one's to
        its end)."""
        k = self.time_scale
        begin = self.run.started_at + (phase.start_s / k if phase is not None else 0.0)
        span = phase.duration_s if phase is not None else self.run.trace.duration_s
        end = begin + span / k
        total = 0.0
        for index, sample in enumerate(self.samples):
            following = self.samples[index + 1].at if index + 1 < len(self.samples) else end
            overlap = min(following, end) - max(sample.at, begin)
            if overlap > 0:
                total += sample.snapshot.alive * overlap
        return total * k


def quick_trace() -> Trace:
    """The measured gradient with 2-minute phases (1 minute of wall time at 10x)."""
    base = load_trace("measured-gradient")
    phases: list[Phase] = []
    start = 0.0
    for p in base.phases:
        phases.append(replace(p, start_s=start, duration_s=120.0))
        start += 120.0
    return replace(base, name="measured-gradient-quick", phases=phases)


def demo_manifest(trace: Trace) -> dict[str, Any]:
    """manifests/fake-demo.yaml with the trace's own service needs (e.g. maxReplicas) merged."""
    manifest: dict[str, Any] = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))

    def merge(base: dict[str, Any], over: dict[str, Any]) -> None:
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = copy.deepcopy(value)

    merge(manifest["spec"], dict(trace.service))
    return manifest


def _fmt(value: float | None, spec: str, missing: str = "-") -> str:
    return missing if value is None or math.isnan(value) else format(value, spec)


def live_line(sample: Sample, t0: float, k: float) -> str:
    snap = sample.snapshot
    clock = (sample.at - t0) * k
    per_pod = " ".join(_fmt(p.running, ".0f", "?") for p in snap.pods) or "-"
    p95 = None if sample.p95_s is None else sample.p95_s * k
    load = f"users {sample.users:>2}" if sample.rate is None else f"rate {sample.rate:5.2f}/s"
    return (
        f"{int(clock // 60):02d}:{int(clock % 60):02d}  {load}  "
        f"replicas {snap.ready}/{_fmt(snap.desired, 'd', '?')}  in-flight/pod [{per_pod}]  "
        f"queue {snap.waiting:.0f}  P95 {_fmt(p95, '.1f')} s  "
        f"errors {_fmt(sample.error_rate, '.1%')}"
    )


def final_table(result: DemoResult) -> str:
    w = max(9, *(len(p.name) for p in result.run.trace.phases))
    header = (
        f"{'phase':<{w}} {'pods':>5} {'max':>4} {'P95 s':>6} {'errors':>7} {'req/s':>6}  |"
        f"  single pod: {'P95 s':>6} {'errors':>7} {'req/s':>6}"
    )
    lines = [header, "-" * len(header)]
    for phase, r in zip(result.run.trace.phases, result.reports, strict=True):
        samples = result.phase_samples(phase)
        pods = result.replica_seconds(phase) / phase.duration_s if samples else 0.0
        peak = max((s.snapshot.ready for s in samples), default=0)
        line = (
            f"{phase.name:<{w}} {pods:>5.1f} {peak:>4d} {_fmt(r.p95_s, '6.1f'):>6} "
            f"{r.error_rate:>7.1%} {r.throughput:>6.2f}  |"
        )
        reference = MEASURED_SINGLE_POD.get(r.users or -1)
        if reference is not None:
            p95, errors, qps = reference
            line += f"              {p95:>6.1f} {errors:>7.1%} {qps:>6.2f}"
        lines.append(line)
    lines.append(
        "pods: average pods running (starting, ready or draining); max: most ready pods; "
        "P95, errors and req/s measured by the clients, in real time."
    )
    return "\n".join(lines)


def _rolling_p95(run: TraceRun, times: list[float], window_s: float) -> list[float | None]:
    ends = sorted((r.end, r.latency) for r in run.all_records() if r.ok)
    out: list[float | None] = []
    for t in times:
        window = sorted(lat for end, lat in ends if t - window_s <= end <= t)
        out.append(window[max(0, math.ceil(0.95 * len(window)) - 1)] if window else None)
    return out


def plot(result: DemoResult, path: Path, *, max_in_flight: int, p95_target_s: float) -> None:
    """Replicas, in-flight per pod and P95 over (real) time, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = result.time_scale
    t0 = result.run.started_at
    samples = result.samples
    minutes = [(s.at - t0) * k / 60 for s in samples]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    ax1.step(minutes, [s.snapshot.desired or 0 for s in samples], where="post", label="desired")
    ax1.step(minutes, [s.snapshot.ready for s in samples], where="post", label="ready")
    ax1b = ax1.twinx()
    ax1b.step(minutes, [s.users for s in samples], where="post", color="grey", ls=":",
              label="users")  # fmt: skip
    ax1.set_ylabel("replicas")
    ax1b.set_ylabel("users")
    ax1.legend(loc="upper left")
    ax1b.legend(loc="upper center")
    ax1.set_title(f"{result.run.trace.name}: local cluster, {k:g}x time compression")

    def per_pod(s: Sample) -> tuple[float, float, float]:
        ready = [p for p in s.snapshot.pods if p.ready]
        if not ready:
            return 0.0, 0.0, 0.0
        running = [p.running or 0.0 for p in ready]
        waiting = sum(p.waiting or 0.0 for p in ready)
        return sum(running) / len(ready), max(running), waiting / len(ready)

    stats = [per_pod(s) for s in samples]
    ax2.plot(minutes, [m for m, _, _ in stats], label="in flight per pod (mean)")
    ax2.plot(minutes, [x for _, x, _ in stats], label="in flight per pod (max)", alpha=0.6)
    ax2.plot(minutes, [q for _, _, q in stats], label="queued per pod (mean)")
    ax2.axhline(max_in_flight, color="red", ls="--", lw=1, label=f"maxInFlight {max_in_flight}")
    ax2.set_ylabel("requests")
    ax2.legend(loc="upper left", fontsize="small")
    client = _rolling_p95(result.run, [s.at for s in samples], 30.0 / k)
    ax3.plot(minutes, [None if v is None else v * k for v in client], label="P95, clients (30 s)")
    ax3.plot(minutes, [None if s.p95_s is None else s.p95_s * k for s in samples],
             label="P95, operator's signal", alpha=0.7)  # fmt: skip
    ax3.axhline(p95_target_s, color="red", ls="--", lw=1, label=f"target {p95_target_s:g} s")
    ax3.set_ylabel("seconds (real time)")
    ax3.set_xlabel("minutes (real time)")
    ax3.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


async def run_demo(
    *,
    time_scale: float,
    trace: Trace,
    interval_s: float = 30.0,
    sample_period_s: float = 2.5,
    png: Path | None = None,
    workdir: Path | None = None,
    out: Any = None,
    cluster_options: dict[str, Any] | None = None,
) -> DemoResult:
    """Run the demo; ``interval_s`` (live lines) and ``sample_period_s`` are real seconds."""
    write = out.write if out is not None else sys.stdout.write

    def say(text: str) -> None:
        write(text + "\n")
        if out is None:
            sys.stdout.flush()

    k = time_scale
    manifest = demo_manifest(trace)
    name = str(manifest["metadata"]["name"])
    async with LocalCluster(time_scale=k, workdir=workdir, **(cluster_options or {})) as cluster:
        applied = await cluster.apply(manifest)
        spec = applied["spec"]
        say(f"local cluster up: API {cluster.api_url}, Prometheus {cluster.prometheus_url}")
        say(f"logs in {cluster.logs}; time compressed {k:g}x; all times below in real time")
        for note in cluster.notes:
            say(f"note: {note}")
        startup = float(spec["model"]["fake"].get("startupSeconds", 60.0))
        say(f"waiting for the first pod (model load {startup:g} s)...")
        await cluster.wait_ready(name, 1, deadline_s=3 * startup / k + 30)
        service = await cluster.service(name)
        url = f"{service.url}/v1/chat/completions"
        payload = chat_payload(str(spec["model"]["id"]))
        samples: list[Sample] = []
        started = time.monotonic()

        async def monitor() -> None:
            every = max(1, round(interval_s / sample_period_s))
            for i in range(10**9):
                # A dead operator ends the demo at once: what follows would show no autoscaling.
                cluster.check_operator()
                snap = await cluster.snapshot(name)
                try:
                    status = ((await cluster.vlmservice(name)) or {}).get("status") or {}
                except (KubeError, aiohttp.ClientError, TimeoutError) as exc:
                    # One failed read of the API costs this sample's signals, not the run.
                    log.warning("reading the VLMService failed: %s", exc)
                    status = {}
                signals = status.get("signals") or {}
                elapsed = (snap.at - started) * k
                sample = Sample(
                    at=snap.at,
                    users=trace.users_at(elapsed) if trace.kind == "closed" else 0,
                    rate=trace.rate_at(elapsed) if trace.kind == "open" else None,
                    snapshot=snap,
                    p95_s=signals.get("p95Seconds"),
                    error_rate=signals.get("errorRate"),
                )
                samples.append(sample)
                if i % every == 0:
                    say(live_line(sample, started, k))
                await asyncio.sleep(sample_period_s / k)

        def on_phase(phase: Phase) -> None:
            load = f"{phase.users} users" if phase.users is not None else f"{phase.rate:g} req/s"
            say(f"--- phase {phase.name}: {load} for {phase.duration_s:g} s")

        watcher = asyncio.create_task(monitor())
        loading = asyncio.create_task(
            replay(
                trace, url, time_scale=k, timeout_s=CLIENT_TIMEOUT_S, payload=payload,
                on_phase=on_phase,
            )
        )  # fmt: skip
        try:
            # The monitor ends only by failing (the operator gone): the run ends with it.
            await asyncio.wait({watcher, loading}, return_when=asyncio.FIRST_COMPLETED)
            if watcher.done():
                watcher.result()  # raises what ended it
            run = await loading
        finally:
            for task in (watcher, loading):
                task.cancel()
            for task in (watcher, loading):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task  # (its failure, if any, was raised above)
        result = DemoResult(
            time_scale=k,
            run=run,
            samples=samples,
            notes=list(cluster.notes),
            startup_seconds=[s * k for s in cluster.runner.startup_seconds],
        )
        result.reports = run.phases()
        say("")
        say(final_table(result))
        if png is not None:
            plot(
                result,
                png,
                max_in_flight=int(spec["concurrency"]["maxInFlight"]),
                p95_target_s=float(spec["autoscaling"]["p95LatencyTargetSeconds"]) * k,
            )
            say(f"plot: {png}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m e2e.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="one-minute version (10x, 2 min phases)"
    )
    parser.add_argument("--time-scale", type=float, help="compression factor (5; --quick: 10)")
    parser.add_argument("--trace", default="measured-gradient", help="trace name or file")
    parser.add_argument("--interval", type=float, default=30.0,
                        help="real seconds between live lines (30)")  # fmt: skip
    parser.add_argument("--png", default=str(REPO / "out" / "demo.png"), help="plot file")
    parser.add_argument("--workdir", help="keep logs and Prometheus data here")
    args = parser.parse_args(argv)
    time_scale = args.time_scale or (10.0 if args.quick else 5.0)
    if not time_scale > 0:
        parser.error("--time-scale: must be positive")
    if not args.interval > 0:
        parser.error("--interval: must be positive")
    if not Path(PROMETHEUS_BINARY).exists():
        print("demo: Prometheus is not installed (make system-deps installs it)", file=sys.stderr)
        return 2
    try:
        trace = quick_trace() if args.quick else load_trace(args.trace)
    except ValueError as exc:
        parser.error(f"--trace: {exc}")
    procs.install_signal_handlers()
    try:
        asyncio.run(
            run_demo(
                time_scale=time_scale,
                trace=trace,
                interval_s=args.interval if not args.quick else min(args.interval, 20.0),
                png=Path(args.png) if args.png else None,
                workdir=Path(args.workdir) if args.workdir else None,
            )
        )
    except KeyboardInterrupt:
        return 130
    except OperatorExited as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
