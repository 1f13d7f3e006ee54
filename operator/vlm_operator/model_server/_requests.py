"""Parse and check OpenAI chat-completion requests before any model work.

Everything a client can get wrong is caught here, in the event loop and
cheaply, so that a bad request costs no worker thread and is answered
with a 400 whose ``param`` names the field (``messages[0].content[1].image_url``)
and whose message says why. Images are base64-decoded and their header read
(PIL opens lazily: width and height are known before a single pixel is
decoded), so a decompression bomb or an oversized photo is refused before it
takes memory. Only ``data:`` URLs are accepted: the server never fetches.

Text is refused when it cannot be encoded as UTF-8 (a lone surrogate, legal in
JSON, breaks the tokenizer) or when it contains a token the prompt builder
places itself (``<|im_start|>``: a client must not open a system turn of its
own). That check reads the text as the chat template renders it: a message's
consecutive text parts back to back (``"<|im_"`` + ``"end|>"`` is ``<|im_end|>``
to the tokenizer), while an image part between two texts is rendered as vision
tokens, which the tokenizer splits at. Text far longer than the context can
hold, or more messages and parts than it has tokens, is refused before it is
tokenized, so tokenizing is bounded too; the exact
count against the context is the engine's, after tokenizing.

A system (or developer) message is accepted only as the first message unless
the model's chat template renders one elsewhere (:attr:`Limits.late_system`,
which the engine finds out when it loads): Qwen3-VL's template renders only
``messages[0]`` as a system turn and drops any other without a word, so the
client would never learn that its instructions were ignored.

Every value is type-checked before it is compared, hashed or converted: JSON
gives lists and objects where strings were expected (unhashable) and integers
of thousands of digits (``float()`` of them overflows).

The fake model (:mod:`vlm_operator.fake_model`) checks requests with this same
code, in the operator's image, which has neither torch nor Pillow: Pillow is
imported only when an image is opened, and the fake asks for none.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import functools
import io
import itertools
import json
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

#: Tokens that the prompt builder places itself; a client's text must not
#: smuggle them in, or the image placeholders would no longer match the images.
VISION_TOKENS = ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>")
#: The chat template's turn markers: in a client's text they would end its turn
#: and open another (a system turn, say). The engine adds its tokenizer's own
#: special tokens to these once the model is loaded.
RESERVED_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", *VISION_TOKENS)
#: Characters of text one token can stand for, at most, in the bound applied
#: before tokenizing (English averages about 4; runs of spaces can go further,
#: and text that long is refused anyway).
CHARS_PER_TOKEN = 8
#: Largest request body both servers read (aiohttp answers 413 beyond it).
MAX_BODY_BYTES = 32 * 1024 * 1024

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
#: Request fields this server cannot honour: refusing them is honest, ignoring
#: them would silently change what the client asked for.
_UNSUPPORTED = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "stop",
    "logprobs",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
)
#: The image formats read. Others are refused before any pixel is decoded: some
#: of Pillow's plugins decode in ``Image.open`` (ICO holds a PNG of any size behind
#: a 16x16 header), on the event loop and before the pixel limit is checked.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
#: The processor's own limit (smart_resize): wider images cannot be patched.
_MAX_ASPECT_RATIO = 200


class ClientGone(Exception):
    """A request cancelled while it was being prepared (its client left, or the server
    stops): nothing to answer."""


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI-style error JSON."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        *,
        status: int = 400,
        type_: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.type = type_
        self.code = code

    @classmethod
    def context_exceeded(cls, message: str) -> RequestError:
        return cls(message, param="messages", code="context_length_exceeded")

    def to_json(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass(frozen=True)
class ImageInput:
    """An image's bytes and, unless parsed with ``open_images=False``, its
    decoded header; ``image.load()`` happens later, in a worker."""

    data: bytes
    param: str
    image: Image.Image | None = None


@dataclass(frozen=True)
class ChatRequest:
    """A checked request: messages in the chat template's format, images in order."""

    messages: list[dict[str, Any]]
    images: list[ImageInput]
    max_new_tokens: int
    temperature: float | None  # None: the model's generation_config decides
    top_p: float | None
    stream: bool
    include_usage: bool
    model: str | None = None


@dataclass(frozen=True)
class Limits:
    """Bounds a request must respect."""

    max_new_tokens: int = 512
    max_image_pixels: int = 4096 * 4096
    max_images: int = 8
    #: Prompt and completion tokens together: the model's context, or less.
    max_context_tokens: int = 32768
    reserved_tokens: tuple[str, ...] = RESERVED_TOKENS
    #: The chat template renders a system message that is not the first. False
    #: (Qwen3-VL's template drops those) until the engine has checked its own.
    late_system: bool = False

    @property
    def max_text_chars(self) -> int:
        """More text than this cannot fit the context: refused before tokenizing."""
        return CHARS_PER_TOKEN * self.max_context_tokens


def parse_json_body(raw: bytes) -> Any:
    """The decoded body; malformed or too deeply nested JSON is a 400."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise RequestError("the request body is not valid JSON: nested too deeply") from None


def parse_chat_request(body: Any, limits: Limits, *, open_images: bool = True) -> ChatRequest:
    """Check a decoded JSON body; raise :class:`RequestError` naming the field.

    ``open_images=False`` checks images as base64 ``data:`` URLs only (their
    bytes are in :attr:`ImageInput.data`), without Pillow.
    """
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    for name in _UNSUPPORTED:
        # Their defaults (0, an empty bias) ask for nothing this server does not do.
        if body.get(name) not in (None, False, [], "", {}):
            raise RequestError(f"{name!r} is not supported by this server", param=name)
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise RequestError("only response_format {'type': 'text'} is supported", "response_format")
    n = body.get("n", 1)
    # Compared, never hashed or converted: n may be any JSON value.
    if n not in (None, 1) or isinstance(n, bool):
        raise RequestError("only n=1 is supported", param="n")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("must be a string", param="model")

    messages, images = _parse_messages(body.get("messages"), limits, open_images)
    max_tokens = _max_tokens(body, limits)
    temperature = _number(body, "temperature", low=0.0, high=2.0)
    top_p = _number(body, "top_p", low=0.0, high=1.0)
    if top_p is not None and top_p == 0.0:
        raise RequestError("must be greater than 0", param="top_p")
    stream = body.get("stream")
    if stream is None:  # OpenAI's default, as for the other optional fields
        stream = False
    if not isinstance(stream, bool):
        raise RequestError("must be true or false", param="stream")
    include_usage = _stream_options(body.get("stream_options"), stream)
    return ChatRequest(
        messages=messages,
        images=images,
        max_new_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stream=stream,
        include_usage=include_usage,
        model=model,
    )


def _stream_options(options: Any, stream: bool) -> bool:
    """include_usage; as OpenAI, stream_options only go with ``stream: true``."""
    if options is None:
        return False
    if not isinstance(options, dict):
        raise RequestError("must be an object", param="stream_options")
    if not stream:
        raise RequestError("only allowed when stream is true", param="stream_options")
    include_usage = options.get("include_usage", False)
    if include_usage is None:
        return False
    if not isinstance(include_usage, bool):
        raise RequestError(
            f"must be true or false, got {_describe(include_usage)}",
            param="stream_options.include_usage",
        )
    return include_usage


class _TextBudget:
    """Counts the characters of text across a request against the context, and
    checks each run of text as the chat template will render it."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.chars = 0
        self.items = 0

    def count(self) -> None:
        """One more message or content part, at most as many as the context has tokens.

        A message renders tokens of the chat template (its role, its delimiters) that
        no character count sees, and a million empty ones would pass the characters'
        bound and cost the template and the tokenizer a minute and gigabytes before
        the exact count refused them. Text parts render back to back, adding none, but
        are bounded with them: the template's work grows with every part."""
        self.items += 1
        limit = self.limits.max_context_tokens
        if self.items > limit:
            raise RequestError.context_exceeded(
                f"the request holds more than {limit} messages and content parts; this "
                f"server takes at most as many as its context has tokens ({limit})"
            )

    def check(self, text: str, where: str) -> None:
        """One string: its length against the context, then that it is UTF-8.
        Reserved tokens are :meth:`check_run`'s, on the text as it is joined."""
        limits = self.limits
        # The length first: the two scans below are then bounded too.
        self.chars += len(text)
        if self.chars > limits.max_text_chars:
            raise RequestError.context_exceeded(
                f"the messages hold more than {limits.max_text_chars} characters of text, "
                f"more than this server's context of {limits.max_context_tokens} tokens can "
                "take; shorten the messages"
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RequestError(
                f"text must be valid Unicode: the lone surrogate {text[exc.start]!r} at "
                f"position {exc.start} cannot be encoded as UTF-8",
                param=where,
            ) from None

    def check_run(self, run: list[tuple[str, str]]) -> None:
        """Reserved tokens in ``run``, (text, param) pairs that the chat template
        renders back to back: a token split across two parts is still a token."""
        if not run:
            return
        joined = "".join(text for text, _ in run)
        match = _reserved_pattern(self.limits.reserved_tokens).search(joined)
        if match is None:
            return
        ends = list(itertools.accumulate(len(text) for text, _ in run))
        first = bisect.bisect_right(ends, match.start())
        last = bisect.bisect_right(ends, match.end() - 1)
        message = f"text must not contain the special token {match.group()}"
        if last != first:
            message += (
                ": the chat template joins a message's consecutive text parts, and the end "
                f"of this one with the start of {run[last][1]} forms it"
            )
        raise RequestError(message, param=run[first][1])


@functools.lru_cache(maxsize=8)
def _reserved_pattern(tokens: tuple[str, ...]) -> re.Pattern[str]:
    # Longest first, so that a token is reported rather than a prefix of it.
    alternatives = sorted({t for t in tokens if t}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, alternatives)) or r"(?!)")


def _parse_messages(
    raw: Any, limits: Limits, open_images: bool
) -> tuple[list[dict[str, Any]], list[ImageInput]]:
    if not isinstance(raw, list) or not raw:
        raise RequestError("must be a non-empty list of messages", param="messages")
    messages: list[dict[str, Any]] = []
    images: list[ImageInput] = []
    budget = _TextBudget(limits)
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        budget.count()
        if not isinstance(message, dict):
            raise RequestError("must be an object with role and content", param=where)
        role = message.get("role")
        # A list or an object is unhashable: the type first, then the lookup.
        if not isinstance(role, str) or role not in _ROLES:
            raise RequestError(
                f"role must be one of {sorted(_ROLES)}, got {_describe(role)}",
                param=f"{where}.role",
            )
        if _ROLES[role] == "system" and i > 0 and not limits.late_system:
            raise RequestError(
                f"a {role} message must be the first message: this model's chat template "
                "leaves it out anywhere else; put its instructions in the first message",
                param=f"{where}.role",
            )
        content = message.get("content")
        if isinstance(content, str):
            budget.check(content, f"{where}.content")
            budget.check_run([(content, f"{where}.content")])
            messages.append({"role": _ROLES[role], "content": content})
            continue
        if not isinstance(content, list) or not content:
            raise RequestError(
                "must be a string or a non-empty list of content parts", param=f"{where}.content"
            )
        parts: list[dict[str, Any]] = []
        run: list[tuple[str, str]] = []  # consecutive text parts: rendered as one text
        for j, part in enumerate(content):
            where_part = f"{where}.content[{j}]"
            budget.count()
            if not (isinstance(part, dict) and part.get("type") == "text"):
                # An image is rendered as vision tokens: the run of text ends here.
                budget.check_run(run)
                run = []
            parsed = _parse_part(part, where_part, images, budget, open_images)
            if parsed["type"] == "text":
                run.append((parsed["text"], f"{where_part}.text"))
            parts.append(parsed)
        budget.check_run(run)
        if role != "user" and any(p["type"] == "image" for p in parts):
            raise RequestError("images are accepted in user messages only", param=where)
        messages.append({"role": _ROLES[role], "content": parts})
    if messages[-1]["role"] == "assistant":
        raise RequestError("the last message must not be the assistant's", param="messages")
    return messages, images


def _parse_part(
    part: Any, where: str, images: list[ImageInput], budget: _TextBudget, open_images: bool
) -> dict[str, Any]:
    limits = budget.limits
    if not isinstance(part, dict):
        raise RequestError("must be an object with a type", param=where)
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise RequestError("must be a string", param=f"{where}.text")
        budget.check(text, f"{where}.text")
        return {"type": "text", "text": text}
    if kind == "image_url":
        if len(images) >= limits.max_images:
            raise RequestError(f"at most {limits.max_images} images per request", param=where)
        spec = part.get("image_url")
        url = spec.get("url") if isinstance(spec, dict) else spec
        param = f"{where}.image_url"
        if not isinstance(url, str):
            raise RequestError("must be an object with a url (a data: URL)", param=param)
        data = _image_bytes(url, param)
        image = _open_image(data, param, limits) if open_images else None
        images.append(ImageInput(data, param, image))
        return {"type": "image"}
    raise RequestError(
        f"type must be 'text' or 'image_url', got {_describe(kind)}", param=f"{where}.type"
    )


def _image_bytes(url: str, param: str) -> bytes:
    if not url.startswith("data:"):
        raise RequestError(
            "only base64 data: URLs are accepted (data:image/png;base64,...); "
            "the server does not fetch URLs",
            param=param,
        )
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise RequestError("the data: URL must be base64 (data:image/...;base64,...)", param)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(f"the image is not valid base64: {exc}", param=param) from None
    if not data:
        raise RequestError("the image is empty", param=param)
    return data


def _open_image(data: bytes, param: str, limits: Limits) -> Image.Image:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise RequestError(
            f"the data is not an image in a format the server reads ({', '.join(IMAGE_FORMATS)})",
            param,
        ) from None
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError, bomb errors...
        raise RequestError(f"the image cannot be read: {exc}", param=param) from None
    width, height = image.size
    if width < 1 or height < 1:
        raise RequestError(f"the image has no pixels ({width}x{height})", param=param)
    if width * height > limits.max_image_pixels:
        raise RequestError(
            f"the image is {width}x{height} = {width * height} pixels, more than the "
            f"server's limit of {limits.max_image_pixels}; downscale it",
            param=param,
        )
    if max(width, height) / min(width, height) > _MAX_ASPECT_RATIO:
        raise RequestError(
            f"the image is {width}x{height}: aspect ratio above {_MAX_ASPECT_RATIO}", param
        )
    return image


def _max_tokens(body: dict[str, Any], limits: Limits) -> int:
    name = (
        "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    )
    value = body.get(name)
    if value is None:
        return limits.max_new_tokens
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(f"must be an integer >= 1, got {_describe(value)}", param=name)
    # Clients often send a large round number; the server's bound wins quietly,
    # as a context-length cap does elsewhere. finish_reason "length" tells.
    return min(value, limits.max_new_tokens)


def _number(body: dict[str, Any], name: str, *, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f"must be a number, got {_describe(value)}", param=name)
    # An int is compared as it is: math.isfinite or float() of a JSON integer of
    # 400 digits raises OverflowError. Python compares int and float exactly.
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(f"must be a finite number, got {_describe(value)}", param=name)
    if not low <= value <= high:
        raise RequestError(
            f"must be between {low:g} and {high:g}, got {_describe(value)}", param=name
        )
    return float(value)


def _describe(value: Any) -> str:
    """A client's value for an error message: a scalar's repr, cut short (an
    integer may have thousands of digits), else its JSON type; never the repr
    of a list or object, which could be long or nested too deeply to print."""
    if value is None or isinstance(value, str | int | float):
        text = repr(value)
        return text if len(text) <= 40 else f"{text[:30]}... ({len(text)} characters)"
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, dict) else type(value).__name__
