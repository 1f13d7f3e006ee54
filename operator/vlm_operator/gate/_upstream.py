"""The model side of the gate: kept-alive connections to the model server.

Each connection carries one request at a time (admission control bounds how
many are busy). The model's answer is parsed with llhttp only for what the
gate must know — status, framing, where the message ends — and relayed to the
client as it arrives, one write per read from the model: a server-sent event
reaches the client when the model sends it, and a small answer goes out in
one write together with its head. Framing is redone for the client:
hop-by-hop headers are dropped, and a body of unknown length is sent chunked.

The model gets one request at a time, so it owes exactly one answer: bytes
past that answer's end (a second answer, or garbage) are not relayed, and the
connection they came on is not reused. An answer that switches protocols
(101) is a bad answer: the gate relays HTTP only. An idle connection the
model closes, or speaks on unasked, leaves the pool at once, not when the
transport reports it lost a loop turn later: a request in between would be
sent on it and fail.

An answer without a length ends when the model closes its connection, but
only a clean close (FIN) is its end: a reset means the model died mid-answer,
and the client's connection is cut as for any answer broken after its head.
Passing it on as complete would hand the client, and the cache, a truncated
body as if it were whole.

A model that falls silent on a request (sends nothing for the response
timeout: no answer's head, or no next piece of a streamed answer) is given
up on: its connection is dropped, which cancels the request there, and the
client gets a 504 ``model_timeout`` or, mid-answer, a cut connection. A hung
model would otherwise hold its slots for as long as clients wait, and a
client with no timeout of its own waits for ever. Silence the gate caused
itself (reading paused while a slow client catches up) does not count.

A request body handed to the connection still counts in the gate's budget of
body bytes until the transport has sent it on (its write buffer back under
the low-water mark): a model slow to read its requests leaves them in the
gate's memory.

Idle connections are dropped after a few seconds, before the model server's
own keep-alive timeout (uvicorn: 5 s) can close one under a new request: a
POST on a connection closed that way cannot be retried safely.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import urllib.parse
from typing import TYPE_CHECKING, cast

import httptools

from vlm_operator.gate._cache import MAX_ENTRY_BYTES
from vlm_operator.gate._http import HOP_BY_HOP, Header, connection_options, reason_phrase

if TYPE_CHECKING:
    from vlm_operator.gate._proxy import Exchange, Proxy

#: Seconds an idle connection to the model is kept for reuse.
IDLE_SECONDS = 4.0
#: Seconds to open a connection to the model.
CONNECT_SECONDS = 5.0
#: Bodies up to this size go out in one write with their head: one system call, and a
#: copy that costs less than it; a larger one is written as it is, never copied.
_JOINED_BODY_BYTES = 64 * 1024


class _PastTheAnswer(Exception):
    """The model sent more after the answer to the one request it was given."""


class _NotAnAnswer(Exception):
    """The model's answer cannot be relayed (``_failure`` says why)."""


class UpstreamConnection(asyncio.Protocol):
    """One connection to the model, relaying its answers to the exchange it serves."""

    transport: asyncio.Transport

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.closed = False
        self.exchange: Exchange | None = None
        self.idle_since = 0.0
        #: Loop time the model last had to answer or last sent something, while busy.
        self.heard_at = 0.0
        self.status = 0
        #: The answer's headers as relayed and its body (only when the cache wants it).
        self.headers: list[Header] = []
        self.captured: list[bytes] | None = None
        self.reusable = False
        self._paused = False  # reading paused while the client catches up
        #: The model reads slower than the request is written: its body is still here.
        self._writing_paused = False
        #: Body-budget bytes of requests written but not yet sent on.
        self._unsent = 0
        self._parser = httptools.HttpResponseParser(self)
        self._out: list[bytes] = []
        self._reset()

    def _reset(self) -> None:
        self.headers = []
        self.captured = None
        self.reusable = False
        self._reason = b""
        self._length: bytes | None = None
        self._upstream_chunked = False
        #: Transfer codings of the answer, in order, from every Transfer-Encoding header.
        self._codings: list[bytes] = []
        self._options: set[bytes] | None = None
        self._interim = False
        self._head_done = False  # header callbacks after this are trailers
        self._chunked = False  # re-chunked for the client
        self._until_close = False  # the model's answer ends when its connection does
        self._complete = False
        self._captured_bytes = 0
        self._failure: str | None = None

    def send(self, exchange: Exchange, head: bytes, body: bytes | bytearray, held: int) -> None:
        """Send a request: a small one in one write, a large body in a write of its own.

        ``held``: the body-budget bytes of its body, given back once it is sent on.
        """
        self.exchange = exchange
        exchange.upstream = self
        self._reset()
        self.heard_at = self.pool.proxy.clock()
        if len(body) <= _JOINED_BODY_BYTES:
            self.transport.write(head + body if body else head)
        else:
            self.transport.write(head)
            self.transport.write(body)
        if self._writing_paused and not self.closed:
            self._unsent += held  # pause_writing came within the write: not sent on yet
        elif held:
            self.pool.proxy.body_budget.give_back(held)
        if exchange.conn.writing_paused:
            self.pause_reading()

    def pause_reading(self) -> None:
        if not self.closed and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self.closed and self._paused:
            self._paused = False
            self.heard_at = self.pool.proxy.clock()  # the pause was the client's silence
            self.transport.resume_reading()

    def awaited_since(self) -> float:
        """Since when the gate has been waiting on the model here (inf: it is not)."""
        if self.exchange is None or self._paused or self.closed:
            return math.inf
        return self.heard_at

    def abort(self) -> None:
        """Drop the connection now (its client is gone: the model request is cancelled)."""
        self.exchange = None
        if not self.closed:
            self.transport.abort()

    def close(self) -> None:
        if not self.closed:
            self.transport.close()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.pool.opened(self)

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            self._leave_pool()  # a model that speaks unasked is not to be trusted
            self.transport.close()
            return
        self.heard_at = self.pool.proxy.clock()
        out = self._out = []
        failure: str | None = None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            failure = "the model switched protocols (101); the gate relays HTTP only"
        except httptools.HttpParserError as exc:
            failure = self._failure or f"malformed answer from the model: {exc}"
        if out:
            exchange.conn.write(out[0] if len(out) == 1 else b"".join(out))
        if self._complete:
            if failure is not None:
                self.reusable = False  # more came after the answer: not to be trusted again
            self.exchange = None
            self.pool.proxy.response_done(exchange, self)
        elif failure is not None:
            self.abort()
            self.pool.proxy.upstream_failed(exchange, failure)

    def eof_received(self) -> bool | None:
        if self.exchange is None:
            self._leave_pool()  # e.g. the model's keep-alive timeout: never to be reused
        return None  # the transport closes; a busy connection ends in connection_lost

    def _leave_pool(self) -> None:
        """Out of the pool now: the transport closes, but reports it only later."""
        self.closed = True
        self.pool.forget(self)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._give_back_unsent()

    def _give_back_unsent(self) -> None:
        if self._unsent:
            self.pool.proxy.body_budget.give_back(self._unsent)
            self._unsent = 0

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._give_back_unsent()
        self.pool.forget(self)
        exchange, self.exchange = self.exchange, None
        if exchange is None or exchange.finished:
            return
        if self._until_close and exchange.head_sent and exc is None:
            if self._chunked:
                exchange.conn.write(b"0\r\n\r\n")
            self.pool.proxy.response_done(exchange, self)  # that was the answer's end
        else:
            detail = f": {exc!r}" if exc is not None else ""
            self.pool.proxy.upstream_failed(exchange, f"model closed the connection{detail}")

    # llhttp callbacks

    def on_message_begin(self) -> None:
        if self._complete:
            raise _PastTheAnswer  # stops llhttp: the rest of this read is not relayed
        self._reset()

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done:
            return  # a trailer: dropped (the client gets the body re-framed)
        lower = name.lower()
        if lower in HOP_BY_HOP:
            if lower == b"content-length":
                self._length = value
            elif lower == b"transfer-encoding":
                self._codings += (c.strip().lower() for c in value.split(b",") if c.strip())
            elif lower == b"connection":
                self._options = connection_options(value) | (self._options or set())
            return
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._head_done = True
        status = self._parser.get_status_code()
        if status < 100:
            self._failure = f"the model answered with status {status:03d}, which HTTP has not"
            raise _NotAnAnswer
        codings = self._codings
        if codings and codings != [b"chunked"]:
            # llhttp takes the body off its chunks (or reads it to the close), and the
            # client would get it still gzipped, say, with nothing to tell it so: the
            # request side refuses the same codings (501).
            named = b", ".join(codings).decode("latin-1")
            self._failure = f"the model's transfer coding {named!r} is not supported (chunked is)"
            raise _NotAnAnswer
        self._upstream_chunked = bool(codings)
        if status < 200:
            self._interim = True  # 1xx: the real answer follows
            return
        exchange = self.exchange
        assert exchange is not None
        proxy = self.pool.proxy
        self.status = status
        if status < 500:
            proxy.last_answer = proxy.clock()
        headers = self.headers
        if self._options:
            options = self._options
            headers = self.headers = [(n, v) for n, v in headers if n.lower() not in options]
        parts = [b"HTTP/1.1 %d " % status, self._reason or reason_phrase(status), b"\r\n"]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        keep_alive = exchange.keep_alive and not proxy.draining
        head_request = exchange.method == b"HEAD"
        if head_request or status == 204 or status == 304:
            if head_request:
                if self._length is not None:
                    parts += (b"Content-Length: ", self._length, b"\r\n")
                # llhttp would wait for the body a HEAD answer announces: done here.
                self._complete = True
        elif self._length is not None:
            parts += (b"Content-Length: ", self._length, b"\r\n")
        else:
            self._until_close = not self._upstream_chunked
            if exchange.http11:
                parts.append(b"Transfer-Encoding: chunked\r\n")
                self._chunked = True
            else:
                keep_alive = False  # an HTTP/1.0 client learns the end from the close
        if not keep_alive:
            exchange.keep_alive = False
            parts.append(b"Connection: close\r\n")
        elif not exchange.http11:
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        self._out.append(b"".join(parts))
        exchange.head_sent = True
        if exchange.cache_key is not None and status == 200 and not head_request:
            self.captured = []

    def on_body(self, body: bytes) -> None:
        if self._interim or self._complete:
            return
        out = self._out
        if self._chunked:
            out += (b"%x\r\n" % len(body), body, b"\r\n")
        else:
            out.append(body)
        captured = self.captured
        if captured is not None:
            self._captured_bytes += len(body)
            if self._captured_bytes > MAX_ENTRY_BYTES:
                self.captured = None  # too large to keep: relayed, not cached
            else:
                captured.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._complete:
            return  # a HEAD answer, finished at its headers
        if self._chunked:
            self._out.append(b"0\r\n\r\n")
        self._complete = True
        self.reusable = self._parser.should_keep_alive()


class UpstreamPool:
    """Connections to one model server: reused most-recent first, dropped when stale."""

    def __init__(self, proxy: Proxy, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream must be an http(s) URL with a host, got {url!r}")
        self.proxy = proxy
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if parts.scheme == "https" else None
        )
        #: For requests that came without a Host header (HTTP/1.0 clients).
        self.authority = parts.netloc.encode()
        #: A base path of the upstream URL, put before every request target.
        self.prefix = parts.path.rstrip("/").encode()
        self._idle: list[UpstreamConnection] = []
        self._open: set[UpstreamConnection] = set()

    def take(self) -> UpstreamConnection | None:
        """The most recently used idle connection that is still fresh, if any."""
        idle = self._idle
        while idle:
            connection = idle.pop()
            if connection.closed or connection.transport.is_closing():
                continue
            if self.proxy.clock() - connection.idle_since > IDLE_SECONDS:
                connection.close()
                continue
            return connection
        return None

    async def connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(CONNECT_SECONDS):
            _, protocol = await loop.create_connection(
                lambda: UpstreamConnection(self), self.host, self.port, ssl=self.ssl
            )
        return protocol

    def put(self, connection: UpstreamConnection) -> None:
        connection.resume_reading()  # its last client may have been slow: read the next answer
        connection.idle_since = self.proxy.clock()
        self._idle.append(connection)

    def opened(self, connection: UpstreamConnection) -> None:
        self._open.add(connection)

    def forget(self, connection: UpstreamConnection) -> None:
        self._open.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)

    def give_up_on_silent(self, timeout: float) -> int:
        """Drop every busy connection the model has sent nothing on for ``timeout`` seconds.

        Its request is answered 504 ``model_timeout`` (or, mid-answer, its client's
        connection is cut) and its slot freed. Returns how many were dropped.
        """
        now = self.proxy.clock()
        silent = [c for c in self._open if now - c.awaited_since() >= timeout]
        for connection in silent:
            exchange = connection.exchange
            assert exchange is not None
            connection.abort()
            self.proxy.upstream_failed(
                exchange, f"the model sent nothing for {timeout:g} s", "model_timeout"
            )
        return len(silent)

    def sweep(self) -> None:
        """Close idle connections that are too old to be reused."""
        now = self.proxy.clock()
        for connection in [c for c in self._idle if now - c.idle_since > IDLE_SECONDS]:
            self._idle.remove(connection)
            connection.close()

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
