"""Passing requests through to the model, and answering for it when it cannot.

Every request the client side has read whole becomes an :class:`Exchange`.
:meth:`Proxy.start` decides its fate in order: the gate's own endpoints, a
refusal that needs no slot (too large, draining, model not ready), a cache
hit, then admission control. A request that finds a free slot is forwarded at
once, within the same callback, over a kept-alive connection: the common path
creates no task, future or timer. Only a request that must wait its turn (or
needs a new connection to the model) gets a task.

A slot is held until the model's answer has been relayed to the client in
full, so "in flight" means what the model and the client both see. A client
that hangs up frees its slot at once (the connection to the model is dropped,
which cancels the request there) or leaves the queue at once.

A request's body is the one copy the client side joined; it goes to the model
after the request's head, in a write of its own, and the exchange lets it go
as soon as it has been handed to the model's connection (or the request ends
otherwise): nothing sends it twice, and the cache keeps only its hash. It
counts in the gate's :class:`~vlm_operator.gate._admission.BodyBudget` until
the model's connection has sent it on.
"""

from __future__ import annotations

import asyncio
import logging
import math
from functools import partial
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST

from vlm_operator.contract import LAST_CHANCE_RETRIES, MALFORMED, RETRY_COUNT_HEADER
from vlm_operator.gate._admission import DRAINING_MESSAGE, Admission, BodyBudget, Rejected
from vlm_operator.gate._cache import CachedResponse, ResponseCache
from vlm_operator.gate._http import (
    ERROR_STATUS,
    Header,
    error_response,
    http_date,
    json_response,
    response,
)
from vlm_operator.gate._metrics import CLIENT_CLOSED, GateMetrics
from vlm_operator.gate._upstream import UpstreamPool

if TYPE_CHECKING:
    from vlm_operator.gate._client import ClientConnection
    from vlm_operator.gate._upstream import UpstreamConnection

log = logging.getLogger("vlm_operator.gate")

_OWN_PATHS = frozenset({b"/metrics", b"/healthz", b"/readyz", b"/modelz"})
_READ_METHODS = frozenset({b"GET", b"HEAD"})
#: Methods whose empty body is still announced with "Content-Length: 0".
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})
_METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()
_RETRY_COUNT_HEADER = RETRY_COUNT_HEADER.encode()
_NOT_READY_MESSAGE = "the model is not ready yet"


def _on_last_chance(headers: list[Header]) -> bool:
    """Whether the client says it has retried this request LAST_CHANCE_RETRIES times.

    Read only for a request that must queue. A count that is not a small
    whole number is ignored (the request queues like any other).
    """
    for name, value in headers:
        if len(name) == len(_RETRY_COUNT_HEADER) and name.lower() == _RETRY_COUNT_HEADER:
            text = value.strip()
            return text.isdigit() and len(text) < 6 and int(text) >= LAST_CHANCE_RETRIES
    return False


class Exchange:
    """One request, from its arrival to the last byte of its answer."""

    __slots__ = (
        "aborted",
        "admitted",
        "body",
        "cache_key",
        "conn",
        "finished",
        "has_host",
        "head_sent",
        "headers",
        "held",
        "http11",
        "keep_alive",
        "method",
        "refusal",
        "rejected",
        "start",
        "target",
        "task",
        "too_large",
        "upstream",
    )

    def __init__(
        self,
        conn: ClientConnection,
        method: bytes,
        target: bytes,
        headers: list[Header],
        has_host: bool,
        body: bytes | bytearray,
        http11: bool,
        keep_alive: bool,
        start: float,
    ) -> None:
        self.conn = conn
        self.method = method
        self.target = target
        self.headers = headers
        self.has_host = has_host
        self.body = body
        #: Bytes of the gate's body budget this request holds (given back with its body).
        self.held = 0
        self.http11 = http11
        self.keep_alive = keep_alive
        self.start = start
        #: Size of a body refused as too large (0: not refused).
        self.too_large = 0
        #: (reason, message) of a request that could not be parsed.
        self.refusal: tuple[str, str] | None = None
        #: Refused before its body was sent (the client waited for "100 Continue").
        self.rejected: Rejected | None = None
        self.admitted: float | None = None
        self.cache_key: str | None = None
        self.upstream: UpstreamConnection | None = None
        self.task: asyncio.Task[None] | None = None
        self.head_sent = False
        self.aborted = False  # the client hung up
        self.finished = False  # counted, slot released

    def drop_body(self) -> None:
        """Let the body go (sent, or no longer wanted) and give its bytes back."""
        self.body = b""
        held = self.held
        if held:
            self.held = 0
            self.conn.proxy.body_budget.give_back(held)


class Proxy:
    """The gate's request path and the state it needs."""

    def __init__(
        self,
        *,
        upstream: str,
        admission: Admission,
        metrics: GateMetrics,
        max_body_bytes: int,
        max_held_body_bytes: int,
        cache: ResponseCache | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.clock = loop.time
        self.admission = admission
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.body_budget = BodyBudget(max_held_body_bytes)
        self.cache = cache
        self.pool = UpstreamPool(self, upstream)
        self.ready = False
        self.last_answer = -math.inf  # loop time of the model's last answer below 500
        self.connections: set[ClientConnection] = set()

    @property
    def draining(self) -> bool:
        return self.admission.draining

    def start(self, exchange: Exchange) -> None:
        """Answer, refuse, queue or forward a request that has been read whole."""
        if exchange.refusal is not None:
            reason, message = exchange.refusal
            exchange.keep_alive = False
            self._answer(exchange, reason, message)
            return
        rejected = exchange.rejected
        if rejected is not None:
            exchange.keep_alive = False  # its body was never read
            self._reject(exchange, rejected.reason, rejected.message, rejected.retry_after)
            return
        if exchange.too_large:
            self._reject(
                exchange,
                "too_large",
                f"request body of {exchange.too_large}+ bytes exceeds the limit of "
                f"{self.max_body_bytes} bytes",
            )
            return
        if exchange.method in _READ_METHODS:
            path = exchange.target.partition(b"?")[0]
            if path in _OWN_PATHS:
                self._own_endpoint(exchange, path)
                return
        unavailable = self._unavailable()
        if unavailable is not None:
            self._reject(exchange, unavailable.reason, unavailable.message, unavailable.retry_after)
            return
        cache = self.cache
        if cache is not None:
            key = exchange.cache_key = cache.key_for(
                exchange.method.decode("latin-1"),
                exchange.target.decode("latin-1"),
                exchange.body,
                exchange.headers,
            )
            if key is not None:
                hit = cache.get(key)
                if hit is not None:
                    self._answer_from_cache(exchange, hit)
                    return
        if self.admission.try_acquire():
            exchange.admitted = self.clock()
            self.metrics.queue.observe(0.0)
            self._forward(exchange)
        else:
            task = exchange.task = self._loop.create_task(self._queue_then_forward(exchange))
            task.add_done_callback(partial(self._left_before_its_turn, exchange))

    def refusal_before_body(
        self, method: bytes, target: bytes, headers: list[Header]
    ) -> Rejected | None:
        """How a request whose client waits for "100 Continue" is refused before it sends
        the body, or None: the refusals :meth:`start` would give whatever the body.

        With a response cache nothing is refused for a full queue: only the body
        tells whether the answer is cached, and a cached answer needs no slot.
        """
        if method in _READ_METHODS and target.partition(b"?")[0] in _OWN_PATHS:
            return None
        unavailable = self._unavailable()
        if unavailable is not None:
            return unavailable
        if self.cache is not None:
            return None  # only the body tells a cache hit, which needs no slot
        return self.admission.refusal_ahead(last_chance=_on_last_chance(headers))

    def refusal_for_body(self, size: int, *, more: bool) -> Rejected:
        """How a request whose body the gate cannot hold now is refused: as when the queue is
        full (unless the gate is draining or the model not ready, which refuse it anyway).

        ``more``: ``size`` is what a chunked body has brought so far, not its whole size.
        """
        unavailable = self._unavailable()
        if unavailable is not None:
            return unavailable
        budget = self.body_budget
        return self.admission.refused_for_memory(
            f"the gate holds {budget.held} bytes of request bodies; this one's "
            f"{size}{'+' if more else ''} would pass its limit of {budget.limit} bytes"
        )

    def _unavailable(self) -> Rejected | None:
        """The refusal of any request now: the gate draining, or the model not ready."""
        if self.admission.draining:
            return Rejected("draining", DRAINING_MESSAGE, retry_after=1)
        if not self.ready:
            return Rejected("not_ready", _NOT_READY_MESSAGE, retry_after=5)
        return None

    def _left_before_its_turn(self, exchange: Exchange, task: asyncio.Task[None]) -> None:
        """A queued request whose client hung up before its task first ran: cancelled
        then, the task never enters its coroutine, whose clean-up would not run."""
        if task.cancelled() and exchange.aborted and not exchange.finished:
            exchange.task = None
            self._left_the_queue(exchange, exchange.start)

    def _left_the_queue(self, exchange: Exchange, queued: float) -> None:
        """The client of a queued request hung up: a 499, timed with its wait."""
        exchange.finished = True
        exchange.drop_body()
        now = self.clock()
        self.metrics.queue.observe(now - queued)
        self.metrics.duration.observe(now - exchange.start)
        self.metrics.finished(CLIENT_CLOSED)

    async def _queue_then_forward(self, exchange: Exchange) -> None:
        queued = self.clock()
        metrics = self.metrics
        try:
            await self.admission.acquire(last_chance=_on_last_chance(exchange.headers))
        except Rejected as rejected:
            exchange.task = None
            if rejected.reason == "deadline":
                now = self.clock()
                metrics.queue.observe(now - queued)
                metrics.duration.observe(now - exchange.start)
            self._reject(exchange, rejected.reason, rejected.message, rejected.retry_after)
            return
        except asyncio.CancelledError:
            exchange.task = None
            if not exchange.aborted:
                raise
            self._left_the_queue(exchange, queued)
            return
        exchange.task = None
        exchange.admitted = self.clock()
        metrics.queue.observe(exchange.admitted - queued)
        self._forward(exchange)

    def _forward(self, exchange: Exchange) -> None:
        connection = self.pool.take()
        if connection is None:
            exchange.task = self._loop.create_task(self._connect_then_send(exchange))
        else:
            self._send(exchange, connection)

    async def _connect_then_send(self, exchange: Exchange) -> None:
        try:
            connection = await self.pool.connect()
        except (OSError, TimeoutError) as exc:
            exchange.task = None
            if not exchange.aborted:
                self.upstream_failed(exchange, f"model unreachable: {exc!r}")
            return
        exchange.task = None
        if exchange.aborted:
            self.pool.put(connection)  # the client left meanwhile; the connection is fine
            return
        self._send(exchange, connection)

    def _send(self, exchange: Exchange, connection: UpstreamConnection) -> None:
        """Hand the request to the model's connection, with its body and what that holds of
        the body budget: the exchange needs neither after."""
        body, held = exchange.body, exchange.held
        exchange.body, exchange.held = b"", 0
        connection.send(exchange, self._request_head(exchange, len(body)), body, held)

    def _request_head(self, exchange: Exchange, body_size: int) -> bytes:
        pool = self.pool
        method = exchange.method
        target = exchange.target
        prefix = pool.prefix if target != b"*" else b""  # "*" is the server, not a path
        parts = [method, b" ", prefix, target, b" HTTP/1.1\r\n"]
        for name, value in exchange.headers:
            parts += (name, b": ", value, b"\r\n")
        if not exchange.has_host:
            parts += (b"Host: ", pool.authority, b"\r\n")
        if body_size or method in _BODY_METHODS:
            parts.append(b"Content-Length: %d\r\n" % body_size)
        parts.append(b"\r\n")
        return b"".join(parts)  # without the body: joined, it would be copied once more

    # How exchanges end

    def response_done(self, exchange: Exchange, connection: UpstreamConnection) -> None:
        """The model's answer has been relayed in full."""
        exchange.upstream = None
        captured = connection.captured
        relayed = connection.headers
        if captured is not None and self.cache is not None and exchange.cache_key is not None:
            headers = tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in relayed)
            self.cache.put(
                exchange.cache_key, CachedResponse(connection.status, headers, b"".join(captured))
            )
        if connection.reusable and not connection.closed:
            self.pool.put(connection)
        else:
            connection.close()
        self._complete(exchange, connection.status)

    def upstream_failed(
        self, exchange: Exchange, message: str, reason: str = "upstream_error"
    ) -> None:
        """The model failed: a 502 (504 if it fell silent) if nothing was sent yet, else a
        cut connection."""
        if exchange.finished:
            return
        exchange.upstream = None
        if exchange.head_sent:
            # Headers are gone already: the only honest signal left is a cut connection.
            log.warning("model failed mid-answer on %s: %s", exchange.target.decode("latin-1"),
                        message)  # fmt: skip
            exchange.keep_alive = False  # no pipelined request after it goes to the model
            exchange.conn.abort()
        else:
            exchange.conn.write(
                error_response(
                    reason,
                    message,
                    keep_alive=self._keep_alive(exchange),
                    http11=exchange.http11,
                    head_only=exchange.method == b"HEAD",
                )
            )
        self._complete(exchange, ERROR_STATUS[reason])

    def client_gone(self, exchange: Exchange) -> None:
        """The client hung up: free its slot, or take it out of the queue."""
        if exchange.finished:
            return
        exchange.aborted = True
        if exchange.admitted is None:
            if exchange.task is not None:
                exchange.task.cancel()  # queued: the task leaves the queue and counts it
            return
        connection = exchange.upstream
        if connection is not None:
            exchange.upstream = None
            connection.abort()
        self._complete(exchange, CLIENT_CLOSED)

    def _complete(self, exchange: Exchange, code: int, *, observe: bool = True) -> None:
        if exchange.finished:
            return
        exchange.finished = True
        exchange.drop_body()
        if exchange.admitted is not None or observe:
            now = self.clock()
            if exchange.admitted is not None:
                self.admission.release(now - exchange.admitted)
            if observe:
                self.metrics.duration.observe(now - exchange.start)
        self.metrics.finished(code)
        exchange.conn.exchange_done(exchange)

    # Answers from the gate itself

    def _keep_alive(self, exchange: Exchange) -> bool:
        # While draining every answer says "Connection: close": clients reconnect
        # through the Service, to a replica that is not going away.
        keep_alive = exchange.keep_alive = exchange.keep_alive and not self.admission.draining
        return keep_alive

    def _reject(
        self, exchange: Exchange, reason: str, message: str, retry_after: int | None = None
    ) -> None:
        self.metrics.rejected.labels(reason).inc()
        exchange.conn.write(
            error_response(
                reason,
                message,
                keep_alive=self._keep_alive(exchange),
                http11=exchange.http11,
                retry_after=retry_after,
                head_only=exchange.method == b"HEAD",
            )
        )
        self._complete(exchange, ERROR_STATUS[reason], observe=False)

    def _answer(self, exchange: Exchange, reason: str, message: str) -> None:
        """A request the gate could not read: an error, and the connection ends.

        Counted as a malformed rejection, not under its status in the requests
        total: it was never a request the model could serve, and a WebSocket
        attempt or TLS sent to the plain port is no server error, nor traffic.
        """
        self.metrics.rejected.labels(MALFORMED).inc()
        exchange.conn.write(
            error_response(
                reason,
                message,
                keep_alive=False,
                http11=exchange.http11,
                head_only=exchange.method == b"HEAD",
            )
        )
        exchange.finished = True
        exchange.conn.exchange_done(exchange)

    def _answer_from_cache(self, exchange: Exchange, hit: CachedResponse) -> None:
        self.metrics.cache_hits.inc()
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in hit.headers]
        headers.append((b"x-vlm-cache", b"hit"))
        exchange.conn.write(
            response(
                hit.status,
                headers,
                hit.body,
                keep_alive=self._keep_alive(exchange),
                http11=exchange.http11,
            )
        )
        self._complete(exchange, hit.status)

    def _own_endpoint(self, exchange: Exchange, path: bytes) -> None:
        """/metrics, /healthz, /readyz, /modelz: neither queued nor counted."""
        keep_alive = self._keep_alive(exchange)
        head_only = exchange.method == b"HEAD"
        if path == b"/metrics":
            data = response(
                200,
                [(b"Content-Type", _METRICS_CONTENT_TYPE), (b"Date", http_date())],
                self.metrics.render(),
                keep_alive=keep_alive,
                http11=exchange.http11,
                head_only=head_only,
            )
        else:
            status, state = 200, "ok"
            if path == b"/readyz":
                if self.admission.draining:
                    status, state = 503, "draining"
                elif not self.ready:
                    status, state = 503, "model not ready"
                else:
                    state = "ready"
            elif path == b"/modelz":
                # The model's own liveness, for the model container's probe: draining
                # or not, only whether the model's health check passes.
                status, state = (200, "ready") if self.ready else (503, "model not ready")
            data = json_response(
                status,
                {"status": state},
                keep_alive=keep_alive,
                http11=exchange.http11,
                head_only=head_only,
            )
        exchange.conn.write(data)
        exchange.finished = True
        exchange.drop_body()
        exchange.conn.exchange_done(exchange)
