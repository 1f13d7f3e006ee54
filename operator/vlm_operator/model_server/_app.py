"""The HTTP side: OpenAI-compatible routes, health, the upload page, serving.

The model loads in a background thread so that the server answers from its
first second: ``/health`` says 503 while loading (the gate and the kubelet
wait on it), chat requests get 503 with ``Retry-After``. A failed load stops
the process with status 1, so that Kubernetes shows the crash instead of a
pod that never becomes ready.

Generation runs in a bounded thread pool (``max_concurrent`` workers); the gate
in front already holds the pod to its in-flight limit, the pool is the
backstop. A client that disconnects cancels its handler (aiohttp handler
cancellation), which stops its generation between two tokens.

Every error is an OpenAI error object (``{"error": {"message", "type", "param",
"code"}}``), aiohttp's own (404, 405 with its ``Allow``, 413 saying the limit)
included. The fake model serves through the same middleware.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import importlib.resources
import json
import logging
import signal
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from vlm_operator.model_server._requests import (
    MAX_BODY_BYTES,
    ChatRequest,
    ClientGone,
    Limits,
    RequestError,
    parse_chat_request,
    parse_json_body,
)

if TYPE_CHECKING:
    from vlm_operator.model_server._engine import Completion, Engine

log = logging.getLogger("vlm_operator.model_server")

#: Seconds a client should wait before retrying while the model loads.
_RETRY_AFTER_LOADING = "10"


@dataclass(frozen=True)
class ServerConfig:
    """Everything the model server is told on its command line."""

    model_dir: Path
    model_id: str
    host: str = "127.0.0.1"
    port: int = 8080
    threads: int | None = None  # None: OMP_NUM_THREADS, else every usable CPU
    max_concurrent: int = 4
    max_new_tokens: int = 512
    max_image_pixels: int = 4096 * 4096
    #: Larger images are scaled down to this many tokens each (Qwen-VL processors).
    max_image_tokens: int = 2048
    max_images: int = 8
    max_body_bytes: int = MAX_BODY_BYTES
    #: Prompt plus completion tokens; the model's max_position_embeddings if lower.
    max_context_tokens: int = 32768

    def __post_init__(self) -> None:
        for name in (
            "max_concurrent",
            "max_new_tokens",
            "max_image_pixels",
            "max_image_tokens",
            "max_images",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_context_tokens <= self.max_new_tokens:
            raise ValueError(
                f"max_context_tokens ({self.max_context_tokens}) must be greater than "
                f"max_new_tokens ({self.max_new_tokens})"
            )
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")

    @property
    def limits(self) -> Limits:
        return Limits(
            max_new_tokens=self.max_new_tokens,
            max_image_pixels=self.max_image_pixels,
            max_images=self.max_images,
            max_context_tokens=self.max_context_tokens,
        )


@dataclass
class _State:
    config: ServerConfig
    load: Callable[[], Engine]
    executor: ThreadPoolExecutor
    started: int = field(default_factory=lambda: int(time.time()))
    engine: Engine | None = None
    #: The config's limits until the model loads (see __post_init__), then with its
    #: context, its special tokens and whether its template renders a late system message.
    limits: Limits = field(init=False)
    error: str | None = None
    failed: asyncio.Event = field(default_factory=asyncio.Event)
    cancels: set[threading.Event] = field(default_factory=set)

    def __post_init__(self) -> None:
        # Whether the template renders a late system message is not known yet:
        # such a request gets the 503 of loading, not a 400 the model might not give.
        self.limits = dataclasses.replace(self.config.limits, late_system=True)


_STATE = web.AppKey("model_server_state", _State)


def create_app(config: ServerConfig, load: Callable[[], Engine] | None = None) -> web.Application:
    """The aiohttp application; ``load`` builds the engine (default: from config)."""
    state = _State(
        config=config,
        load=load or functools.partial(_load_engine, config),
        executor=ThreadPoolExecutor(config.max_concurrent, thread_name_prefix="generate"),
    )
    # Room for the JSON around the images; the gate enforces the real bound.
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[error_middleware])
    app[_STATE] = state
    page = importlib.resources.files("vlm_operator") / "data" / "model_server" / "index.html"
    html = page.read_text(encoding="utf-8")

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html", charset="utf-8")

    app.router.add_get("/", index)
    app.router.add_get("/health", _health)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/v1/models/{model_id:.+}", _model)
    app.router.add_post("/v1/chat/completions", _chat)
    app.on_startup.append(_start_loading)
    app.on_cleanup.append(_stop)
    return app


async def serve(config: ServerConfig, stop: asyncio.Event | None = None) -> int:
    """Serve until SIGTERM/SIGINT (or ``stop``): 0; a failed model load: 1."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = create_app(config)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=30.0)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(
        f"vlm-operator model-server: listening on http://{host}:{port} "
        f"(model {config.model_id} from {config.model_dir}, loading)",
        flush=True,
    )
    failed = app[_STATE].failed
    stopping = asyncio.ensure_future(stop.wait())
    failing = asyncio.ensure_future(failed.wait())
    try:
        await asyncio.wait({stopping, failing}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        failing.cancel()
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    if failed.is_set():
        print(f"vlm-operator model-server: {app[_STATE].error}", file=sys.stderr, flush=True)
        return 1
    return 0


# ------------------------------------------------------------------------ loading


def _load_engine(config: ServerConfig) -> Engine:
    from vlm_operator.model_server._engine import Engine, default_threads

    return Engine.load(
        config.model_dir,
        threads=config.threads or default_threads(),
        max_image_tokens=config.max_image_tokens,
    )


async def _start_loading(app: web.Application) -> None:
    state = app[_STATE]
    loop = asyncio.get_running_loop()

    def done(engine: Engine | None, error: str | None) -> None:
        if engine is not None:
            config = state.config
            context = engine.context_limit(config.max_context_tokens) or config.max_context_tokens
            if context <= config.max_new_tokens:
                log.warning(
                    "the model's context (%d tokens) leaves no room for --max-new-tokens %d: "
                    "requests must set a lower max_tokens",
                    context,
                    config.max_new_tokens,
                )
            state.limits = dataclasses.replace(
                config.limits,
                max_context_tokens=context,
                reserved_tokens=engine.reserved_tokens,
                late_system=engine.renders_late_system,
            )
        state.engine = engine
        state.error = error
        if error is not None:
            state.failed.set()

    def load() -> None:
        began = time.monotonic()
        try:
            engine = state.load()
        except Exception as exc:  # any load failure ends the process, with its reason
            log.exception("loading the model from %s failed", state.config.model_dir)
            error = f"loading the model from {state.config.model_dir} failed: {exc}"
            loop.call_soon_threadsafe(done, None, error)
            return
        log.info("model loaded in %.1fs", time.monotonic() - began)
        loop.call_soon_threadsafe(done, engine, None)

    threading.Thread(target=load, name="load-model", daemon=True).start()


async def _stop(app: web.Application) -> None:
    state = app[_STATE]
    for cancel in list(state.cancels):
        cancel.set()
    state.executor.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------------- routes


def error_response(exc: RequestError, headers: dict[str, str] | None = None) -> web.Response:
    """The OpenAI error JSON of ``exc``."""
    return web.json_response(exc.to_json(), status=exc.status, headers=headers)


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Headers of aiohttp's exceptions that describe their plain-text body.
_BODY_HEADERS = frozenset({"content-type", "content-length", "content-encoding"})


@web.middleware
async def error_middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Every failure becomes an OpenAI-style error JSON; nothing crashes the server."""
    try:
        return await handler(request)
    except RequestError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        # The exception's own headers stay (Allow of a 405), not those of its text.
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in _BODY_HEADERS}
        return error_response(
            RequestError(_http_message(exc), status=exc.status, type_=kind), headers
        )
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(RequestError("internal error", status=500, type_="server_error"))


def _http_message(exc: web.HTTPException) -> str:
    """aiohttp's text when it says more than the reason (413: the limit)."""
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return f"{exc.method} is not allowed here; allowed: {allowed}"
    text = (exc.text or "").strip()
    if text and text != f"{exc.status}: {exc.reason}":
        return text
    return exc.reason


def model_object(model_id: str, created: int) -> dict[str, Any]:
    """One entry of ``/v1/models``, and the answer of ``/v1/models/{id}``."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": "vlm-operator"}


def model_not_found(model_id: str, served: str) -> RequestError:
    return RequestError(
        f"the model {model_id!r} does not exist; this server serves {served!r}",
        param="model",
        status=404,
        code="model_not_found",
    )


async def _health(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    if state.engine is not None:
        return web.json_response({"status": "ok", "model": state.config.model_id})
    status = "failed" if state.error else "loading"
    body = {"status": status, "model": state.config.model_id, "error": state.error}
    return web.json_response(body, status=503, headers={"Retry-After": _RETRY_AFTER_LOADING})


async def _models(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    model = model_object(state.config.model_id, state.started)
    return web.json_response({"object": "list", "data": [model]})


async def _model(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    model_id = request.match_info["model_id"]
    if model_id != state.config.model_id:
        raise model_not_found(model_id, state.config.model_id)
    return web.json_response(model_object(model_id, state.started))


async def _chat(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    body = parse_json_body(await request.read())
    chat = parse_chat_request(body, state.limits)
    if chat.model is not None and chat.model != state.config.model_id:
        raise model_not_found(chat.model, state.config.model_id)
    engine = state.engine
    if engine is None:
        error = RequestError(
            "the model is still loading", status=503, type_="server_error", code="loading"
        )
        return error_response(error, headers={"Retry-After": _RETRY_AFTER_LOADING})

    loop = asyncio.get_running_loop()
    cancel = threading.Event()
    state.cancels.add(cancel)
    limit = state.limits.max_context_tokens
    try:
        try:
            prepared = await loop.run_in_executor(
                state.executor,
                functools.partial(engine.prepare, chat, max_context_tokens=limit, cancel=cancel),
            )
        except ClientGone:
            # Its client left (then no one reads this) or the server stops.
            return error_response(
                RequestError(
                    "the request was cancelled: the server is stopping",
                    status=503,
                    type_="server_error",
                    code="cancelled",
                )
            )
        if chat.stream:
            return await _stream(request, state, engine, chat, prepared, cancel)
        completion = await loop.run_in_executor(
            state.executor, functools.partial(engine.generate, chat, prepared, cancel=cancel)
        )
        return web.json_response(_completion_body(state, completion))
    finally:
        # Reached on success too: setting it then is harmless. On cancellation
        # (client gone) it stops the worker between two tokens.
        cancel.set()
        state.cancels.discard(cancel)


async def _stream(
    request: web.Request,
    state: _State,
    engine: Engine,
    chat: ChatRequest,
    prepared: Any,
    cancel: threading.Event,
) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[str | None] = asyncio.Queue()

    def on_text(text: str) -> None:  # called in the worker thread
        loop.call_soon_threadsafe(pieces.put_nowait, text)

    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    chunk_id = _completion_id()

    async def send(delta: dict[str, Any], finish: str | None = None) -> None:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        await _send_event(response, _chunk(state, chunk_id, [choice]))

    await send({"role": "assistant", "content": ""})
    future = loop.run_in_executor(
        state.executor,
        functools.partial(engine.generate, chat, prepared, cancel=cancel, on_text=on_text),
    )
    # Texts are queued with call_soon_threadsafe before the future's result is,
    # so the sentinel arrives after the last piece.
    future.add_done_callback(lambda _: pieces.put_nowait(None))
    while (piece := await pieces.get()) is not None:
        await send({"content": piece})
    try:
        completion = await future
    except Exception:
        log.exception("generation failed")
        error = RequestError("generation failed", status=500, type_="server_error")
        await _send_event(response, error.to_json())
    else:
        await send({}, _finish_reason(completion))
        if chat.include_usage:
            await _send_event(response, {**_chunk(state, chunk_id, []), **_usage(completion)})
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def _send_event(response: web.StreamResponse, payload: dict[str, Any]) -> None:
    await response.write(b"data: " + json.dumps(payload).encode() + b"\n\n")


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def _finish_reason(completion: Completion) -> str:
    # "cancelled" only happens when nobody is listening any more.
    return "length" if completion.finish_reason == "length" else "stop"


def _usage(completion: Completion) -> dict[str, Any]:
    return {
        "usage": {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        }
    }


def _chunk(state: _State, chunk_id: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": state.config.model_id,
        "choices": choices,
    }


def _completion_body(state: _State, completion: Completion) -> dict[str, Any]:
    return {
        "id": _completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": state.config.model_id,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "finish_reason": _finish_reason(completion),
            }
        ],
        **_usage(completion),
    }
