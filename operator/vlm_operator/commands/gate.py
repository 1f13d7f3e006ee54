"""``vlm-operator gate``: run the concurrency gate in front of a model server.

Every flag also comes from the environment (``VLM_GATE_<FLAG>``), which is how
the rendered pod configures the sidecar.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
from collections.abc import Callable

from vlm_operator.commands._env import (
    add_env_argument,
    http_url,
    listen_address,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    serving,
    url_path,
)

_PREFIX = "VLM_GATE_"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vlm_operator.gate import HELD_BODY_BYTES_CAP, GateConfig

    d = GateConfig(upstream="http://127.0.0.1:8080")
    add = add_env_argument
    add(parser, _PREFIX, "--upstream", http_url, None, "model server URL", required=True)
    add(parser, _PREFIX, "--listen", listen_address, f"{d.host}:{d.port}",
        "HOST:PORT to serve ([::]:PORT: every address, IPv6 and IPv4)")  # fmt: skip
    add(parser, _PREFIX, "--max-in-flight", positive_int, d.max_in_flight,
        "most requests inside the model at once")  # fmt: skip
    add(parser, _PREFIX, "--queue-size", non_negative_int, d.queue_size,
        "requests that may wait; beyond: 429")  # fmt: skip
    add(parser, _PREFIX, "--queue-timeout", positive_float, d.queue_timeout,
        "seconds a request may wait; then 504")  # fmt: skip
    add(parser, _PREFIX, "--response-timeout", positive_float, d.response_timeout,
        "seconds the model may send nothing on a request; then 504")  # fmt: skip
    add(parser, _PREFIX, "--max-body-bytes", positive_int, d.max_body_bytes,
        "largest request body; beyond: 413")  # fmt: skip
    add(parser, _PREFIX, "--max-held-body-bytes", non_negative_int, d.max_held_body_bytes,
        "most request-body bytes held at once; beyond: 429 (0: a largest body for "
        f"every slot and queue place, at most {HELD_BODY_BYTES_CAP >> 20} MiB)")  # fmt: skip
    add(parser, _PREFIX, "--health-path", url_path, d.health_path,
        "model health endpoint polled for readiness (empty: always ready)")  # fmt: skip
    add(parser, _PREFIX, "--drain-timeout", non_negative_float, d.drain_timeout,
        "seconds to finish admitted requests after SIGTERM")  # fmt: skip
    add(parser, _PREFIX, "--cache-size", non_negative_int, d.cache_size,
        "response cache entries for deterministic requests (0: off)")  # fmt: skip
    add(parser, _PREFIX, "--cache-ttl", positive_float, d.cache_ttl,
        "seconds a cached response stays valid")  # fmt: skip
    add(parser, _PREFIX, "--bucket-scale", positive_float, d.bucket_scale,
        "latency buckets ÷ this (time-compressed test models only)")  # fmt: skip
    add(parser, _PREFIX, "--loop", _loop_name, "auto",
        "event loop: auto (uvloop when installed), asyncio or uvloop")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from vlm_operator.cli import UsageError
    from vlm_operator.gate import GateConfig, serve

    host, port = args.listen
    try:
        config = GateConfig(
            upstream=args.upstream,
            host=host,
            port=port,
            max_in_flight=args.max_in_flight,
            queue_size=args.queue_size,
            queue_timeout=args.queue_timeout,
            response_timeout=args.response_timeout,
            max_body_bytes=args.max_body_bytes,
            max_held_body_bytes=args.max_held_body_bytes,
            health_path=args.health_path,
            drain_timeout=args.drain_timeout,
            cache_size=args.cache_size,
            cache_ttl=args.cache_ttl,
            bucket_scale=args.bucket_scale,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        loop_factory = _loop_factory(args.loop)
    except ImportError:
        raise UsageError(
            "--loop uvloop: uvloop is not installed "
            "(the uvloop extra: pip install '.[uvloop]' in a vlm-operator checkout)"
        ) from None
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    def serve_gate() -> int:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(serve(config))

    return serving(serve_gate, "--listen", host, port)


_LOOPS = ("auto", "asyncio", "uvloop")


def _loop_name(text: str) -> str:
    if text not in _LOOPS:
        raise ValueError(f"must be one of {', '.join(_LOOPS)}, got {text!r}")
    return text


def _loop_factory(name: str = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop to run on; None means asyncio's own.

    ``auto`` takes uvloop when it is installed (the ``uvloop`` extra): it
    makes every proxied request cheaper in CPU (its transports and loop are
    C), and the gate behaves the same without it. ``uvloop`` raises
    ImportError when it is not installed.
    """
    if name == "asyncio":
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        if name == "uvloop":
            raise
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
