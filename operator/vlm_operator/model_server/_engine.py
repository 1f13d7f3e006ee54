"""Qwen3-VL on CPU with Transformers, float32: load once, generate per request.

The model is read from a local directory only (``local_files_only`` and
``HF_HUB_OFFLINE``): weights are provisioned into the pod's storage, never
fetched while serving. The directory is what ``save_pretrained`` or a hub
snapshot writes: config.json, safetensors, tokenizer files,
preprocessor_config.json and a chat template.

The prompt is built here rather than by ``Qwen3VLProcessor``, because that
processor insists on a video processor, and video processors need
torchvision, which has no CPU build to pair with this torch. The steps are the
processor's own: render the chat template, run the (PIL-backend) image
processor, expand each ``<|image_pad|>`` to one token per merged patch, and mark
those positions in ``mm_token_type_ids`` for multimodal RoPE. The expansion is
done on token ids (the pad is a special token: the tokenizer splits the text
around it), so the text is tokenized once and a prompt too long for the context
is refused before its images are processed: prompt and completion tokens must
fit the smaller of the model's ``max_position_embeddings`` and the server's
bound, or prefill time (quadratic) and the KV cache (about 229 KB per token on
the 2B model in float32) grow without limit. Each image's tokens are counted
from its size (read from its header) the way the processor will resize it
(``smart_resize``: sides rounded to patch × merge pixels, the area clamped to
the processor's min and max pixels), so that a request whose images overflow
the context is refused before a pixel is decoded: processing three
4096×4096 images takes over a GiB and seconds. A processor without those
attributes is run first and counted after, as its grid says.

What a client sent that still fails here is its fault, and a 400 naming the
field: an image Pillow cannot decode past its header (any exception, Pillow
raises a few kinds), messages the chat template refuses, a prompt whose image
tokens do not match its images (client text the parser let through that
still formed an ``<|image_pad|>``). A temperature below
:data:`GREEDY_BELOW` is greedy decoding: dividing the logits by 1e-300 gives
infinities, and sampling from them fails.

Threads: ``torch.set_num_threads`` sets the intra-op threads one generation
uses. Concurrent generations run in separate worker threads and each gets its
own OpenMP team, so ``threads × concurrent requests`` may exceed the cores;
see the command's help and docs/runtimes.md for the trade-off.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import jinja2
import torch
from transformers import (
    AutoImageProcessor,
    AutoModelForImageTextToText,
    AutoTokenizer,
    StoppingCriteria,
    StoppingCriteriaList,
    TextStreamer,
)

from vlm_operator.model_server._requests import (
    RESERVED_TOKENS,
    ChatRequest,
    ClientGone,
    RequestError,
)

log = logging.getLogger("vlm_operator.model_server")

_IMAGE_TOKEN = "<|image_pad|>"
#: Text of the system message that probes whether the template renders it.
_LATE_SYSTEM_PROBE = "probe: a system message after the first"
#: Temperatures below this decode greedily, as temperature 0 does.
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class Completion:
    """What one generation produced."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn), "length" (max tokens), "cancelled"


@dataclass
class PreparedInputs:
    """Model inputs of one request, built in a worker thread."""

    tensors: dict[str, Any]
    prompt_tokens: int


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set (the runtime preset sets it from the pod's CPU
    request), else every CPU this process may use."""
    try:
        from_env = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        from_env = 0
    return from_env if from_env > 0 else usable_cpus()


def usable_cpus() -> int:
    """CPUs this process may run on: affinity mask, then the cgroup v2 quota."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    count = count or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return count


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise ClientGone


class _Cancelled(StoppingCriteria):
    """Stops generation between tokens once the client has gone away."""

    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> Any:
        return torch.full((input_ids.shape[0],), self._event.is_set(), dtype=torch.bool)


class _CallbackStreamer(TextStreamer):
    """Hands each finished piece of text to a callback (word-safe, UTF-8-safe)."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None]) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self._on_text = on_text

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self._on_text(text)


class Engine:
    """A loaded model with its tokenizer, image processor and chat template."""

    def __init__(
        self, model: Any, tokenizer: Any, image_processor: Any, chat_template: str
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.chat_template = chat_template
        self._image_token_id = int(tokenizer.convert_tokens_to_ids(_IMAGE_TOKEN))
        self._merge = int(getattr(image_processor, "merge_size", 2))
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self._eos_ids = {int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None}
        self.max_position_embeddings = _max_position_embeddings(model)
        self.reserved_tokens = _reserved_tokens(tokenizer)
        self.renders_late_system = _renders_late_system(tokenizer, chat_template)

    def context_limit(self, max_context_tokens: int | None = None) -> int | None:
        """Prompt and completion tokens allowed: the model's, or the server's if lower."""
        bounds = [b for b in (self.max_position_embeddings, max_context_tokens) if b is not None]
        return min(bounds) if bounds else None

    @classmethod
    def load(cls, model_dir: Path, *, threads: int, max_image_tokens: int | None = None) -> Engine:
        """Read everything from ``model_dir`` (offline) and put the model in eval mode.

        ``max_image_tokens`` caps each image's tokens (see :func:`cap_image_tokens`).
        """
        torch.set_num_threads(threads)
        common: dict[str, Any] = {"local_files_only": True}
        tokenizer = AutoTokenizer.from_pretrained(model_dir, **common)
        # backend="pil": the torchvision backend is not installable on CPU here.
        auto_image_processor: Any = AutoImageProcessor  # untyped in transformers
        image_processor = auto_image_processor.from_pretrained(model_dir, backend="pil", **common)
        if max_image_tokens is not None:
            cap_image_tokens(image_processor, max_image_tokens)
        model: Any = AutoModelForImageTextToText.from_pretrained(
            model_dir, dtype=torch.float32, **common
        )
        model.eval()
        template = _chat_template(model_dir, tokenizer)
        return cls(model, tokenizer, image_processor, template)

    def prepare(
        self,
        request: ChatRequest,
        *,
        max_context_tokens: int | None = None,
        cancel: threading.Event | None = None,
    ) -> PreparedInputs:
        """Render and tokenize the prompt, process the images; raise RequestError
        for what the client got wrong (an undecodable image, a prompt too long),
        :class:`Cancelled` once ``cancel`` is set (the client left: the worker is
        the next request's)."""
        try:
            text = cast(
                str,
                self.tokenizer.apply_chat_template(
                    request.messages,
                    chat_template=self.chat_template,
                    tokenize=False,
                    add_generation_prompt=True,
                ),
            )
        except jinja2.TemplateSyntaxError:
            raise  # the server's template is broken: a 500, not the client's fault
        except jinja2.TemplateError as exc:
            raise RequestError(
                f"the model's chat template refuses these messages: {exc}", param="messages"
            ) from None
        ids: list[int] = self.tokenizer(text)["input_ids"]
        pads = [k for k, token in enumerate(ids) if token == self._image_token_id]
        if len(pads) != len(request.images):
            # The parser refuses image tokens in text; should some still form,
            # the client's text did it, and the pads no longer match the images.
            raise RequestError(
                f"the messages hold {len(pads)} {_IMAGE_TOKEN} tokens for "
                f"{len(request.images)} images: their text must not form {_IMAGE_TOKEN}",
                param="messages",
            )
        limit = self.context_limit(max_context_tokens)
        # Each image takes at least its one pad: too long already is refused now.
        self._check_context(len(ids), request.max_new_tokens, limit)
        tensors: dict[str, Any] = {}
        if request.images:
            predicted = self._predicted_image_tokens(request)
            if predicted is not None:
                # Counted from the images' sizes: refused before any pixel is decoded.
                prompt = len(ids) - len(pads) + sum(predicted)
                self._check_context(prompt, request.max_new_tokens, limit)
            rgb = []
            for item in request.images:
                _check_cancel(cancel)
                try:
                    if item.image is None:
                        raise ValueError("the request was parsed without opening its images")
                    rgb.append(self._as_processed(item.image))
                except Exception as exc:  # Pillow raises OSError, SyntaxError, ...
                    raise RequestError(f"the image cannot be decoded: {exc}", item.param) from None
                finally:
                    if item.image is not None:
                        # The decoded original is not needed past its scaled RGB copy:
                        # eight of 16 megapixels would otherwise stay for the whole answer.
                        item.image.close()
            _check_cancel(cancel)
            processed = self.image_processor(images=rgb, return_tensors="pt")
            images = len(rgb)
            del rgb  # the scaled copies: the processor's tensors are what is kept
            grid = processed["image_grid_thw"]
            counts = [int(grid[i].prod()) // self._merge**2 for i in range(images)]
            if predicted is not None and counts != predicted:
                # The check after the expansion still holds the bound.
                log.warning("image tokens predicted %s, processed %s", predicted, counts)
            expanded: list[int] = []
            start = 0
            for position, count in zip(pads, counts, strict=True):
                expanded += ids[start:position]
                expanded += [self._image_token_id] * count
                start = position + 1
            ids = expanded + ids[start:]
            self._check_context(len(ids), request.max_new_tokens, limit)
            tensors.update(pixel_values=processed["pixel_values"], image_grid_thw=grid)
        input_ids = torch.tensor([ids], dtype=torch.long)
        tensors.update(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            mm_token_type_ids=(input_ids == self._image_token_id).to(torch.int32),
        )
        return PreparedInputs(tensors=tensors, prompt_tokens=len(ids))

    def _predicted_image_tokens(self, request: ChatRequest) -> list[int] | None:
        """Each image's tokens from its size (its header's: nothing is decoded);
        None when the processor is not one whose resizing this knows."""
        counts: list[int] = []
        for item in request.images:
            count = None if item.image is None else self.image_tokens(*item.image.size)
            if count is None:
                return None
            counts.append(count)
        return counts

    def image_tokens(self, width: int, height: int) -> int | None:
        """Tokens of an image of that size: Qwen-VL's ``smart_resize`` with the
        processor's own patch size, merge size and pixel bounds (None: unknown)."""
        resized = self.processed_size(width, height)
        resize = _qwen_resize(self.image_processor)
        if resized is None or resize is None:
            return None
        factor = resize[0]
        return (resized[0] // factor) * (resized[1] // factor)

    def processed_size(self, width: int, height: int) -> tuple[int, int] | None:
        """(width, height) the processor scales an image of that size to (None: unknown)."""
        processor = self.image_processor
        resize = _qwen_resize(processor)
        if resize is None or getattr(processor, "do_resize", None) is not True:
            return None
        try:
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
        except ImportError:
            return None
        factor, min_pixels, max_pixels = resize
        try:
            resized_height, resized_width = smart_resize(
                height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels
            )
        except ValueError:  # an aspect ratio it refuses; the parser refuses those first
            return None
        return int(resized_width), int(resized_height)

    def _as_processed(self, image: Any) -> Any:
        """The image in RGB, already at the size the processor scales it to.

        Scaled here with the processor's own filter, as it would scale it, so its
        pixels are the same and the processor's resize is a copy; but each image is
        kept until the processor runs at that size, not at full size (eight
        16-megapixel photos held 400 MB). The original is the caller's to close."""
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        size = self.processed_size(*image.size)
        resample = getattr(self.image_processor, "resample", None)
        if size is not None and size != rgb.size and isinstance(resample, int):
            return rgb.resize(size, resample=int(resample))
        return rgb.copy() if rgb is image else rgb

    @staticmethod
    def _check_context(prompt_tokens: int, max_new_tokens: int, limit: int | None) -> None:
        if limit is not None and prompt_tokens + max_new_tokens > limit:
            raise RequestError.context_exceeded(
                f"this model's maximum context length is {limit} tokens, but the request "
                f"needs {prompt_tokens + max_new_tokens} ({prompt_tokens} in the messages, "
                f"{max_new_tokens} for the completion); shorten the messages or lower "
                "max_tokens"
            )

    def generate(
        self,
        request: ChatRequest,
        prepared: PreparedInputs,
        *,
        cancel: threading.Event,
        on_text: Callable[[str], None] | None = None,
    ) -> Completion:
        """Generate the answer; ``on_text`` receives the text as it is produced."""
        if cancel.is_set():
            return Completion("", prepared.prompt_tokens, 0, "cancelled")
        streamer = _CallbackStreamer(self.tokenizer, on_text) if on_text else None
        with torch.inference_mode():
            output = self.model.generate(
                **prepared.tensors,
                **self._sampling(request),
                stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]),
                streamer=streamer,
            )
        new_tokens = output[0, prepared.prompt_tokens :].tolist()
        text = cast(str, self.tokenizer.decode(new_tokens, skip_special_tokens=True))
        if cancel.is_set():
            reason = "cancelled"
        elif new_tokens and new_tokens[-1] in self._eos_ids:
            reason = "stop"
        else:
            reason = "length" if len(new_tokens) >= request.max_new_tokens else "stop"
        return Completion(text, prepared.prompt_tokens, len(new_tokens), reason)

    @staticmethod
    def _sampling(request: ChatRequest) -> dict[str, Any]:
        """Only what the request sets: generate() fills the rest from the model's
        generation_config.json (and, for greedy, ignores its sampling knobs quietly)."""
        sampling: dict[str, Any] = {"max_new_tokens": request.max_new_tokens}
        if request.temperature is not None and request.temperature < GREEDY_BELOW:
            sampling["do_sample"] = False
        elif request.temperature is not None or request.top_p is not None:
            sampling["do_sample"] = True
            if request.temperature is not None:
                sampling["temperature"] = request.temperature
            if request.top_p is not None:
                sampling["top_p"] = request.top_p
        return sampling


def _max_position_embeddings(model: Any) -> int | None:
    """The text model's context (Qwen3-VL keeps it in ``text_config``)."""
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for source in (text_config, config):
        value = getattr(source, "max_position_embeddings", None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _reserved_tokens(tokenizer: Any) -> tuple[str, ...]:
    """Every special token of the tokenizer, and the template's own markers."""
    tokens = set(RESERVED_TOKENS)
    tokens.update(str(t) for t in getattr(tokenizer, "all_special_tokens", ()))
    added = getattr(tokenizer, "added_tokens_decoder", {})
    tokens.update(str(t.content) for t in added.values() if getattr(t, "special", False))
    return tuple(sorted(t for t in tokens if t))


def cap_image_tokens(processor: Any, tokens: int) -> bool:
    """Scale larger images down to ``tokens`` each: the processor's max pixels.

    Qwen3-VL's own cap is 16,384 tokens (16.7 MP), minutes of vision encoder
    and prefill on a CPU for one photo, which a client cancelling cannot stop
    (cancellation is seen between generated tokens). A phone photo at 2,048
    tokens (about 2 MP, as the llama.cpp preset's ``--image-max-tokens``) still
    shows what it shows. False when the processor is not a Qwen-VL one (its
    own bounds stand) or its cap is lower already.
    """
    resize = _qwen_resize(processor)
    if resize is None:
        return False
    factor, _, max_pixels = resize
    cap = tokens * factor**2
    if max_pixels <= cap:
        return False
    size = processor.size
    if isinstance(size, dict):
        size["longest_edge"] = cap
    else:
        size.longest_edge = cap
    return True


def _qwen_resize(processor: Any) -> tuple[int, int, int] | None:
    """How a Qwen-VL image processor sizes images: (pixels per token side, least
    and most pixels of an image); None for a processor that is not one."""
    patch = getattr(processor, "patch_size", None)
    merge = getattr(processor, "merge_size", None)
    size = getattr(processor, "size", None)  # a SizeDict, or a dict in older releases
    min_pixels, max_pixels = (
        size.get(key) if isinstance(size, dict) else getattr(size, key, None)
        for key in ("shortest_edge", "longest_edge")
    )
    if (
        isinstance(patch, int)
        and isinstance(merge, int)
        and isinstance(min_pixels, int)
        and isinstance(max_pixels, int)
    ):
        return patch * merge, min_pixels, max_pixels
    return None


def _renders_late_system(tokenizer: Any, chat_template: str) -> bool:
    """Whether the template renders a system message that is not the first:
    Qwen3-VL's renders ``messages[0]``'s only and drops the others silently."""
    probe = [
        {"role": "user", "content": "hi"},
        {"role": "system", "content": _LATE_SYSTEM_PROBE},
        {"role": "user", "content": "hi"},
    ]
    try:
        text = tokenizer.apply_chat_template(
            probe, chat_template=chat_template, tokenize=False, add_generation_prompt=True
        )
    except Exception:  # refused (raise_exception, or worse): the parser refuses it, saying why
        return False
    return isinstance(text, str) and _LATE_SYSTEM_PROBE in text


def _chat_template(model_dir: Path, tokenizer: Any) -> str:
    """The processor's chat template (chat_template.jinja / .json), else the tokenizer's."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    as_json = model_dir / "chat_template.json"
    if as_json.is_file():
        template = json.loads(as_json.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str) and template:
            return template
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        return template
    raise ValueError(f"{model_dir} has no chat template (chat_template.jinja or .json)")
