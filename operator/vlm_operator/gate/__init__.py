"""The gate: a concurrency-limiting proxy in front of every model pod.

A hard limit of requests inside the model, a bounded FIFO queue with a
deadline for the rest, fast and honest rejections (429 queue full, 503
draining or not ready, 504 deadline, 413 too large, 502 model failure), the
Prometheus signals the operator scales on, and a graceful drain on SIGTERM.
Everything else passes through untouched, streamed responses chunk by chunk.

It is HTTP/1.1 over asyncio protocols, with llhttp (httptools) parsing both
directions: a proxy in front of every model pod has to cost little next to
nginx, and a web framework's per-request machinery costs several times that.

Public API::

    config = GateConfig(upstream="http://127.0.0.1:8080", port=8000)
    gate = GateServer(config)
    await gate.start()                # listening at gate.url
    await gate.drain(30.0)            # refuse new work, wait for admitted work
    await gate.close()
    exit_code = await serve(config)   # all of it: run until SIGTERM, drain, return 0
"""

from vlm_operator.contract import DURATION_BUCKETS, HELD_BODY_BYTES_CAP, REJECTION_REASONS
from vlm_operator.gate._server import GateConfig, GateServer, serve

__all__ = [
    "DURATION_BUCKETS",
    "HELD_BODY_BYTES_CAP",
    "REJECTION_REASONS",
    "GateConfig",
    "GateServer",
    "serve",
]
