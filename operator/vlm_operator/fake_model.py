"""A fake OpenAI-compatible vision-language model with the measured latency.

It answers ``/v1/chat/completions`` like the real model server, accepts real
image payloads (base64 ``data:`` URLs in ``image_url`` parts, decoded and
checked), and takes as long as the processor-sharing model of
:mod:`vlm_operator.latency` says: with n requests inside, each progresses at
``1 / (1 + alpha (n - 1))`` seconds of work per second. One asyncio task per
server recomputes the next completion whenever a request arrives or leaves;
no request polls or spins. A client that disconnects leaves the shared pod at
once, so the others speed up as they would on the real model.

The answer is a deterministic description derived from a hash of the image
bytes and the prompt (plus the image size for PNG and JPEG), so identical
requests get identical answers. ``stream: true`` sends server-sent events spread
over the request's service time. ``/health`` answers 503 until the simulated
model load (``startup_seconds``) is over. ``time_scale`` divides every duration.

Requests are checked by the real server's own code
(:func:`vlm_operator.model_server.parse_chat_request`: roles, part types,
sampling ranges, ``n``, reserved tokens, base64 ``data:`` URLs, a system
message first, as Qwen3-VL's chat template needs it) and errors are
the real server's OpenAI error objects, through its error middleware, so a
client that works against the fake works against the real server. That code
needs neither torch nor Pillow (this runs in the operator's image): images are
checked as base64 only, not decoded. Any ``model`` name is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import random
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from vlm_operator.latency import LatencyModel, ProcessorSharing
from vlm_operator.model_server._app import (
    error_middleware,
    error_response,
    model_not_found,
    model_object,
)
from vlm_operator.model_server._requests import (
    MAX_BODY_BYTES,
    ChatRequest,
    Limits,
    RequestError,
    parse_chat_request,
    parse_json_body,
)

__all__ = ["FakeModel", "FakeModelConfig", "create_app", "image_size", "serve"]

_WORDS = (
    ("a small", "a large", "a bright", "a dim", "a colourful", "a quiet", "a busy", "an old"),
    ("kitchen", "street", "garden", "harbour", "office", "forest", "market", "beach"),
    ("with", "next to", "behind", "under", "beside", "in front of", "near", "around"),
    (
        "a red bicycle",
        "two people",
        "a wooden table",
        "a sleeping cat",
        "parked cars",
        "a tall tree",
        "a stack of books",
        "a blue door",
    ),
    (
        "in the morning light",
        "at dusk",
        "under an overcast sky",
        "on a sunny day",
        "at night",
        "in soft light",
        "after rain",
        "in winter",
    ),
)


@dataclass(frozen=True)
class FakeModelConfig:
    model_id: str = "Qwen/Qwen3-VL-2B-Instruct"
    host: str = "127.0.0.1"
    port: int = 8080
    base_seconds: float = 6.2
    alpha: float = 0.185
    sigma: float = 0.1
    time_scale: float = 1.0
    startup_seconds: float = 60.0
    seed: int | None = None

    def latency_model(self) -> LatencyModel:
        return LatencyModel(
            base_seconds=self.base_seconds,
            alpha=self.alpha,
            sigma=self.sigma,
            time_scale=self.time_scale,
        )


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header, None for anything else."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return width, height
        i += 2 + length
    return None


def _prompt(chat: ChatRequest) -> str:
    """The request's text, every message's in order."""
    texts: list[str] = []
    for message in chat.messages:
        content = message["content"]
        if isinstance(content, str):
            texts.append(content)
        else:
            texts += [part["text"] for part in content if part["type"] == "text"]
    return "\n".join(texts)


def describe(prompt: str, images: list[bytes]) -> str:
    """A deterministic description of the images under the prompt."""
    digest = hashlib.sha256(prompt.encode())
    for image in images:
        digest.update(hashlib.sha256(image).digest())
    h = digest.digest()
    words = [choices[h[k] % len(choices)] for k, choices in enumerate(_WORDS)]
    text = f"The image shows {words[0]} {words[1]} {words[2]} {words[3]}, {words[4]}."
    sizes = [s for s in (image_size(image) for image in images) if s is not None]
    if sizes:
        text += " " + ", ".join(f"{w}×{h} pixels" for w, h in sizes) + "."
    elif not images:
        text = f"No image was given. {text}"
    return text


class FakeModel:
    """The shared pod of one server: a processor-sharing engine and its clock task."""

    def __init__(self, config: FakeModelConfig) -> None:
        self.config = config
        self.latency = config.latency_model()
        self._rng = random.Random(config.seed)
        self._pod: ProcessorSharing[int] = ProcessorSharing(config.alpha)
        self._waiters: dict[int, asyncio.Future[float]] = {}
        self._changed = asyncio.Event()
        self._next_key = 0
        self._ready_at = 0.0
        self.start()

    def start(self) -> None:
        """Begin the simulated model load now."""
        self._ready_at = time.monotonic() + self.config.startup_seconds / self.config.time_scale

    @property
    def in_flight(self) -> int:
        """Requests inside the shared pod now."""
        return len(self._pod)

    @property
    def ready(self) -> bool:
        return time.monotonic() >= self._ready_at

    def retry_after(self) -> str:
        """Whole seconds until the simulated load is over (at least 1)."""
        return str(max(1, math.ceil(self._ready_at - time.monotonic())))

    def sample_work(self) -> float:
        return self.latency.sample_work(self._rng)

    async def work(self, seconds: float) -> float:
        """Take ``seconds`` of solo work, shared with everyone else inside.

        Returns the loop time at which the work was found finished.
        """
        loop = asyncio.get_running_loop()
        key = self._next_key
        self._next_key += 1
        done: asyncio.Future[float] = loop.create_future()
        self._waiters[key] = done
        self._pod.admit(key, seconds, loop.time())
        self._changed.set()
        try:
            return await done
        except asyncio.CancelledError:
            self._waiters.pop(key, None)
            if self._pod.remove(key, loop.time()):
                self._changed.set()
            raise

    def _finish(self, keys: list[int], at: float) -> None:
        for key in keys:
            waiter = self._waiters.pop(key, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(at)

    async def run(self) -> None:
        """The clock: finish whoever is done, sleep until the next completion or change."""
        loop = asyncio.get_running_loop()
        pod = self._pod
        while True:
            now = loop.time()
            # Finish in order at the exact completion instants, not at the (later)
            # moment this task woke up, so a late wake-up is not charged to anyone.
            for _ in range(len(pod) + 1):
                upcoming = pod.next_completion()
                if upcoming is None or upcoming[0] > now:
                    break
                self._finish(pod.advance(upcoming[0]), upcoming[0])
            self._finish(pod.advance(now), now)
            self._changed.clear()
            upcoming = pod.next_completion()
            delay = None if upcoming is None else max(0.0, upcoming[0] - loop.time())
            try:
                async with asyncio.timeout(delay):
                    await self._changed.wait()
            except TimeoutError:
                pass


FAKE_MODEL = web.AppKey("fake_model", FakeModel)
#: The real server's defaults: the same requests pass and fail on both.
_LIMITS = Limits()


def _completion_id(text: str) -> str:
    return "chatcmpl-" + hashlib.sha256(text.encode()).hexdigest()[:24]


def _loading(model: FakeModel) -> web.Response:
    error = RequestError(
        "the model is still loading", status=503, type_="server_error", code="loading"
    )
    return error_response(error, headers={"Retry-After": model.retry_after()})


async def _chat(request: web.Request) -> web.StreamResponse:
    model = request.app[FAKE_MODEL]
    if not model.ready:
        return _loading(model)
    chat = parse_chat_request(parse_json_body(await request.read()), _LIMITS, open_images=False)
    prompt = _prompt(chat)
    images = [image.data for image in chat.images]
    text = describe(prompt, images)
    words = text.split(" ")
    finish = "stop"
    if len(words) > chat.max_new_tokens:  # max_tokens or max_completion_tokens cut it
        words = words[: chat.max_new_tokens]
        text = " ".join(words)
        finish = "length"
    prompt_tokens = len(prompt.split()) + 256 * len(images)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(words),
        "total_tokens": prompt_tokens + len(words),
    }
    work = model.sample_work()
    model_id = chat.model or model.config.model_id
    created = int(time.time())
    ident = _completion_id(text + str(created))
    if not chat.stream:
        await model.work(work)
        return web.json_response(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model_id,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
            }
        )
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)

    def event(delta: dict[str, str] | None, finish: str | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_id,
            "choices": [],
        }
        if delta is None:  # the usage chunk, after the last choice, as OpenAI sends it
            chunk["usage"] = usage
        else:
            chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    await response.write(event({"role": "assistant", "content": ""}))
    # The work is split evenly over the tokens, each a share of the pod's time.
    # Between two shares the request is briefly outside the pod (sending the
    # chunk); that time is credited as progress, so the stream ends when the
    # whole answer would have.
    loop = asyncio.get_running_loop()
    share = work / len(words)
    credit = 0.0
    finished_at: float | None = None
    for k, word in enumerate(words):
        if finished_at is not None:
            credit += (loop.time() - finished_at) / model.latency.slowdown(model.in_flight + 1)
        spent = min(credit, share)
        credit -= spent
        finished_at = await model.work(share - spent)
        await response.write(event({"content": word if k == 0 else " " + word}))
    await response.write(event({}, finish))
    if chat.include_usage:
        await response.write(event(None))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def _models(request: web.Request) -> web.Response:
    model_id = request.app[FAKE_MODEL].config.model_id
    return web.json_response({"object": "list", "data": [model_object(model_id, 0)]})


async def _model(request: web.Request) -> web.Response:
    served = request.app[FAKE_MODEL].config.model_id
    model_id = request.match_info["model_id"]
    if model_id != served:
        raise model_not_found(model_id, served)
    return web.json_response(model_object(model_id, 0))


async def _health(request: web.Request) -> web.Response:
    model = request.app[FAKE_MODEL]
    if model.ready:
        return web.json_response({"status": "ok"})
    return web.json_response(
        {"status": "loading"}, status=503, headers={"Retry-After": model.retry_after()}
    )


def create_app(config: FakeModelConfig) -> web.Application:
    """The fake model as an aiohttp application (its clock runs with the app)."""
    # The real server's body bound: parsing 256 MiB of JSON blocked the loop for seconds.
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[error_middleware])
    model = FakeModel(config)
    app[FAKE_MODEL] = model

    async def clock(app: web.Application) -> AsyncIterator[None]:
        model.start()
        task = asyncio.create_task(model.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(clock)
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/v1/models/{model_id:.+}", _model)
    app.router.add_get("/health", _health)
    return app


async def serve(config: FakeModelConfig) -> int:
    """Serve until SIGTERM/SIGINT, then return 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(create_app(config), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=1024)
    await site.start()
    host, port = runner.addresses[0][:2] if runner.addresses else (config.host, config.port)
    print(f"vlm-operator fake-model: listening on http://{host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0
