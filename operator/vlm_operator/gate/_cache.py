"""A small response cache for identical deterministic requests.

Off by default. Only requests that promise the same answer every time are
eligible: a JSON object body with ``temperature`` explicitly 0 that does not
ask for a stream. The key is the method, path and a hash of the exact body
bytes, so "identical" means byte for byte. Only 200 responses are kept, in a
bounded LRU whose entries also expire after a TTL. The body is parsed only
here, and garbage (or JSON nested too deep to parse) simply makes a request
ineligible.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

#: Responses larger than this are passed on but not kept.
MAX_ENTRY_BYTES = 1024 * 1024


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
    def key_for(method: str, path_qs: str, body: bytes) -> str | None:
        """The cache key of a deterministic request, or None if it is not one."""
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
        digest = hashlib.sha256(body).hexdigest()
        return f"{method} {path_qs} {digest}"

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
        self._entries[key] = (self._clock() + self.ttl, response)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
