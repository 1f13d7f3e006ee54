"""The operator's API client against a real HTTP server on loopback: what it sends
again, and what it does not."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from vlm_operator.kube import ApiError, KubeClient


class _Server:
    """Answers each request with the next of ``answers`` (status, headers), or never
    (None), and notes the method of every request it saw."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, str]] | None] = []
        self.seen: list[str] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                server.seen.append(self.command)
                answer = server.answers.pop(0) if server.answers else (200, {})
                if answer is None:  # accepted, never answered
                    server.release.wait(10)
                    return
                status, headers = answer
                body = json.dumps({"kind": "Status", "code": status}).encode()
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
    ],
)
def test_a_403_of_admission_is_the_objects_and_one_of_rbac_the_operators(
    message: str, by_policy: bool
) -> None:
    body = json.dumps({"kind": "Status", "code": 403, "reason": "Forbidden", "message": message})
    assert ApiError(403, "Forbidden", body).refused_by_policy is by_policy
    assert not ApiError(422, "Unprocessable Entity", body).refused_by_policy
