"""An emulated Kubernetes API server for tests: real HTTP, real clients, no cluster.

kopf and the official ``kubernetes`` client run unchanged against it. It serves discovery, CRUD,
list/watch with resume and 410 expiry, merge/JSON/strategic patches, status and scale
subresources, finalizers, owner-reference garbage collection, CRDs with structural defaulting,
pruning, OpenAPI and CEL validation, and records every request by RBAC verb (with the checks the
owner-reference admission plugin makes for it).

Use it in-process (``KubeAPIServer`` on the current loop), from sync tests (``run_in_thread``), or
as its own process (``python -m e2e.kubeapi --port P --crds DIR --kubeconfig FILE``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import APIError
from .recording import RecordedRequest
from .server import KubeAPIServer

__all__ = [
    "PODMONITOR_CRD",
    "APIError",
    "KubeAPIServer",
    "RecordedRequest",
    "ThreadedKubeAPI",
    "run_in_thread",
]

PODMONITOR_CRD = Path(__file__).parent / "crds" / "podmonitor.yaml"

T = TypeVar("T")


@dataclass
class ThreadedKubeAPI:
    """A server running on its own event loop in a background thread."""

    server: KubeAPIServer
    url: str
    kubeconfig: Path
    loop: asyncio.AbstractEventLoop

    @property
    def requests(self) -> list[RecordedRequest]:
        return list(self.call(lambda: list(self.server.requests)))

    def call(self, function: Callable[[], T]) -> T:
        """Run ``function`` on the server's loop (the store is not thread-safe) and return."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(function())
            except BaseException as error:  # handed over to the calling thread
                future.set_exception(error)

        self.loop.call_soon_threadsafe(run)
        return future.result(timeout=30)

    def register_crd(self, crd: dict[str, Any]) -> None:
        self.call(lambda: self.server.register_crd(crd))

    def load_crds(self, path: str | Path) -> int:
        return self.call(lambda: self.server.load_crds(path))


@contextmanager
def run_in_thread(
    *,
    crds: Iterable[str | Path] = (),
    kubeconfig: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    **server_options: Any,
) -> Iterator[ThreadedKubeAPI]:
    """Start a server in a thread; yields a handle with ``.url`` and ``.kubeconfig``."""
    loop = asyncio.new_event_loop()
    started: concurrent.futures.Future[KubeAPIServer] = concurrent.futures.Future()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            server = KubeAPIServer(**server_options)
            loop.run_until_complete(server.start(host, port))
            for path in crds:
                server.load_crds(path)
        except BaseException as error:
            started.set_exception(error)
            return
        started.set_result(server)
        loop.run_forever()

    thread = threading.Thread(target=serve, name="kubeapi", daemon=True)
    thread.start()
    with tempfile.TemporaryDirectory(prefix="kubeapi-") as tmp:
        try:
            server = started.result(timeout=30)
        except BaseException:
            thread.join(timeout=5)
            loop.close()
            raise
        config = server.write_kubeconfig(kubeconfig or Path(tmp) / "kubeconfig")
        try:
            yield ThreadedKubeAPI(server, server.url, config, loop)
        finally:
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            loop.close()
