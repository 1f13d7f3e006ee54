"""``vlm-operator model-server``: serve Qwen3-VL from a local directory on CPU.

The reference runtime (float32 Transformers, the measured setup) behind an
OpenAI-compatible API. It needs the ``model-server`` extra; without it the
command says so and exits 2, while ``--help`` keeps working. Every flag also
comes from the environment (``VLM_MODEL_SERVER_<FLAG>``).

Threads: ``--threads`` is the number of intra-op threads of one generation
(default: ``OMP_NUM_THREADS``, which the runtime preset sets from the pod's CPU
request, else every usable CPU, cgroup quota included). Concurrent requests
(``--max-concurrent``, keep it equal to the gate's maxInFlight) each run with
that many threads, so under full load ``threads × concurrent`` threads share
the cores. All cores per request gives the lowest latency when alone, which
is what the measured numbers assume; ``cores / maxInFlight`` trades solo
latency for less contention under full load.

Context: ``--max-context-tokens`` (default 32768) bounds prompt plus completion
tokens, below the model's own ``max_position_embeddings`` (262144 for
Qwen3-VL-2B): the float32 KV cache takes about 229 KB per token on the 2B model,
so a prompt of the model's full context would not fit a pod's memory.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
from pathlib import Path

from vlm_operator.commands._env import (
    add_env_argument,
    non_negative_int,
    positive_int,
    serving,
)
from vlm_operator.runtimes import MODEL_SERVER_ENV_PREFIX

_PREFIX = MODEL_SERVER_ENV_PREFIX
#: module → distribution of the model-server extra.
_EXTRA = {"torch": "torch", "transformers": "transformers", "PIL": "pillow", "jinja2": "jinja2"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = add_env_argument
    add(parser, _PREFIX, "--model", str, None,
        "model directory (save_pretrained or hub snapshot)", required=True)  # fmt: skip
    add(parser, _PREFIX, "--host", str, "127.0.0.1", "address to listen on")
    add(parser, _PREFIX, "--port", _port, 8080, "port to listen on (0: a free one)")
    add(parser, _PREFIX, "--model-id", str, "",
        "model id clients name in requests (default: the directory's name)")  # fmt: skip
    add(parser, _PREFIX, "--threads", non_negative_int, 0,
        "intra-op threads per generation (0: $OMP_NUM_THREADS, else every usable CPU)")  # fmt: skip
    add(parser, _PREFIX, "--max-concurrent", positive_int, 4,
        "generations at once (keep equal to the gate's maxInFlight)")  # fmt: skip
    add(parser, _PREFIX, "--max-image-pixels", positive_int, 4096 * 4096,
        "largest image (width x height) accepted; beyond: 400")  # fmt: skip
    add(parser, _PREFIX, "--max-image-tokens", positive_int, 2048,
        "larger images are scaled down to this many tokens each (the model's cap if "
        "lower)")  # fmt: skip
    add(parser, _PREFIX, "--max-new-tokens", positive_int, 512,
        "most tokens generated per request (max_tokens is capped to it)")  # fmt: skip
    add(parser, _PREFIX, "--max-body-bytes", positive_int, 32 * 1024 * 1024,
        "largest request body; beyond: 413")  # fmt: skip
    add(parser, _PREFIX, "--max-context-tokens", positive_int, 32768,
        "most prompt + completion tokens per request (the model's context if lower); "
        "beyond: 400 context_length_exceeded")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from vlm_operator.cli import UsageError

    model_dir = Path(args.model)
    if not model_dir.is_dir():
        raise UsageError(f"--model: {model_dir} is not a directory")
    if not (model_dir / "config.json").is_file():
        raise UsageError(
            f"--model: {model_dir} has no config.json; expected a directory written by "
            "save_pretrained or a hub snapshot"
        )
    missing = [dist for module, dist in _EXTRA.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise UsageError(
            f"needs the model-server extra (missing: {', '.join(missing)}); install it with "
            "pip install '.[model-server]' in a vlm-operator checkout"
        )
    from vlm_operator.model_server import ServerConfig, serve

    try:
        config = ServerConfig(
            model_dir=model_dir,
            model_id=args.model_id or model_dir.resolve().name,
            host=args.host,
            port=args.port,
            threads=args.threads or None,
            max_concurrent=args.max_concurrent,
            max_new_tokens=args.max_new_tokens,
            max_image_pixels=args.max_image_pixels,
            max_image_tokens=args.max_image_tokens,
            max_body_bytes=args.max_body_bytes,
            max_context_tokens=args.max_context_tokens,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    # Offline for good: weights are provisioned into the pod, never fetched here.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return serving(lambda: asyncio.run(serve(config)), "--host/--port", args.host, args.port)


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(f"must be 0-65535, got {port}")
    return port
