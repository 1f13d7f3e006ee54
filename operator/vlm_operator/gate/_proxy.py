"""Passing requests through to the model, and answering for it when it cannot.

One handler serves every path that is not the gate's own. It reads the body
(bounded), asks admission control for a slot, forwards the request over the
one shared client session, and relays the answer: small bodies in one write,
everything else (server-sent events above all) chunk by chunk as it arrives.
A slot is held until the response has been fully delivered, so "in flight"
means what the model and the client both see. Headers and status pass
untouched except the hop-by-hop ones; the body is never parsed unless the
response cache needs it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from vlm_operator.gate._admission import Admission, Rejected
from vlm_operator.gate._cache import CachedResponse, ResponseCache
from vlm_operator.gate._metrics import CLIENT_CLOSED, GateMetrics

log = logging.getLogger("vlm_operator.gate")

#: RFC 9110 §7.6.1 connection-specific fields, plus those a proxy must set itself.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        # the gate has read the whole body already; the model must not wait for "100 Continue"
        "expect",
    }
)

#: Upstream URLs kept for reuse: clients use a few targets, no need to parse each anew.
_URL_CACHE_SIZE = 256

#: Responses up to this size are read whole and written once (fewer syscalls).
_WHOLE_BODY_BYTES = 256 * 1024

_ERROR_TYPES = {
    "queue_full": "rate_limit_error",
    "deadline": "timeout_error",
    "draining": "service_unavailable_error",
    "not_ready": "service_unavailable_error",
    "too_large": "invalid_request_error",
    "upstream_error": "upstream_error",
}

_STATUS = {
    "queue_full": 429,
    "deadline": 504,
    "draining": 503,
    "not_ready": 503,
    "too_large": 413,
    "upstream_error": 502,
}


class _TooLarge(Exception):
    pass


def error_response(reason: str, message: str, *, retry_after: int | None = None) -> web.Response:
    """An OpenAI-style JSON error the gate answers itself."""
    body = {"error": {"message": message, "type": _ERROR_TYPES[reason], "code": reason}}
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if reason == "deadline":
        # openai-python would otherwise retry a request that already waited its deadline.
        headers["x-should-retry"] = "false"
    return web.Response(
        status=_STATUS[reason],
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=headers,
    )


def _forward_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    # One copy in C, then a case-insensitive lookup per hop-by-hop name (usually absent).
    out: CIMultiDict[str] = CIMultiDict(headers)
    for name in _HOP_BY_HOP:
        if name in out:
            del out[name]
    return out


def _origin_form(request: web.Request) -> str:
    """Path and query as the client wrote them (absolute-form targets lose scheme and host)."""
    raw = request.raw_path
    if raw.startswith("/"):
        return raw
    # scheme://authority[/path][?query], cut by hand: URL parsing would re-encode the path
    rest = raw.partition("://")[2]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    tail = rest[cut:]
    return tail if tail.startswith("/") else "/" + tail


class Proxy:
    """The catch-all handler and the state it needs."""

    def __init__(
        self,
        *,
        upstream: str,
        admission: Admission,
        metrics: GateMetrics,
        max_body_bytes: int,
        cache: ResponseCache | None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.admission = admission
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.cache = cache
        self.ready = False
        self.last_answer = -math.inf  # loop time of the model's last answer below 500
        self.session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}

    def _upstream_url(self, target: str) -> URL:
        """The model's URL for a request target; the few targets clients use are kept."""
        url = self._urls.get(target)
        if url is None:
            if len(self._urls) >= _URL_CACHE_SIZE:
                self._urls.clear()  # bounded: arbitrary query strings must not grow it
            # encoded=True: the target goes on byte for byte, never re-encoded
            url = self._urls[target] = URL(self.upstream + target, encoded=True)
        return url

    async def _read_body(self, request: web.Request) -> bytes:
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            raise _TooLarge(length)
        if not request.body_exists:
            return b""
        chunks: list[bytes] = []
        size = 0
        content = request.content
        while True:
            chunk = await content.readany()
            if not chunk:
                break
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _TooLarge(size)  # chunked bodies: enforced while reading
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _reject(self, reason: str, message: str, retry_after: int | None = None) -> web.Response:
        self.metrics.rejected.labels(reason).inc()
        response = error_response(reason, message, retry_after=retry_after)
        self.metrics.finished(response.status)
        return response

    async def handle(self, request: web.Request) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        start = loop.time()
        admission = self.admission
        # Refusals that do not depend on the body come before reading it.
        if admission.draining:
            return self._reject("draining", "the gate is draining; retry on another replica", 1)
        if not self.ready:
            return self._reject("not_ready", "the model is not ready yet", 5)
        try:
            body = await self._read_body(request)
        except _TooLarge as exc:
            return self._reject(
                "too_large",
                f"request body of {exc.args[0]}+ bytes exceeds the limit of "
                f"{self.max_body_bytes} bytes",
            )

        cache_key = None
        if self.cache is not None:
            cache_key = self.cache.key_for(request.method, request.path_qs, body)
            if cache_key is not None:
                hit = self.cache.get(cache_key)
                if hit is not None:
                    return await self._answer_from_cache(request, hit, start)

        metrics = self.metrics
        if admission.try_acquire():
            admitted = loop.time()
            metrics.queue.observe(0.0)
        else:
            queued = loop.time()
            try:
                await admission.acquire()
            except Rejected as rejected:
                if rejected.reason == "deadline":
                    now = loop.time()
                    metrics.queue.observe(now - queued)
                    metrics.duration.observe(now - start)
                return self._reject(rejected.reason, rejected.message, rejected.retry_after)
            except asyncio.CancelledError:
                metrics.finished(CLIENT_CLOSED)
                raise
            admitted = loop.time()
            metrics.queue.observe(admitted - queued)
        code = CLIENT_CLOSED
        try:
            code, response = await self._forward(request, body, cache_key)
            return response
        finally:
            done = loop.time()
            admission.release(done - admitted)
            metrics.duration.observe(done - start)
            metrics.finished(code)

    async def _answer_from_cache(
        self, request: web.Request, hit: CachedResponse, start: float
    ) -> web.StreamResponse:
        metrics = self.metrics
        metrics.cache_hits.inc()
        headers = CIMultiDict(hit.headers)
        headers["x-vlm-cache"] = "hit"
        response = web.Response(status=hit.status, headers=headers, body=hit.body)
        await response.prepare(request)
        await response.write_eof()
        metrics.duration.observe(asyncio.get_running_loop().time() - start)
        metrics.finished(hit.status)
        return response

    async def _forward(
        self, request: web.Request, body: bytes, cache_key: str | None
    ) -> tuple[int, web.StreamResponse]:
        assert self.session is not None, "the gate's client session is not open"
        try:
            upstream = await self.session.request(
                request.method,
                self._upstream_url(_origin_form(request)),
                headers=_forward_headers(request.headers),
                data=body if body else None,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return 502, error_response("upstream_error", f"model unreachable: {exc!r}")
        try:
            return await self._relay(request, upstream, cache_key)
        finally:
            upstream.release()

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse, cache_key: str | None
    ) -> tuple[int, web.StreamResponse]:
        status = upstream.status
        if status < 500:
            self.last_answer = asyncio.get_running_loop().time()
        headers = _forward_headers(upstream.headers)
        length = upstream.content_length
        if request.method == "HEAD":
            response = web.StreamResponse(status=status, reason=upstream.reason, headers=headers)
            if length is not None:
                response.headers["Content-Length"] = str(length)
            await response.prepare(request)
            await response.write_eof()
            return status, response
        whole = cache_key is not None or (length is not None and length <= _WHOLE_BODY_BYTES)
        if whole:
            try:
                data = await upstream.read()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                return 502, error_response("upstream_error", f"model failed mid-answer: {exc!r}")
            if cache_key is not None and self.cache is not None:
                self.cache.put(cache_key, CachedResponse(status, tuple(headers.items()), data))
            # A Response (unlike a StreamResponse) sends headers and body in one write.
            whole_response = web.Response(
                status=status, reason=upstream.reason, headers=headers, body=data
            )
            await whole_response.prepare(request)
            await whole_response.write_eof()
            return status, whole_response
        response = web.StreamResponse(status=status, reason=upstream.reason, headers=headers)
        if length is not None:
            response.content_length = length
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except ConnectionResetError:
            return CLIENT_CLOSED, response
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Headers are gone already: the only honest signal left is a cut connection.
            log.warning("model failed mid-stream on %s: %r", request.path, exc)
            if request.transport is not None:
                request.transport.close()
            return 502, response
        await response.write_eof()
        return status, response
