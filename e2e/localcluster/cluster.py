"""The local cluster: every part of a VLMService deployment, as real processes on one machine.

``LocalCluster`` starts, in order: the emulated Kubernetes API (its own process, the CRD
generated from the API models), a real Prometheus (Debian's) scraping every pod's gate through
file_sd targets, the process runner (kubelet + ReplicaSet controller), and the real operator
(``vlm-operator run``, unchanged, its own process). Services (reverse proxies in front of the
ready pods) start on demand, one per VLMService. Everything binds to 127.0.0.1 and everything is
stopped on exit, including on failure (see :mod:`e2e.localcluster.procs`).

It is an async context manager, so that the load generator, the proxies and the runner share
one event loop with the test or the demo driving them::

    async with LocalCluster(time_scale=5) as cluster:
        await cluster.apply(manifest)          # a VLMService, compressed to the time scale
        svc = await cluster.service("demo")    # http://127.0.0.1:<port>
        ...

Fault injection for the end-to-end tests: :meth:`LocalCluster.stop_prometheus` /
:meth:`start_prometheus` (same address, so the operator's ``--prometheus-url`` stays valid),
:meth:`stop_operator` / :meth:`start_operator`, and ``cluster.runner.kill_container``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sys
import tempfile
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from e2e.localcluster import procs
from e2e.localcluster.compress import compress_manifest
from e2e.localcluster.compress import scrape_interval as compressed_scrape_interval
from e2e.localcluster.kubeclient import (
    DEPLOYMENTS,
    VLMSERVICES,
    KubeClient,
    KubeError,
    wait_for_api,
)
from e2e.localcluster.runner import PodRun, ProcessRunner, free_port
from e2e.localcluster.service import ServiceProxy, Strategy
from e2e.prometheus import PrometheusServer

__all__ = ["LocalCluster", "PodSample", "Snapshot"]

log = logging.getLogger(__name__)
T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class PodSample:
    """One pod's gate, read directly from its /metrics (no scrape delay)."""

    name: str
    ready: bool
    running: float | None  # vlm_requests_running
    waiting: float | None  # vlm_requests_waiting


@dataclass(frozen=True)
class Snapshot:
    """The state of one VLMService at one instant."""

    at: float  # time.monotonic()
    desired: int | None  # Deployment spec.replicas (what the operator decided)
    ready: int
    pods: list[PodSample]  # not terminating
    alive: int = 0  # pods with processes, terminating ones included (what a cluster bills)

    @property
    def in_flight(self) -> float:
        return sum(p.running or 0.0 for p in self.pods)

    @property
    def waiting(self) -> float:
        return sum(p.waiting or 0.0 for p in self.pods)

    @property
    def max_in_flight_per_pod(self) -> float:
        return max((p.running or 0.0 for p in self.pods), default=0.0)


def _contains(path: Path, text: str) -> bool:
    try:
        return text in path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def _documents(path: Path) -> list[dict[str, Any]]:
    return [dict(d) for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _failed(exc_type: type[BaseException] | None) -> bool:
    """Whether an exception ends a run as a failure (not an interrupt or a cancellation)."""
    return exc_type is not None and not issubclass(
        exc_type, KeyboardInterrupt | asyncio.CancelledError
    )


class OperatorExited(RuntimeError):
    """The operator the cluster started exited by itself: waiting on it is pointless."""


class LocalCluster:
    """API server + Prometheus + process runner + operator + Services, on 127.0.0.1.

    ``time_scale`` compresses everything: VLMServices applied through :meth:`apply` get their
    durations divided by it (:mod:`e2e.localcluster.compress`), pods' grace periods too, and
    Prometheus scrapes every ``1 s / time_scale`` unless ``scrape_interval`` says otherwise.
    """

    def __init__(
        self,
        *,
        time_scale: float = 1.0,
        namespace: str = "default",
        workdir: Path | None = None,
        scrape_interval: str | None = None,
        operator: bool = True,
        operator_args: tuple[str, ...] = (),
        service_strategy: Strategy = "round-robin",
        extra_env: Mapping[str, str] | None = None,
        wrap_argv: Callable[[str, list[str]], list[str]] | None = None,
    ) -> None:
        if not time_scale > 0:
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        self.time_scale = time_scale
        self.namespace = namespace
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="vlm-localcluster-"))
        # A temporary directory goes at exit too: a second Ctrl-C can cut stop() short.
        self._remove_workdir = weakref.finalize(
            self, shutil.rmtree, str(self.workdir), ignore_errors=True
        )
        if not self._own_workdir:
            self._remove_workdir.detach()
        self.scrape_interval = scrape_interval or compressed_scrape_interval(time_scale)
        self.with_operator = operator
        self.operator_args = operator_args
        self.service_strategy: Strategy = service_strategy
        self.extra_env = dict(extra_env or {})
        self.wrap_argv = wrap_argv
        self.kubeconfig = self.workdir / "kubeconfig"
        self.api_url = ""
        self.notes: list[str] = []  # durations that could not be compressed fully
        self._api: asyncio.subprocess.Process | None = None
        self._operator: asyncio.subprocess.Process | None = None
        self._prometheus: PrometheusServer | None = None
        self._prometheus_front: ServiceProxy | None = None
        self._services: dict[str, ServiceProxy] = {}
        self._kube: KubeClient | None = None
        self._runner: ProcessRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> LocalCluster:
        try:
            await self.start()
        except BaseException as exc:
            # A start that failed keeps its logs, which say why (an interrupt does not).
            await self.stop(keep_workdir=_failed(type(exc)))
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        # A run that failed keeps its temporary directory: the logs it printed the path of
        # are what tells why.
        await self.stop(keep_workdir=_failed(exc_type))

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0))
        await self._start_api()
        self._kube = KubeClient(self.api_url)
        with contextlib.suppress(KubeError):  # the namespace may exist already
            await self._kube._call(
                "POST", "/api/v1/namespaces", body={"metadata": {"name": self.namespace}}
            )
        await self.start_prometheus()
        self._runner = ProcessRunner(
            self._kube,
            self.namespace,
            workdir=self.workdir,
            extra_env=self.extra_env,
            wrap_argv=self.wrap_argv,
            # render sizes the grace period for the spec's own time scale already
            grace_divisor=1.0,
            on_change=self._pods_changed,
        )
        await self._runner.start()
        if self.with_operator:
            await self.start_operator()

    async def stop(self, *, keep_workdir: bool = False) -> None:
        """Stop everything this cluster started (safe to call twice, or after a failed start).

        A temporary working directory is removed unless ``keep_workdir`` (the logs of a
        failed run), which says where it is on stderr.
        """
        with contextlib.suppress(Exception):
            await self.stop_operator()
        for proxy in list(self._services.values()):
            with contextlib.suppress(Exception):
                await proxy.stop()
        self._services.clear()
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await self._runner.stop()
            self._runner = None
        with contextlib.suppress(Exception):
            await self.stop_prometheus()
        if self._prometheus_front is not None:
            with contextlib.suppress(Exception):
                await self._prometheus_front.stop()
            self._prometheus_front = None
        if self._api is not None:
            await procs.stop_process(self._api, grace_s=3.0)
            self._api = None
        for client in (self._kube, self._http):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()
        self._kube = None
        self._http = None
        if self._own_workdir and keep_workdir and self.workdir.exists():
            self._remove_workdir.detach()
            sys.stderr.write(f"local cluster: the logs of the failed run are kept in {self.logs}\n")
        elif self._own_workdir:  # a temporary directory of ours; pass workdir to keep the logs
            self._remove_workdir()

    # ------------------------------------------------------------------ parts

    @property
    def kube(self) -> KubeClient:
        if self._kube is None:
            raise RuntimeError("the local cluster is not started")
        return self._kube

    @property
    def runner(self) -> ProcessRunner:
        if self._runner is None:
            raise RuntimeError("the local cluster is not started")
        return self._runner

    @property
    def prometheus_url(self) -> str:
        """Prometheus as the operator reaches it (its Service address; stable across restarts)."""
        if self._prometheus_front is None:
            raise RuntimeError("Prometheus is not started")
        return self._prometheus_front.url

    @property
    def prometheus(self) -> PrometheusServer | None:
        return self._prometheus

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    async def _start_api(self) -> None:
        crds = self.workdir / "crds"
        crds.mkdir(parents=True, exist_ok=True)
        # Generated from the API models: the single source of truth, never a stale file.
        from vlm_operator.crd import crd_yaml

        (crds / "vlmservice.yaml").write_text(crd_yaml(), encoding="utf-8")
        port = free_port()
        argv = [sys.executable, "-m", "e2e.kubeapi", "--port", str(port), "--crds", str(crds)]
        argv += ["--kubeconfig", str(self.kubeconfig)]
        self._api = await procs.spawn(argv, log_path=self.logs / "kubeapi.log", cwd=REPO_ROOT)
        self.api_url = f"http://127.0.0.1:{port}"
        await wait_for_api(self.api_url, deadline_s=20.0, process=self._api)
        # The server announces itself once the CRDs are loaded and the kubeconfig written.
        log_file = self.logs / "kubeapi.log"
        await self.wait_for(
            lambda: asyncio.to_thread(_contains, log_file, "kubeapi ready at"),
            deadline_s=20.0,
            what="the API server's ready line",
            period_s=0.05,
        )

    async def start_prometheus(self) -> None:
        """Start Prometheus (again, after :meth:`stop_prometheus`; same data directory)."""
        if self._prometheus is not None:
            return
        if self._prometheus_front is None:
            # Prometheus's Service: one stable address for the operator's --prometheus-url,
            # whatever port each (re)started server gets; no endpoint while it is down.
            front = ServiceProxy(
                lambda: [f"127.0.0.1:{self._prometheus.port}"] if self._prometheus else []
            )
            await front.start()
            self._prometheus_front = front
        server = PrometheusServer(
            self.workdir / "prometheus",
            scrape_interval=self.scrape_interval,
            evaluation_interval=self.scrape_interval,
        )
        # On this thread, not a worker: Prometheus then dies with us even if we are SIGKILLed
        # (PR_SET_PDEATHSIG follows the thread that started it). Ready in ~0.1 s.
        server.start()
        self._prometheus = server
        self._pods_changed()

    async def stop_prometheus(self) -> None:
        """Stop the Prometheus process: its address answers 503 until :meth:`start_prometheus`."""
        server, self._prometheus = self._prometheus, None
        if server is not None:
            await asyncio.to_thread(server.stop)

    async def start_operator(self) -> None:
        """Start the real operator as its own process (``vlm-operator run``)."""
        if self._operator is not None and self._operator.returncode is None:
            return
        argv = procs.vlm_operator_argv(["vlm-operator", "run"])
        argv += ["--kubeconfig", str(self.kubeconfig), "--prometheus-url", self.prometheus_url]
        argv += ["--namespace", self.namespace, *self.operator_args]
        # KUBECONFIG too, so that nothing in the operator can reach a cluster named by the
        # caller's environment: the local cluster talks to 127.0.0.1 only.
        env = {"KUBECONFIG": str(self.kubeconfig)}
        self._operator = await procs.spawn(argv, env=env, log_path=self.logs / "operator.log")

    async def stop_operator(self, *, kill: bool = False) -> None:
        """Stop the operator: SIGTERM (kopf's graceful exit) or, with ``kill``, SIGKILL."""
        proc, self._operator = self._operator, None
        if proc is not None:
            await procs.stop_process(proc, grace_s=0.0 if kill else 10.0)

    @property
    def operator_running(self) -> bool:
        return self._operator is not None and self._operator.returncode is None

    def check_operator(self) -> None:
        """Raise :class:`OperatorExited` if the operator exited by itself (one stopped
        through :meth:`stop_operator` did not)."""
        proc = self._operator
        if proc is not None and proc.returncode is not None:
            raise OperatorExited(
                f"the operator exited with code {proc.returncode}; its log: "
                f"{self.logs / 'operator.log'}"
            )

    def _pods_changed(self) -> None:
        if self._prometheus is not None and self._runner is not None:
            self._prometheus.set_targets(self._runner.scrape_targets())

    # ------------------------------------------------------------------ objects

    async def apply(
        self, manifest: Mapping[str, Any] | Path | str, *, compress: bool = True
    ) -> dict[str, Any]:
        """Create or update an object (a VLMService is compressed to the time scale first)."""
        if isinstance(manifest, (Path, str)):
            applied: dict[str, Any] = {}
            for doc in _documents(Path(manifest)):
                applied = await self.apply(doc, compress=compress)
            return applied
        obj = dict(manifest)
        if compress and obj.get("kind") == "VLMService" and self.time_scale != 1:
            obj, notes = compress_manifest(obj, self.time_scale)
            self.notes.extend(n for n in notes if n not in self.notes)
        return await self.kube.apply(obj, self.namespace)

    async def delete(self, name: str) -> bool:
        return await self.kube.delete(VLMSERVICES, self.namespace, name)

    async def vlmservice(self, name: str) -> dict[str, Any] | None:
        return await self.kube.get(VLMSERVICES, self.namespace, name)

    async def deployment(self, name: str) -> dict[str, Any] | None:
        return await self.kube.get(DEPLOYMENTS, self.namespace, name)

    async def desired_replicas(self, name: str) -> int | None:
        deploy = await self.deployment(name)
        if deploy is None:
            return None
        return int((deploy.get("spec") or {}).get("replicas", 1))

    def pods(self, name: str) -> list[PodRun]:
        return self.runner.pods(name)

    async def service(self, name: str) -> ServiceProxy:
        """The Service of VLMService ``name``: a proxy over its ready pods (started once)."""
        if name not in self._services:
            proxy = ServiceProxy(
                lambda: self.runner.ready_endpoints(name), strategy=self.service_strategy
            )
            await proxy.start()
            self._services[name] = proxy
        return self._services[name]

    # ------------------------------------------------------------------ observation

    async def snapshot(self, name: str) -> Snapshot:
        """Desired and ready replicas, and every pod's in-flight and queue, right now."""
        pods = self.runner.pods(name)
        samples = await asyncio.gather(*(self._sample(p) for p in pods))
        try:
            desired = await self.desired_replicas(name)
        except (KubeError, aiohttp.ClientError, TimeoutError):
            desired = None
        return Snapshot(
            at=time.monotonic(),
            desired=desired,
            ready=sum(p.ready for p in pods),
            pods=samples,
            alive=len(self.runner.pods(name, include_terminating=True)),
        )

    async def _sample(self, pod: PodRun) -> PodSample:
        assert self._http is not None
        values: dict[str, float] = {}
        try:
            async with self._http.get(f"http://{pod.address}/metrics") as resp:
                text = await resp.text()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name in ("vlm_requests_running", "vlm_requests_waiting"):
                        values[sample.name] = float(sample.value)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            pass
        return PodSample(
            name=pod.name,
            ready=pod.ready,
            running=values.get("vlm_requests_running"),
            waiting=values.get("vlm_requests_waiting"),
        )

    async def wait_for(
        self,
        check: Callable[[], Awaitable[T | None]],
        *,
        deadline_s: float,
        what: str,
        period_s: float = 0.1,
    ) -> T:
        """Poll ``check`` until it returns something truthy; TimeoutError naming ``what``,
        or :class:`OperatorExited` as soon as the operator has exited by itself."""
        end = time.monotonic() + deadline_s
        last: T | None = None
        while True:
            self.check_operator()
            last = await check()
            if last:
                return last
            if time.monotonic() > end:
                raise TimeoutError(f"{what}: not true after {deadline_s:g}s (last: {last!r})")
            await asyncio.sleep(period_s)

    async def wait_ready(self, name: str, replicas: int, *, deadline_s: float) -> Snapshot:
        """Wait until ``name`` has at least ``replicas`` ready pods."""

        async def check() -> Snapshot | None:
            snap = await self.snapshot(name)
            return snap if snap.ready >= replicas else None

        return await self.wait_for(check, deadline_s=deadline_s, what=f"{name}: {replicas} ready")
