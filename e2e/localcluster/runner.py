"""The process runner: the local cluster's kubelet and ReplicaSet controller in one.

It watches the Deployments of a namespace through the (emulated) Kubernetes API and keeps, for
each one, ``spec.replicas`` pods running as REAL processes on loopback: every container of the
pod template whose command is ``vlm-operator ...`` (the gate and the ``fake`` runtime) runs as a
child process with the container's environment. Containers of one pod share ``localhost`` in
Kubernetes; here every pod-internal port is mapped to a free 127.0.0.1 port and the listen and
upstream addresses in the environment (and ``--port``/``--listen``/``--upstream`` arguments) are
rewritten to it, so that any number of pods run side by side.

What it writes back is what a kubelet and the Deployment controller write: Pod objects owned by
the Deployment (phase Pending → Running, conditions PodScheduled/Initialized/ContainersReady/
Ready, containerStatuses) and the Deployment's status (replicas, readyReplicas,
availableReplicas, updatedReplicas, observedGeneration). A pod is ready when its readiness probe
(the gate's ``/readyz``) answers 200, so the fake model's start-up delay is honoured for real.

Scale-down picks pods the way the ReplicaSet controller does for the cases that matter here:
pods not yet running first, then not-ready before ready, then the lowest
``controller.kubernetes.io/pod-deletion-cost``, then newest first. A ready pod leaves its
Service after its readiness probe's ``failureThreshold`` failures in a row. A pod scaled away
leaves the Service's endpoints first, then its gate gets SIGTERM and the
pod's grace period to drain (so the gate's drain is exercised for real); the model container, a
native sidecar (an init container with ``restartPolicy: Always``), is stopped after the gate has
exited, as the kubelet stops sidecars after the main containers. Then SIGKILL. Other init
containers (a model download) are not run.
A pod whose process dies is replaced by a new pod. A new pod template rolls out as the
Deployment's strategy says: ``maxSurge`` pods above the count at most, and no fewer ready than
the count less ``maxUnavailable`` (``Recreate``: the old pods go first).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import re
import secrets
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from e2e.localcluster.kubeclient import DEPLOYMENTS, PODS, KubeClient, KubeError
from e2e.localcluster.procs import signal_group, spawn, stop_process, vlm_operator_argv

__all__ = ["DELETION_COST", "PodRun", "ProcessRunner", "free_port"]

log = logging.getLogger(__name__)

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
_SERVICE_LABEL = "vlm-operator.io/service"
_LOCAL_HOSTS = {"", "0.0.0.0", "127.0.0.1", "localhost", "::", "[::]"}
_ADDRESS = re.compile(
    r"^(?P<scheme>https?://)?(?P<host>[\w.\-:\[\]]*?):(?P<port>\d{1,5})(?P<rest>/.*)?$"
)
_PORT_FLAGS = ("--port",)
_ADDRESS_FLAGS = ("--listen", "--upstream", "--bind")
_HOST_FLAGS = ("--host",)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bind to port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rollout_bounds(strategy: Mapping[str, Any], desired: int) -> tuple[int, int]:
    """``maxSurge`` and ``maxUnavailable`` in pods, as the Deployment controller resolves
    them: a percentage of the count, the surge rounded up and the unavailable down (25 %
    each by default), and one unavailable if both come to 0. ``Recreate``: all go first."""
    if strategy.get("type") == "Recreate":
        return 0, desired
    rolling = strategy.get("rollingUpdate") or {}

    def resolve(value: Any, *, up: bool) -> int:
        text = str(value).strip()
        if text.endswith("%"):
            share = desired * float(text[:-1]) / 100
            return math.ceil(share) if up else math.floor(share)
        return int(text)

    surge = resolve(rolling.get("maxSurge", "25%"), up=True)
    unavailable = resolve(rolling.get("maxUnavailable", "25%"), up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def _template_hash(template: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
    return digest[:10]


@dataclass
class PodRun:
    """One pod: its Kubernetes identity and its live processes."""

    namespace: str
    name: str
    deployment: str
    service: str
    template_hash: str
    gate_port: int
    readiness_path: str
    grace_s: float
    #: Failed probes in a row that take a ready pod out of its Service (the probe's
    #: ``failureThreshold``, 3 by Kubernetes' default): one slow answer of a gate
    #: on a busy machine does not.
    readiness_failures: int = 3
    created: float = field(default_factory=time.monotonic)
    processes: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    gate_container: str = ""
    ready: bool = False
    running: bool = False
    terminating: bool = False
    ready_at: float | None = None  # time.monotonic() when it first became ready
    left_endpoints_at: float | None = None  # time.monotonic() when it stopped taking traffic
    failed_reason: str | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def address(self) -> str:
        """host:port of the pod's gate (the pod's only exposed port)."""
        return f"127.0.0.1:{self.gate_port}"


class _PortMap:
    """Pod-internal ports → free loopback ports, and the rewriting of addresses to them."""

    def __init__(self, internal: set[int]) -> None:
        self.ports = {p: free_port() for p in sorted(internal)}

    def address(self, value: str) -> str:
        match = _ADDRESS.match(value)
        if not match or match["host"] not in _LOCAL_HOSTS:
            return value
        port = int(match["port"])
        if port not in self.ports:
            return value
        return f"{match['scheme'] or ''}127.0.0.1:{self.ports[port]}{match['rest'] or ''}"

    def env(self, name: str, value: str) -> str:
        if name.endswith("_PORT") and value.isdigit() and int(value) in self.ports:
            return str(self.ports[int(value)])
        if name.endswith("_HOST") and value in _LOCAL_HOSTS:
            return "127.0.0.1"
        return self.address(value)

    def args(self, argv: list[str]) -> list[str]:
        out: list[str] = []
        pending: str | None = None
        for arg in argv:
            if pending is not None:
                out.append(self._flag_value(pending, arg))
                pending = None
                continue
            flag, eq, value = arg.partition("=")
            if flag in (*_PORT_FLAGS, *_ADDRESS_FLAGS, *_HOST_FLAGS):
                if eq:
                    out.append(f"{flag}={self._flag_value(flag, value)}")
                else:
                    out.append(arg)
                    pending = flag
                continue
            out.append(arg)
        return out

    def _flag_value(self, flag: str, value: str) -> str:
        if flag in _PORT_FLAGS and value.isdigit() and int(value) in self.ports:
            return str(self.ports[int(value)])
        if flag in _HOST_FLAGS and value in _LOCAL_HOSTS:
            return "127.0.0.1"
        return self.address(value)


def _internal_ports(containers: list[dict[str, Any]]) -> set[int]:
    ports: set[int] = set()
    for c in containers:
        for p in c.get("ports") or []:
            if isinstance(p.get("containerPort"), int):
                ports.add(p["containerPort"])
        for e in c.get("env") or []:
            match = _ADDRESS.match(str(e.get("value", "")))
            if match and match["host"] in _LOCAL_HOSTS:
                ports.add(int(match["port"]))
    return ports


def _env_value(entry: Mapping[str, Any], pod_name: str, namespace: str) -> str | None:
    if "value" in entry:
        return str(entry["value"])
    field_path = (((entry.get("valueFrom") or {}).get("fieldRef")) or {}).get("fieldPath")
    return {
        "metadata.name": pod_name,
        "metadata.namespace": namespace,
        "status.podIP": "127.0.0.1",
        "spec.nodeName": "localhost",
    }.get(str(field_path))


def _is_sidecar(container: Mapping[str, Any]) -> bool:
    """A native sidecar: an init container that runs beside the main containers."""
    return container.get("restartPolicy") == "Always"


def _is_gate(container: Mapping[str, Any]) -> bool:
    names = {str(e.get("name")) for e in container.get("env") or []}
    return container.get("name") == "gate" or "VLM_GATE_UPSTREAM" in names


def _command(container: Mapping[str, Any]) -> list[str] | None:
    """The container's argv as a local process, or None if it is not a vlm-operator image."""
    command = [str(a) for a in container.get("command") or []]
    args = [str(a) for a in container.get("args") or []]
    if not command and "vlm-operator" in str(container.get("image", "")):
        command = ["vlm-operator"]  # the operator image's entrypoint
    if not command or Path(command[0]).name != "vlm-operator":
        return None
    return vlm_operator_argv([*command, *args])


def _named_port(containers: list[dict[str, Any]], port: Any) -> int | None:
    if isinstance(port, int):
        return port
    for c in containers:
        for p in c.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
    return None


class ProcessRunner:
    """Runs the pods of every Deployment in ``namespace`` as local processes.

    ``extra_env`` is added to every container's environment (time-scale overrides);
    ``wrap_argv(container name, argv)`` may rewrite a container's command line (experiments);
    ``grace_divisor`` divides terminationGracePeriodSeconds (time compression);
    ``on_change`` is called whenever the set of pods or their readiness changes.
    """

    def __init__(
        self,
        kube: KubeClient,
        namespace: str,
        *,
        workdir: Path,
        extra_env: Mapping[str, str] | None = None,
        wrap_argv: Callable[[str, list[str]], list[str]] | None = None,
        grace_divisor: float = 1.0,
        readiness_period_s: float = 0.1,
        resync_period_s: float = 1.0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.workdir = workdir
        self.extra_env = dict(extra_env or {})
        self.wrap_argv = wrap_argv
        self.grace_divisor = grace_divisor
        self.readiness_period_s = readiness_period_s
        self.resync_period_s = resync_period_s
        self.on_change = on_change
        self.restarts = 0  # pods replaced because a process died
        self.startup_seconds: list[float] = []  # created → first ready, per pod (wall time)
        self._pods: dict[str, PodRun] = {}
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._status_written: dict[str, dict[str, Any]] = {}
        self._stopping = False
        self._http: aiohttp.ClientSession | None = None
        self._background_tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ public API

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0))
        self._tasks = [
            asyncio.create_task(self._reconcile_loop(), name="runner-reconcile"),
            asyncio.create_task(self._watch_loop(DEPLOYMENTS), name="runner-watch-deployments"),
            asyncio.create_task(self._watch_loop(PODS), name="runner-watch-pods"),
        ]

    async def stop(self, *, grace_s: float = 2.0) -> None:
        """Stop every pod (short grace) and the controller loops."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.gather(
            *(self._terminate(p, grace_s=grace_s, delete=False) for p in list(self._pods.values())),
            return_exceptions=True,
        )
        await asyncio.gather(*self._background_tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    def pods(
        self, service: str | None = None, *, include_terminating: bool = False
    ) -> list[PodRun]:
        return [
            p
            for p in self._pods.values()
            if (service is None or p.service == service)
            and (include_terminating or not p.terminating)
        ]

    def ready_endpoints(self, service: str) -> list[str]:
        """Gate addresses of the ready, not terminating pods of ``service`` (Service endpoints)."""
        return [p.address for p in self.pods(service) if p.ready]

    def scrape_targets(self) -> list[tuple[str, dict[str, str]]]:
        """Every pod with live processes, labelled for the signals contract."""
        return [
            (p.address, {"namespace": p.namespace, "vlmservice": p.service, "pod": p.name})
            for p in self._pods.values()
            if p.running
        ]

    def kill_container(self, pod_name: str, container: str | None = None) -> None:
        """SIGKILL one container's process (default: the model container), as a crash would."""
        pod = self._pods[pod_name]
        name = container or next(n for n in pod.processes if n != pod.gate_container)
        signal_group(pod.processes[name], signal.SIGKILL)

    # ------------------------------------------------------------------ control loops

    async def _watch_loop(self, res: Any) -> None:
        # Watch only to react quickly; the reconcile loop lists anyway (level-triggered).
        while True:
            try:
                _, rv = await self.kube.list(res, self.namespace)
                async for _event in self.kube.watch(res, self.namespace, rv, timeout_s=30):
                    self._dirty.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("watch %s: %s", res.plural, exc)
                await asyncio.sleep(0.5)

    async def _reconcile_loop(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11, wait_for returns the result
            # of an inner wait that finished in the same instant as a cancellation and
            # drops the cancellation (python/cpython#86296), and this loop, set dirty
            # just as stop() cancels it, then runs forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.resync_period_s):
                    await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._reconcile_all()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reconcile failed: %s", exc)
                await asyncio.sleep(0.2)

    async def _reconcile_all(self) -> None:
        deployments, _ = await self.kube.list(DEPLOYMENTS, self.namespace)
        pod_objects, _ = await self.kube.list(PODS, self.namespace)
        objects = {str(o["metadata"]["name"]): o for o in pod_objects}
        names = set()
        for deploy in deployments:
            names.add(str(deploy["metadata"]["name"]))
            await self._reconcile(deploy, objects)
        for pod in self.pods():
            gone = pod.name not in objects and time.monotonic() - pod.created > 5.0
            if pod.deployment not in names or gone:
                self._background(self._terminate(pod))

    async def _reconcile(self, deploy: dict[str, Any], objects: dict[str, dict[str, Any]]) -> None:
        meta = deploy["metadata"]
        name = str(meta["name"])
        spec = deploy.get("spec") or {}
        template = spec.get("template") or {}
        desired = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
        current_hash = _template_hash(template)
        mine = [p for p in self.pods() if p.deployment == name]
        new = [p for p in mine if p.template_hash == current_hash]
        old = [p for p in mine if p.template_hash != current_hash]

        strategy = spec.get("strategy") or {}
        surge, unavailable = _rollout_bounds(strategy, desired)
        # A rollout: at most ``surge`` pods above the count, and never fewer ready than
        # the count less ``unavailable`` (the rendered 1 and 0: one model load at a time).
        room = desired - len(new)
        if old:
            room = min(room, desired + surge - len(mine))
            if strategy.get("type") == "Recreate":
                room = 0  # the old pods go first
        for _ in range(max(0, room)):
            await self._create_pod(deploy, template, current_hash)
        if len(new) > desired:
            for pod in self._victims(new, objects)[: len(new) - desired]:
                self._background(self._terminate(pod))
        ready = sum(p.ready for p in mine)
        for pod in self._victims(old, objects):
            if pod.ready and ready - 1 < desired - unavailable:
                continue  # the last ready pods stay until new ones are ready
            ready -= pod.ready
            self._background(self._terminate(pod))
        await self._write_deployment_status(deploy, current_hash)

    @staticmethod
    def _victims(pods: list[PodRun], objects: Mapping[str, dict[str, Any]]) -> list[PodRun]:
        def cost(pod: PodRun) -> int:
            annotations = (objects.get(pod.name, {}).get("metadata") or {}).get("annotations") or {}
            try:
                return int(annotations.get(DELETION_COST, 0))
            except (TypeError, ValueError):
                return 0

        # The ReplicaSet controller's order: pods not yet running (never started
        # their processes), then not ready, then the lowest deletion cost, then the
        # newest.
        return sorted(pods, key=lambda p: (p.running, p.ready, cost(p), -p.created))

    async def _write_deployment_status(self, deploy: dict[str, Any], current_hash: str) -> None:
        name = str(deploy["metadata"]["name"])
        mine = [p for p in self.pods() if p.deployment == name]
        ready = sum(p.ready for p in mine)
        desired = (deploy.get("spec") or {}).get("replicas", 1)
        status: dict[str, Any] = {
            "observedGeneration": deploy["metadata"].get("generation", 1),
            "replicas": len(mine),
            "updatedReplicas": sum(p.template_hash == current_hash for p in mine),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": max(0, int(desired or 0) - ready),
        }
        available = "True" if ready >= int(desired or 0) else "False"
        conditions = [{"type": "Available", "status": available, "reason": "MinimumReplicas"}]
        if self._status_written.get(name) == {**status, "available": available}:
            return
        status["conditions"] = [{**c, "lastTransitionTime": _now_rfc3339()} for c in conditions]
        try:
            await self.kube.patch(
                DEPLOYMENTS, self.namespace, name, {"status": status}, subresource="status"
            )
        except KubeError as exc:
            log.debug("deployment %s status: %s", name, exc)
            return
        status.pop("conditions")
        self._status_written[name] = {**status, "available": available}

    # ------------------------------------------------------------------ pod lifecycle

    async def _create_pod(
        self, deploy: dict[str, Any], template: dict[str, Any], thash: str
    ) -> None:
        dmeta = deploy["metadata"]
        dname = str(dmeta["name"])
        tmeta = template.get("metadata") or {}
        labels = {**(tmeta.get("labels") or {}), "pod-template-hash": thash}
        pod_name = f"{dname}-{thash[:8]}-{secrets.token_hex(3)}"
        pod_spec = dict(template.get("spec") or {})
        sidecars = [dict(c) for c in pod_spec.get("initContainers") or [] if _is_sidecar(c)]
        # Sidecars first, as the kubelet starts them before the main containers.
        containers = sidecars + [dict(c) for c in pod_spec.get("containers") or []]
        gate = next((c for c in containers if _is_gate(c)), containers[0] if containers else {})
        ports = _PortMap(_internal_ports(containers))
        probe = (gate.get("readinessProbe") or {}).get("httpGet") or {}
        gate_internal = _named_port(containers, probe.get("port")) or next(
            (int(p["containerPort"]) for p in gate.get("ports") or []), None
        )
        if gate_internal is None or gate_internal not in ports.ports:
            log.warning("deployment %s: gate container has no port; cannot run it", dname)
            return
        pod = PodRun(
            namespace=self.namespace,
            name=pod_name,
            deployment=dname,
            service=str(labels.get(_SERVICE_LABEL, dname)),
            template_hash=thash,
            gate_port=ports.ports[gate_internal],
            readiness_path=str(probe.get("path") or "/readyz"),
            readiness_failures=max(
                1, int((gate.get("readinessProbe") or {}).get("failureThreshold") or 3)
            ),
            grace_s=float(pod_spec.get("terminationGracePeriodSeconds", 30)) / self.grace_divisor,
            gate_container=str(gate.get("name", "")),
        )
        self._pods[pod_name] = pod
        obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": self.namespace,
                "labels": labels,
                "annotations": dict(tmeta.get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": dname,
                        "uid": dmeta.get("uid", ""),
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {**pod_spec, "nodeName": "localhost"},
        }
        try:
            await self.kube.create(PODS, self.namespace, obj)
            await self._pod_status(pod, phase="Pending", containers=containers)
        except KubeError as exc:
            log.warning("pod %s: %s", pod_name, exc)
            del self._pods[pod_name]
            return

        runnable: list[tuple[str, list[str], dict[str, str]]] = []
        for c in containers:
            argv = _command(c)
            if argv is None:
                pod.failed_reason = f"container {c.get('name')}: only vlm-operator images run here"
                await self._pod_status(pod, phase="Pending", containers=containers)
                return
            env = {}
            for entry in c.get("env") or []:
                value = _env_value(entry, pod_name, self.namespace)
                if value is not None:
                    env[str(entry["name"])] = value
            env.update(self.extra_env)
            env = {k: ports.env(k, v) for k, v in env.items()}
            argv = ports.args(argv)
            if self.wrap_argv is not None:
                argv = self.wrap_argv(str(c.get("name")), argv)
            runnable.append((str(c.get("name")), argv, env))
        for cname, argv, env in runnable:
            log_path = self.workdir / "pods" / f"{pod_name}.{cname}.log"
            pod.processes[cname] = await spawn(argv, env=env, log_path=log_path)
        pod.running = True
        self._changed()
        await self._pod_status(pod, phase="Running", containers=containers)
        pod.tasks.append(asyncio.create_task(self._probe(pod, containers)))
        for cname, proc in pod.processes.items():
            pod.tasks.append(asyncio.create_task(self._watch_process(pod, cname, proc)))

    async def _pod_status(
        self, pod: PodRun, *, phase: str, containers: list[dict[str, Any]]
    ) -> None:
        now = _now_rfc3339()
        ready = "True" if pod.ready else "False"
        conditions = [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
            {"type": "Ready", "status": ready, "lastTransitionTime": now},
        ]
        statuses, sidecar_statuses = [], []
        for c in containers:
            cname = str(c.get("name"))
            proc = pod.processes.get(cname)
            state: dict[str, Any]
            if proc is not None and proc.returncode is None:
                state = {"running": {"startedAt": now}}
            elif pod.failed_reason:
                state = {"waiting": {"reason": "ErrImageNotRunnable", "message": pod.failed_reason}}
            else:
                state = {"waiting": {"reason": "ContainerCreating"}}
            # A sidecar's status is among the init containers', as the kubelet writes it.
            (sidecar_statuses if _is_sidecar(c) else statuses).append(
                {
                    "name": cname,
                    "image": c.get("image", ""),
                    "ready": pod.ready,
                    "started": proc is not None,
                    "restartCount": 0,
                    "state": state,
                }
            )
        status: dict[str, Any] = {
            "phase": phase,
            "conditions": conditions,
            "initContainerStatuses": sidecar_statuses,
            "containerStatuses": statuses,
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
        }
        if phase == "Running":
            status["startTime"] = now
        with contextlib.suppress(KubeError):
            await self.kube.patch(
                PODS, pod.namespace, pod.name, {"status": status}, subresource="status"
            )

    async def _probe(self, pod: PodRun, containers: list[dict[str, Any]]) -> None:
        assert self._http is not None
        url = f"http://{pod.address}{pod.readiness_path}"
        failed = 0
        while not pod.terminating:
            try:
                async with self._http.get(url) as resp:
                    ok = resp.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if pod.terminating:
                return
            failed = 0 if ok else failed + 1
            if pod.ready and not ok and failed < pod.readiness_failures:
                ok = True  # not yet: failureThreshold failures in a row
            if ok != pod.ready:
                pod.ready = ok
                if ok and pod.ready_at is None:
                    pod.ready_at = time.monotonic()
                    self.startup_seconds.append(pod.ready_at - pod.created)
                self._changed()
                self._dirty.set()
                await self._pod_status(pod, phase="Running", containers=containers)
            await asyncio.sleep(self.readiness_period_s)

    async def _watch_process(
        self, pod: PodRun, cname: str, proc: asyncio.subprocess.Process
    ) -> None:
        code = await proc.wait()
        if pod.terminating or self._stopping:
            return
        log.warning("pod %s: container %s exited with %s; replacing the pod", pod.name, cname, code)
        self.restarts += 1
        self._background(self._terminate(pod, grace_s=0.0))

    async def _terminate(
        self, pod: PodRun, *, grace_s: float | None = None, delete: bool = True
    ) -> None:
        if pod.terminating and delete:
            return
        pod.terminating = True
        pod.ready = False
        if pod.left_endpoints_at is None:
            pod.left_endpoints_at = time.monotonic()
        self._changed()  # out of the Service's endpoints before the signal, as kube-proxy does
        if delete:
            with contextlib.suppress(KubeError, aiohttp.ClientError, TimeoutError):
                await self.kube.delete(PODS, pod.namespace, pod.name)
        grace = pod.grace_s if grace_s is None else grace_s
        start = time.monotonic()
        gate = pod.processes.get(pod.gate_container)
        if gate is not None:
            await stop_process(gate, grace_s=grace)
        remaining = max(0.5, grace - (time.monotonic() - start)) if grace > 0 else 0.0
        await asyncio.gather(
            *(
                stop_process(proc, grace_s=remaining)
                for cname, proc in pod.processes.items()
                if cname != pod.gate_container
            )
        )
        for task in pod.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        pod.running = False
        self._pods.pop(pod.name, None)
        self._changed()
        self._dirty.set()

    # ------------------------------------------------------------------ helpers

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception as exc:  # a listener must never break the kubelet
                log.warning("on_change listener failed: %s", exc)

    def _background(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._background_tasks.add(task)
        task.add_done_callback(self._background_tasks.discard)
