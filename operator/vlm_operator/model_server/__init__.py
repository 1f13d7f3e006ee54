"""The reference model server: Qwen3-VL with Transformers, float32, on CPU.

This is the measured setup of the design (Transformers, float32, one model per
pod) behind an OpenAI-compatible API, so that the gate, the load generator and
any OpenAI client talk to it unchanged: ``/v1/chat/completions`` (text and
base64 ``image_url`` parts, ``stream: true`` as server-sent events),
``/v1/models``, ``/health`` (503 until the model is loaded) and a small upload
page at ``/``. It needs the ``model-server`` extra (torch, transformers,
pillow) to serve. Importing the package needs none of them (torch and
transformers are imported when the model loads, Pillow when an image is
opened): the fake model checks requests and shapes its errors with this
package's code, in the operator's image.

Public API::

    config = ServerConfig(model_dir=Path("/models/Qwen3-VL-2B-Instruct"), model_id="qwen3-vl")
    app = create_app(config)          # an aiohttp Application; loads in the background
    exit_code = await serve(config)   # until SIGTERM: 0; a failed model load: 1
"""

from vlm_operator.model_server._app import ServerConfig, create_app, serve
from vlm_operator.model_server._requests import (
    ChatRequest,
    ClientGone,
    Limits,
    RequestError,
    parse_chat_request,
)

__all__ = [
    "ChatRequest",
    "ClientGone",
    "Limits",
    "RequestError",
    "ServerConfig",
    "create_app",
    "parse_chat_request",
    "serve",
]
