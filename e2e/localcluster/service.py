"""The local cluster's Service: a reverse proxy on 127.0.0.1 in front of the ready pods.

Clients reach the model the way they would through a Kubernetes Service: one stable address,
spread over the ready pods (round-robin, as kube-proxy's IPVS mode does; or least-in-flight, as
an L7 load balancer would). Endpoints come from a callable (the process runner's ready pods), so
a pod leaves the rotation the moment it stops being ready or starts terminating.

A pod that refuses the connection (it has just died, or closed its listener after draining) is
retried on another pod: nothing was sent, so nothing can be duplicated. A pod that answered is
never retried, whatever it answered: the gate's 429/503/504 are the honest answers the client
must see.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter
from collections.abc import Callable
from typing import Literal

import aiohttp
from aiohttp import web

__all__ = ["ServiceProxy"]

Strategy = Literal["round-robin", "least-in-flight"]

# Hop-by-hop headers (RFC 9110 §7.6.1) are not forwarded; Host and length are set anew.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}


class ServiceProxy:
    """HTTP reverse proxy over ``endpoints()`` (a list of ``host:port``)."""

    def __init__(
        self,
        endpoints: Callable[[], list[str]],
        *,
        strategy: Strategy = "round-robin",
        connect_timeout_s: float = 2.0,
    ) -> None:
        if strategy not in ("round-robin", "least-in-flight"):
            raise ValueError(f"strategy must be round-robin or least-in-flight, got {strategy!r}")
        self._endpoints = endpoints
        self.strategy: Strategy = strategy
        self._counter = itertools.count()
        self.in_flight: Counter[str] = Counter()
        self.routed: Counter[str] = Counter()  # requests sent to each endpoint, ever
        self.retried = 0  # connections refused and retried on another pod
        self.no_endpoint = 0  # requests answered 503 because no pod was ready
        self._connect_timeout_s = connect_timeout_s
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        # No pool limit: the gates do the limiting, not the Service. One connection per
        # request (like an L4 Service): a kept-alive connection to a pod that has since
        # drained would fail a request that was never sent anywhere.
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout_s),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _order(self) -> list[str]:
        endpoints = list(self._endpoints())
        if not endpoints:
            return []
        if self.strategy == "least-in-flight":
            start = next(self._counter)
            # Ties broken round-robin so that idle pods share the load evenly.
            return sorted(
                endpoints,
                key=lambda e: (self.in_flight[e], (endpoints.index(e) - start) % len(endpoints)),
            )
        start = next(self._counter) % len(endpoints)
        return endpoints[start:] + endpoints[:start]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        for endpoint in self._order():
            url = f"http://{endpoint}{request.rel_url}"
            self.in_flight[endpoint] += 1
            self.routed[endpoint] += 1
            try:
                try:
                    upstream = await self._session.request(
                        request.method, url, data=body, headers=headers, allow_redirects=False
                    )
                except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
                    self.retried += 1
                    self.routed[endpoint] -= 1
                    continue  # refused: nothing was sent, try the next pod
                async with upstream:
                    return await self._relay(request, upstream)
            finally:
                self.in_flight[endpoint] -= 1
                if self.in_flight[endpoint] <= 0:
                    del self.in_flight[endpoint]
        self.no_endpoint += 1
        return web.json_response(
            {"error": {"message": "no ready endpoints", "type": "service_unavailable"}},
            status=503,
            headers={"Retry-After": "1"},
        )

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=headers
        )
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        # The client may be gone (it timed out); the pod's answer then has nowhere to go.
        with contextlib.suppress(ConnectionResetError, aiohttp.ClientPayloadError):
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        return response
