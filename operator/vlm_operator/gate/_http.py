"""HTTP/1.1 on the wire: the framing the gate writes itself.

The gate speaks HTTP/1.1 over asyncio protocols with llhttp (through
httptools) doing the parsing; this module holds the few pure pieces around
that: which headers are the connection's own and never forwarded, how a
request target is turned into origin form, and the bytes of the answers the
gate gives itself (rejections, its own endpoints, cache hits).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from email.utils import formatdate
from http import HTTPStatus

Header = tuple[bytes, bytes]

#: RFC 9110 §7.6.1 connection-specific fields, plus the framing the gate sets itself.
#: ``expect``: the gate answers "100 Continue" itself and forwards whole bodies.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"expect",
    }
)

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}

_ERROR_TYPES = {
    "queue_full": "rate_limit_error",
    "deadline": "timeout_error",
    "draining": "service_unavailable_error",
    "not_ready": "service_unavailable_error",
    "too_large": "invalid_request_error",
    "upstream_error": "upstream_error",
    "model_timeout": "timeout_error",
    "bad_request": "invalid_request_error",
    "request_timeout": "timeout_error",
    "head_too_large": "invalid_request_error",
    "unsupported": "invalid_request_error",
}

#: The status of each answer the gate gives for the model.
ERROR_STATUS = {
    "queue_full": 429,
    "deadline": 504,
    "draining": 503,
    "not_ready": 503,
    "too_large": 413,
    "upstream_error": 502,
    "model_timeout": 504,
    "bad_request": 400,
    "request_timeout": 408,
    "head_too_large": 431,
    "unsupported": 501,
}


def reason_phrase(status: int) -> bytes:
    """The standard reason phrase of a status ("Unknown" for unregistered ones)."""
    return _REASONS.get(status, b"Unknown")


_date_second = -1
_date_value = b""


def http_date() -> bytes:
    """The current IMF-fixdate, computed once per second."""
    global _date_second, _date_value
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        _date_value = formatdate(now, usegmt=True).encode()
    return _date_value


def target_problem(method: bytes, target: bytes) -> str | None:
    """Why a request target cannot be forwarded, or None.

    llhttp passes a path, an absolute URI, or anything that starts with ``*``;
    the asterisk-form is ``*`` alone, and for ``OPTIONS`` only (RFC 9112 §3.2.4).
    """
    if target.startswith(b"*") and (target != b"*" or method != b"OPTIONS"):
        return "the request target '*' is only for OPTIONS, and stands alone (RFC 9112 §3.2.4)"
    return None


def origin_form(method: bytes, target: bytes) -> bytes:
    """Path and query as the client wrote them (absolute-form targets lose scheme and host).

    ``*`` (an ``OPTIONS`` for the server as a whole, RFC 9112 §3.2.4) goes on as it
    is, and so does an ``OPTIONS`` for an absolute URI with neither path nor query,
    as the last proxy must send it.
    """
    if target.startswith(b"/") or target == b"*":
        return target
    # scheme://authority[/path][?query], cut by hand: URL parsing would re-encode the path
    rest = target.partition(b"://")[2]
    cuts = [i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0]
    tail = rest[min(cuts) :] if cuts else b""
    if not tail and method == b"OPTIONS":
        return b"*"
    return tail if tail.startswith(b"/") else b"/" + tail


def connection_options(value: bytes) -> set[bytes]:
    """The header names a Connection header lists (lower case): hop-by-hop as well.

    Host is never one: a request must carry it (RFC 9112 §3.2) and the gate
    keeps the client's, so a Connection header that names it changes nothing.
    """
    options = {token.strip().lower() for token in value.split(b",") if token.strip()}
    options.discard(b"host")
    return options


def response(
    status: int,
    headers: Iterable[Header],
    body: bytes,
    *,
    keep_alive: bool,
    http11: bool,
    head_only: bool = False,
) -> bytes:
    """A whole response with Content-Length framing, head and body in one buffer."""
    parts = [b"HTTP/1.1 %d " % status, reason_phrase(status), b"\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"Content-Length: %d\r\n" % len(body))
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    elif not http11:
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)


def json_response(
    status: int,
    payload: object,
    *,
    keep_alive: bool,
    http11: bool,
    head_only: bool = False,
    extra: Iterable[Header] = (),
) -> bytes:
    """A JSON answer from the gate itself."""
    headers = [
        (b"Content-Type", b"application/json; charset=utf-8"),
        (b"Date", http_date()),
        *extra,
    ]
    return response(
        status,
        headers,
        json.dumps(payload).encode(),
        keep_alive=keep_alive,
        http11=http11,
        head_only=head_only,
    )


def error_response(
    reason: str,
    message: str,
    *,
    keep_alive: bool,
    http11: bool,
    retry_after: int | None = None,
    head_only: bool = False,
) -> bytes:
    """An OpenAI-style JSON error: ``{"error": {"message", "type", "code"}}``.

    ``head_only`` for the answer to a HEAD request: the head alone, with the
    Content-Length a GET would get (RFC 9110 §9.3.2); a body after it would be
    read as the start of the next answer on a kept-alive connection.
    """
    extra: list[Header] = []
    if retry_after is not None:
        extra.append((b"Retry-After", b"%d" % retry_after))
    payload = {"error": {"message": message, "type": _ERROR_TYPES[reason], "code": reason}}
    return json_response(
        ERROR_STATUS[reason],
        payload,
        keep_alive=keep_alive,
        http11=http11,
        head_only=head_only,
        extra=extra,
    )
