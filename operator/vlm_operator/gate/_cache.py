"""A small response cache for identical deterministic requests.

Off by default. Only requests that promise the same answer every time are
eligible: a JSON object body with ``temperature`` explicitly 0 that does not
ask for a stream. The key is the method, path and a hash of the exact body
bytes, so "identical" means byte for byte. Only 200 responses are kept, in a
bounded LRU whose entries also expire after a TTL. The body is parsed only
here, and garbage (or JSON nested too deep to parse) simply makes a request
ineligible.

The cache is shared by every client of the pod, so it keeps apart what
different credentials asked (RFC 9111 §3.5 forbids a shared cache to answer
a request carrying ``Authorization`` from another's answer): the values of
``Authorization``, ``Cookie``, ``api-key`` and ``x-api-key`` (the headers
OpenAI-compatible clients send their keys in) are part of the key. A request
with ``Cache-Control: no-store`` or ``no-cache`` (or ``Pragma: no-cache``) is
neither answered from the cache nor kept, and neither is an answer marked
``no-store``, ``no-cache`` or ``private``, one that sets a cookie, or one that
varies with request headers (``Vary``: an answer gzipped for one client would
reach another that accepts no encoding).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

#: Responses larger than this are passed on but not kept.
MAX_ENTRY_BYTES = 1024 * 1024
#: Request headers that say who asks: answers are never shared across their values.
_CREDENTIALS = frozenset({b"authorization", b"cookie", b"api-key", b"x-api-key"})
#: Cache-Control directives that keep a request, or an answer, out of the cache.
_REQUEST_OPT_OUT = frozenset({"no-store", "no-cache"})
#: (An answer's no-cache allows reuse only after revalidation, which the gate cannot do.)
_RESPONSE_OPT_OUT = frozenset({"no-store", "no-cache", "private"})


def _directives(value: str) -> set[str]:
    """Cache-Control directive names (arguments dropped), lower-cased."""
    return {part.split("=", 1)[0].strip().lower() for part in value.split(",")}


@dataclass(frozen=True)
class CachedResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


class ResponseCache:
    """Bounded LRU with a time to live."""

    def __init__(self, size: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        if size < 1:
            raise ValueError(f"cache size must be >= 1, got {size}")
        if not ttl > 0:
            raise ValueError(f"cache ttl must be positive, got {ttl}")
        self.size = size
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, CachedResponse]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key_for(
        method: str,
        path_qs: str,
        body: bytes | bytearray,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> str | None:
        """The cache key of a deterministic request, or None if it is not one.

        ``headers`` are the request's: its credentials are part of the key, and
        ``Cache-Control: no-store`` or ``no-cache`` (or ``Pragma: no-cache``) makes it
        no cache request.
        """
        if b'"temperature"' not in body:
            return None  # cheap pre-check: most traffic never pays for a parse
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: too deep
            return None
        if not isinstance(payload, dict):
            return None
        temperature = payload.get("temperature")
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            return None
        if temperature != 0 or payload.get("stream"):
            return None
        # Every part length-prefixed, so that no body or value can pass for another's.
        digest = hashlib.sha256(b"%d\0" % len(body))
        digest.update(body)
        for name, value in headers:
            lower = name.lower()
            if lower in _CREDENTIALS:
                digest.update(b"%s\0%d\0" % (lower, len(value)))
                digest.update(value)
            elif lower == b"cache-control" and (
                _directives(value.decode("latin-1")) & _REQUEST_OPT_OUT
            ):
                return None
            elif lower == b"pragma" and b"no-cache" in value.lower():
                return None  # HTTP/1.0's no-cache (RFC 9111 §5.4)
        return f"{method} {path_qs} {digest.hexdigest()}"

    def get(self, key: str) -> CachedResponse | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, response = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return response

    def put(self, key: str, response: CachedResponse) -> None:
        if response.status != 200 or len(response.body) > MAX_ENTRY_BYTES:
            return
        for name, value in response.headers:
            lower = name.lower()
            if lower == "cache-control" and _directives(value) & _RESPONSE_OPT_OUT:
                return
            if lower == "set-cookie":
                return  # replayed, it would hand one client's cookie to the next
            if lower == "vary":
                # The answer depends on request headers the key leaves out (a gzip body
                # for a client that accepts gzip): RFC 9111 §4.1 allows reuse only when
                # they match, which the gate does not check.
                return
        self._entries[key] = (self._clock() + self.ttl, response)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
