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
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import random
import signal
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from vlm_operator.latency import LatencyModel, ProcessorSharing

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


class BadRequest(ValueError):
    """The request cannot be served; the message names the field and the reason."""


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


def _decode_data_url(url: str, where: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep:
        raise BadRequest(f"{where}: data URL has no ',' separating header and data")
    if header.endswith(";base64"):
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequest(f"{where}: undecodable base64 image data ({exc})") from None
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    if not data:
        raise BadRequest(f"{where}: empty image")
    return data


def _parse_chat(payload: Any) -> tuple[str, list[bytes], bool, int | None]:
    """(prompt text, image bytes, stream?, max_tokens) of a chat request."""
    if not isinstance(payload, dict):
        raise BadRequest("body: must be a JSON object")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: must be a non-empty list")
    texts: list[str] = []
    images: list[bytes] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}]: must be an object")
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        if content is None:
            continue
        if not isinstance(content, list):
            raise BadRequest(f"messages[{i}].content: must be a string or a list of parts")
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            if not isinstance(part, dict):
                raise BadRequest(f"{where}: must be an object")
            if part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif part.get("type") == "image_url":
                image_url = part.get("image_url")
                url = image_url.get("url") if isinstance(image_url, dict) else image_url
                if not isinstance(url, str) or not url:
                    raise BadRequest(f"{where}.image_url.url: must be a non-empty string")
                if url.startswith("data:"):
                    images.append(_decode_data_url(url, f"{where}.image_url.url"))
                else:
                    images.append(url.encode())  # no fetching: the URL itself is the input
    max_tokens = payload.get("max_tokens")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise BadRequest("max_tokens: must be a positive integer")
    return "\n".join(texts), images, bool(payload.get("stream")), max_tokens


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


def _error(status: int, message: str, code: str) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return web.json_response(
        {"error": {"message": message, "type": kind, "code": code}}, status=status
    )


def _completion_id(text: str) -> str:
    return "chatcmpl-" + hashlib.sha256(text.encode()).hexdigest()[:24]


async def _chat(request: web.Request) -> web.StreamResponse:
    model = request.app[FAKE_MODEL]
    if not model.ready:
        return _error(503, "the model is still loading", "loading")
    raw = await request.read()
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return _error(400, f"body: not valid JSON ({exc})", "invalid_json")
    try:
        prompt, images, stream, max_tokens = _parse_chat(payload)
    except BadRequest as exc:
        return _error(400, str(exc), "invalid_request")
    text = describe(prompt, images)
    words = text.split(" ")
    if max_tokens is not None:
        words = words[:max_tokens]
        text = " ".join(words)
    work = model.sample_work()
    model_id = str(payload.get("model") or model.config.model_id)
    created = int(time.time())
    ident = _completion_id(text + str(created))
    if not stream:
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
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": len(prompt.split()) + 256 * len(images),
                    "completion_tokens": len(words),
                    "total_tokens": len(prompt.split()) + 256 * len(images) + len(words),
                },
            }
        )
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)

    def event(delta: dict[str, str], finish: str | None = None) -> bytes:
        chunk = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_id,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
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
    await response.write(event({}, "stop"))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def _models(request: web.Request) -> web.Response:
    model_id = request.app[FAKE_MODEL].config.model_id
    return web.json_response(
        {
            "object": "list",
            "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "vlm-operator"}],
        }
    )


async def _health(request: web.Request) -> web.Response:
    if request.app[FAKE_MODEL].ready:
        return web.json_response({"status": "ok"})
    return web.json_response({"status": "loading"}, status=503)


def create_app(config: FakeModelConfig) -> web.Application:
    """The fake model as an aiohttp application (its clock runs with the app)."""
    app = web.Application(client_max_size=256 * 1024 * 1024)
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
