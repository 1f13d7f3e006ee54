"""The operator at scale: 1,000 VLMServices, one real Prometheus, the emulated API.

What it measures (docs/benchmarks.md, "Operator at scale"):

* start-up: from ``vlm-operator run`` to every VLMService having its children and a status;
* one full autoscaling cycle: a load step makes every service scale 1 → 3; the wall time
  from the tick that first sees the step to the last Deployment patched;
* Prometheus queries per cycle, from Prometheus's own
  ``prometheus_http_requests_total{handler="/api/v1/query"}`` (goal: one per signal,
  whatever the number of services);
* API requests per cycle, from the emulated API's request log, in a steady cycle and in the
  scale-out cycle;
* the CPU seconds the operator and this process (emulated API, exporter) use in that cycle;
* the operator's resident memory (goal: under 200 MB).

The signals come from ONE exporter publishing labelled series for every service (the labels
namespace/vlmservice/pod are in the exposition itself, the scrape target adds none), so the
benchmark does not need a thousand processes to produce a thousand services' signals.

Run: ``make bench-operator`` or ``.venv/bin/python benchmarks/bench_operator.py [--services N]``.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from e2e.kubeapi import ThreadedKubeAPI, run_in_thread  # noqa: E402
from e2e.prometheus import PrometheusServer  # noqa: E402

NS = "default"
VLMS = f"/apis/vlm-operator.io/v1alpha1/namespaces/{NS}/vlmservices"
PERIOD = 5.0
SIGNALS = 5  # running, waiting, p95, arrival rate, error rate
_BUCKETS = ("2", "5", "10", "20", "+Inf")


class ManyServicesExporter:
    """One /metrics endpoint with the gate's series for many services at once."""

    def __init__(self, services: list[str]) -> None:
        self.services = services
        self.running = 2.0
        self.waiting = 0.0
        self.rate = 0.4  # finished requests per second per service, all of them ~6 s
        self._started = time.monotonic()
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.exposition().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host_port = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def exposition(self) -> str:
        done = self.rate * (time.monotonic() - self._started)
        # Every request takes ~6 s: below le=2 and le=5 none, from le=10 on all of them.
        buckets = {"2": 0.0, "5": 0.0, "10": done, "20": done, "+Inf": done}
        lines = [
            "# TYPE vlm_requests_running gauge",
            "# TYPE vlm_requests_waiting gauge",
            "# TYPE vlm_request_duration_seconds histogram",
            "# TYPE vlm_requests_total counter",
        ]
        for name in self.services:
            labels = f'namespace="{NS}",vlmservice="{name}",pod="{name}-0"'
            lines.append(f"vlm_requests_running{{{labels}}} {self.running}")
            lines.append(f"vlm_requests_waiting{{{labels}}} {self.waiting}")
            for le in _BUCKETS:
                lines.append(
                    f'vlm_request_duration_seconds_bucket{{{labels},le="{le}"}} {buckets[le]}'
                )
            lines.append(f"vlm_request_duration_seconds_count{{{labels}}} {done}")
            lines.append(f"vlm_request_duration_seconds_sum{{{labels}}} {done * 6.0}")
            lines.append(f'vlm_requests_total{{{labels},code="200"}} {done}')
        return "\n".join(lines) + "\n"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def vlmservice(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "vlm-operator.io/v1alpha1",
        "kind": "VLMService",
        "metadata": {"name": name},
        "spec": {
            "model": {"id": "Qwen/Qwen3-VL-2B-Instruct", "runtime": "fake"},
            "autoscaling": {
                "minReplicas": 1,
                "maxReplicas": 5,
                "syncPeriodSeconds": PERIOD,
                "targetUtilization": 1.0,  # 12 requests at 4 per pod: 3 pods
            },
            "metrics": {"windowSeconds": 10},
        },
    }


def wait_until(
    what: str, probe: Callable[[], bool], timeout: float, interval: float = 0.5
) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if probe():
            return time.monotonic() - started
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def count_objects(kube: ThreadedKubeAPI, group: str, version: str, plural: str,
                  accept: Callable[[dict[str, Any]], bool]) -> int:  # fmt: skip
    def run() -> int:
        store = kube.server.store
        kind = store.kind(group, version, plural)
        return len(store.list_objects(kind, NS, accept))

    return kube.call(run)


def api_requests(kube: ThreadedKubeAPI) -> Counter[str]:
    """Requests the operator sent (not the checks admission made on their behalf)."""
    return Counter(
        f"{r.verb} {r.resource}{'/' + r.subresource if r.subresource else ''}"
        for r in kube.requests
        if not r.admission
    )


def prometheus_queries(prometheus: PrometheusServer) -> float:
    text = httpx.get(f"{prometheus.url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("prometheus_http_requests_total{") and 'handler="/api/v1/query"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def until_next_tick(period: float) -> float:
    return period - (time.time() % period)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument(
        "--operator-arg", action="append", default=[], help="extra argument of vlm-operator run"
    )
    args = parser.parse_args()
    n = args.services
    names = [f"svc-{i:04d}" for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as tmp:
        workdir = Path(tmp)
        exporter = ManyServicesExporter(names)
        with (
            run_in_thread(crds=[ROOT / "crds"]) as kube,
            PrometheusServer(workdir / "prometheus", scrape_interval="1s") as prometheus,
        ):
            prometheus.set_targets([(exporter.host_port, {})])
            prometheus.wait_for_series("vlm_requests_running", timeout=60, count=n)
            http = httpx.Client(base_url=kube.url, timeout=30)
            for name in names:
                http.post(VLMS, json=vlmservice(name)).raise_for_status()
            http.close()
            print(f"{n} VLMServices created; starting the operator", flush=True)

            log = (workdir / "operator.log").open("wb")
            profile = ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]] if os.environ.get(
                "BENCH_PROFILE") else []  # fmt: skip
            operator = subprocess.Popen(
                [sys.executable, *profile, "-m", "vlm_operator", "run", "--all-namespaces",
                 "--kubeconfig", str(kube.kubeconfig), "--prometheus-url", prometheus.url,
                 *args.operator_arg],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
            try:
                results = measure(kube, prometheus, exporter, operator.pid, n)
            finally:
                operator.send_signal(signal.SIGTERM)
                try:
                    operator.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    operator.kill()
                    operator.wait()
                log.close()
                exporter.stop()
            tail = (workdir / "operator.log").read_text(errors="replace").splitlines()
            errors = [line for line in tail if "Traceback" in line or "failed with" in line]
    report(results, n, errors)
    return 0


def measure(
    kube: ThreadedKubeAPI,
    prometheus: PrometheusServer,
    exporter: ManyServicesExporter,
    pid: int,
    n: int,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    results["startup_s"] = wait_until(
        "every VLMService applied and autoscaled once",
        lambda: count_objects(
            kube, "vlm-operator.io", "v1alpha1", "vlmservices",
            lambda o: bool((o.get("status") or {}).get("lastDecision")),
        ) == n,
        # 0.1 s: the start-up is compared to a tenth of a second between runs.
        timeout=900, interval=0.1,
    )  # fmt: skip
    print(f"start-up: {results['startup_s']:.1f} s", flush=True)

    # A steady cycle: nothing changes; what does one period cost?
    time.sleep(until_next_tick(PERIOD) + PERIOD / 2)  # land mid-period, between two ticks
    before_q, before_api = prometheus_queries(prometheus), api_requests(kube)
    cycles = 6  # 30 s: one round of the operator's periodic status refresh falls inside
    time.sleep(cycles * PERIOD)
    results["steady_queries"] = (prometheus_queries(prometheus) - before_q) / cycles
    steady = api_requests(kube) - before_api
    results["steady_api"] = {k: v / cycles for k, v in steady.items()}

    # The scale-out cycle: every service goes from 2 in flight to 4 + 8 waiting (→ 3 pods).
    # The step lands just after a tick, so Prometheus has scraped it before the next one.
    time.sleep(until_next_tick(PERIOD) + 0.2)
    before_q, before_api = prometheus_queries(prometheus), api_requests(kube)
    cpu_before = cpu_seconds(pid), cpu_seconds(os.getpid())
    exporter.running, exporter.waiting = 4.0, 8.0
    first_patch: list[float] = []

    def all_scaled() -> bool:
        scaled = count_objects(
            kube, "apps", "v1", "deployments", lambda o: o["spec"].get("replicas") == 3
        )
        if scaled and not first_patch:
            first_patch.append(time.time())
        return scaled == n

    # Every probe scans the 1,000 objects on the emulated API's loop, which serves the
    # operator too: often enough for the figures' resolution, no more.
    wait_until("every Deployment scaled to 3", all_scaled, timeout=120, interval=0.05)
    # The cycle began at the tick before the first patch.
    tick = math.floor(first_patch[0] / PERIOD) * PERIOD
    results["scale_cycle_s"] = time.time() - tick
    wait_until(
        "every status written",
        lambda: count_objects(
            kube, "vlm-operator.io", "v1alpha1", "vlmservices",
            lambda o: (o.get("status") or {}).get("desiredReplicas") == 3,
        ) == n,
        timeout=120, interval=0.05,
    )  # fmt: skip
    results["scale_status_s"] = time.time() - tick
    results["scale_cpu_s"] = (
        cpu_seconds(pid) - cpu_before[0],
        cpu_seconds(os.getpid()) - cpu_before[1],
    )
    # Ticks (of every service at once) that fell into the counted interval: the one
    # before the scale-out tick may still have been reading when counting began.
    results["scale_ticks"] = math.floor((time.time() - tick) / PERIOD) + 2
    results["scale_queries"] = prometheus_queries(prometheus) - before_q
    results["scale_api"] = dict(api_requests(kube) - before_api)
    results["rss_mb"], results["peak_rss_mb"] = rss_mb(pid)
    return results


def report(results: dict[str, Any], n: int, errors: list[str]) -> None:
    def fmt(requests: dict[str, float]) -> str:
        total = sum(requests.values())
        parts = ", ".join(f"{k} {v:g}" for k, v in sorted(requests.items(), key=lambda kv: -kv[1]))
        return f"{total:g} ({parts})" if parts else "0"

    print()
    print(f"## Operator at scale ({n:,} VLMServices, sync period {PERIOD:g} s)")
    print()
    print("| measure | value |")
    print("|---|---|")
    startup = results["startup_s"]
    print(f"| start-up: run → every service applied and autoscaled once | {startup:.1f} s |")
    print(f"| one scale-out cycle (1 → 3 pods for all), tick → last Deployment patched | "
          f"{results['scale_cycle_s']:.2f} s |")  # fmt: skip
    print(f"| Prometheus queries per steady cycle | {results['steady_queries']:.1f} |")
    print(
        f"| Prometheus queries while scaling out | {results['scale_queries']:.0f} in at most "
        f"{results['scale_ticks']} ticks |"
    )
    print(f"| API requests per steady cycle | {fmt(results['steady_api'])} |")
    print(
        f"| one scale-out cycle, tick → last status written | {results['scale_status_s']:.2f} s |"
    )
    operator_cpu, bench_cpu = results["scale_cpu_s"]
    print(
        f"| CPU in the scale-out cycle: operator / emulated API and exporter | "
        f"{operator_cpu:.2f} s / {bench_cpu:.2f} s |"
    )
    print(f"| API requests in the scale-out cycle | {fmt(results['scale_api'])} |")
    print(f"| operator RSS after the run (peak) | {results['rss_mb']:.0f} MB "
          f"({results['peak_rss_mb']:.0f} MB) |")  # fmt: skip
    print()
    print(
        f"{SIGNALS} signals + 1 scrape-health query per cycle is the floor; "
        "a scale-down's per-pod load comes from the gauges' answers."
    )
    if errors:
        print(f"operator log lines mentioning failures: {len(errors)}; first: {errors[0]}")


if __name__ == "__main__":
    raise SystemExit(main())
