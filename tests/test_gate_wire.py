"""The gate's HTTP/1.1 on the wire: what raw clients and odd models see.

These tests speak bytes to the real gate on a loopback port: pipelining,
HTTP/1.0, ``Expect: 100-continue``, malformed and oversized heads, HEAD,
answers without a length, kept-alive connections to the model, large bodies
both ways, a client that reads slowly, and drain. Responses are parsed back
with llhttp (httptools), the parser a real client would use.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import random
import socket
import struct
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httptools
import pytest
from aiohttp import web
from vlm_operator.gate._admission import Admission
from vlm_operator.gate._http import _ERROR_TYPES, CONTINUE, ERROR_STATUS
from vlm_operator.gate._metrics import GateMetrics
from vlm_operator.gate._proxy import Proxy
from vlm_operator.gate._upstream import UpstreamConnection, UpstreamPool

from tests.gate_harness import DEADLINE_S, Backend, Gate, error_code, running_gate, until


class _Message:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""
        self.complete = False


class _Responses:
    """Every response in a byte stream, complete or cut (close-delimited bodies)."""

    def __init__(self) -> None:
        self.messages: list[_Message] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.messages.append(_Message())

    def on_header(self, name: bytes, value: bytes) -> None:
        self.messages[-1].headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self.messages[-1].status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.messages[-1].body += body

    def on_message_complete(self) -> None:
        self.messages[-1].complete = True


def parse(raw: bytes) -> list[_Message]:
    responses = _Responses()
    responses.parser.feed_data(raw)
    return responses.messages


def address(url: str) -> tuple[str, int]:
    host, port = url.split("//")[1].split(":")
    return host, int(port)


@asynccontextmanager
async def raw_connection(
    url: str, *, limit: int = 2**16
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A plain TCP connection to ``url``, closed on the way out."""
    reader, writer = await asyncio.open_connection(*address(url), limit=limit)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def send_raw(url: str, data: bytes) -> bytes:
    """Write ``data``, then read until the gate closes the connection."""
    async with raw_connection(url) as (reader, writer):
        writer.write(data)
        return await asyncio.wait_for(reader.read(), DEADLINE_S)


@asynccontextmanager
async def model(app: web.Application) -> AsyncIterator[str]:
    """An ad-hoc model server on a loopback port; yields its URL."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def speaking(
    answer: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
) -> AsyncIterator[str]:
    """A model that speaks raw bytes (``answer`` serves each connection); yields its URL."""
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def gate_in_front_of(url: str, **overrides: Any) -> AsyncIterator[Gate]:
    stand_in = Backend()
    stand_in.url = url
    async with running_gate(stand_in, health_path="", **overrides) as gate:
        yield gate


async def test_pipelined_requests_are_answered_in_order(backend: Backend) -> None:
    async with running_gate(backend) as gate:
        raw = await send_raw(
            gate.url,
            b"GET /v1/a HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /v1/b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /v1/c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        messages = parse(raw)
        assert [m.status for m in messages] == [200, 200, 200]
        assert [json.loads(m.body)["path"] for m in messages] == ["/v1/a", "/v1/b", "/v1/c"]
        assert json.loads(messages[1].body)["body"] == "abc"
        assert messages[2].headers["connection"] == "close"


def _held(n: int, first: int = 0, *, last: bytes = b"") -> bytes:
    """``n`` numbered requests the model holds, pipelined, and optionally one more."""
    return (
        b"".join(
            b"POST /hold HTTP/1.1\r\nHost: x\r\nx-id: %03d\r\nContent-Length: 0\r\n\r\n" % i
            for i in range(first, first + n)
        )
        + last
    )


async def test_a_client_that_hangs_up_with_many_requests_sent_ahead_frees_its_slot(
    backend: Backend,
) -> None:
    from vlm_operator.gate._client import MAX_PIPELINED

    async with running_gate(backend) as gate:
        async with raw_connection(gate.url) as (_, writer):
            writer.write(_held(MAX_PIPELINED + 4))
            await until(lambda: backend.current == 1)
        # the client hung up with its first request in the model and the rest waiting
        await until(lambda: backend.cancelled == 1)

        async def freed() -> bool:
            return await gate.metric("vlm_requests_running") == 0

        await until(freed)
        assert await gate.metric("vlm_requests_total", code="499") == 1
        assert backend.arrivals == ["000"]


async def test_requests_sent_far_ahead_are_answered_in_order_past_a_limit_too(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vlm_operator.gate import _client

    size = len(_held(1))
    monkeypatch.setattr(_client, "MAX_AHEAD_BYTES", 12 * size)
    first = _client.MAX_PIPELINED + 2
    last = b"GET /v1/last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    async with running_gate(backend) as gate:
        # Under the limit (10 held), the bytes that came while the first requests waited
        # are parsed as those are answered. Over it (30 held), reading pauses (TCP holds
        # the rest) and resumes as the held requests are parsed. Either way nothing is
        # refused, and every request is answered in order.
        for then in (10, 30):
            backend.release.clear()
            arrived = len(backend.arrivals)
            async with raw_connection(gate.url) as (reader, writer):
                writer.write(_held(first))
                await until(lambda: backend.current == 1)
                writer.write(_held(then, first, last=last))
                backend.release.set()
                messages = parse(await asyncio.wait_for(reader.read(), DEADLINE_S))
            assert [m.status for m in messages] == [200] * (first + then + 1)
            ids = [json.loads(m.body).get("id") for m in messages[:-1]]
            assert ids == [f"{i:03d}" for i in range(first + then)]
            assert json.loads(messages[-1].body)["path"] == "/v1/last"
            assert len(backend.arrivals) == arrived + first + then + 1
        assert await gate.metric("vlm_requests_rejected_total", reason="malformed") == 0


async def test_http10_clients_get_length_or_close_framing(backend: Backend) -> None:
    backend.stream_gate.set()
    async with running_gate(backend) as gate:
        raw = await send_raw(gate.url, b"GET /v1/models HTTP/1.0\r\n\r\n")
        (message,) = parse(raw)
        assert raw.startswith(b"HTTP/1.1 200 ")
        assert message.headers["connection"] == "close"
        seen = json.loads(message.body)
        assert seen["headers"]["Host"] == backend.url.split("//")[1]  # the model's authority
        # a streamed answer cannot be chunked for HTTP/1.0: it ends with the connection
        raw = await send_raw(gate.url, b"POST /stream HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}")
        (message,) = parse(raw)
        assert "transfer-encoding" not in message.headers
        assert message.body == b"data: first\n\ndata: second\n\ndata: [DONE]\n\n"
        # HTTP/1.0 with keep-alive asked for: kept, and said so
        async with raw_connection(gate.url) as (reader, writer):
            for _ in range(2):
                writer.write(b"GET /v1/k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
                assert b"Connection: keep-alive" in head
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                await asyncio.wait_for(reader.readexactly(length), DEADLINE_S)


async def test_expect_100_continue_is_answered_by_the_gate(backend: Backend) -> None:
    async with running_gate(backend, max_body_bytes=1000) as gate:
        async with raw_connection(gate.url) as (reader, writer):
            writer.write(
                b"POST /v1/e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                b"Content-Length: 5\r\nConnection: close\r\n\r\n"
            )
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"hello")
            (message,) = parse(await asyncio.wait_for(reader.read(), DEADLINE_S))
        assert message.status == 200
        seen = json.loads(message.body)
        assert seen["body"] == "hello"
        assert "Expect" not in seen["headers"]  # the model is not asked to continue again
        # over the limit: refused before the client sends the body at all
        raw = await send_raw(
            gate.url,
            b"POST /v1/e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: 5000\r\n\r\n",
        )
        (message,) = parse(raw)
        assert message.status == 413
        assert error_code(message.body) == "too_large"
        assert b"100 Continue" not in raw


_UPLOAD_HEAD = (
    b"POST /v1/upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
)


async def test_a_request_refused_whatever_its_body_is_refused_before_the_body(
    backend: Backend,
) -> None:
    async with running_gate(backend, max_in_flight=1, queue_size=0) as gate:
        held = asyncio.create_task(gate.request("POST", "/hold"))
        await until(lambda: backend.current == 1)
        async with raw_connection(gate.url) as (reader, writer):
            writer.write(_UPLOAD_HEAD)  # the body is not sent: the client waits to be asked
            raw = await asyncio.wait_for(reader.read(), DEADLINE_S)  # answered, then closed
        (message,) = parse(raw)
        assert b"100 Continue" not in raw
        assert message.status == 429
        assert error_code(message.body) == "queue_full"
        assert int(message.headers["retry-after"]) >= 1
        assert message.headers["connection"] == "close"
        assert await gate.metric("vlm_requests_rejected_total", reason="queue_full") == 1
        # A client that sends the body anyway: it is read to its end and dropped, not
        # taken for a request of its own.
        async with raw_connection(gate.url) as (reader, writer):
            writer.write(_UPLOAD_HEAD)
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
            writer.write(b"hello")
            raw += await asyncio.wait_for(reader.read(), DEADLINE_S)
        assert [m.status for m in parse(raw)] == [429]
        backend.release.set()
        assert (await held)[0] == 200
        assert backend.bodies == [b""]  # neither upload reached the model
        # With a free slot the client is asked for the body, and it is served.
        async with raw_connection(gate.url) as (reader, writer):
            writer.write(_UPLOAD_HEAD)
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
            assert interim == CONTINUE
            writer.write(b"hello")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert await gate.metric("vlm_requests_total", code="429") == 2
        backend.healthy = False

        async def unready() -> bool:
            return (await gate.request("GET", "/readyz"))[0] == 503

        await until(unready)
        (message,) = parse(await send_raw(gate.url, _UPLOAD_HEAD))
        assert message.status == 503
        assert error_code(message.body) == "not_ready"


async def test_with_a_cache_a_full_queue_still_asks_for_the_body(backend: Backend) -> None:
    # Only the body tells whether the answer is cached (and needs no slot).
    async with running_gate(backend, max_in_flight=1, queue_size=0, cache_size=4) as gate:
        held = asyncio.create_task(gate.request("POST", "/hold"))
        await until(lambda: backend.current == 1)
        async with raw_connection(gate.url) as (reader, writer):
            writer.write(_UPLOAD_HEAD)
            assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S) == CONTINUE
            writer.write(b"hello")  # not a cacheable request: refused once read
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
        assert head.startswith(b"HTTP/1.1 429 ")
        backend.release.set()
        assert (await held)[0] == 200


async def test_100_continue_waits_for_the_answers_to_earlier_requests(backend: Backend) -> None:
    async with running_gate(backend) as gate, raw_connection(gate.url) as (reader, writer):
        # A stream, and pipelined behind it the head of an upload that waits to be asked.
        writer.write(
            b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /v1/upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: 5\r\nConnection: close\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
        assert head.startswith(b"HTTP/1.1 200 "), head  # the stream's own head comes first
        backend.stream_gate.set()
        received = head
        async with asyncio.timeout(DEADLINE_S):
            while not received.endswith(CONTINUE):  # nothing else comes before the body is sent
                chunk = await reader.read(65536)
                assert chunk, received
                received += chunk
        writer.write(b"hello")
        received += await asyncio.wait_for(reader.read(), DEADLINE_S)
    messages = parse(received)
    assert [m.status for m in messages] == [200, 100, 200]
    assert messages[0].complete
    assert messages[0].body == b"data: first\n\ndata: second\n\ndata: [DONE]\n\n"
    assert json.loads(messages[2].body)["body"] == "hello"


async def test_unreadable_requests_get_an_error_and_the_gate_serves_on(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    chunked_body = b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    async with running_gate(backend) as gate:
        cases = [
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 tls hello\r\n\r\n", 400, "bad_request"),
            (
                b"GET /v1/x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
                431,
                "head_too_large",
            ),
            (b"GET /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n", 400, "bad_request"),
            (
                b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
                501,
                "unsupported",
            ),
            (
                b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
                501,
                "unsupported",
            ),
            # Codings besides chunked (RFC 9112 §6.1): the body would reach the model
            # un-chunked but still gzipped, and nothing would say so.
            (
                b"POST /v1/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Transfer-Encoding: gzip, chunked" + chunked_body,
                501,
                "unsupported",
            ),
            (
                b"POST /v1/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked" + chunked_body,
                501,
                "unsupported",
            ),
            # chunked not last: the body's length is unknown (RFC 9112 §6.3)
            (
                b"POST /v1/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n"
                b"Connection: close\r\n\r\nabc",
                400,
                "bad_request",
            ),
            (
                b"POST /v1/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\nabc",
                400,
                "bad_request",
            ),
        ]
        for data, status, code in cases:
            raw = await send_raw(gate.url, data)
            messages = parse(raw)
            assert [m.status for m in messages] == [status], raw[:200]
            assert error_code(messages[0].body) == code
            assert messages[0].headers["connection"] == "close"
        assert backend.arrivals == []  # none of them reached the model
        # Any coding the gate can pass on as it came is fine, in any letter case.
        raw = await send_raw(
            gate.url,
            b"POST /v1/ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Transfer-Encoding: Chunked" + chunked_body,
        )
        (message,) = parse(raw)
        assert message.status == 200
        assert json.loads(message.body)["body"] == "abc"
        assert (await gate.request("POST", "/v1/ok", data=b"{}"))[0] == 200
        # Not requests at all: neither traffic nor errors of the service (a WebSocket
        # attempt would count as a 5xx in the error rate), but malformed rejections.
        m = await gate.metrics()
        codes = {dict(labels)["code"]: value for (name, labels), value in m.items()
                 if name == "vlm_requests_total" and value}  # fmt: skip
        assert codes == {"200": 2}
        assert m[("vlm_requests_rejected_total", (("reason", "malformed"),))] == len(cases)
        assert await gate.metric("vlm_requests_running") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


#: The head Java's java.net.http.HttpClient sends on a plain http:// URL by default.
JAVA_H2C_OFFER = (
    b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAEAAEAAAAIAAAABAAMAAABkAAQBAAAAAAUAAEAA\r\n"
)


async def test_an_offer_to_upgrade_to_http2_is_ignored_and_answered(backend: Backend) -> None:
    # A server may ignore an Upgrade it does not want (RFC 9110 §7.8); refusing it failed
    # every request of Java's HttpClient and of curl --http2 on plain http://.
    body = b'{"model": "m"}'
    post = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + JAVA_H2C_OFFER
        + b"Content-Length: %d\r\n\r\n" % len(body)
    )
    get = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + JAVA_H2C_OFFER + b"\r\n"
    async with running_gate(backend) as gate:
        raw = await send_raw(gate.url, post + body)
        (message,) = parse(raw)
        assert message.status == 200, raw[:300]
        echoed = json.loads(message.body)
        assert echoed["body"] == body.decode()
        # Hop-by-hop: the offer is the gate's to take or leave, not the model's.
        assert {"Upgrade", "HTTP2-Settings"}.isdisjoint(echoed["headers"])
        # llhttp reads nothing after an upgrade: the answer closes the connection, and
        # a request pipelined after it gets no answer rather than a wrong one.
        assert message.headers["connection"] == "close"
        (message,) = parse(await send_raw(gate.url, get + b"GET /v1/again HTTP/1.1\r\n\r\n"))
        assert (message.status, json.loads(message.body)["path"]) == (200, "/v1/models")
        # The body in pieces after the head.
        async with raw_connection(gate.url) as (reader, writer):
            writer.write(post)
            await writer.drain()
            for i in range(len(body)):
                writer.write(body[i : i + 1])
                await writer.drain()
            (message,) = parse(await asyncio.wait_for(reader.read(), DEADLINE_S))
        assert (message.status, json.loads(message.body)["body"]) == (200, body.decode())
        m = await gate.metrics()
        codes = {dict(labels)["code"]: value for (name, labels), value in m.items()
                 if name == "vlm_requests_total" and value}  # fmt: skip
        assert codes == {"200": 3}
        assert m.get(("vlm_requests_rejected_total", (("reason", "malformed"),)), 0) == 0
    # A body over the limit with an offer: the client, still sending it, reads the 413
    # rather than a reset (the gate reads and drops the body past the upgrade).
    async with running_gate(backend, max_body_bytes=1000) as gate:
        size = 4_000_000
        big = b"POST /v1/x HTTP/1.1\r\nHost: x\r\n" + JAVA_H2C_OFFER
        big += b"Content-Length: %d\r\n\r\n" % size
        loop = asyncio.get_running_loop()
        with socket.create_connection(address(gate.url)) as sock:
            sock.settimeout(DEADLINE_S)
            # A blocking client that sends everything before it reads, as many do.
            await loop.run_in_executor(None, sock.sendall, big + b"a" * size)
            answer = await loop.run_in_executor(None, sock.recv, 64)
        assert answer.startswith(b"HTTP/1.1 413 ")
        assert await gate.metric("vlm_requests_running") == 0
        # Expect: 100-continue with an offer: the interim answer comes before the body.
        async with raw_connection(gate.url) as (reader, writer):
            writer.write(post.replace(b"Host: x\r\n", b"Host: x\r\nExpect: 100-continue\r\n"))
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(body)
            (message,) = parse(await asyncio.wait_for(reader.read(), DEADLINE_S))
        assert (message.status, json.loads(message.body)["body"]) == (200, body.decode())
        # A WebSocket handshake is still refused: the gate cannot carry one.
        websocket = (
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        (message,) = parse(await send_raw(gate.url, websocket))
        assert (message.status, error_code(message.body)) == (501, "unsupported")


async def test_random_bytes_never_crash_the_gate(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(7)
    pieces = [b"GET ", b"POST ", b"/v1/x", b" HTTP/1.1\r\n", b"Host: a\r\n", b"\r\n", b":", b" ",
              b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n", b"0\r\n", b"zz\r\n",
              b"\x00", b"\xff", b"abc"]  # fmt: skip
    async with running_gate(backend) as gate:
        for _ in range(60):
            data = b"".join(rng.choice(pieces) for _ in range(rng.randrange(1, 16)))
            async with raw_connection(gate.url) as (reader, writer):
                writer.write(data)
                writer.write_eof()  # half-close: the gate answers what it can, then closes
                with contextlib.suppress(ConnectionError):
                    await asyncio.wait_for(reader.read(), DEADLINE_S)
        assert (await gate.request("POST", "/v1/ok", data=b"{}"))[0] == 200

        async def settled() -> bool:
            return await gate.metric("vlm_requests_running") == 0

        await until(settled)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_head_requests_keep_their_length_and_the_connection(backend: Backend) -> None:
    async with running_gate(backend) as gate:
        _, get_headers, get_body = await gate.request("GET", "/health")
        async with raw_connection(gate.url) as (reader, writer):
            writer.write(b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
            assert head.startswith(b"HTTP/1.1 200 ")
            assert b"Content-Length: %d\r\n" % len(get_body) in head
            writer.write(b"GET /v1/after-head HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            (message,) = parse(await asyncio.wait_for(reader.read(), DEADLINE_S))
        assert json.loads(message.body)["path"] == "/v1/after-head"
        assert get_headers["Content-Length"] == str(len(get_body))


def _length_of(head: bytes) -> int:
    return int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])


@pytest.mark.parametrize(
    "reason", ["not_ready", "queue_full", "deadline", "upstream_error", "model_timeout"]
)
async def test_a_head_request_the_gate_refuses_gets_no_body_and_keeps_the_connection(
    backend: Backend, reason: str
) -> None:
    settings: dict[str, Any] = {
        "queue_full": {"max_in_flight": 1, "queue_size": 0},
        "deadline": {"max_in_flight": 1, "queue_size": 1, "queue_timeout": 0.1},
        "model_timeout": {"response_timeout": 0.2},
    }.get(reason, {})
    path = b"/die" if reason == "upstream_error" else b"/hold"
    async with running_gate(backend, **settings) as gate:
        held: asyncio.Task[Any] | None = None
        if reason in ("queue_full", "deadline"):
            held = asyncio.create_task(gate.request("POST", "/hold"))
            await until(lambda: backend.current == 1)
        elif reason == "not_ready":
            backend.healthy = False

            async def unready() -> bool:
                return (await gate.request("GET", "/readyz"))[0] == 503

            await until(unready)
        async with raw_connection(gate.url) as (reader, writer):
            for _ in range(2):  # the connection serves on after each refusal
                writer.write(b"HEAD %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
                assert head.startswith(b"HTTP/1.1 %d " % ERROR_STATUS[reason]), head
                assert _length_of(head) > 0  # what a GET would get, and no more than that
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                after = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
                assert after.startswith(b"HTTP/1.1 200 "), after  # not the refusal's body
                await asyncio.wait_for(reader.readexactly(_length_of(after)), DEADLINE_S)
        backend.release.set()
        if held is not None:
            assert (await held)[0] == 200


@pytest.mark.parametrize("reason", ["draining", "too_large", "unsupported"])
async def test_a_head_request_refused_with_a_closing_connection_gets_no_body(
    backend: Backend, reason: str
) -> None:
    request = {
        "draining": b"HEAD /v1/x HTTP/1.1\r\nHost: x\r\n\r\n",
        "too_large": b"HEAD /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n",
        "unsupported": b"HEAD /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\n\r\n",
    }[reason]
    async with running_gate(backend, max_body_bytes=1000) as gate:
        if reason == "draining":
            drained = asyncio.create_task(gate.server.drain(DEADLINE_S))
        async with raw_connection(gate.url) as (reader, writer):
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
            assert head.startswith(b"HTTP/1.1 %d " % ERROR_STATUS[reason]), head
            assert b"Connection: close\r\n" in head
            assert _length_of(head) > 0
            assert await asyncio.wait_for(reader.read(), DEADLINE_S) == b""
        if reason == "draining":
            assert await asyncio.wait_for(drained, DEADLINE_S)


async def test_an_answer_without_length_is_relayed_to_its_end() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
        writer.write(b"hello, ")
        await writer.drain()
        writer.write(b"world")
        writer.close()

    async with speaking(answer) as url, gate_in_front_of(url) as gate:
        status, headers, body = await gate.request("GET", "/v1/old")
        assert (status, body) == (200, b"hello, world")
        assert headers["Transfer-Encoding"] == "chunked"
        assert await gate.metric("vlm_requests_total", code="200") == 1
        assert await gate.metric("vlm_requests_running") == 0


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"chunked, gzip", b"xchunked"])
async def test_an_answer_in_a_transfer_coding_besides_chunked_is_a_502(coding: bytes) -> None:
    # llhttp takes a body off its chunks, or reads it to the close, and would leave it
    # gzipped, say, for a client told nothing of it: refused as the request side does.
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + coding + b"\r\n\r\n")
        writer.write(b"5\r\nhello\r\n0\r\n\r\n" if coding.endswith(b" chunked") else b"body")
        writer.close()

    async with speaking(answer) as url, gate_in_front_of(url) as gate:
        status, _, body = await gate.request("GET", "/v1/old")
        assert status == 502
        message = json.loads(body)["error"]["message"]
        assert f"transfer coding {coding.decode()!r} is not supported" in message
        assert await gate.metric("vlm_requests_total", code="502") == 1


@pytest.mark.parametrize("status_line", [b"HTTP/1.1 099 Odd", b"HTTP/1.1 000 Zero"])
async def test_a_status_below_100_is_a_bad_answer_not_an_interim_one(status_line: bytes) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(status_line + b"\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()  # keeps the connection until the gate drops it
        writer.close()

    async with speaking(answer) as url, gate_in_front_of(url) as gate:
        # At once, not after the response timeout (600 s) as a 1xx would wait.
        status, _, body = await asyncio.wait_for(gate.request("GET", "/v1/x"), DEADLINE_S)
        assert status == 502
        assert "which HTTP has not" in json.loads(body)["error"]["message"]
        assert await gate.metric("vlm_requests_total", code="502") == 1


async def test_an_answer_without_length_ended_by_a_reset_is_cut_and_not_cached() -> None:
    part = b'{"partial": '
    relayed = asyncio.Event()  # the client has the first part: the model may die now
    answered = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        answered += 1
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(int(head.lower().split(b"content-length: ")[1].split(b"\r")[0]))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + part)
        await writer.drain()
        await relayed.wait()
        # The model process crashes: its connection is reset, not closed.
        writer.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        writer.transport.abort()

    deterministic = b'{"temperature": 0}'
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with gate_in_front_of(f"http://127.0.0.1:{port}", cache_size=4) as gate:
            assert gate.client is not None
            for _ in range(2):  # the second is not answered from the cache: it reaches the model
                async with gate.client.post(gate.url + "/v1/x", data=deterministic) as response:
                    assert response.status == 200
                    assert await response.content.readexactly(len(part)) == part
                    relayed.set()
                    with pytest.raises(aiohttp.ClientPayloadError):
                        await response.read()
            assert answered == 2
            assert await gate.metric("vlm_cache_hits_total") == 0
            assert await gate.metric("vlm_requests_total", code="502") == 2
            assert await gate.metric("vlm_requests_total", code="200") == 0
            assert await gate.metric("vlm_requests_running") == 0
    finally:
        server.close()
        await server.wait_closed()


async def test_model_connections_are_kept_alive_and_reused() -> None:
    peers: list[object] = []

    async def handler(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        await request.read()
        return web.json_response({"n": len(peers)})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    async with model(app) as url, gate_in_front_of(url, max_in_flight=2) as gate:
        for _ in range(20):
            assert (await gate.request("POST", "/v1/chat/completions", data=b"{}"))[0] == 200
        assert len(peers) == 20
        assert len(set(peers)) == 1  # one connection to the model, reused
        await asyncio.gather(*(gate.request("POST", "/v1/x", data=b"{}") for _ in range(10)))
        assert len(set(peers)) <= 2  # never more connections than slots


async def test_a_slow_upload_is_not_timed_as_the_requests_latency(backend: Backend) -> None:
    # A phone sending its photo slowly: the seconds of upload are its network's, which no
    # replica shortens; timed, they would lift the P95 the autoscaler buys pods on.
    body = b'{"messages": []}' + b" " * 4000
    async with running_gate(backend) as gate:
        async with raw_connection(gate.url) as (reader, writer):
            head = b"POST /v1/slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body))
            uploaded = time.monotonic()
            for start in range(0, len(body), 500):  # 8 pieces, 0.1 s apart: 0.7 s or more
                writer.write(body[start : start + 500])
                await writer.drain()
                await asyncio.sleep(0.1)
            uploaded = time.monotonic() - uploaded
            (message,) = parse(await asyncio.wait_for(reader.read(), DEADLINE_S))
        assert message.status == 200
        assert uploaded >= 0.7
        assert await gate.metric("vlm_request_duration_seconds_count") == 1
        assert await gate.metric("vlm_request_duration_seconds_sum") < 0.5


async def test_large_bodies_pass_intact_both_ways_even_to_a_slow_reader() -> None:
    blob = random.Random(3).randbytes(6 * 1024 * 1024)

    async def digest(request: web.Request) -> web.Response:
        data = await request.read()
        return web.json_response({"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})

    async def download(request: web.Request) -> web.StreamResponse:
        if request.query.get("chunked"):
            response = web.StreamResponse()
            await response.prepare(request)
            for i in range(0, len(blob), 256 * 1024):
                await response.write(blob[i : i + 256 * 1024])
            await response.write_eof()
            return response
        return web.Response(body=blob)

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/digest", digest)
    app.router.add_get("/download", download)
    async with model(app) as url, gate_in_front_of(url, max_body_bytes=8 * 1024 * 1024) as gate:
        status, _, body = await gate.request("POST", "/digest", data=io.BytesIO(blob))
        assert status == 200
        assert json.loads(body) == {"sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}
        for query in ("", "?chunked=1"):
            status, _, body = await gate.request("GET", "/download" + query)
            assert status == 200
            assert body == blob
        # a client that reads slowly: the gate stops reading the model meanwhile, and the
        # connection it then returns to the pool must still work for the next request
        received = bytearray()
        async with raw_connection(gate.url, limit=16 * 1024) as (reader, writer):
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
            writer.write(b"GET /download HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            loop = asyncio.get_running_loop()
            end = loop.time() + DEADLINE_S
            for _ in range(100_000):
                chunk = await asyncio.wait_for(reader.read(16 * 1024), DEADLINE_S)
                if not chunk or loop.time() > end:
                    break
                received += chunk
                await asyncio.sleep(0.001)  # slowly, to the end: the model's side must wait
        (message,) = parse(bytes(received))
        assert message.complete
        assert message.body == blob
        for _ in range(3):
            status, _, body = await gate.request("POST", "/digest", data=b"x")
            assert status == 200


async def test_a_body_the_gate_cannot_hold_is_refused_before_it_is_read(backend: Backend) -> None:
    size = 60_000
    limits = {"max_body_bytes": 64 * 1024, "max_held_body_bytes": 100 * 1024}
    async with running_gate(backend, max_in_flight=1, queue_size=4, **limits) as gate:
        budget = gate.server.proxy.body_budget
        running = asyncio.create_task(gate.request("POST", "/hold", data=b"r" * size))
        await until(lambda: backend.current == 1)
        await until(lambda: budget.held == 0)  # sent to the model: no longer the gate's to hold
        queued = asyncio.create_task(gate.request("POST", "/hold", data=b"q" * size))
        await until(lambda: gate.waiting_is(1))
        assert budget.held == size
        # Another body of that size would take the gate past its bound: refused on its
        # head, as for a full queue, with no need for the client to send it.
        raw = await send_raw(
            gate.url, b"POST /hold HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size
        )
        (message,) = parse(raw)
        assert message.status == 429
        assert error_code(message.body) == "queue_full"
        assert int(message.headers["retry-after"]) >= 1
        assert message.headers["connection"] == "close"
        # A chunked body is refused once what it has brought takes the gate past the bound.
        piece = b"%x\r\n%s\r\n" % (30_000, b"c" * 30_000)
        raw = await send_raw(
            gate.url,
            b"POST /hold HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + piece * 2
            + b"0\r\n\r\n",
        )
        (message,) = parse(raw)
        assert message.status == 429
        assert error_code(message.body) == "queue_full"
        assert budget.held == size  # what the refused bodies held is given back
        assert await gate.metric("vlm_requests_rejected_total", reason="queue_full") == 2
        assert await gate.metric("vlm_requests_total", code="429") == 2
        backend.release.set()
        assert [(await task)[0] for task in (running, queued)] == [200, 200]
        assert backend.bodies == [b"r" * size, b"q" * size]
        await until(lambda: budget.held == 0)


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_a_large_body_is_held_once_while_it_waits(backend: Backend, framing: str) -> None:
    size = 8 * 1024 * 1024
    body = b"b" * size
    if framing == "length":
        head = b"POST /v1/big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size
        pieces = [head, body]
    else:
        head = b"POST /v1/big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        view = memoryview(body)
        step = 64 * 1024
        pieces = [head]
        for start in range(0, size, step):
            pieces += [b"%x\r\n" % step, view[start : start + step], b"\r\n"]
        pieces.append(b"0\r\n\r\n")

    def upload(port: int) -> bytes:
        # A blocking socket in a thread: the client's own copies stay out of the count.
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as sock:
            for piece in pieces:
                sock.sendall(piece)
            return sock.recv(65536)

    async with running_gate(backend, max_in_flight=1, max_body_bytes=2 * size) as gate:
        running = asyncio.create_task(gate.request("POST", "/hold"))
        await until(lambda: backend.current == 1)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            answer = asyncio.create_task(asyncio.to_thread(upload, gate.server.address[1]))
            await until(lambda: gate.waiting_is(1))  # read whole, queued behind the first
            held, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        backend.release.set()
        assert (await running)[0] == 200
        assert (await asyncio.wait_for(answer, DEADLINE_S)).startswith(b"HTTP/1.1 200 ")
        assert backend.bodies[-1] == body
    # one copy of the body (a buffer grown with a chunked body may be an eighth larger)
    assert held - before < 1.5 * size
    assert peak - before < 1.5 * size


async def test_every_body_gives_back_what_it_held_however_its_request_ends(
    backend: Backend,
) -> None:
    body = b'{"temperature": 0, "pad": "%s"}' % (b"p" * 1000)
    async with running_gate(backend, max_in_flight=1, queue_size=2, cache_size=4) as gate:
        budget = gate.server.proxy.body_budget

        async def nothing_held() -> bool:
            return budget.held == 0

        running = asyncio.create_task(gate.request("POST", "/hold", data=body))
        await until(lambda: backend.current == 1)
        # a queued client that hangs up
        queued = asyncio.create_task(gate.request("POST", "/hold", data=body))
        await until(lambda: gate.waiting_is(1))
        assert budget.held == len(body)
        queued.cancel()
        await until(nothing_held)
        # a client that hangs up halfway through its body
        async with raw_connection(gate.url) as (_, writer):
            writer.write(b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\nab")
            await until(lambda: budget.held == 5000)
        await until(nothing_held)
        # requests sent behind one that closes the connection, never started
        raw = await send_raw(
            gate.url,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            + b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc" * 2,
        )
        assert [m.status for m in parse(raw)] == [200]
        await until(nothing_held)
        # the gate's own endpoint, sent a body
        raw = await send_raw(
            gate.url,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Connection: close\r\n\r\nabc",
        )
        assert [m.status for m in parse(raw)] == [200]
        assert budget.held == 0
        backend.release.set()
        assert (await running)[0] == 200
        await until(nothing_held)
        # a cache hit, after the answer it repeats
        for _ in range(2):
            assert (await gate.request("POST", "/v1/chat/completions", data=body))[0] == 200
        assert await gate.metric("vlm_cache_hits_total") == 1
        await until(nothing_held)


async def test_answers_while_draining_close_the_connection(backend: Backend) -> None:
    async with running_gate(backend) as gate:
        drained = asyncio.create_task(gate.server.drain(DEADLINE_S))
        raw = await send_raw(
            gate.url, b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        )
        (message,) = parse(raw)  # read to EOF: the gate closed the connection
        assert message.status == 503
        assert message.headers["connection"] == "close"
        assert error_code(message.body) == "draining"
        assert await asyncio.wait_for(drained, DEADLINE_S)


async def test_a_drain_answers_a_request_still_being_received(backend: Backend) -> None:
    # SIGTERM with nothing running but an upload under way: the upload is read to its end
    # and answered 503 draining, not cut with no answer.
    body = b"x" * 200_000
    head = b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    async with running_gate(backend) as gate, raw_connection(gate.url) as (reader, writer):
        writer.write(head + body[:1000])
        await writer.drain()
        proxy = gate.server.proxy
        for _ in range(200):  # until the gate has begun to read it
            if any(c.reading for c in proxy.connections):
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the gate never began to read the request")
        drained = asyncio.create_task(gate.server.drain(DEADLINE_S))
        done, _ = await asyncio.wait({drained}, timeout=0.2)
        assert not done  # the request is still arriving
        writer.write(body[1000:])
        await writer.drain()
        (message,) = parse(await asyncio.wait_for(reader.read(), DEADLINE_S))
        assert (message.status, error_code(message.body)) == (503, "draining")
        assert message.headers["connection"] == "close"
        assert await asyncio.wait_for(drained, DEADLINE_S)
        assert backend.arrivals == []


async def test_a_drain_does_not_wait_for_a_refused_connection(backend: Backend) -> None:
    # A request already answered (a 400, the connection lingering to drop what follows)
    # is no request still arriving: the drain is done at once, not after the linger.
    async with running_gate(backend) as gate, raw_connection(gate.url) as (reader, writer):
        writer.write(b"GET /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
        (message,) = parse(await asyncio.wait_for(reader.read(), DEADLINE_S))
        assert message.status == 400
        started = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(gate.server.drain(DEADLINE_S), DEADLINE_S)
        assert asyncio.get_running_loop().time() - started < 1.0


async def test_a_drain_gives_up_on_an_upload_that_never_ends(backend: Backend) -> None:
    async with running_gate(backend) as gate, raw_connection(gate.url) as (_, writer):
        writer.write(b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
        await writer.drain()
        proxy = gate.server.proxy
        for _ in range(200):
            if any(c.reading for c in proxy.connections):
                break
            await asyncio.sleep(0.01)
        assert await asyncio.wait_for(gate.server.drain(0.3), DEADLINE_S) is False


async def test_a_drain_waits_until_every_answer_has_left_the_gate(backend: Backend) -> None:
    size = 4 * 1000 * 1000
    request = b"GET /big?bytes=%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % size
    async with running_gate(backend) as gate:
        proxy = gate.server.proxy
        loop = asyncio.get_running_loop()
        for _ in range(20):  # until the slot is freed with the answer's end still in the gate
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # set before connecting
            sock.setblocking(False)
            await loop.sock_connect(sock, address(gate.url))
            reader, writer = await asyncio.open_connection(sock=sock, limit=16384)
            writer.write(request)
            received = bytearray()
            while not received or proxy.admission.running:  # slowly: the gate's buffers fill
                received += await asyncio.wait_for(reader.read(16384), DEADLINE_S)
                await asyncio.sleep(0.001)
            # The client reads no more: past what its socket takes, the gate keeps the rest.
            writer.transport.pause_reading()
            held = [c.transport.get_write_buffer_size() for c in proxy.connections if c.unsent]
            if held and held[0] > 64 * 1024:
                break
            writer.transport.resume_reading()
            await asyncio.wait_for(reader.read(), DEADLINE_S)
            writer.close()
        else:
            pytest.fail("every answer had left the gate by the time its slot was freed")
        try:
            drained = asyncio.create_task(gate.server.drain(DEADLINE_S))
            done, _ = await asyncio.wait({drained}, timeout=0.1)
            assert not done  # nothing runs, but the client has not had all of its answer
            writer.transport.resume_reading()
            received += await asyncio.wait_for(reader.read(), DEADLINE_S)
            assert await asyncio.wait_for(drained, DEADLINE_S)
        finally:
            writer.close()
        head, _, body = bytes(received).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert len(body) == size


class _RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.reading = True
        self.closed = False

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def _pooled_connection() -> tuple[UpstreamPool, UpstreamConnection, _RecordingTransport]:
    """A pool with no model behind it, and one connection of it on a recording transport."""
    admission = Admission(1, 1, 1.0)
    metrics = GateMetrics(max_in_flight=1, queue_capacity=1, running=lambda: 0, waiting=lambda: 0)
    proxy = Proxy(
        upstream="http://127.0.0.1:9",
        admission=admission,
        metrics=metrics,
        max_body_bytes=10,
        max_held_body_bytes=10,
        cache=None,
    )
    connection = UpstreamConnection(proxy.pool)
    transport = _RecordingTransport()
    connection.connection_made(transport)
    return proxy.pool, connection, transport


async def test_a_model_connection_paused_for_a_slow_client_reads_again_once_pooled() -> None:
    pool, connection, transport = _pooled_connection()
    connection.pause_reading()  # the answer's last write filled the slow client's buffer
    assert not transport.reading
    pool.put(connection)
    assert transport.reading  # else the next answer on it would never be read
    assert pool.take() is connection


async def test_the_pool_never_hands_out_a_connection_that_is_closing() -> None:
    pool, connection, transport = _pooled_connection()
    pool.put(connection)
    transport.closed = True  # closed before its loss is reported
    assert pool.take() is None


@pytest.mark.parametrize("farewell", ["closes", "speaks unasked"])
async def test_a_pooled_connection_the_model_let_go_is_not_reused(farewell: str) -> None:
    async with raw_model(lambda _: _OK) as stand_in, gate_in_front_of(stand_in.url) as gate:
        async with raw_connection(gate.url) as (reader, writer):
            writer.write(b"GET /v1/a HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
            assert head.startswith(b"HTTP/1.1 200 ")
            await asyncio.wait_for(reader.readexactly(2), DEADLINE_S)
            # The answer is out, so its model connection is idle in the pool. The model
            # lets it go and the next request arrives with no await in between: the gate
            # sees both in one turn of its loop, the model's side first.
            # On the model's socket itself: its transport may send later (uvloop's FIN does).
            (model_side,) = stand_in.writers
            with socket.socket(fileno=os.dup(model_side.get_extra_info("socket").fileno())) as sock:
                if farewell == "closes":
                    sock.shutdown(socket.SHUT_WR)  # e.g. the model server's keep-alive timeout
                else:
                    sock.sendall(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
            writer.write(b"GET /v1/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            (message,) = parse(await asyncio.wait_for(reader.read(), DEADLINE_S))
        assert (message.status, message.body) == (200, b"ok")
        assert stand_in.connections == 2  # a fresh connection served it
        assert await gate.metric("vlm_requests_total", code="502") == 0


async def test_idle_connections_are_closed_on_both_sides(monkeypatch: pytest.MonkeyPatch) -> None:
    from vlm_operator.gate import _server, _upstream

    monkeypatch.setattr(_server, "_SWEEP_SECONDS", 0.05)
    monkeypatch.setattr(_server, "_CLIENT_IDLE_SECONDS", 0.3)
    monkeypatch.setattr(_upstream, "IDLE_SECONDS", 0.2)
    peers: list[object] = []

    async def handler(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    async with model(app) as url, gate_in_front_of(url) as gate:
        async with raw_connection(gate.url) as (reader, writer):
            writer.write(b"GET /v1/a HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
            assert head.startswith(b"HTTP/1.1 200 ")
            await asyncio.wait_for(reader.readexactly(2), DEADLINE_S)
            # an idle kept-alive client is let go after the keep-alive timeout
            assert await asyncio.wait_for(reader.read(), DEADLINE_S) == b""
        # the model connection idle past its limit is not reused: a fresh one serves
        assert (await gate.request("GET", "/v1/b"))[0] == 200
        assert len(set(peers)) == 2


async def test_an_endless_head_is_refused_with_431_as_it_arrives(backend: Backend) -> None:
    async with running_gate(backend) as gate:
        for start in (
            b"GET /v1/x HTTP/1.1\r\nHost: x\r\nX-A: ",  # a header line that never ends
            b"POST /v1/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\nX-Trailer: ",  # a trailer line that never ends
        ):
            sent = 0
            async with raw_connection(gate.url) as (reader, writer):
                writer.write(start)
                answer = asyncio.create_task(reader.read())
                for _ in range(64):  # up to 4 MiB, paced so the gate reads as it arrives
                    done, _ = await asyncio.wait({answer}, timeout=0.01)
                    if done:
                        break
                    writer.write(b"a" * 65536)
                    await writer.drain()
                    sent += 65536
                raw = await asyncio.wait_for(answer, DEADLINE_S)
            (message,) = parse(raw)
            assert message.status == 431
            assert error_code(message.body) == "head_too_large"
            assert message.headers["connection"] == "close"
            assert sent <= 1024 * 1024  # refused past the limit, not when the client gave up
        assert backend.arrivals == []
        assert (await gate.request("POST", "/v1/ok", data=b"{}"))[0] == 200
        assert await gate.metric("vlm_requests_total", code="431") == 0
        assert await gate.metric("vlm_requests_rejected_total", reason="malformed") == 2


async def test_trailers_of_a_chunked_request_are_dropped(backend: Backend) -> None:
    async with running_gate(backend) as gate:
        raw = await send_raw(
            gate.url,
            b"POST /v1/t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n"
            b"3\r\nabc\r\n0\r\nHost: evil\r\nX-Trailer: 1\r\nConnection: x-keep\r\n\r\n",
        )
        (message,) = parse(raw)
        assert message.status == 200
        seen = json.loads(message.body)
        assert seen["body"] == "abc"
        assert seen["headers"]["Host"] == "x"
        assert "X-Trailer" not in seen["headers"]
        assert seen["headers"]["Content-Length"] == "3"


async def test_every_connection_header_is_honoured_and_host_is_kept(backend: Backend) -> None:
    async with running_gate(backend) as gate:
        raw = await send_raw(
            gate.url,
            b"GET /v1/c HTTP/1.1\r\nHost: x\r\nConnection: close\r\nConnection: x-a\r\n"
            b"X-A: 1\r\nX-B: 2\r\nX-C: 3\r\nConnection: host, X-B\r\n\r\n",
        )
        (message,) = parse(raw)
        assert message.status == 200
        assert message.headers["connection"] == "close"
        seen = json.loads(message.body)["headers"]
        assert seen["Host"] == "x"  # named in Connection, yet a request must carry it
        assert "X-A" not in seen
        assert "X-B" not in seen
        assert seen["X-C"] == "3"


class RawModel:
    """A model that answers each request with whatever bytes ``answer`` gives for its target."""

    def __init__(self, answer: Callable[[bytes], bytes]) -> None:
        self.answer = answer
        self.connections = 0
        self.url = ""
        #: The model's side of each connection the gate opened, in order.
        self.writers: list[asyncio.StreamWriter] = []
        self._handlers: set[asyncio.Task[Any]] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            for _ in range(1000):
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                writer.write(self.answer(head.split(b" ", 2)[1]))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the gate closed the connection
        finally:
            writer.close()
            self._handlers.discard(task)


@asynccontextmanager
async def raw_model(answer: Callable[[bytes], bytes]) -> AsyncIterator[RawModel]:
    stand_in = RawModel(answer)
    server = await asyncio.start_server(stand_in.serve, "127.0.0.1", 0)
    stand_in.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield stand_in
    finally:
        server.close()
        await server.wait_closed()
        for writer in stand_in.writers:
            writer.close()
        if stand_in._handlers:
            await asyncio.wait(set(stand_in._handlers), timeout=DEADLINE_S)


_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _odd_answers(target: bytes) -> bytes:
    return {
        b"/101": b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
        b"Upgrade: websocket\r\n\r\nhello",
        b"/two": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none" + _OK,
        b"/junk": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\noneNOT HTTP\r\n\r\n",
        b"/options": b"HTTP/1.1 200 OK\r\nConnection: x-one\r\nConnection: x-two\r\n"
        b"X-One: 1\r\nX-Two: 2\r\nX-Three: 3\r\nContent-Length: 2\r\n\r\nok",
        b"/trailer": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\nX-Late: 1\r\n\r\n",
    }.get(target, _OK)


async def test_a_request_target_reaches_the_model_as_it_must_see_it() -> None:
    # Behind an upstream with a base path: "*" (OPTIONS for the server as a whole) goes
    # on alone, as does an OPTIONS for an absolute URI with no path (the last proxy
    # must send "*", RFC 9112 §3.2.4); other targets get the base path. A "*" with
    # another method or anything after it is a 400 that says so: llhttp takes it,
    # and it was sent on as "/".
    seen: list[bytes] = []

    def answer(target: bytes) -> bytes:
        seen.append(target)
        return _OK

    async def send(request_line: bytes) -> _Message:
        async with raw_connection(gate.url) as (reader, writer):
            writer.write(request_line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
            (message,) = parse(await asyncio.wait_for(reader.read(), DEADLINE_S))
        return message

    async with raw_model(answer) as model, gate_in_front_of(model.url + "/base") as gate:
        for request_line, target in [
            (b"OPTIONS * HTTP/1.1", b"*"),
            (b"OPTIONS http://x HTTP/1.1", b"*"),
            (b"OPTIONS http://x/ HTTP/1.1", b"/base/"),
            (b"GET http://x/v1?q=%41 HTTP/1.1", b"/base/v1?q=%41"),
            (b"GET /v1 HTTP/1.1", b"/base/v1"),
        ]:
            message = await send(request_line)
            assert (message.status, seen[-1]) == (200, target), request_line
        for request_line in [
            b"GET * HTTP/1.1",
            b"GET *?a=1 HTTP/1.1",
            b"OPTIONS *?a=1 HTTP/1.1",
            b"GET ** HTTP/1.1",
        ]:
            message = await send(request_line)
            assert message.status == 400, request_line
            assert "request target" in json.loads(message.body)["error"]["message"]
        assert len(seen) == 5


async def test_a_model_that_switches_protocols_gives_a_502(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with raw_model(_odd_answers) as stand_in, gate_in_front_of(stand_in.url) as gate:
        status, _, body = await gate.request("GET", "/101")
        assert status == 502
        assert error_code(body) == "upstream_error"
        assert "101" in json.loads(body)["error"]["message"]
        assert (await gate.request("GET", "/ok"))[0] == 200
        assert await gate.metric("vlm_requests_total", code="502") == 1
        assert await gate.metric("vlm_requests_running") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_only_the_first_answer_from_the_model_is_relayed() -> None:
    async with raw_model(_odd_answers) as stand_in, gate_in_front_of(stand_in.url) as gate:
        for path in (b"/two", b"/junk"):
            async with raw_connection(gate.url) as (reader, writer):
                writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
                assert head.startswith(b"HTTP/1.1 200 ")
                assert b"Content-Length: 3\r\n" in head
                assert await asyncio.wait_for(reader.readexactly(3), DEADLINE_S) == b"one"
                used = stand_in.connections
                # the same client connection goes on: its next answer is its own
                writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                (message,) = parse(await asyncio.wait_for(reader.read(), DEADLINE_S))
            assert (message.status, message.body) == (200, b"ok")
            # the model connection that said too much is not reused
            assert stand_in.connections == used + 1
        assert await gate.metric("vlm_requests_total", code="200") == 4
        assert await gate.metric("vlm_requests_running") == 0


async def test_every_connection_header_of_the_model_is_honoured() -> None:
    async with raw_model(_odd_answers) as stand_in, gate_in_front_of(stand_in.url) as gate:
        status, headers, body = await gate.request("GET", "/options")
        assert (status, body) == (200, b"ok")
        assert "X-One" not in headers
        assert "X-Two" not in headers
        assert headers["X-Three"] == "3"


async def test_trailers_of_the_models_answer_are_dropped() -> None:
    deterministic = b'{"temperature": 0}'
    async with (
        raw_model(_odd_answers) as stand_in,
        gate_in_front_of(stand_in.url, cache_size=4) as gate,
    ):
        first = await gate.request("POST", "/trailer", data=deterministic)
        second = await gate.request("POST", "/trailer", data=deterministic)
        assert first[0] == second[0] == 200
        assert first[2] == second[2] == b"ok"
        assert second[1]["x-vlm-cache"] == "hit"
        assert "X-Late" not in second[1]  # not kept as a header of the cached answer


async def test_a_client_that_stops_reading_is_cut_and_its_slot_freed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vlm_operator.gate import _server

    monkeypatch.setattr(_server, "_SWEEP_SECONDS", 0.05)
    monkeypatch.setattr(_server, "_CLIENT_IDLE_SECONDS", 0.3)
    chunk = b"x" * 256 * 1024

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(1024):  # 256 MiB at most: the gate stops reading long before
            await response.write(chunk)
        await response.write_eof()
        return response

    async def small(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/endless", endless)
    app.router.add_get("/small", small)
    async with (
        model(app) as url,
        gate_in_front_of(url, max_in_flight=1, queue_size=0) as gate,
        raw_connection(gate.url, limit=16 * 1024) as (_, writer),
    ):
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        writer.write(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read

        async def cut() -> bool:
            return await gate.metric("vlm_requests_total", code="499") == 1

        await until(cut)
        assert await gate.metric("vlm_requests_running") == 0
        assert (await gate.request("GET", "/small"))[0] == 200  # the slot is free again


async def test_a_closing_connection_whose_client_reads_nothing_is_cut(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The whole answer is handed over (the slot is free) and the gate closes after it,
    # but the client reads nothing. With less left in the gate than the transport's
    # high-water mark (raised here, so that the kernel's buffers do not decide it),
    # writing never pauses, and a graceful close would wait for ever.
    from vlm_operator.gate import _server

    monkeypatch.setattr(_server, "_SWEEP_SECONDS", 0.05)
    monkeypatch.setattr(_server, "_CLIENT_IDLE_SECONDS", 0.3)

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 1024 * 1024)

    app = web.Application()
    app.router.add_get("/v1/x", answer)
    async with model(app) as url, gate_in_front_of(url) as gate:
        proxy = gate.server.proxy
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before the handshake
        sock.connect(address(gate.url))
        sock.setblocking(False)
        _, writer = await asyncio.open_connection(sock=sock, limit=1024)
        try:
            await until(lambda: len(proxy.connections) == 1)
            (client,) = proxy.connections
            client.transport.set_write_buffer_limits(high=8 * 1024 * 1024)
            client.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
            )
            writer.write(b"GET /v1/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")

            async def answered() -> bool:
                return await gate.metric("vlm_requests_total", code="200") == 1

            await until(answered)
            assert client.transport.is_closing()
            assert client.transport.get_write_buffer_size() > 0
            assert not client.writing_paused
            await until(lambda: not proxy.connections)  # cut, not left open
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _fast_read_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sweeps every 50 ms; a request has 0.3 s and a second more per 1,000 bytes."""
    from vlm_operator.gate import _client, _server

    monkeypatch.setattr(_server, "_SWEEP_SECONDS", 0.05)
    monkeypatch.setattr(_client, "READ_GRACE_SECONDS", 0.3)
    monkeypatch.setattr(_client, "READ_MIN_RATE", 1000.0)
    monkeypatch.setattr(_client, "HEAD_MAX_SECONDS", 0.6)


@pytest.mark.parametrize(
    "start",
    [
        # A large body announced, a trickle sent: it held the body budget for as long
        # as the client liked, and five such clients refused everyone else's bodies.
        b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{",
        b"GET /v1/x HTTP/1.1\r\nHost: x\r\nX-Slow: ",  # a head that never ends (slowloris)
    ],
)
async def test_a_request_that_arrives_too_slowly_is_answered_408_and_frees_the_budget(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, start: bytes
) -> None:
    _fast_read_deadline(monkeypatch)
    async with running_gate(backend) as gate:
        proxy = gate.server.proxy
        async with raw_connection(gate.url) as (reader, writer):
            writer.write(start)
            answer = asyncio.create_task(reader.read())
            for _ in range(200):  # a byte every 20 ms (50 bytes/s), until the gate answers
                done, _ = await asyncio.wait({answer}, timeout=0.02)
                if done:
                    break
                writer.write(b"a")
            (message,) = parse(await asyncio.wait_for(answer, DEADLINE_S))
        assert message.status == 408
        assert error_code(message.body) == "request_timeout"
        assert "arrived too slowly" in json.loads(message.body)["error"]["message"]
        assert message.headers["connection"] == "close"
        assert proxy.body_budget.held == 0
        assert backend.arrivals == []
        assert await gate.metric("vlm_requests_rejected_total", reason="malformed") == 1


async def test_a_request_held_behind_requests_sent_ahead_is_not_too_slow(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nine requests of a second each and the head of a tenth in one write, its body
    # 0.1 s later: past the eight requests parsed ahead, the gate holds the body
    # unparsed for some eight seconds, its own wait and not the client's.
    _fast_read_deadline(monkeypatch)
    async with running_gate(backend, max_in_flight=1) as gate:
        one = b"POST /sleep?s=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
        last = b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
        async with raw_connection(gate.url) as (reader, writer):
            writer.write(one * 9 + last)
            await asyncio.sleep(0.1)
            writer.write(b"{}")
            data = await asyncio.wait_for(reader.read(), 3 * DEADLINE_S)
        assert [message.status for message in parse(data)] == [200] * 10


async def test_a_steady_upload_and_a_wait_for_100_continue_are_not_too_slow(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fast_read_deadline(monkeypatch)
    async with running_gate(backend, max_in_flight=1) as gate:
        # 4,000 bytes over ~1 s: 0.3 s + 4 s allowed.
        async with raw_connection(gate.url) as (reader, writer):
            writer.write(b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\n")
            for _ in range(40):
                writer.write(b"a" * 100)
                await asyncio.sleep(0.025)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
            assert head.startswith(b"HTTP/1.1 200 ")
        # A request held behind an answer the backend takes 1 s to give; the next one,
        # pipelined, waits for its "100 Continue" as long: the gate's wait, not its own.
        async with raw_connection(gate.url) as (reader, writer):
            writer.write(
                b"POST /sleep?s=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
                b"POST /v1/y HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                b"Expect: 100-continue\r\n\r\n"
            )
            first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
            assert first.startswith(b"HTTP/1.1 200 ")
            length = int(first.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2) == CONTINUE
            writer.write(b"{}")
            second = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
            assert second.startswith(b"HTTP/1.1 200 ")
        assert await gate.metric("vlm_requests_rejected_total", reason="malformed") == 0


async def test_a_body_sent_without_waiting_for_100_continue_is_timed(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pipelined behind a request the model holds for 5 s, a request that asked for
    # "100 Continue" trickles its body at once: it is timed from its first byte (the
    # gate's wait ends there, and no "100 Continue" is owed any more), so it is refused
    # and its body budget given back while the first is still running.
    _fast_read_deadline(monkeypatch)
    async with running_gate(backend, max_in_flight=1) as gate:
        proxy = gate.server.proxy
        async with raw_connection(gate.url) as (reader, writer):
            writer.write(
                b"POST /sleep?s=5 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
                b"POST /v1/y HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                b"Expect: 100-continue\r\n\r\n"
            )
            await until(lambda: proxy.body_budget.held == 100000)
            for _ in range(150):  # a byte every 20 ms (50 bytes/s) for up to 3 s
                writer.write(b"a")
                await asyncio.sleep(0.02)
                if proxy.body_budget.held == 0:
                    break
            assert proxy.body_budget.held == 0
            assert backend.current == 1  # the first request is still running
            data = await asyncio.wait_for(reader.read(), 3 * DEADLINE_S)
        assert CONTINUE not in data
        assert [message.status for message in parse(data)] == [200, 408]
        assert await gate.metric("vlm_requests_rejected_total", reason="malformed") == 1


async def test_chunk_extensions_buy_a_request_no_time(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # llhttp skips chunk extensions and the gate keeps none of them, so they cost only
    # parsing; they count for nothing in the read deadline either: a body of one byte
    # per chunk, behind 8,000 bytes of extension each, arrives too slowly all the same.
    _fast_read_deadline(monkeypatch)
    async with running_gate(backend) as gate:
        async with raw_connection(gate.url) as (reader, writer):
            writer.write(b"POST /v1/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            answer = asyncio.create_task(reader.read())
            chunk = b"1;" + b"x" * 8000 + b"\r\na\r\n"
            for _ in range(300):  # a chunk every 10 ms: 800 KB/s on the wire, 100 B/s of body
                done, _ = await asyncio.wait({answer}, timeout=0.01)
                if done:
                    break
                writer.write(chunk)
            (message,) = parse(await asyncio.wait_for(answer, DEADLINE_S))
        assert message.status == 408
        assert "arrived too slowly" in json.loads(message.body)["error"]["message"]
        assert backend.arrivals == []


def test_every_refusal_has_a_status_and_an_error_type() -> None:
    assert set(_ERROR_TYPES) == set(ERROR_STATUS)


async def test_one_connection_failing_its_sweep_does_not_stop_the_sweeps(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from vlm_operator.gate import _server

    monkeypatch.setattr(_server, "_SWEEP_SECONDS", 0.05)
    monkeypatch.setattr(_server, "_CLIENT_IDLE_SECONDS", 0.3)
    async with gate_in_front_of("http://127.0.0.1:9") as gate:
        proxy = gate.server.proxy
        async with raw_connection(gate.url) as (broken_reader, _):
            await until(lambda: len(proxy.connections) == 1)
            (broken,) = proxy.connections

            def fails(now: float) -> bool:
                raise RuntimeError("a bug in one connection's state")

            monkeypatch.setattr(broken, "read_overdue", fails)
            async with raw_connection(gate.url) as (idle_reader, _):
                # The broken one is cut; the idle one is still closed at its time.
                assert await asyncio.wait_for(broken_reader.read(), DEADLINE_S) == b""
                assert await asyncio.wait_for(idle_reader.read(), DEADLINE_S) == b""
    assert "sweeping a client connection failed" in caplog.text
