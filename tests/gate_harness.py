"""The gate under test: a backend that records what reaches it, and the gate in front.

The backend is a small aiohttp model stand-in that counts its own concurrency,
holds requests until a test lets them go, streams, dies mid-request, or echoes
what it received. :func:`running_gate` runs the real gate on a loopback port
in front of it, with a client and a reader of its metrics.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from vlm_operator.gate import GateConfig, GateServer

DEADLINE_S = 10.0


async def until(predicate: Callable[[], Any], deadline_s: float = DEADLINE_S) -> None:
    """Poll ``predicate`` (sync or async) until true; fail after the deadline."""
    async with asyncio.timeout(deadline_s):
        while True:
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return
            await asyncio.sleep(0.002)


class Backend:
    """A model stand-in that records concurrency, arrival order and cancellations."""

    def __init__(self) -> None:
        self.current = 0
        self.peak = 0
        self.arrivals: list[str] = []
        self.cancelled = 0
        self.finished = 0
        self.healthy = True
        self.release = asyncio.Event()
        self.stream_gate = asyncio.Event()
        self.bodies: list[bytes] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _tracked(self, request: web.Request, work: Callable[[], Any]) -> web.StreamResponse:
        self.current += 1
        self.peak = max(self.peak, self.current)
        self.arrivals.append(request.headers.get("x-id", ""))
        try:
            body = await request.read()
            self.bodies.append(body)
            result = await work()
            self.finished += 1
            assert isinstance(result, web.StreamResponse)
            return result
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.current -= 1

    async def sleep(self, request: web.Request) -> web.StreamResponse:
        async def work() -> web.Response:
            await asyncio.sleep(float(request.query.get("s", "0.01")))
            return web.json_response({"ok": True})

        return await self._tracked(request, work)

    async def hold(self, request: web.Request) -> web.StreamResponse:
        async def work() -> web.Response:
            await self.release.wait()
            return web.json_response({"id": request.headers.get("x-id", "")})

        return await self._tracked(request, work)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        async def work() -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b"data: first\n\n")
            await self.stream_gate.wait()  # the rest only once the client saw the first
            await response.write(b"data: second\n\n")
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response

        return await self._tracked(request, work)

    async def trickle(self, request: web.Request) -> web.StreamResponse:
        """``n`` server-sent events, one every ``every`` seconds."""

        async def work() -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for i in range(int(request.query["n"])):
                await asyncio.sleep(float(request.query["every"]))
                await response.write(b"data: %d\n\n" % i)
            await response.write_eof()
            return response

        return await self._tracked(request, work)

    async def big(self, request: web.Request) -> web.StreamResponse:
        """A body of ``bytes`` bytes, all sent at once."""

        async def work() -> web.Response:
            return web.Response(body=b"x" * int(request.query["bytes"]))

        return await self._tracked(request, work)

    async def die(self, request: web.Request) -> web.StreamResponse:
        async def work() -> web.StreamResponse:
            assert request.transport is not None
            request.transport.close()  # the model process vanishes mid-request
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

        return await self._tracked(request, work)

    async def die_mid_stream(self, request: web.Request) -> web.StreamResponse:
        async def work() -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b"data: first\n\n")
            assert request.transport is not None
            request.transport.close()
            return response

        return await self._tracked(request, work)

    async def echo(self, request: web.Request) -> web.StreamResponse:
        async def work() -> web.Response:
            return web.json_response(
                {
                    "method": request.method,
                    "path": request.raw_path,
                    "headers": dict(request.headers),
                    "body": self.bodies[-1].decode("utf-8", "replace"),
                },
                status=int(request.headers.get("x-status", "200")),
                headers={"x-backend": "yes"}
                | (
                    {"Set-Cookie": cookie}
                    if (cookie := request.headers.get("x-set-cookie"))
                    else {}
                ),
            )

        return await self._tracked(request, work)

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({}, status=200 if self.healthy else 503)

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/health", self.health)
        app.router.add_route("*", "/sleep", self.sleep)
        app.router.add_route("*", "/hold", self.hold)
        app.router.add_route("*", "/stream", self.stream)
        app.router.add_route("*", "/trickle", self.trickle)
        app.router.add_route("*", "/big", self.big)
        app.router.add_route("*", "/die", self.die)
        app.router.add_route("*", "/die-mid-stream", self.die_mid_stream)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self.release.set()
        self.stream_gate.set()
        if self._runner is not None:
            await self._runner.cleanup()


class Gate:
    """The gate application on a loopback port, with a client and metric reader."""

    def __init__(self, config: GateConfig) -> None:
        self.config = config
        self.server = GateServer(replace(config, host="127.0.0.1", port=0))
        self.url = ""
        self.client: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        await self.server.start()
        self.url = self.server.url
        self.client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
        await self.server.close()

    async def request(
        self, method: str, path: str, **kwargs: Any
    ) -> tuple[int, dict[str, str], bytes]:
        assert self.client is not None
        async with self.client.request(method, self.url + path, **kwargs) as response:
            return response.status, dict(response.headers), await response.read()

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, _, body = await self.request("GET", "/metrics")
        assert status == 200
        values = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return values

    async def metric(self, name: str, **labels: str) -> float:
        return (await self.metrics()).get((name, tuple(sorted(labels.items()))), 0.0)

    async def waiting_is(self, n: int) -> bool:
        """Whether the gate's queue holds ``n`` requests now (for :func:`until`)."""
        return await self.metric("vlm_requests_waiting") == n


@asynccontextmanager
async def running_gate(backend: Backend, **overrides: Any) -> AsyncIterator[Gate]:
    settings: dict[str, Any] = {"upstream": backend.url, "health_interval": 0.05}
    config = GateConfig(**{**settings, **overrides})
    gate = Gate(config)
    await gate.start()
    try:
        if config.health_path:

            async def ready() -> bool:
                return (await gate.request("GET", "/readyz"))[0] == 200

            await until(ready)
        yield gate
    finally:
        await gate.stop()


Answer = tuple[int, dict[str, str], bytes]


async def hold_one_and_queue_one(
    gate: Gate, backend: Backend, running_id: str, queued_id: str
) -> tuple[asyncio.Task[Answer], asyncio.Task[Answer]]:
    """One request inside the model (the backend holds it) and one queued behind it."""
    running = asyncio.create_task(gate.request("POST", "/hold", headers={"x-id": running_id}))
    await until(lambda: backend.current == 1)
    queued = asyncio.create_task(gate.request("POST", "/hold", headers={"x-id": queued_id}))
    await until(lambda: gate.waiting_is(1))
    return running, queued


def error_code(body: bytes) -> str:
    payload = json.loads(body)
    assert set(payload["error"]) >= {"message", "type", "code"}
    return str(payload["error"]["code"])
