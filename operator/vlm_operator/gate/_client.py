"""The client side of the gate: one protocol object per client connection.

It parses requests with llhttp (httptools), buffers each body up to the
limit, and hands whole requests to the proxy one at a time, in order, so a
client that pipelines gets its answers in the order it asked. It keeps
reading while a request is being served: that is how a client that hangs up
is noticed at once (its slot freed, or its place in the queue given up).

So it reads on even when a client has sent many requests ahead: past
MAX_PIPELINED parsed requests, what arrives is held unparsed (paused reading
would hide a hang-up until every answer before it was out), and parsed as
those requests are answered. Past MAX_AHEAD_BYTES held, reading pauses until
they are parsed: TCP pushes back on the client, which loses nothing (a body
up to the limit is a request like any other), and only a client that far
ahead is noticed hanging up late.

``Expect: 100-continue`` is answered when the request's turn comes: at once
on a connection with nothing else to answer, otherwise once the answers to
the requests before it are out. Written earlier, the interim answer would
land inside one of theirs. At its turn, a request the gate would refuse
whatever its body (draining, model not ready, queue full) is refused instead,
so the client never sends a body that would be thrown away.

Bodies over the limit are refused as soon as that is known (from
Content-Length, or while a chunked body arrives); the rest of such a body is
read and thrown away before the connection is closed, so the client sees the
413 rather than a reset. A request the gate cannot parse further is answered
the same way: after the error, whatever the client still sends is dropped
unparsed for a few seconds.

A request must keep arriving: from its first byte it has READ_GRACE_SECONDS
plus a second per READ_MIN_RATE bytes received (its head at most
HEAD_MAX_SECONDS), as Apache's mod_reqtimeout allows, else it is answered 408
and the connection closed. A body counts in the gate's budget from its head
on, so a client that announces a large body and trickles it would hold that
budget for as long as it liked. Time the gate makes the client wait does not
count: a body held back until "100 Continue", bytes held unparsed behind
requests sent ahead, or reading paused.

A head (or a chunked body's trailer section) is limited by the bytes that
arrive while it is being read, not by the header lines llhttp hands over:
llhttp (through httptools) gathers a header line until its end, re-copying it
at every read, so one endless line would cost time quadratic in its length.

Trailers are read and dropped: they arrive after the request was judged on
its head, and the model is sent a body with Content-Length (RFC 9110 §6.5.1).

A body counts in the gate's budget of body bytes from when its size is known:
its Content-Length, in full, as soon as the head is read (a request that would
take the gate past the budget is refused then, before its body is read), or a
chunked body piece by piece. A small body is kept in the pieces it came in and
joined once whole; a large one is read into one buffer (of its announced size,
or growing with a chunked body). Either way the gate keeps one copy of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from vlm_operator.gate._http import (
    CONTINUE,
    HOP_BY_HOP,
    Header,
    connection_options,
    origin_form,
    target_problem,
)
from vlm_operator.gate._proxy import Exchange

if TYPE_CHECKING:
    from vlm_operator.gate._proxy import Proxy

log = logging.getLogger("vlm_operator.gate")

#: Request line plus headers; beyond: 431.
MAX_HEAD_BYTES = 64 * 1024
#: Requests a client may send ahead of its answers before the gate stops parsing.
MAX_PIPELINED = 8
#: Bytes held unparsed past those requests; beyond, reading pauses until they are parsed.
MAX_AHEAD_BYTES = 1024 * 1024
#: Seconds the gate reads (and drops) the rest of a refused body before closing.
LINGER_SECONDS = 5.0
#: A request being read has this long, and a second more per READ_MIN_RATE bytes
#: received; its head this long at most (mod_reqtimeout's defaults: 20-40 s, 500 B/s).
READ_GRACE_SECONDS = 20.0
READ_MIN_RATE = 500.0
HEAD_MAX_SECONDS = 40.0
#: A body larger than this is read into one buffer (of its announced size, or growing
#: with a chunked body), not kept in pieces: many pieces, freed at once when joined,
#: leave the heap fragmented, and joining holds the body twice for a moment.
_PIECES_BYTES = 256 * 1024


class _HeadTooLarge(Exception):
    pass


class _BadHead(Exception):
    """A header llhttp accepts but the gate cannot use; the message says which."""


class _UnsupportedCoding(Exception):
    """A transfer coding besides chunked: the gate could only pass the body on decoded."""


class ClientConnection(asyncio.Protocol):
    """One client's connection: requests in, answers out, strictly in order."""

    transport: asyncio.Transport

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.closed = False
        self.active: Exchange | None = None
        self.pending: deque[Exchange] = deque()
        #: Sweeps seen without any traffic (idle keep-alive connections are closed).
        self.idle_ticks = 0
        self._parser = httptools.HttpRequestParser(self)
        self._closing = False
        self._dispatching = False
        #: What arrived while MAX_PIPELINED requests waited, not parsed yet.
        self._ahead: deque[bytes] = deque()
        self._ahead_bytes = 0
        self._reading_paused = False
        #: The client reads slower than answers arrive: the model's side waits.
        self.writing_paused = False
        #: Done once everything written has left the gate (see :meth:`sent_on`).
        self._sent_on: asyncio.Future[None] | None = None
        self._linger: asyncio.TimerHandle | None = None
        #: Whether llhttp is reading a head or a trailer section, and its bytes so far.
        self._in_head = True
        self._head_bytes = 0
        #: Read everything after the answer and drop it until the client is done.
        self._drop_rest = False
        #: Sweeps seen while the client did not read its answer (cut past the idle limit).
        self.stalled_ticks = 0
        #: Bytes waiting to go to the client at the last sweep.
        self._unsent_seen = 0
        #: The body being read: pieces, or one buffer of its announced size (a large
        #: one); and the bytes of the body budget it holds.
        self._body: list[bytes] = []
        self._buffer: bytearray | None = None
        self._reserved = 0
        self._new_request()

    def _new_request(self) -> None:
        self._drop_body()
        self._url = b""
        self._headers: list[Header] = []
        self._head_done = False  # header callbacks after this are trailers
        self._head_size = 0
        self._has_host = False
        self._options: set[bytes] | None = None
        #: Transfer codings, in order, from every Transfer-Encoding header.
        self._codings: list[bytes] = []
        self._expect_continue = False
        #: "100 Continue" is owed once the answers before this request are out.
        self._continue_due = False
        self._length = -1
        self._size = 0
        self._refused = False  # body over the limit: the rest is read and dropped
        self._start = 0.0
        #: Loop time this request's first byte was parsed (None: not being read).
        self._reading_since: float | None = None
        self._method = b""
        self._http11 = True
        self._keep_alive = True
        self._upgrade = False
        #: The protocols an Upgrade header offers, lowercased.
        self._upgrade_to = b""
        #: An upgrade offered and ignored: the request is answered in HTTP/1.1.
        self._upgrade_ignored = False
        #: llhttp stopped at that upgrade: the gate reads the body past it itself.
        self._past_upgrade = False
        #: Bytes of that body still to come.
        self._body_past_upgrade = 0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.proxy.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.idle_ticks = 0
        if self._closing and not self._refused:
            return  # answered with "Connection: close": anything after is ignored
        if not self._closing and (self._ahead or len(self.pending) >= MAX_PIPELINED):
            self._hold(data)
        else:
            self._parse(data)
        self._dispatch()

    def _parse(self, data: bytes) -> None:
        if self._past_upgrade:
            self._read_past_upgrade(data)
            return
        if self._in_head:
            self._head_bytes += len(data)  # all of it: judged only if the head is still open after
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if self._upgrade_ignored:
                # llhttp reads nothing past the head of a request that offers an
                # upgrade: its body, if any, the gate reads; what follows it, nothing.
                self._past_upgrade = True
                self._read_past_upgrade(data[upgrade.args[0] :])
                return
            self._refuse_connection(
                "unsupported", "WebSocket upgrades and CONNECT are not supported"
            )
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _HeadTooLarge):
                self._refuse_head()
            elif isinstance(cause, _BadHead):
                self._refuse_connection("bad_request", str(cause))
            elif isinstance(cause, _UnsupportedCoding):
                self._refuse_connection("unsupported", str(cause))
            else:
                log.error("request parsing failed", exc_info=cause or exc)
                self._refuse_connection("bad_request", "the gate could not parse the request")
        except httptools.HttpParserError as exc:
            self._refuse_connection("bad_request", f"malformed HTTP/1.1 request: {exc}")
        else:
            if self._in_head and self._head_bytes > MAX_HEAD_BYTES:
                self._refuse_head()  # a head without end: refused before llhttp gathers more

    def _hold(self, data: bytes) -> None:
        """Keep bytes sent far ahead for later; reading goes on, so a hang-up is seen,
        up to MAX_AHEAD_BYTES (then TCP holds the rest)."""
        self._ahead.append(data)
        self._ahead_bytes += len(data)
        if self._ahead_bytes > MAX_AHEAD_BYTES and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def _parse_ahead(self) -> None:
        """Parse held bytes while fewer than MAX_PIPELINED requests wait."""
        ahead = self._ahead
        while ahead and not self.closed:
            if self._closing and not self._refused:
                self._drop_ahead()  # the connection ends: nothing after is read
                return
            if not self._closing and len(self.pending) >= MAX_PIPELINED:
                break
            data = ahead.popleft()
            self._ahead_bytes -= len(data)
            self._parse(data)
        self._resume_if_room()

    def _drop_ahead(self) -> None:
        self._ahead.clear()
        self._ahead_bytes = 0
        self._resume_if_room()

    def _resume_if_room(self) -> None:
        if self._reading_paused and self._ahead_bytes <= MAX_AHEAD_BYTES and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    def eof_received(self) -> bool | None:
        return None  # the client is gone (or half-closed): close, which frees its slot

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.proxy.connections.discard(self)
        if self._linger is not None:
            self._linger.cancel()
        self._drop_body()
        self._drop_pending()
        self._drop_ahead()
        active, self.active = self.active, None
        if active is not None:
            self.proxy.client_gone(active)
        self._settle_sent_on()

    def pause_writing(self) -> None:
        # The client reads slower than the model answers: stop reading the model.
        self.writing_paused = True
        self.stalled_ticks = 0
        active = self.active
        if active is not None and active.upstream is not None:
            active.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.stalled_ticks = 0
        active = self.active
        if active is not None and active.upstream is not None:
            active.upstream.resume_reading()
        self._settle_sent_on()

    def unsent_stalled(self) -> bool:
        """Whether bytes wait to go to the client and none left since the last call
        (called once per sweep)."""
        size = 0 if self.closed else self.transport.get_write_buffer_size()
        stalled = size > 0 and size == self._unsent_seen
        self._unsent_seen = size
        return stalled

    @property
    def unsent(self) -> bool:
        """Whether part of what was written to the client is still in the gate."""
        return not self.closed and self.transport.get_write_buffer_size() > 0

    def sent_on(self) -> asyncio.Future[None] | None:
        """None when everything written to the client has left the gate; else a future
        done once it has, or once the connection is gone.

        For a drain: a slot is freed when the answer's last byte is handed to the
        transport, and a client that reads slowly has not had it all yet. From the
        first call, the transport reports an empty buffer (a low-water mark of 0),
        not merely one under the usual mark.
        """
        if not self.unsent:
            return None
        if self._sent_on is None:
            self._sent_on = asyncio.get_running_loop().create_future()
            self.transport.set_write_buffer_limits(high=0, low=0)
        return self._sent_on

    def _settle_sent_on(self) -> None:
        sent_on, self._sent_on = self._sent_on, None
        if sent_on is not None and not sent_on.done():
            sent_on.set_result(None)

    # llhttp callbacks

    def on_message_begin(self) -> None:
        self._new_request()
        self._reading_since = self.proxy.clock()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > MAX_HEAD_BYTES:
            raise _HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done:
            return  # a trailer: dropped
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD_BYTES:
            raise _HeadTooLarge
        lower = name.lower()
        if lower in HOP_BY_HOP:
            if lower == b"content-length":
                try:
                    self._length = int(value)  # llhttp has checked it; this is belt and braces
                except ValueError:
                    raise _BadHead(f"Content-Length {value!r} is not a number") from None
            elif lower == b"connection":
                self._options = connection_options(value) | (self._options or set())
            elif lower == b"transfer-encoding":
                self._codings += (c.strip().lower() for c in value.split(b",") if c.strip())
            elif lower == b"expect":
                self._expect_continue = value.lower() == b"100-continue"
            elif lower == b"upgrade":
                self._upgrade_to += b"," + value.lower()
            return
        if lower == b"host":
            self._has_host = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._head_done = True
        self._in_head = False
        if self._closing:
            return
        parser = self._parser
        self._method = parser.get_method()
        self._http11 = parser.get_http_version() == "1.1"
        self._keep_alive = parser.should_keep_alive()
        if parser.should_upgrade():
            if self._method == b"CONNECT" or b"websocket" in self._upgrade_to:
                self._upgrade = True  # refused once llhttp stops at the upgrade
                return
            if self._codings:
                self._upgrade = True  # a chunked body past an upgrade: not read, refused
                return
            # An offer of another protocol (h2c, sent by Java's HttpClient and by curl
            # --http2 on plain http://), which a server may ignore (RFC 9110 §7.8): the
            # request is answered in HTTP/1.1, and the connection closes after it, as
            # llhttp reads nothing past an upgrade.
            self._upgrade_ignored = True
            self._keep_alive = False
        problem = target_problem(self._method, self._url)
        if problem is not None:
            # llhttp passes "*" with any method, and with anything after it.
            raise _BadHead(problem)
        codings = self._codings
        if codings and codings != [b"chunked"]:
            named = b", ".join(codings).decode("latin-1")
            if codings[-1] != b"chunked":  # the body's length cannot be known
                raise _BadHead(f"transfer coding {named!r} does not end with chunked")
            # llhttp frames any codings that end with chunked as chunked: the body would
            # reach the model un-chunked yet still gzipped, and nothing would say so.
            raise _UnsupportedCoding(
                f"transfer coding {named!r} is not supported; only chunked is (RFC 9112 §6.1)"
            )
        length = self._length
        if length > self.proxy.max_body_bytes:
            self._refuse_body(length)
            return
        if length > 0:
            if not self.proxy.body_budget.take(length):
                self._refuse_rest().rejected = self.proxy.refusal_for_body(length, more=False)
                return
            self._reserved = length
        if self._expect_continue and self._http11:
            self._continue_due = True  # written by _dispatch when this request's turn comes

    def on_chunk_header(self) -> None:
        # Body data follows, or (after the last chunk) the trailer section: a head.
        self._in_head = True
        self._head_bytes = 0

    def on_body(self, body: bytes) -> None:
        self._in_head = False
        if self._refused or self._closing:
            return
        if self._continue_due:
            # The client did not wait for "100 Continue": none is owed any more (RFC 9110
            # §10.1.1), and its body is timed from now like any other.
            self._continue_due = False
            self._reading_since = self.proxy.clock()
        size = self._size = self._size + len(body)
        if size > self.proxy.max_body_bytes:
            self._refuse_body(size)  # a chunked body: enforced while reading
            return
        if size > self._reserved:  # a chunked body: counted as it arrives
            if not self.proxy.body_budget.take(size - self._reserved):
                self._refuse_rest().rejected = self.proxy.refusal_for_body(size, more=True)
                return
            self._reserved = size
        buffer = self._buffer
        if buffer is None:
            if self._length <= _PIECES_BYTES:
                self._body.append(body)
                if size > _PIECES_BYTES:  # a chunked body grown large: one buffer from now on
                    self._buffer = bytearray().join(self._body)
                    self._body = []
                return
            # A large body of known size, once it starts to come (not while its client
            # waits for "100 Continue"): one buffer of that size.
            buffer = self._buffer = bytearray(self._length)
        if self._length < 0:
            buffer += body  # grown in place, mostly: no second copy
        else:
            buffer[size - len(body) : size] = body  # in place: the sizes are equal

    def _read_past_upgrade(self, data: bytes) -> None:
        """The body of a request whose upgrade offer was ignored; then nothing more."""
        left = self._body_past_upgrade
        if left:
            piece = data[:left]
            self._body_past_upgrade = left - len(piece)
            if piece:  # none yet: a client may wait for "100 Continue" before sending it
                self.on_body(piece)
            if self._body_past_upgrade:
                return
            self.on_message_complete()
        self._closing = True  # the answer closes the connection; what follows is dropped

    def on_message_complete(self) -> None:
        if (
            self._upgrade_ignored
            and not self._past_upgrade
            and self._size < self._length
            and (self._refused or not self._closing)
        ):
            # Called by llhttp at the head: the body comes past the upgrade, read by
            # _read_past_upgrade, which completes the request (or, refused, drops it:
            # closing now would reset a client still sending it, before it reads the 413).
            self._body_past_upgrade = self._length - self._size
            return
        self._reading_since = None
        self._in_head = True  # the next request's head
        self._head_bytes = 0
        self._continue_due = False  # the body came without it
        if self._refused:
            self._refused = False
            if self._closing and self.active is None and not self.pending:
                self.transport.close()  # the refusal is out and the body is read
            return
        if self._closing or self._upgrade:
            return
        # The request's time starts with its last byte: the upload before it is the
        # client's network, which no replica shortens, and a P95 that held it would
        # buy pods for slow uplinks.
        self._start = self.proxy.clock()
        headers = self._headers
        if self._options:
            options = self._options
            headers = [(name, value) for name, value in headers if name.lower() not in options]
        pieces, buffer = self._body, self._buffer
        if buffer is not None:
            body: bytes | bytearray = buffer
        else:
            body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        exchange = Exchange(
            self,
            self._method,
            origin_form(self._method, self._url),
            headers,
            self._has_host,
            body,
            self._http11,
            self._keep_alive,
            self._start,
        )
        self._body, self._buffer = [], None  # the joined copy is the only one kept
        exchange.held, self._reserved = self._reserved, 0
        self._enqueue(exchange)

    # Exchanges

    def _enqueue(self, exchange: Exchange) -> None:
        self.pending.append(exchange)

    def _dispatch(self) -> None:
        """Start the next request if none is being answered (not re-entrant).

        Parses held bytes as room frees up, and writes an owed "100 Continue"
        once no answer before it is still to come.
        """
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while not self.closed:
                if self._ahead:
                    self._parse_ahead()
                if self.active is not None or not self.pending:
                    break
                exchange = self.active = self.pending.popleft()
                self.proxy.start(exchange)
            if (
                self._continue_due
                and self.active is None
                and not self.pending
                and not self._closing
                and not self.closed
            ):
                self._continue_due = False
                rejected = self.proxy.refusal_before_body(
                    self._method, origin_form(self._method, self._url), self._headers
                )
                if rejected is None:
                    self.transport.write(CONTINUE)
                    self._reading_since = self.proxy.clock()  # the body's time starts now
                else:
                    self._refuse_rest().rejected = rejected  # the client need not send it
                    exchange = self.active = self.pending.popleft()
                    self.proxy.start(exchange)
        finally:
            self._dispatching = False

    def exchange_done(self, exchange: Exchange) -> None:
        """The answer to ``exchange`` is out: close, or go on with the next request."""
        if self.active is exchange:
            self.active = None
        if self.closed:
            return
        if not exchange.keep_alive:
            self._closing = True
            self._drop_pending()
            self._drop_ahead()
            if (self._refused or self._drop_rest) and self.transport.can_write_eof():
                # More may be coming: say we are done, read and drop it, then close.
                self.transport.write_eof()
                self._linger = asyncio.get_running_loop().call_later(
                    LINGER_SECONDS, self.transport.close
                )
            else:
                self.transport.close()
            return
        self._dispatch()

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def abort(self) -> None:
        """Cut the connection (a stream broken after its headers were sent)."""
        if not self.closed:
            self.transport.abort()

    def read_overdue(self, now: float) -> bool:
        """Whether the request being read arrives too slowly (see the module doc)."""
        since = self._reading_since
        if since is None or self._closing or self.closed:
            return False
        if self._continue_due or self._reading_paused or self._ahead:
            # The gate holds the client back (or its bytes, unparsed): that time is
            # not the client's, and the request's clock starts again.
            self._reading_since = now
            return False
        received = self._received()
        allowed = READ_GRACE_SECONDS + received / READ_MIN_RATE
        if not self._head_done:
            allowed = min(allowed, HEAD_MAX_SECONDS)
        return now - since > allowed

    def _received(self) -> int:
        # A header line counts once llhttp has it whole; the head's raw bytes before.
        return max(self._head_size, self._head_bytes if not self._head_done else 0) + self._size

    def refuse_slow_request(self) -> None:
        """Answer 408 in turn for the request arriving too slowly, and close."""
        elapsed = self.proxy.clock() - (self._reading_since or 0.0)
        part = "body" if self._head_done else "head"
        self._refuse_connection(
            "request_timeout",
            f"the request's {part} arrived too slowly: {self._received()} bytes "
            f"in {elapsed:.0f} s (at least {READ_MIN_RATE:g} bytes/s after "
            f"{READ_GRACE_SECONDS:g} s)",
        )
        self._dispatch()

    @property
    def reading(self) -> bool:
        """A request is part-way in (its head or body still arriving), not yet refused."""
        return self._reading_since is not None and not self.closed and not self._closing

    def close_if_idle(self) -> None:
        if self.active is None and not self.pending and not self.closed:
            self.transport.close()

    def _drop_body(self) -> None:
        """Let the body being read go, and give back what it held of the body budget."""
        self._body, self._buffer = [], None
        if self._reserved:
            self.proxy.body_budget.give_back(self._reserved)
            self._reserved = 0

    def _drop_pending(self) -> None:
        """Requests read but not started will never be: their bodies go."""
        for exchange in self.pending:
            exchange.drop_body()
        self.pending.clear()

    # Refusals that end the connection

    def _refuse_body(self, size: int) -> None:
        self._refuse_rest().too_large = size

    def _refuse_rest(self) -> Exchange:
        """Answer the request being read without its body; read the rest, drop it, close."""
        self._refused = True
        self._drop_body()
        refusal = Exchange(
            self, self._method, b"", [], True, b"", self._http11, False, self.proxy.clock()
        )
        self._enqueue(refusal)
        self._closing = True  # nothing after this request is read
        return refusal

    def _refuse_head(self) -> None:
        self._refuse_connection(
            "head_too_large", f"request line and headers exceed {MAX_HEAD_BYTES} bytes"
        )

    def _refuse_connection(self, reason: str, message: str) -> None:
        """The byte stream cannot be parsed further: answer (in turn), drop the rest, close."""
        self._refused = False
        self._drop_body()
        if self._closing:
            return
        self._closing = True
        self._drop_rest = True
        # The method is known once the head was read (an upgrade): a HEAD gets no body.
        method = self._method if self._head_done else b""
        refusal = Exchange(
            self, method, b"", [], True, b"", self._http11, False, self.proxy.clock()
        )
        refusal.refusal = (reason, message)
        self._enqueue(refusal)
