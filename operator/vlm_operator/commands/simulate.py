"""``vlm-operator simulate``: replay a trace against a scaling policy, offline.

The discrete-event simulator runs a day of traffic in seconds, so policies
can be compared on the same trace and seed before one touches a cluster:
latency, errors, goodput, replica cost against an instant oracle, time in
SLO violation and scale events. ``--compare`` runs ours and every anchor
(HPA on CPU, HPA on in-flight, KEDA, Knative KPA, Ray Serve, one static pod).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from vlm_operator.baselines import AUTOSCALERS, make_autoscaler
from vlm_operator.cli import UsageError
from vlm_operator.latency import LatencyModel
from vlm_operator.simulator import (
    ENGINE,
    Report,
    SimConfig,
    SimResult,
    oracle_peak_pods,
    oracle_pods_at,
    run_policy,
    spec_for,
)
from vlm_operator.simulator._compiled import engine_choice_error
from vlm_operator.traces import Trace, TraceError, list_traces, load_trace

#: Policies of ``--compare``, ours first; ``static`` is the measured single pod.
COMPARED = ("ours", "kpa", "hpa-cpu", "hpa-inflight", "keda", "ray", "static")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trace",
        required=True,
        help=f"trace file, or a shipped trace: {', '.join(list_traces())}",
    )
    parser.add_argument(
        "--policy",
        help=f"scaling policy: {', '.join(AUTOSCALERS)} or static-N (default: ours)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed, >= 0 (default: 0)")
    parser.add_argument(
        "--startup-seconds",
        type=float,
        default=None,
        help="pod start-up (model load) time (default: the trace's "
        "service.model.fake.startupSeconds, 60)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=0,
        help="client retries on 429, 5xx and timeouts, openai-style (openai-python: 2; default: 0)",
    )
    parser.add_argument(
        "--routing",
        choices=("round-robin", "least-loaded"),
        default="round-robin",
        help=(
            "how the Service spreads requests (default: round-robin); tell ours of a "
            "least-request balancer in the trace: service.autoscaling.loadBalancing: LeastRequest"
        ),
    )
    parser.add_argument("--compare", action="store_true", help="run every policy; one table")
    parser.add_argument("--json", action="store_true", help="print the report(s) as JSON")
    parser.add_argument(
        "--plot",
        metavar="FILE",
        help=(
            "draw replicas, demand and P95 over time to FILE, its format by its extension "
            "(.png, .svg, .pdf, ...; needs the 'plot' extra: matplotlib)"
        ),
    )


def run(args: argparse.Namespace) -> int:
    engine_error = engine_choice_error()
    if engine_error:
        raise UsageError(engine_error)
    try:
        trace = load_trace(args.trace)
        spec = spec_for(trace)
    except TraceError as exc:
        raise UsageError(f"--trace: {exc}") from None
    if args.seed < 0:
        raise UsageError(f"--seed: must be >= 0, got {args.seed}")
    if args.startup_seconds is not None and not (
        args.startup_seconds >= 0 and math.isfinite(args.startup_seconds)
    ):
        raise UsageError(f"--startup-seconds: must be >= 0, got {args.startup_seconds}")
    if not 0 <= args.retries <= 10:
        raise UsageError(f"--retries: must be between 0 and 10, got {args.retries}")
    if args.compare and args.policy is not None:
        raise UsageError("--policy: not with --compare, which runs every policy")
    if args.policy is not None and not args.policy.strip():
        # ``--policy ""`` (an unset shell variable, say) is no choice: not the default either.
        raise UsageError(f"--policy: empty; one of {', '.join(AUTOSCALERS)} or static-N")
    policies = list(COMPARED) if args.compare else [args.policy or "ours"]
    for name in policies:
        try:
            make_autoscaler(name, spec)
        except ValueError as exc:
            raise UsageError(f"--policy: {exc}") from None
    plot = None if args.plot is None else _plot_target(args.plot)
    # The trace's latency model, as the fake runtime has it (its time scale is for
    # real time; simulated time needs none): the calibrated CPU pod by default.
    fake = spec.model.fake
    config = SimConfig(
        startup_seconds=fake.startup_seconds
        if args.startup_seconds is None
        else args.startup_seconds,
        retries=args.retries,
        routing=args.routing,
        latency=LatencyModel(base_seconds=fake.base_seconds, alpha=fake.alpha),
    )
    runs = [run_policy(trace, name, seed=args.seed, config=config) for name in policies]
    reports = [report for report, _ in runs]
    if args.json:
        payload: Any = [r.to_dict() for r in reports] if args.compare else reports[0].to_dict()
        print(json.dumps(_finite(payload), indent=2))
    elif args.compare:
        print(comparison_table(trace, reports, args.seed))
    else:
        print(_single_report(trace, reports[0]))
    if not spec.autoscaling.enabled and len(policies) > 1:
        print(
            "note: the trace turns autoscaling off: ours holds spec.replicas, and the anchors "
            "scale as they would (they have no such switch)",
            file=sys.stderr,
        )
    peak = oracle_peak_pods(trace, spec, config.latency, seed=args.seed)
    if peak > spec.autoscaling.max_replicas:
        print(
            f"note: the oracle needs {peak} pods at its peak, more than maxReplicas "
            f"({spec.autoscaling.max_replicas}): no policy can serve the load it serves, and "
            "a cost under its own is no saving (raise service.autoscaling.maxReplicas in the "
            "trace)",
            file=sys.stderr,
        )
    if plot is not None:
        path, file_format = plot
        _plot(trace, [result for _, result in runs], path, file_format)
        if not args.json:
            print(f"plot written to {path}")
    return 0


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: say null (e.g. a cost ratio with a zero oracle)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _s(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _single_report(trace: Trace, r: Report) -> str:
    lines = [
        f"trace {trace.name} ({trace.kind}, {trace.duration_s:.0f} s), policy {r.policy}, "
        f"seed {r.seed}",
        "",
        f"{'phase':<14}{'requests':>9}{'errors':>8}{'P95 s':>8}{'P99 s':>8}"
        f"{'P95 1min+':>10}{'goodput/s':>10}{'replica-s':>11}{'x oracle':>9}"
        f"{'SLO viol s':>11}{'ups':>5}{'downs':>6}",
    ]
    for p in r.phases:
        lines.append(
            f"{p.name[:13]:<14}{p.requests:>9}{p.error_rate:>8.1%}{_s(p.p95):>8}{_s(p.p99):>8}"
            f"{_s(p.p95_after_first_minute):>10}{p.goodput:>10.3f}{p.replica_seconds:>11.0f}"
            f"{p.cost_ratio:>9.2f}{p.slo_violation_seconds:>11.0f}{p.scale_ups:>5}"
            f"{p.scale_downs:>6}"
        )
    errors = ", ".join(f"{k}: {v}" for k, v in r.errors_by_status.items()) or "none"
    lines += [
        f"{'total':<14}{r.requests:>9}{r.error_rate:>8.1%}{_s(r.p95):>8}{_s(r.p99):>8}"
        f"{'':>10}{r.goodput:>10.3f}{r.replica_seconds:>11.0f}{r.cost_ratio:>9.2f}"
        f"{r.slo_violation_seconds:>11.0f}{r.scale_ups:>5}{r.scale_downs:>6}",
        "",
        f"errors by status: {errors}",
        f"replica-seconds: {r.replica_seconds:.0f}  oracle: {r.oracle_replica_seconds:.0f}  "
        f"cost ratio: {r.cost_ratio:.2f}",
        f"seconds in SLO violation: {r.slo_violation_seconds:.0f}  "
        f"scale events: {r.scale_ups} up, {r.scale_downs} down",
        f"simulated {r.requests} requests in {_s(r.wall_seconds, 2)} s of wall time "
        f"({ENGINE} engine)",
    ]
    return "\n".join(lines)


def comparison_table(trace: Trace, reports: list[Report], seed: int) -> str:
    lines = [
        f"trace {trace.name} ({trace.kind}, {trace.duration_s:.0f} s), seed {seed}",
        "",
        f"{'policy':<14}{'errors':>8}{'P95 s':>8}{'P99 s':>8}{'goodput/s':>10}"
        f"{'replica-s':>11}{'x oracle':>9}{'SLO viol s':>11}{'ups':>6}{'downs':>6}",
    ]
    for r in reports:
        lines.append(
            f"{r.policy:<14}{r.error_rate:>8.2%}{_s(r.p95):>8}{_s(r.p99):>8}{r.goodput:>10.3f}"
            f"{r.replica_seconds:>11.0f}{r.cost_ratio:>9.2f}{r.slo_violation_seconds:>11.0f}"
            f"{r.scale_ups:>6}{r.scale_downs:>6}"
        )
    lines.append(
        f"{'oracle':<14}{'':>8}{'':>8}{'':>8}{'':>10}"
        f"{reports[0].oracle_replica_seconds:>11.0f}{1.0:>9.2f}"
    )
    return "\n".join(lines)


def _plot_target(name: str) -> tuple[Path, str]:
    """Where ``--plot`` writes and in which format, checked before anything runs.

    The format is the extension's (matplotlib would otherwise append ``.png``
    to a name without one, and fail on an unknown one only after the run).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError:
        raise UsageError(
            "--plot: needs matplotlib; install the plot extra: "
            "pip install '.[plot]' in a vlm-operator checkout"
        ) from None
    # pgf is LaTeX code, written by running xelatex: it fails without a TeX
    # installation, and only after the whole simulation.
    supported = {
        name: text
        for name, text in FigureCanvasAgg.get_supported_filetypes().items()
        if name != "pgf"
    }
    path = Path(name)
    file_format = path.suffix[1:].lower()
    if not name.strip() or path.is_dir():
        raise UsageError(f"--plot: {name!r} is no file name")
    if file_format not in supported:
        raise UsageError(
            f"--plot: {name}: the extension names the format, one of "
            f"{', '.join('.' + f for f in sorted(supported))}"
        )
    if not path.parent.is_dir():
        raise UsageError(f"--plot: {name}: no directory {str(path.parent)!r}")
    # Tried now, before a run of minutes (permissions alone do not tell: root may write
    # anywhere but in /proc), with a file of its own beside the target: the target, a
    # file or a link, is left as it is.
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".plot-check-"):
            pass
    except OSError as exc:
        raise UsageError(f"--plot: cannot write {name}: {exc.strerror or exc}") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"--plot: cannot write {name}: permission denied")
    return path, file_format


def _plot(trace: Trace, results: list[SimResult], out: Path, file_format: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    hours = trace.duration_s > 4 * 3600
    scale = 3600.0 if hours else 60.0
    for result in results:
        s = result.series
        t = [x / scale for x in s.t]
        axes[0].step(t, s.replicas, where="post", label=result.policy, linewidth=1)
        axes[1].plot(t, s.demand, label=result.policy, linewidth=0.8)
        axes[2].plot(t, s.p95, label=result.policy, linewidth=0.8)
    # The oracle's pods beside the policies' (the same arrivals: every run has the same seed).
    first = results[0]
    oracle = oracle_pods_at(
        trace, first.spec, first.config.latency, first.series.t, seed=first.seed
    )
    axes[0].step(
        [x / scale for x in first.series.t],
        oracle,
        where="post",
        label="oracle",
        color="black",
        linestyle=":",
        linewidth=1,
    )
    target = results[0].spec.autoscaling.p95_latency_target_seconds
    axes[2].axhline(target, color="grey", linestyle="--", linewidth=0.8, label="P95 target")
    axes[0].set_ylabel("replicas")
    axes[1].set_ylabel("running + waiting")
    axes[2].set_ylabel("P95 (s, as scraped)")
    axes[2].set_xlabel("hours" if hours else "minutes")
    axes[0].set_title(f"{trace.name}: {', '.join(r.policy for r in results)}")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left", fontsize=8, ncol=4)
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=110, format=file_format)
    except OSError as exc:
        raise UsageError(f"--plot: cannot write {out}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
