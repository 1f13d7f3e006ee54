"""The operator's API client against a real HTTP server on loopback: what it sends
again, and what it does not."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from vlm_operator.kube import ApiError, KubeClient


class _Server:
    """Answers each request with the next of ``answers`` (status, headers, and a body
    or a Status), never (None), or by closing the connection ("drop"), on kept-alive
    connections, and notes the method of every request it saw."""

    def __init__(self) -> None:
        self.answers: list[
            tuple[int, dict[str, str]] | tuple[int, dict[str, str], Any] | str | None
        ]
        self.answers = []
        self.seen: list[str] = []
        self.bodies: list[Any] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                sent = self.rfile.read(length)
                server.seen.append(self.command)
                server.bodies.append(json.loads(sent) if sent else None)
                answer = server.answers.pop(0) if server.answers else (200, {})
                if answer is None:  # accepted, never answered
                    server.release.wait(10)
                    return
                if answer == "drop":  # a kept-alive connection the server closed
                    self.close_connection = True
                    return
                assert not isinstance(answer, str)
                status, headers = answer[0], answer[1]
                data = answer[2] if len(answer) > 2 else {"kind": "Status", "code": status}
                body = json.dumps(data).encode()
                self.send_response(status)
                for key, value in {**headers, "Content-Type": "application/json"}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PATCH = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def server() -> Iterator[_Server]:
    running = _Server()
    running.thread.start()
    yield running
    running.release.set()
    running.httpd.shutdown()
    running.httpd.server_close()
    running.thread.join(timeout=5)


def _client(server: _Server, tmp_path: Path, read_timeout: float = 5.0) -> KubeClient:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server.url}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return KubeClient.from_environment(str(kubeconfig), request_timeout=(2.0, read_timeout))


async def test_a_throttled_write_is_sent_again_after_its_retry_after(
    server: _Server, tmp_path: Path
) -> None:
    # API Priority and Fairness answers 429 before doing anything: sending it again is safe.
    server.answers = [(429, {"Retry-After": "0"}), (429, {}), (200, {})]
    client = _client(server, tmp_path)
    try:
        await client.merge_patch("/api/v1/namespaces/a/configmaps/b", {"data": {"k": "v"}})
    finally:
        client.close()
    assert server.seen == ["PATCH", "PATCH", "PATCH"]


async def test_a_refusal_is_not_sent_again(server: _Server, tmp_path: Path) -> None:
    server.answers = [(403, {})]
    client = _client(server, tmp_path)
    try:
        with pytest.raises(ApiError) as refused:
            await client.merge_patch("/api/v1/namespaces/a/configmaps/b", {"data": {}})
    finally:
        client.close()
    assert refused.value.status == 403
    assert server.seen == ["PATCH"]


async def test_a_read_that_times_out_is_not_sent_again(server: _Server, tmp_path: Path) -> None:
    # urllib3's default would send it three more times, each waiting its read timeout.
    server.answers = [None, None, None, None]
    client = _client(server, tmp_path, read_timeout=0.5)
    try:
        with pytest.raises(ApiError) as failed:
            await client.get("/api/v1/namespaces/a/configmaps/b")
    finally:
        client.close()
    assert failed.value.status == 0
    assert server.seen == ["GET"]


@pytest.mark.parametrize(
    ("message", "by_policy"),
    [
        ('admission webhook "cap.example.com" denied the request: replicas > 4', True),
        (
            'deployments.apps "x" is forbidden: ValidatingAdmissionPolicy "p" with binding '
            '"b" denied request: no hostPath',
            True,
        ),
        ('pods "x" is forbidden: exceeded quota: compute, requested: cpu=8', True),
        (
            'deployments.apps "x" is forbidden: User "system:serviceaccount:vlm:op" cannot '
            'create resource "deployments" in API group "apps" in the namespace "a"',
            False,
        ),
        (
            'deployments.apps "x" is forbidden: unable to create new content in namespace a '
            "because it is being terminated",
            False,
        ),
    ],
)
def test_a_403_of_admission_is_the_objects_and_one_of_rbac_the_operators(
    message: str, by_policy: bool
) -> None:
    body = json.dumps({"kind": "Status", "code": 403, "reason": "Forbidden", "message": message})
    assert ApiError(403, "Forbidden", body).refused_by_policy is by_policy
    assert not ApiError(422, "Unprocessable Entity", body).refused_by_policy


@pytest.mark.parametrize(("landed", "failed"), [(7, False), (3, True)])
async def test_a_scale_whose_answer_is_lost_is_read_back(
    server: _Server, tmp_path: Path, landed: int, failed: bool
) -> None:
    # The PATCH times out after the API server applied it (or did not): the Deployment
    # read back says which.
    server.answers = [None, (200, {}, {"kind": "Deployment", "spec": {"replicas": landed}})]
    client = _client(server, tmp_path, read_timeout=0.5)
    try:
        if failed:
            with pytest.raises(ApiError) as lost:
                await client.scale("a", "d", 7)
            assert lost.value.status == 0
        else:
            await client.scale("a", "d", 7)
    finally:
        client.close()
    assert server.seen == ["PATCH", "GET"]


async def test_an_owner_reference_another_added_is_kept(server: _Server, tmp_path: Path) -> None:
    # A merge patch replaces a list whole: the rendered references alone would drop
    # the one a tool added (not a controller), at every refresh.
    ours = {"apiVersion": "vlm-operator.io/v1alpha1", "kind": "VLMService", "name": "x",
            "uid": "u-ours", "controller": True, "blockOwnerDeletion": True}  # fmt: skip
    theirs = {"apiVersion": "v1", "kind": "ConfigMap", "name": "t", "uid": "u-theirs"}
    rendered = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x", "namespace": "a", "ownerReferences": [ours]},
        "spec": {"ports": [{"port": 80}]},
    }
    current = {**rendered, "metadata": {**rendered["metadata"], "ownerReferences": [theirs, ours]}}
    server.answers = [(200, {}, current), (200, {})]
    client = _client(server, tmp_path)
    try:
        assert await client.apply(rendered) == "patched"  # the applied-keys record is new
    finally:
        client.close()
    assert server.seen == ["GET", "PATCH"]
    assert server.bodies[1]["metadata"]["ownerReferences"] == [theirs, ours]


async def test_a_kept_alive_connection_the_server_closed_is_tried_again(
    server: _Server, tmp_path: Path
) -> None:
    server.answers = [(200, {}), "drop", (200, {})]
    client = _client(server, tmp_path)
    try:
        await client.get("/api/v1/namespaces/a/configmaps/b")
        await client.get("/api/v1/namespaces/a/configmaps/b")  # on the closed connection
    finally:
        client.close()
    assert server.seen == ["GET", "GET", "GET"]
