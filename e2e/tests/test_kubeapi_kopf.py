"""Real kopf (standalone, default persistence) operating custom resources on the emulated API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch

from e2e.kubeapi import ThreadedKubeAPI, run_in_thread
from e2e.tests.test_kubeapi import WIDGET_CRD

OPERATOR = textwrap.dedent("""
    import kopf

    @kopf.on.startup()
    def configure(settings, **_):
        # Short server-side watch timeouts: kopf must resume its watches from resourceVersions.
        settings.watching.server_timeout = 1

    @kopf.on.create("example.com", "v1", "widgets")
    def created(spec, retry, **_):
        if retry == 0:
            raise kopf.TemporaryError("first attempt fails on purpose", delay=0.2)
        return {"size": spec["size"]}

    @kopf.timer("example.com", "v1", "widgets", interval=0.2)
    def tick(patch, status, **_):
        patch.status["ticks"] = status.get("ticks", 0) + 1

    @kopf.on.delete("example.com", "v1", "widgets")
    def deleted(retry, **_):
        if retry == 0:
            raise kopf.TemporaryError("cleanup needs a second try", delay=0.2)
""")
PROGRESS = "kopf.zalando.org/created"
FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"


@pytest.fixture
def api() -> Iterator[ThreadedKubeAPI]:
    with run_in_thread() as handle:
        handle.register_crd(WIDGET_CRD)
        yield handle


@pytest.fixture
def kopf_operator(api: ThreadedKubeAPI, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    (tmp_path / "operator.py").write_text(OPERATOR)
    log = (tmp_path / "kopf.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "kopf", "run", "--standalone", "--namespace", "default",
         "--verbose", str(tmp_path / "operator.py")],
        env={**os.environ, "KUBECONFIG": str(api.kubeconfig)}, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


def test_kopf_handlers_progress_finalizers_and_deletion(
    api: ThreadedKubeAPI, kopf_operator: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    kube = config.new_client_from_config(config_file=str(api.kubeconfig))
    custom = client.CustomObjectsApi(kube)
    since = custom.list_namespaced_custom_object("example.com", "v1", "default", "widgets")
    custom.create_namespaced_custom_object("example.com", "v1", "default", "widgets", {
        "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w1"},
        "spec": {"size": 3}})  # fmt: skip

    seen: list[tuple[str, dict[str, Any]]] = []
    deleting = False
    stream = watch.Watch().stream(
        custom.list_namespaced_custom_object,
        "example.com",
        "v1",
        "default",
        "widgets",
        resource_version=since["metadata"]["resourceVersion"],
        timeout_seconds=30,
    )
    for event in stream:
        seen.append((event["type"], event["object"]))
        obj = event["object"]
        status = obj.get("status", {})
        if not deleting and "created" in status and status.get("ticks", 0) >= 2:
            custom.delete_namespaced_custom_object("example.com", "v1", "default", "widgets", "w1")
            deleting = True
        if event["type"] == "DELETED":
            break
    log = (tmp_path / "kopf.log").read_text()
    assert seen[-1][0] == "DELETED", log
    objects = [obj for _, obj in seen]
    annotations = [obj["metadata"].get("annotations", {}) for obj in objects]

    # The first attempt failed: kopf's default (annotations) progress storage kept the retry.
    progress = [json.loads(a[PROGRESS]) for a in annotations if PROGRESS in a]
    assert any(p.get("retries") == 1 and p.get("success") is not True for p in progress)
    assert any("last-handled-configuration" in key for a in annotations for key in a)
    assert any(FINALIZER in obj["metadata"].get("finalizers", []) for obj in objects)
    finished = next(obj for obj in objects if "created" in obj.get("status", {}))
    assert finished["status"]["created"] == {"size": 3}
    assert finished["metadata"]["generation"] == 1  # kopf's writes never touched the spec
    assert "deletionTimestamp" in objects[-1]["metadata"]
    assert "Handler 'deleted' succeeded" in log
    assert "Traceback" not in log

    used = {(r.verb, r.resource, r.subresource) for r in api.requests}
    assert {("list", "widgets", ""), ("watch", "widgets", ""), ("patch", "widgets", ""),
            ("patch", "widgets", "status")} <= used  # fmt: skip

    # kopf's watch (server timeout 1 s) reconnects from its last resourceVersion; an object
    # created after the reconnects must still be seen and handled.
    def widget_watches() -> int:
        return sum((r.verb, r.resource) == ("watch", "widgets") for r in api.requests)

    ours = 1
    deadline = time.monotonic() + 10
    while widget_watches() < ours + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert widget_watches() >= ours + 2, log
    custom.create_namespaced_custom_object("example.com", "v1", "default", "widgets", {
        "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w2"},
        "spec": {"size": 5}})  # fmt: skip
    deadline = time.monotonic() + 10
    later: dict[str, Any] = {}
    while "created" not in later.get("status", {}) and time.monotonic() < deadline:
        later = custom.get_namespaced_custom_object("example.com", "v1", "default", "widgets", "w2")
        time.sleep(0.05)
    assert later["status"]["created"] == {"size": 5}, (tmp_path / "kopf.log").read_text()

    kopf_operator.send_signal(signal.SIGINT)
    assert kopf_operator.wait(timeout=15) == 0
    kube.close()
