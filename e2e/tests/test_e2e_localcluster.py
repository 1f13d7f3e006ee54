"""The local cluster's own parts: time compression, address rewriting, the Service proxy, and
the process runner against the emulated API (no operator: the tests set replicas themselves)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web
from vlm_operator.models import VLMServiceSpec
from vlm_operator.render import render_children

from e2e.conftest import E2E_TIME_SCALE, e2e_service
from e2e.localcluster import LocalCluster, OperatorExited, ServiceProxy, compress_spec
from e2e.localcluster.cluster import REPO_ROOT
from e2e.localcluster.kubeclient import DEPLOYMENTS, PODS
from e2e.localcluster.runner import DELETION_COST, PodRun, ProcessRunner, _PortMap, free_port

# ----------------------------------------------------------------------------- compression


def test_compress_divides_real_time_defaults() -> None:
    spec, notes = compress_spec({"model": {"id": "m"}}, 5)
    assert spec["model"]["fake"]["timeScale"] == 5
    assert spec["autoscaling"]["syncPeriodSeconds"] == 1.0  # 5 s / 5
    assert spec["autoscaling"]["scaleDown"]["stabilizationWindowSeconds"] == 24  # 120 s / 5
    assert spec["metrics"]["windowSeconds"] == 6  # 30 s / 5
    assert spec["concurrency"]["queueTimeoutSeconds"] == 4.0  # 20 s / 5
    assert spec["autoscaling"]["p95LatencyTargetSeconds"] == pytest.approx(2.4)
    assert notes == []
    VLMServiceSpec.model_validate(spec)


def test_compress_clamps_to_crd_floors_and_says_so() -> None:
    spec, notes = compress_spec({"model": {"id": "m"}}, 20)
    assert spec["autoscaling"]["syncPeriodSeconds"] == 1
    assert spec["metrics"]["windowSeconds"] == 5
    assert any("syncPeriodSeconds" in n for n in notes)
    assert any("windowSeconds" in n for n in notes)


def test_compress_reads_written_durations_in_the_manifests_time_scale() -> None:
    manifest = yaml.safe_load((REPO_ROOT / "manifests" / "fake-demo.yaml").read_text())
    source_scale = manifest["spec"]["model"]["fake"]["timeScale"]
    written = manifest["spec"]["autoscaling"]["scaleDown"]["stabilizationWindowSeconds"]
    spec, _ = compress_spec(manifest["spec"], 5)
    expected = round(written * source_scale / 5)
    assert spec["autoscaling"]["scaleDown"]["stabilizationWindowSeconds"] == expected
    # Re-compressing to the manifest's own scale changes nothing that was written.
    same, _ = compress_spec(manifest["spec"], source_scale)
    assert same["autoscaling"]["scaleDown"]["stabilizationWindowSeconds"] == written


def test_compress_rejects_a_bad_factor() -> None:
    with pytest.raises(ValueError, match="time_scale"):
        compress_spec({"model": {"id": "m"}}, 0)


# ------------------------------------------------------------------------------ addresses


def test_pod_ports_are_mapped_consistently_across_containers() -> None:
    ports = _PortMap({8000, 8080})
    gate, model = ports.ports[8000], ports.ports[8080]
    assert gate != model
    assert ports.env("VLM_GATE_LISTEN", "0.0.0.0:8000") == f"127.0.0.1:{gate}"
    assert ports.env("VLM_GATE_LISTEN", "[::]:8000") == f"127.0.0.1:{gate}"  # as rendered
    assert ports.env("VLM_GATE_UPSTREAM", "http://127.0.0.1:8080") == f"http://127.0.0.1:{model}"
    assert ports.env("VLM_FAKE_LISTEN", "127.0.0.1:8080") == f"127.0.0.1:{model}"
    assert ports.env("VLM_GATE_MAX_BODY_BYTES", "8000") == "8000"  # not an address
    assert ports.env("REMOTE", "http://10.0.0.1:8080/x") == "http://10.0.0.1:8080/x"
    assert ports.args(["--port", "8080", "--host", "0.0.0.0", "--listen=0.0.0.0:8000"]) == [
        "--port", str(model), "--host", "127.0.0.1", f"--listen=127.0.0.1:{gate}",
    ]  # fmt: skip


# -------------------------------------------------------------------------------- Service


async def _backend(handler: web.Handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"127.0.0.1:{port}"


async def test_service_retries_a_refused_pod_but_never_one_that_answered() -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path, "body": (await request.text())})

    async def busy(_request: web.Request) -> web.Response:
        return web.json_response({"error": "queue full"}, status=429)

    ok_runner, ok_addr = await _backend(ok)
    busy_runner, busy_addr = await _backend(busy)
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: connection refused
    endpoints = [dead, ok_addr]
    proxy = ServiceProxy(lambda: endpoints)
    await proxy.start()
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(4):  # round-robin starts on the dead pod half of the time
                async with session.post(f"{proxy.url}/v1/x?a=1", data="hello") as resp:
                    assert resp.status == 200
                    assert await resp.json() == {"path": "/v1/x", "body": "hello"}
            assert proxy.retried >= 1
            endpoints[:] = [busy_addr, ok_addr]
            statuses = []
            for _ in range(4):
                async with session.post(f"{proxy.url}/v1/x") as resp:
                    statuses.append(resp.status)
            assert sorted(statuses) == [200, 200, 429, 429]  # a 429 is the answer, not retried
            endpoints[:] = []
            async with session.get(f"{proxy.url}/") as resp:
                assert resp.status == 503
    finally:
        await proxy.stop()
        await ok_runner.cleanup()
        await busy_runner.cleanup()


async def test_least_in_flight_sends_work_to_the_idle_pod() -> None:
    release = asyncio.Event()

    async def slow(_request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="slow")

    async def fast(_request: web.Request) -> web.Response:
        return web.Response(text="fast")

    slow_runner, slow_addr = await _backend(slow)
    fast_runner, fast_addr = await _backend(fast)
    endpoints = [slow_addr]
    proxy = ServiceProxy(lambda: endpoints, strategy="least-in-flight")
    await proxy.start()
    try:
        async with aiohttp.ClientSession() as session:
            first = asyncio.create_task(session.get(f"{proxy.url}/"))
            for _ in range(200):
                if proxy.in_flight[slow_addr] == 1:
                    break
                await asyncio.sleep(0.01)
            assert proxy.in_flight[slow_addr] == 1
            endpoints.append(fast_addr)
            # Round-robin would send one of these to the busy pod, where it would hang.
            for _ in range(3):
                async with session.get(f"{proxy.url}/", timeout=aiohttp.ClientTimeout(5)) as resp:
                    assert await resp.text() == "fast"
            release.set()
            async with await first as resp:
                assert await resp.text() == "slow"
    finally:
        release.set()
        await proxy.stop()
        await slow_runner.cleanup()
        await fast_runner.cleanup()


# ------------------------------------------------------------------------- process runner


async def _deployment(cluster: LocalCluster) -> dict:  # type: ignore[type-arg]
    manifest = e2e_service()
    spec, _ = compress_spec(manifest["spec"], E2E_TIME_SCALE)
    children = render_children("vlm", cluster.namespace, VLMServiceSpec.model_validate(spec))
    return next(c for c in children if c["kind"] == "Deployment")


async def _set_replicas(cluster: LocalCluster, replicas: int) -> None:
    await cluster.kube.patch(
        DEPLOYMENTS, cluster.namespace, "vlm", {"spec": {"replicas": replicas}}
    )


class _NoDeployments:
    """Just enough of the API client for the runner's reconcile loop: nothing to run."""

    async def list(self, res: object, namespace: str) -> tuple[list[dict], str]:  # type: ignore[type-arg]
        return [], "1"


@pytest.mark.timeout(30)
async def test_runner_stops_when_cancelled_in_the_instant_it_is_woken(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Python 3.11's wait_for returns the result of an inner wait that finished in the
    # same instant as a cancellation and drops the cancellation (python/cpython#86296):
    # the reconcile loop, woken just as stop() cancelled it, then ran forever and the
    # local cluster never stopped. Woken, then cancelled before it runs again:
    runner = ProcessRunner(_NoDeployments(), "ns", workdir=tmp_path, resync_period_s=60)  # type: ignore[arg-type]
    for _ in range(20):
        loop_task = asyncio.create_task(runner._reconcile_loop())
        await asyncio.sleep(0)  # waiting for a change
        runner._dirty.set()
        await asyncio.sleep(0)  # the wake-up delivered (a wait_for's inner wait done)
        loop_task.cancel()
        done, _ = await asyncio.wait({loop_task}, timeout=5.0)
        assert loop_task in done, "the reconcile loop outlived its cancellation"
        assert loop_task.cancelled()


@contextlib.asynccontextmanager
async def _runner_only(tmp_path: Path, *, replicas: int) -> AsyncIterator[LocalCluster]:
    """A local cluster without the operator, the Deployment applied, ``replicas`` ready."""
    async with LocalCluster(time_scale=E2E_TIME_SCALE, workdir=tmp_path, operator=False) as cluster:
        await cluster.kube.apply(await _deployment(cluster), cluster.namespace)
        await _set_replicas(cluster, replicas)
        await cluster.wait_ready("vlm", replicas, deadline_s=30)
        yield cluster


@pytest.mark.e2e
@pytest.mark.timeout(120)
async def test_runner_runs_replicas_as_processes_and_reports_them(tmp_path) -> None:  # type: ignore[no-untyped-def]
    async with _runner_only(tmp_path, replicas=3) as cluster:
        deploy = await cluster.deployment("vlm")
        assert deploy is not None

        async def status_caught_up() -> dict | None:  # type: ignore[type-arg]
            d = await cluster.deployment("vlm")
            st = (d or {}).get("status") or {}
            return st if st.get("readyReplicas") == 3 else None

        status = await cluster.wait_for(status_caught_up, deadline_s=10, what="readyReplicas 3")
        assert status["replicas"] == 3
        assert status["availableReplicas"] == 3
        assert status["updatedReplicas"] == 3
        assert status["observedGeneration"] == deploy["metadata"]["generation"]

        pods, _ = await cluster.kube.list(PODS, cluster.namespace)
        assert len(pods) == 3
        for pod in pods:
            owner = pod["metadata"]["ownerReferences"][0]
            assert (owner["kind"], owner["name"], owner["uid"]) == (
                "Deployment", "vlm", deploy["metadata"]["uid"],
            )  # fmt: skip
            assert pod["metadata"]["labels"]["vlm-operator.io/service"] == "vlm"
            assert pod["status"]["phase"] == "Running"
            ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
            assert ready["Ready"] == "True"
            assert ready["PodScheduled"] == "True"
            # The model is a native sidecar: its status is among the init containers'.
            assert [c["name"] for c in pod["status"]["containerStatuses"]] == ["gate"]
            assert [c["name"] for c in pod["status"]["initContainerStatuses"]] == ["model"]
            assert all(c["ready"] for c in pod["status"]["initContainerStatuses"])

        # Prometheus scrapes every pod's gate, labelled for the signals contract.
        assert cluster.prometheus is not None
        result = await asyncio.to_thread(
            cluster.prometheus.wait_for_series, 'vlm_gate_max_in_flight{vlmservice="vlm"}', 30.0,
            count=3,
        )  # fmt: skip
        names = {p.name for p in cluster.pods("vlm")}
        assert {s["metric"]["pod"] for s in result} == names
        assert {s["metric"]["namespace"] for s in result} == {cluster.namespace}

        # Scale-down removes the cheapest pod first (pod-deletion-cost), then the others.
        cheap = sorted(names)[1]
        for pod in names:
            cost = "-100" if pod == cheap else "100"
            await cluster.kube.patch(
                PODS, cluster.namespace, pod, {"metadata": {"annotations": {DELETION_COST: cost}}}
            )
        await _set_replicas(cluster, 2)

        async def two_left() -> set[str] | None:
            left = {p.name for p in cluster.runner.pods("vlm", include_terminating=True)}
            return left if len(left) == 2 else None

        left = await cluster.wait_for(two_left, deadline_s=20, what="2 pods left")
        assert left == names - {cheap}


@pytest.mark.e2e
@pytest.mark.timeout(120)
async def test_an_operator_that_exits_ends_the_waits_and_a_failed_run_keeps_its_logs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # An operator that cannot start (a flag it refuses): a wait says so at once, not after
    # its deadline, and names the log; the temporary directory with that log stays.
    cluster = LocalCluster(time_scale=E2E_TIME_SCALE, operator_args=("--no-such-flag",))
    loop = asyncio.get_running_loop()
    waited: list[float] = []

    async def never() -> bool:
        return False

    async def wait_in_cluster() -> None:
        async with cluster:
            started = loop.time()
            try:
                await cluster.wait_for(never, deadline_s=60, what="nothing")
            finally:
                waited.append(loop.time() - started)

    with pytest.raises(OperatorExited, match=r"exited with code 2; its log: .*operator\.log"):
        await wait_in_cluster()
    assert waited[0] < 30  # not the wait's 60 s
    try:
        assert (cluster.logs / "operator.log").exists()
        assert f"kept in {cluster.logs}" in capsys.readouterr().err
    finally:
        shutil.rmtree(cluster.workdir, ignore_errors=True)
    # A run that ends well leaves nothing behind.
    async with LocalCluster(time_scale=E2E_TIME_SCALE, operator=False) as fine:
        pass
    assert not fine.workdir.exists()


@pytest.mark.timeout(60)
async def test_a_cluster_that_fails_to_start_keeps_its_logs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: LocalCluster) -> None:
        raise RuntimeError("no Prometheus today")

    monkeypatch.setattr(LocalCluster, "start_prometheus", broken)
    cluster = LocalCluster(time_scale=E2E_TIME_SCALE, operator=False)
    try:
        with pytest.raises(RuntimeError, match="no Prometheus today"):
            async with cluster:
                pass
        assert (cluster.logs / "kubeapi.log").exists()  # the API server had started
        assert f"kept in {cluster.logs}" in capsys.readouterr().err
    finally:
        shutil.rmtree(cluster.workdir, ignore_errors=True)


def test_a_temporary_workdir_goes_even_when_stop_is_cut_short() -> None:
    # A second Ctrl-C interrupts stop() before its removal: the directory still goes,
    # with the object or at exit. One passed by the caller stays.
    cluster = LocalCluster(time_scale=E2E_TIME_SCALE)
    path = cluster.workdir
    assert path.exists()
    del cluster
    gc.collect()
    assert not path.exists()
    kept = Path(tempfile.mkdtemp(prefix="vlm-test-kept-"))
    try:
        theirs = LocalCluster(time_scale=E2E_TIME_SCALE, workdir=kept)
        del theirs
        gc.collect()
        assert kept.exists()
    finally:
        shutil.rmtree(kept, ignore_errors=True)


def test_scale_down_picks_pods_as_the_replicaset_controller_does() -> None:
    # Not running, then not ready, then the lowest deletion cost, then the newest.
    def pod(name: str, *, running: bool, ready: bool, created: float) -> PodRun:
        return PodRun("ns", name, "vlm", "vlm", "h", 1, "/readyz", 1.0, created=created,
                      running=running, ready=ready)  # fmt: skip

    pods = [
        pod("ready-idle", running=True, ready=True, created=1.0),
        pod("ready-busy", running=True, ready=True, created=2.0),
        pod("starting", running=True, ready=False, created=0.5),
        pod("unplaced", running=False, ready=False, created=0.1),
        pod("ready-idle-newer", running=True, ready=True, created=3.0),
    ]
    costs = {"ready-idle": "0", "ready-idle-newer": "0", "ready-busy": "300", "starting": "900"}
    objects = {
        name: {"metadata": {"annotations": {DELETION_COST: cost}}} for name, cost in costs.items()
    }
    order = [p.name for p in ProcessRunner._victims(pods, objects)]
    assert order == ["unplaced", "starting", "ready-idle-newer", "ready-idle", "ready-busy"]


@pytest.mark.e2e
@pytest.mark.timeout(120)
async def test_a_ready_pod_leaves_its_service_after_failure_threshold_failed_probes(
    tmp_path: Path,
) -> None:
    # A gate that stalls past one probe's 1 s timeout (a busy machine) stays in its Service;
    # one that stays stalled leaves it, and comes back once it answers.
    async with _runner_only(tmp_path, replicas=1) as cluster:
        (run,) = cluster.runner.pods("vlm")
        assert run.readiness_failures == 2  # the rendered gate's failureThreshold
        gate = run.processes["gate"]
        loop = asyncio.get_running_loop()
        try:
            os.kill(gate.pid, signal.SIGSTOP)
            seen_unready = False
            until = loop.time() + 1.3  # one probe times out (1 s), the next one is answered
            while loop.time() < until:
                seen_unready |= not run.ready
                await asyncio.sleep(0.02)
            os.kill(gate.pid, signal.SIGCONT)
            assert not seen_unready, "one failed probe took the pod out of its Service"
            await asyncio.sleep(0.3)
            os.kill(gate.pid, signal.SIGSTOP)

            async def unready() -> bool:
                return not run.ready

            await cluster.wait_for(unready, deadline_s=10, what="out of the Service")
        finally:
            os.kill(gate.pid, signal.SIGCONT)

        async def ready() -> bool:
            return run.ready

        await cluster.wait_for(ready, deadline_s=10, what="back in the Service")


@pytest.mark.e2e
@pytest.mark.timeout(120)
async def test_a_rollout_surges_one_pod_and_keeps_the_count_ready(tmp_path: Path) -> None:
    # The rendered strategy, maxSurge 1 and maxUnavailable 0: a new template replaces
    # the pods one model load at a time, never fewer than 3 ready, never more than 4.
    async with _runner_only(tmp_path, replicas=3) as cluster:
        before = {p.name for p in cluster.pods("vlm")}
        await cluster.kube.patch(
            DEPLOYMENTS, cluster.namespace, "vlm",
            {"spec": {"template": {"metadata": {"annotations": {"rolled": "1"}}}}},
        )  # fmt: skip
        most = fewest_ready = None
        loop = asyncio.get_running_loop()
        until = loop.time() + 60
        while loop.time() < until:
            pods = cluster.runner.pods("vlm")
            serving = sum(p.ready for p in pods)
            most = len(pods) if most is None else max(most, len(pods))
            fewest_ready = serving if fewest_ready is None else min(fewest_ready, serving)
            if serving == 3 and len(pods) == 3 and not {p.name for p in pods} & before:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"the rollout did not finish: {cluster.runner.pods('vlm')}")
        assert most == 4
        assert fewest_ready == 3


@pytest.mark.e2e
@pytest.mark.timeout(120)
async def test_runner_replaces_a_pod_whose_process_died(tmp_path) -> None:  # type: ignore[no-untyped-def]
    async with _runner_only(tmp_path, replicas=2) as cluster:
        before = {p.name for p in cluster.pods("vlm")}
        victim = sorted(before)[0]
        survivor_proc = cluster.runner.pods("vlm")[0].processes
        assert all(p.returncode is None for p in survivor_proc.values())
        cluster.runner.kill_container(victim)

        async def replaced() -> set[str] | None:
            names = {p.name for p in cluster.pods("vlm") if p.ready}
            return names if len(names) == 2 and victim not in names else None

        after = await cluster.wait_for(replaced, deadline_s=30, what="a ready replacement pod")
        assert len(after - before) == 1
        assert cluster.runner.restarts == 1
        pods, _ = await cluster.kube.list(PODS, cluster.namespace)
        assert victim not in {p["metadata"]["name"] for p in pods}
