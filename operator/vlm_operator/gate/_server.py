"""The gate's configuration, its aiohttp application, and its life cycle.

The application owns one client session whose connection pool is sized to the
in-flight limit (admission control guarantees it never needs more), a
background health poller that decides readiness, and the gate's own endpoints
(/metrics, /healthz, /readyz), which are neither counted nor queued.

On SIGTERM the gate turns unready and refuses new work with 503, lets every
running and queued request finish within the drain timeout, then exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from vlm_operator.gate._admission import Admission
from vlm_operator.gate._cache import ResponseCache
from vlm_operator.gate._metrics import GateMetrics
from vlm_operator.gate._proxy import Proxy
from vlm_operator.models import ConcurrencySpec

log = logging.getLogger("vlm_operator.gate")

_SPEC_DEFAULTS = ConcurrencySpec()
#: Consecutive failed health checks before a ready model counts as not ready
#: (one slow answer from a busy model must not take the pod out of service).
_HEALTH_FAILURES = 2


@dataclass(frozen=True)
class GateConfig:
    """Everything the gate needs; the defaults are the VLMService API's defaults."""

    upstream: str
    host: str = "127.0.0.1"
    port: int = 8000
    max_in_flight: int = _SPEC_DEFAULTS.max_in_flight
    queue_size: int = _SPEC_DEFAULTS.queue_size
    queue_timeout: float = _SPEC_DEFAULTS.queue_timeout_seconds
    max_body_bytes: int = _SPEC_DEFAULTS.max_request_bytes
    health_path: str = "/health"  # empty: the model counts as always ready
    drain_timeout: float = 30.0
    cache_size: int = 0  # 0: no response cache
    cache_ttl: float = 60.0
    bucket_scale: float = 1.0  # latency buckets ÷ this: for time-compressed test models only
    health_interval: float = 1.0
    health_timeout: float = 2.0

    def __post_init__(self) -> None:
        if not self.upstream.startswith(("http://", "https://")):
            raise ValueError(f"upstream must be an http(s) URL, got {self.upstream!r}")
        if self.health_path and not self.health_path.startswith("/"):
            raise ValueError(f"health_path must start with '/', got {self.health_path!r}")
        for name in ("max_in_flight", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("queue_size", "cache_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("queue_timeout", "cache_ttl", "bucket_scale", "health_interval",
                     "health_timeout"):  # fmt: skip
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.bucket_scale == float("inf"):
            raise ValueError("bucket_scale must be finite, got inf")
        if not self.drain_timeout >= 0:
            raise ValueError(f"drain_timeout must be >= 0, got {self.drain_timeout}")


_PROXY = web.AppKey("proxy", Proxy)


def _proxy_of(app: web.Application) -> Proxy:
    return app[_PROXY]


async def _poll_health(proxy: Proxy, config: GateConfig, session: aiohttp.ClientSession) -> None:
    url = proxy.upstream + config.health_path
    timeout = aiohttp.ClientTimeout(total=config.health_timeout)
    failures = 0
    while True:
        try:
            async with session.get(url, timeout=timeout) as response:
                ok = response.status == 200
                await response.read()
        except (aiohttp.ClientError, OSError, TimeoutError):
            ok = False
        if ok:
            failures = 0
            if not proxy.ready:
                log.info("model is ready at %s", url)
            proxy.ready = True
        else:
            failures += 1
            # A model busy answering requests may be slow to answer its health
            # endpoint; an answer it gave recently proves it alive.
            answered_recently = (
                asyncio.get_running_loop().time() - proxy.last_answer
                < config.health_interval + config.health_timeout
            )
            if proxy.ready and failures >= _HEALTH_FAILURES and not answered_recently:
                log.warning("model failed %d health checks at %s", failures, url)
                proxy.ready = False
        await asyncio.sleep(config.health_interval)


def create_app(config: GateConfig) -> web.Application:
    """The gate as an aiohttp application (sessions open and close with it)."""
    admission = Admission(config.max_in_flight, config.queue_size, config.queue_timeout)
    metrics = GateMetrics(
        max_in_flight=config.max_in_flight,
        queue_capacity=config.queue_size,
        running=lambda: admission.running,
        waiting=lambda: admission.waiting,
        bucket_scale=config.bucket_scale,
    )
    cache = ResponseCache(config.cache_size, config.cache_ttl) if config.cache_size else None
    proxy = Proxy(
        upstream=config.upstream,
        admission=admission,
        metrics=metrics,
        max_body_bytes=config.max_body_bytes,
        cache=cache,
    )
    proxy.ready = not config.health_path
    app = web.Application(client_max_size=config.max_body_bytes)
    app[_PROXY] = proxy

    async def sessions(app: web.Application) -> AsyncIterator[None]:
        # Idle upstream connections are dropped after 4 s, before the model server's
        # own keep-alive timeout (uvicorn: 5 s) can close one under a request: a
        # POST on a connection closed that way is not retried and would be a 502.
        connector = aiohttp.TCPConnector(limit=config.max_in_flight, keepalive_timeout=4.0)
        proxy.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            auto_decompress=False,
            # A proxy must not remember one client's cookies and send them with another's.
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        health_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
        poller = None
        if config.health_path:
            poller = asyncio.create_task(_poll_health(proxy, config, health_session))
        yield
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        await health_session.close()
        await proxy.session.close()

    app.cleanup_ctx.append(sessions)

    async def metrics_endpoint(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        if admission.draining:
            return web.json_response({"status": "draining"}, status=503)
        if not proxy.ready:
            return web.json_response({"status": "model not ready"}, status=503)
        return web.json_response({"status": "ready"})

    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    return app


def make_runner(app: web.Application) -> web.AppRunner:
    """A runner that cancels a handler when its client disconnects.

    That is what frees a slot (the upstream request is cancelled with it) and
    takes a waiting request out of the queue at once.
    """
    # After the drain (bounded by the drain timeout) stragglers get 0.5 s, then are cut.
    return web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)


async def drain(app: web.Application, seconds: float) -> bool:
    """Refuse new work and wait for running and queued requests; False on timeout."""
    admission = _proxy_of(app).admission
    admission.draining = True
    return await admission.wait_idle(seconds)


async def serve(config: GateConfig, stop: asyncio.Event | None = None) -> int:
    """Run the gate until SIGTERM/SIGINT (or ``stop``), drain, and return 0."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = create_app(config)
    runner = make_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=1024)
    await site.start()
    host, port = runner.addresses[0][:2] if runner.addresses else (config.host, config.port)
    print(
        f"vlm-operator gate: listening on http://{host}:{port} → {config.upstream} "
        f"(max in flight {config.max_in_flight}, queue {config.queue_size})",
        flush=True,
    )
    try:
        await stop.wait()
        admission = _proxy_of(app).admission
        log.info(
            "draining: %d running, %d queued, up to %gs",
            admission.running,
            admission.waiting,
            config.drain_timeout,
        )
        if not await drain(app, config.drain_timeout):
            log.warning(
                "drain timeout: %d running and %d queued requests cut",
                admission.running,
                admission.waiting,
            )
    finally:
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    print("vlm-operator gate: drained, exiting", file=sys.stderr, flush=True)
    return 0
