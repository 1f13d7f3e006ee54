"""Fixtures for the end-to-end tests on the local cluster.

Every scenario runs 10x compressed (:data:`E2E_TIME_SCALE`): a request takes 0.62 s instead of
6.2 s, a pod loads its model in 2 s instead of 20 s, the operator's 1 s sync period stands for
10 s. The VLMService the tests apply keeps the production defaults otherwise (the exceptions are
commented), so the policy under test is the shipped one. When a scenario fails, the tail of the
operator's log is printed with the failure (pytest shows captured output of failed tests only).
"""

from __future__ import annotations

import asyncio
import copy
import sys
from collections.abc import AsyncIterator, Callable, Generator
from pathlib import Path
from typing import Any

import pytest
from vlm_operator.loadgen import ERROR_PAUSE_S, RequestRecord, chat_payload, closed_loop

from e2e.localcluster import LocalCluster

E2E_TIME_SCALE = 10.0
E2E_CLIENT_TIMEOUT_S = 30.0 / E2E_TIME_SCALE  # the measured test's client timeout
E2E_PAYLOAD = chat_payload("Qwen/Qwen3-VL-2B-Instruct")

#: The VLMService of the scenarios (real-time values; compressed when applied).
E2E_SERVICE: dict[str, Any] = {
    "apiVersion": "vlm-operator.io/v1alpha1",
    "kind": "VLMService",
    "metadata": {"name": "vlm"},
    "spec": {
        "model": {"id": "Qwen/Qwen3-VL-2B-Instruct", "runtime": "fake",
                  "fake": {"startupSeconds": 20}},
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
        "concurrency": {"maxInFlight": 4, "queueSize": 8},
        "autoscaling": {
            "minReplicas": 1,
            "maxReplicas": 6,
            # Exact arithmetic for the scenarios: 8 users are 2 full pods, 12 are 3.
            "targetUtilization": 1.0,
            "scaleDown": {"stabilizationWindowSeconds": 40},
        },
    },
}  # fmt: skip


def e2e_service(**spec_overrides: Any) -> dict[str, Any]:
    """:data:`E2E_SERVICE` with top-level spec sections merged from ``spec_overrides``."""
    manifest = copy.deepcopy(E2E_SERVICE)
    for key, value in spec_overrides.items():
        section = manifest["spec"].get(key)
        if isinstance(section, dict) and isinstance(value, dict):
            manifest["spec"][key] = {**section, **value}
        else:
            manifest["spec"][key] = value
    return manifest


def start_load(url: str, users: int, seconds: float) -> asyncio.Task[list[RequestRecord]]:
    """``users`` closed-loop users against ``url`` for ``seconds``, in the background."""
    return asyncio.create_task(
        closed_loop(
            url,
            users,
            duration_s=seconds,
            timeout_s=E2E_CLIENT_TIMEOUT_S,
            payload=E2E_PAYLOAD,
            error_pause_s=ERROR_PAUSE_S / E2E_TIME_SCALE,
        )
    )


async def deploy(cluster: LocalCluster, manifest: dict[str, Any], *, ready: int = 1) -> str:
    """Apply ``manifest``, wait for ``ready`` pods; the chat URL of its Service."""
    name = str(manifest["metadata"]["name"])
    await cluster.apply(manifest)
    await cluster.wait_ready(name, ready, deadline_s=30)
    return f"{(await cluster.service(name)).url}/v1/chat/completions"


async def wait_condition(
    cluster: LocalCluster, name: str, type_: str, status: str, *, deadline_s: float
) -> None:
    """Poll the VLMService's status until condition ``type_`` has ``status``."""

    async def check() -> bool:
        body = (await cluster.vlmservice(name)) or {}
        conditions = (body.get("status") or {}).get("conditions") or []
        return any(c.get("type") == type_ and c.get("status") == status for c in conditions)

    await cluster.wait_for(check, deadline_s=deadline_s, what=f"{name}: {type_}={status}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


#: Seconds before a test's timeout at which every asyncio task's stack is printed.
_DUMP_LEAD_S = 5.0


def _dump_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Print where every task of ``loop`` waits.

    pytest-timeout's dump shows the threads, and a hung asyncio test shows
    only its event loop idling in ``select``: the awaits that never finish
    are in the tasks' stacks.
    """
    tasks = asyncio.all_tasks(loop)
    print(f"--- {len(tasks)} asyncio tasks {_DUMP_LEAD_S:g}s before the timeout:", file=sys.stderr)
    for task in sorted(tasks, key=lambda t: t.get_name()):
        print(f"- task {task.get_name()}, awaiting:", file=sys.stderr)
        # Task.print_stack shows only the task's own frame; follow the awaits.
        link: Any = task.get_coro()
        for _ in range(64):
            frame = getattr(link, "cr_frame", None) or getattr(link, "gi_frame", None)
            if frame is None:
                break
            code = frame.f_code
            print(f"    {code.co_filename}:{frame.f_lineno} in {code.co_name}", file=sys.stderr)
            link = getattr(link, "cr_await", None) or getattr(link, "gi_yieldfrom", None)
        if link is not None and frame is None:
            print(f"    {link!r}", file=sys.stderr)


@pytest.fixture(autouse=True)
async def _tasks_dumped_before_timeout(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Arm :func:`_dump_tasks` to run just before pytest-timeout ends the test."""
    marker = request.node.get_closest_marker("timeout")
    timeout = float(marker.args[0] if marker and marker.args else request.config.getini("timeout"))
    if timeout <= 2 * _DUMP_LEAD_S:
        yield
        return
    loop = asyncio.get_running_loop()
    handle = loop.call_later(timeout - _DUMP_LEAD_S, _dump_tasks, loop)
    try:
        yield
    finally:
        handle.cancel()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture
async def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[LocalCluster]:
    """A started local cluster (API, Prometheus, runner, operator), 10x compressed."""
    async with LocalCluster(time_scale=E2E_TIME_SCALE, workdir=tmp_path / "cluster") as c:
        yield c
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            print(f"--- operator log ({c.logs / 'operator.log'}):")
            print(_tail(c.logs / "operator.log"))


@pytest.fixture
def service_manifest() -> Callable[..., dict[str, Any]]:
    return e2e_service
