"""The gate's configuration, its listening socket, and its life cycle.

A :class:`GateServer` owns the listening socket (one :class:`ClientConnection`
per client), the pool of connections to the model, a background health poller
that decides readiness, and a sweeper that closes idle connections. Any
failure of a health check, however odd the model's answer, counts as a failed
check: the poller must outlive the model it watches.

A client that stops reading its answer holds a slot while the gate waits to
write to it; past the keep-alive timeout, the sweeper cuts it like a client
that hung up (the slot is freed, the request counted as 499). A model that
sends nothing on a request for the response timeout is given up on the same
way from its side (the client gets a 504, the request is counted as 504).

On SIGTERM the gate turns unready and refuses new work with 503, lets every
running and queued request finish within the drain timeout, then exits 0.
Finished means delivered: a slot is freed once the answer's last byte is
handed to the client's transport, and the drain also waits until every
transport has sent what it holds on (or lost its client), else the process
would exit with the end of a slow reader's answer still in its buffers. Past
the drain timeout, requests still queued are refused 503 like new ones, and
those still running are cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import signal
import socket
import sys
from dataclasses import dataclass

from vlm_operator.contract import held_body_bytes
from vlm_operator.gate._admission import Admission
from vlm_operator.gate._cache import ResponseCache
from vlm_operator.gate._client import ClientConnection
from vlm_operator.gate._metrics import GateMetrics
from vlm_operator.gate._proxy import Proxy
from vlm_operator.models import ConcurrencySpec

log = logging.getLogger("vlm_operator.gate")

_SPEC_DEFAULTS = ConcurrencySpec()
#: Consecutive failed health checks before a ready model counts as not ready
#: (one slow answer from a busy model must not take the pod out of service).
_HEALTH_FAILURES = 2
#: Seconds between sweeps for idle connections.
_SWEEP_SECONDS = 5.0
#: Seconds a client's keep-alive connection may stay idle.
_CLIENT_IDLE_SECONDS = 75.0


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
    #: Request-body bytes held at once (0: derived, see :attr:`held_body_limit`).
    max_held_body_bytes: int = 0
    health_path: str = "/health"  # empty: the model counts as always ready
    drain_timeout: float = 30.0
    cache_size: int = 0  # 0: no response cache
    cache_ttl: float = 60.0
    bucket_scale: float = 1.0  # latency buckets ÷ this: for time-compressed test models only
    health_interval: float = 1.0
    health_timeout: float = 2.0
    response_timeout: float = _SPEC_DEFAULTS.response_timeout_seconds

    def __post_init__(self) -> None:
        if not self.upstream.startswith(("http://", "https://")):
            raise ValueError(f"upstream must be an http(s) URL, got {self.upstream!r}")
        if self.health_path and not self.health_path.startswith("/"):
            raise ValueError(f"health_path must start with '/', got {self.health_path!r}")
        for name in ("max_in_flight", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if 0 < self.max_held_body_bytes < self.max_body_bytes:
            raise ValueError(
                f"max_held_body_bytes must be 0 or >= max_body_bytes ({self.max_body_bytes}), "
                f"got {self.max_held_body_bytes}"
            )
        for name in ("queue_size", "cache_size", "max_held_body_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("queue_timeout", "cache_ttl", "bucket_scale", "health_interval",
                     "health_timeout", "response_timeout"):  # fmt: skip
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("bucket_scale", "response_timeout"):
            if getattr(self, name) == math.inf:
                raise ValueError(f"{name} must be finite, got inf")
        if not self.drain_timeout >= 0:
            raise ValueError(f"drain_timeout must be >= 0, got {self.drain_timeout}")

    @property
    def held_body_limit(self) -> int:
        """The most request-body bytes the gate holds at once.

        Unless set: :func:`vlm_operator.contract.held_body_bytes` (a body of the largest
        size for every slot and queue place, within bounds).
        """
        if self.max_held_body_bytes:
            return self.max_held_body_bytes
        return held_body_bytes(self.max_in_flight, self.queue_size, self.max_body_bytes)


async def _probe(proxy: Proxy, path: bytes, seconds: float) -> bool:
    """One GET of the model's health endpoint on a fresh connection: True on 200."""
    pool = proxy.pool
    request = (
        b"GET " + pool.prefix + path + b" HTTP/1.1\r\nHost: " + pool.authority
        + b"\r\nConnection: close\r\n\r\n"
    )  # fmt: skip
    try:
        async with asyncio.timeout(seconds):
            reader, writer = await asyncio.open_connection(pool.host, pool.port, ssl=pool.ssl)
            try:
                writer.write(request)
                status_line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    fields = status_line.split(None, 2)
    return len(fields) >= 2 and fields[1] == b"200"


async def _poll_health(proxy: Proxy, config: GateConfig) -> None:
    path = config.health_path.encode()
    failures = 0
    logged = False  # an unexpected failure was logged (once per run of failures)
    while True:
        try:
            healthy = await _probe(proxy, path, config.health_timeout)
        except Exception as exc:  # e.g. ValueError: a status line past the reader's limit
            healthy = False
            if not logged:
                logged = True
                log.warning(
                    "health check at %s%s failed: %r", config.upstream, config.health_path, exc
                )
        if healthy:
            failures = 0
            logged = False
            if not proxy.ready:
                log.info("model is ready at %s%s", config.upstream, config.health_path)
            proxy.ready = True
        else:
            failures += 1
            # A model busy answering requests may be slow to answer its health
            # endpoint; an answer it gave recently proves it alive.
            answered_recently = (
                proxy.clock() - proxy.last_answer < config.health_interval + config.health_timeout
            )
            if proxy.ready and failures >= _HEALTH_FAILURES and not answered_recently:
                log.warning(
                    "model failed %d health checks at %s%s",
                    failures,
                    config.upstream,
                    config.health_path,
                )
                proxy.ready = False
        await asyncio.sleep(config.health_interval)


async def _sweep(proxy: Proxy) -> None:
    """Close client connections idle past the keep-alive timeout, and stale model ones;
    refuse requests that arrive too slowly."""
    limit = math.ceil(_CLIENT_IDLE_SECONDS / _SWEEP_SECONDS)
    while True:
        await asyncio.sleep(_SWEEP_SECONDS)
        now = proxy.clock()
        for connection in list(proxy.connections):
            try:
                _sweep_client(connection, now, limit)
            except Exception:  # one connection's trouble must not stop the sweeps
                log.exception("sweeping a client connection failed; cutting it")
                connection.abort()
        proxy.pool.sweep()


def _sweep_client(connection: ClientConnection, now: float, limit: int) -> None:
    if connection.read_overdue(now):
        log.info("refusing a request that arrives too slowly")
        connection.refuse_slow_request()
    # Cut: a client that has not read enough of its answer to resume writing for the
    # idle limit (slow readers hold a slot), or that reads nothing of what is left
    # (below the high-water mark writing is not paused, and a closing connection
    # would wait for ever on bytes nobody reads).
    if connection.unsent_stalled() or connection.writing_paused:
        connection.stalled_ticks += 1
        if connection.stalled_ticks >= limit:
            log.info("cutting a client that stopped reading its answer")
            connection.abort()
        return
    connection.stalled_ticks = 0
    if connection.active is None and not connection.pending:
        connection.idle_ticks += 1
        if connection.idle_ticks >= limit:
            connection.close_if_idle()


async def _watch_silence(proxy: Proxy, limit: float) -> None:
    """Give up on requests the model has been silent on for ``limit`` seconds.

    Checked a few times per timeout (at most every second), not by a timer per
    request: the common path stays free of timers, and a request is given up on
    within a quarter of the timeout (or a second) after it ran out.
    """
    period = min(1.0, limit / 4)
    while True:
        await asyncio.sleep(period)
        try:
            dropped = proxy.pool.give_up_on_silent(limit)
        except Exception:  # a check that failed once must not end the checks for good
            log.exception("checking for a silent model failed")
            continue
        if dropped:
            log.warning("the model sent nothing for %g s on %d request(s): given up", limit,
                        dropped)  # fmt: skip


#: How often a drain looks again for requests still being received.
_READ_POLL_SECONDS = 0.05


async def _requests_read(proxy: Proxy, seconds: float) -> bool:
    """Wait until no client is part-way through sending a request (each is then read,
    and answered 503 ``draining``); False if ``seconds`` passed first.

    A body of a 20 MiB image takes seconds to arrive, and closing the connection under
    it would leave its client with no answer. The slow-request bound cuts the slowest.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while any(c.reading for c in list(proxy.connections)):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(_READ_POLL_SECONDS)
    return True


async def _answers_sent_on(proxy: Proxy, seconds: float) -> bool:
    """Wait until every client connection has sent on what was written to it (or is
    gone); False if ``seconds`` passed first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    logged = False
    while True:
        unsent = [f for c in list(proxy.connections) if (f := c.sent_on()) is not None]
        if not unsent:
            return True
        if not logged:
            logged = True
            log.info("draining: %d answers still being sent to their clients", len(unsent))
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        await asyncio.wait(unsent, timeout=remaining)


class GateServer:
    """The gate on a listening socket: :meth:`start`, :meth:`drain`, :meth:`close`."""

    def __init__(self, config: GateConfig) -> None:
        self.config = config
        self._server: asyncio.Server | None = None
        self._proxy: Proxy | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def proxy(self) -> Proxy:
        assert self._proxy is not None, "the gate has not been started"
        return self._proxy

    @property
    def address(self) -> tuple[str, int]:
        """The host and port the gate listens on (the real port when 0 was asked for)."""
        assert self._server is not None, "the gate has not been started"
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def start(self) -> None:
        """Listen, and start polling the model's health."""
        config = self.config
        admission = Admission(config.max_in_flight, config.queue_size, config.queue_timeout)
        metrics = GateMetrics(
            max_in_flight=config.max_in_flight,
            queue_capacity=config.queue_size,
            running=lambda: admission.running,
            waiting=lambda: admission.waiting,
            bucket_scale=config.bucket_scale,
        )
        cache = ResponseCache(config.cache_size, config.cache_ttl) if config.cache_size else None
        proxy = self._proxy = Proxy(
            upstream=config.upstream,
            admission=admission,
            metrics=metrics,
            max_body_bytes=config.max_body_bytes,
            max_held_body_bytes=config.held_body_limit,
            cache=cache,
        )
        proxy.ready = not config.health_path
        loop = asyncio.get_running_loop()
        if config.host == "::":
            self._server = await loop.create_server(
                lambda: ClientConnection(proxy), sock=_every_address(config.port), backlog=1024
            )
        else:
            self._server = await loop.create_server(
                lambda: ClientConnection(proxy),
                config.host,
                config.port,
                backlog=1024,
                reuse_address=True,
            )
        if config.health_path:
            self._tasks.append(loop.create_task(_poll_health(proxy, config)))
        self._tasks.append(loop.create_task(_sweep(proxy)))
        self._tasks.append(loop.create_task(_watch_silence(proxy, config.response_timeout)))

    async def drain(self, seconds: float) -> bool:
        """Refuse new work, wait for the requests being received (refused once read),
        running and queued, and then for their answers to leave the gate; False on
        timeout."""
        proxy = self.proxy
        proxy.admission.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        read = await _requests_read(proxy, seconds)
        if not read or not await proxy.admission.wait_idle(deadline - loop.time()):
            if proxy.admission.refuse_waiting():
                await asyncio.sleep(0)  # their 503s are written before the connections close
            return False
        return await _answers_sent_on(proxy, deadline - loop.time())

    async def close(self) -> None:
        """Stop listening and close every connection; requests still running are cut."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # a background task that died must not stop the shutdown
                log.exception("background task %s had failed", task.get_name())
        self._tasks.clear()
        if self._server is not None:
            self._server.close()
        if self._proxy is not None:
            for connection in list(self._proxy.connections):
                # An answer still in the gate is cut, not flushed: from Python 3.12 on,
                # the server's wait_closed waits for a closing transport to flush, and a
                # client that reads nothing would hold the exit until the kubelet kills.
                if connection.active is None and not connection.pending and not connection.unsent:
                    connection.close_if_idle()
                else:
                    connection.abort()
            self._proxy.pool.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        await asyncio.sleep(0)  # let the closed transports report connection_lost


#: What binding "::" fails with where the kernel has IPv6 off or half there.
_NO_IPV6 = frozenset({errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT})


def _every_address(port: int) -> socket.socket:
    """A socket on every address of the pod, IPv6 and IPv4 both where the kernel can.

    "::" as Go and most servers read it: an IPv6-only cluster reaches the gate on
    the pod's IPv6 address, an IPv4 one on its IPv4 address (as ::ffff:a.b.c.d).
    asyncio would make "::" IPv6 only, and a pod whose kernel has no IPv6 could not
    bind it at all: there the gate listens on 0.0.0.0. A port in use is no such case.
    """
    if socket.has_dualstack_ipv6():
        try:
            return socket.create_server(
                ("::", port), family=socket.AF_INET6, backlog=1024, dualstack_ipv6=True
            )
        except OSError as exc:
            if exc.errno not in _NO_IPV6:
                raise  # the port taken, a privileged port: the same on IPv4
            log.warning("no IPv6 on this host (%s): listening on IPv4 only", exc)
    return socket.create_server(("0.0.0.0", port), backlog=1024)


async def serve(config: GateConfig, stop: asyncio.Event | None = None) -> int:
    """Run the gate until SIGTERM/SIGINT (or ``stop``), drain, and return 0."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gate = GateServer(config)
    await gate.start()
    print(
        f"vlm-operator gate: listening on {gate.url} → {config.upstream} "
        f"(max in flight {config.max_in_flight}, queue {config.queue_size})",
        flush=True,
    )
    try:
        await stop.wait()
        admission = gate.proxy.admission
        log.info(
            "draining: %d running, %d queued, up to %gs",
            admission.running,
            admission.waiting,
            config.drain_timeout,
        )
        if not await gate.drain(config.drain_timeout):
            log.warning(
                "drain timeout: %d running and %d queued requests, and %d answers not yet "
                "sent in full, cut",
                admission.running,
                admission.waiting,
                sum(1 for c in gate.proxy.connections if c.unsent),
            )
    finally:
        await gate.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    print("vlm-operator gate: drained, exiting", file=sys.stderr, flush=True)
    return 0
