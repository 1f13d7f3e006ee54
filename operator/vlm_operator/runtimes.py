"""Runtime presets: how each runtime's model container is spelled.

A VLMService names a runtime (``spec.model.runtime``) and may override its
image, command, port, health path, and append arguments and environment. This
module turns that into one :class:`ModelContainer`: the image, the command
line, the environment, where the server listens inside the pod and how long
it may take to load the model. :mod:`vlm_operator.render` wraps it in a pod.

Every model server listens on 127.0.0.1 only: the gate sidecar is the pod's
single way in, so that no request can bypass the in-flight limit.

Timing budgets matter more than they look. The start-up budget is how long
after each start of the model its liveness probe waits (a float32 Transformers
load from a network volume takes minutes; a probe that starts earlier restarts
the load forever).

This module is pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vlm_operator import __version__
from vlm_operator.models import EnvVar, VLMServiceSpec, quantity_value

__all__ = [
    "DEFAULT_MODEL_PORT",
    "LLAMACPP_IMAGE",
    "MODEL_SERVER_IMAGE",
    "PRESETS",
    "ModelContainer",
    "RuntimePreset",
    "model_container",
    "overridden_env",
    "plain_number",
]

DEFAULT_MODEL_PORT = 8080
#: A fixed llama.cpp build, so that every pod of a fleet runs the same server (the
#: moving ``:server`` tag would mix builds as nodes pull it at different times). It
#: serves Qwen3-VL (b6887 on) and has ``--image-max-tokens`` (ggml-org/llama.cpp#16921);
#: ``model.image`` picks another.
LLAMACPP_IMAGE = "ghcr.io/ggml-org/llama.cpp:server-b8589"
MODEL_SERVER_IMAGE = f"ghcr.io/vlm-operator/model-server:{__version__}"

#: The model whose files the presets name when ``model.files`` leaves them empty.
QWEN3_VL_2B_ID = "Qwen/Qwen3-VL-2B-Instruct"
#: Default files of Qwen3-VL-2B-Instruct for each runtime, relative to the mount.
QWEN3_VL_2B_GGUF = "Qwen3VL-2B-Instruct-Q4_K_M.gguf"
QWEN3_VL_2B_MMPROJ = "mmproj-Qwen3VL-2B-Instruct-F16.gguf"
QWEN3_VL_2B_DIRECTORY = "Qwen3-VL-2B-Instruct"

#: Context tokens per llama-server slot: one 800x600 image is ~500 tokens for
#: Qwen3-VL (32 px per merged patch), plus the prompt and up to ~2k of answer.
LLAMACPP_CONTEXT_PER_SLOT = 4096
#: Tokens of one image at most (llama-server scales larger images down). Its own
#: cap for Qwen-VL is 4096, a whole slot: a phone photo (12 MP, ~11,900 tokens
#: at full size) would leave no room for the prompt and be refused. Half a slot
#: is about 2 MP, and bounds the vision encoder's CPU time per image.
LLAMACPP_IMAGE_MAX_TOKENS = LLAMACPP_CONTEXT_PER_SLOT // 2
#: The most slots llama-server runs (``LLAMA_MAX_SEQ``): more, and it exits at start.
LLAMACPP_MAX_SLOTS = 256
#: Bytes of llama-server's f16 KV cache per context token for Qwen3-VL-2B (28 layers,
#: 8 KV heads of 128, K and V at 2 bytes), all allocated when the server starts.
QWEN3_VL_2B_KV_BYTES_PER_TOKEN = 28 * 8 * 128 * 2 * 2
#: Its Q4_K_M weights, F16 projector and compute buffers, about.
QWEN3_VL_2B_GGUF_BASE_BYTES = 2 * 1024**3
#: Where the model server (``vlm-operator model-server``) reads each flag's default.
MODEL_SERVER_ENV_PREFIX = "VLM_MODEL_SERVER_"
#: llama-server's variable for each flag the preset passes (a flag wins over its variable).
_LLAMACPP_FLAG_ENV = {
    "-m": "LLAMA_ARG_MODEL",
    "--mmproj": "LLAMA_ARG_MMPROJ",
    "--host": "LLAMA_ARG_HOST",
    "--port": "LLAMA_ARG_PORT",
    "--parallel": "LLAMA_ARG_N_PARALLEL",
    "--ctx-size": "LLAMA_ARG_CTX_SIZE",
    "--alias": "LLAMA_ARG_ALIAS",
    "--threads": "LLAMA_ARG_THREADS",
}


@dataclass(frozen=True)
class RuntimePreset:
    """What a runtime brings by default."""

    name: str
    #: None: the operator's own image (fake), or spec.model.image (custom).
    image: str | None
    #: Longest model load the startup probe waits for.
    startup_budget_seconds: int
    #: Whether the server reads model files from spec.model.storage.
    needs_model_files: bool
    #: Whether the server runs with a read-only root filesystem (/tmp is writable).
    read_only_root: bool = True
    port: int = DEFAULT_MODEL_PORT
    health_path: str = "/health"


PRESETS: dict[str, RuntimePreset] = {
    "llamacpp": RuntimePreset(
        name="llamacpp",
        image=LLAMACPP_IMAGE,
        startup_budget_seconds=300,
        needs_model_files=True,
    ),
    "transformers": RuntimePreset(
        name="transformers",
        image=MODEL_SERVER_IMAGE,
        # float32 weights (~9 GB in memory) read from a network volume.
        startup_budget_seconds=900,
        needs_model_files=True,
    ),
    # The fake runtime's start-up budget is computed from spec.model.fake.
    "fake": RuntimePreset(
        name="fake",
        image=None,
        startup_budget_seconds=0,
        needs_model_files=False,
    ),
    "custom": RuntimePreset(
        name="custom",
        image=None,
        startup_budget_seconds=600,
        needs_model_files=False,
        # An unknown image may write anywhere.
        read_only_root=False,
    ),
}


@dataclass(frozen=True)
class ModelContainer:
    """The rendered model container, before it is wrapped in a pod."""

    runtime: str
    image: str
    command: list[str]
    args: list[str]
    env: list[dict[str, str]]
    port: int
    health_path: str
    startup_budget_seconds: int
    read_only_root: bool
    needs_model_files: bool

    @property
    def upstream(self) -> str:
        """URL the gate forwards to."""
        return f"http://127.0.0.1:{self.port}"


def startup_budget_seconds(spec: VLMServiceSpec) -> int:
    """Seconds the model may take to become ready: its startup probe's budget."""
    if spec.model.runtime == "fake":
        fake = spec.model.fake
        # Twice the simulated load, plus slack for the process itself to start.
        return math.ceil(2 * fake.startup_seconds / fake.time_scale) + 30
    return PRESETS[spec.model.runtime].startup_budget_seconds


def model_container(spec: VLMServiceSpec, *, operator_image: str) -> ModelContainer:
    """The model container of a VLMService, its preset with the spec's overrides."""
    model = spec.model
    preset = PRESETS[model.runtime]
    port = model.port or preset.port
    startup = startup_budget_seconds(spec)
    env: list[EnvVar] = [EnvVar(name="HOME", value="/tmp")]

    if model.runtime == "llamacpp":
        command = ["/app/llama-server"]
        args = _llamacpp_args(spec, port)
    elif model.runtime == "transformers":
        command = ["vlm-operator", "model-server"]
        mount = model.storage.mount_path.rstrip("/")
        args = [
            "--model",
            f"{mount}/{model.files.model or QWEN3_VL_2B_DIRECTORY}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            # One argument: an id that starts with "-" would read as an option.
            f"--model-id={model.id}",
            # One generation per request the gate lets in.
            "--max-concurrent",
            str(spec.concurrency.max_in_flight),
            # Every body the gate lets through, and no more.
            "--max-body-bytes",
            str(spec.concurrency.max_request_bytes),
        ]
        env += [EnvVar(name="HF_HOME", value="/tmp/huggingface")]
        threads = _pod_cores(spec)
        if threads is not None:
            # torch sizes its pool to the node's cores, not the pod's request.
            env += [EnvVar(name="OMP_NUM_THREADS", value=str(threads))]
    elif model.runtime == "fake":
        command = ["vlm-operator", "fake-model"]
        args = []
        fake = model.fake
        env += [
            EnvVar(name="VLM_FAKE_LISTEN", value=f"127.0.0.1:{port}"),
            EnvVar(name="VLM_FAKE_MODEL_ID", value=model.id),
            EnvVar(name="VLM_FAKE_BASE_SECONDS", value=plain_number(fake.base_seconds)),
            EnvVar(name="VLM_FAKE_ALPHA", value=plain_number(fake.alpha)),
            EnvVar(name="VLM_FAKE_TIME_SCALE", value=plain_number(fake.time_scale)),
            EnvVar(name="VLM_FAKE_STARTUP_SECONDS", value=plain_number(fake.startup_seconds)),
        ]
    else:  # custom
        command = []
        args = []

    image = model.image or preset.image or operator_image
    if model.command:
        command = list(model.command)
    return ModelContainer(
        runtime=model.runtime,
        image=image,
        command=command,
        args=args + list(model.args),
        env=_merged_env(env, model.env),
        port=port,
        health_path=model.health_path or preset.health_path,
        startup_budget_seconds=startup,
        read_only_root=preset.read_only_root,
        needs_model_files=preset.needs_model_files,
    )


def _llamacpp_args(spec: VLMServiceSpec, port: int) -> list[str]:
    model = spec.model
    mount = model.storage.mount_path.rstrip("/")
    parallel = spec.concurrency.max_in_flight
    args = [
        "-m",
        f"{mount}/{model.files.model or QWEN3_VL_2B_GGUF}",
        "--mmproj",
        f"{mount}/{model.files.mmproj or QWEN3_VL_2B_MMPROJ}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        # One slot per request the gate lets in: the gate queues the rest.
        "--parallel",
        str(parallel),
        # llama-server splits the context between the slots.
        "--ctx-size",
        str(LLAMACPP_CONTEXT_PER_SLOT * parallel),
        "--image-max-tokens",
        str(LLAMACPP_IMAGE_MAX_TOKENS),
        # No --metrics: the server listens on 127.0.0.1 and the gate answers /metrics
        # itself, so nothing could scrape it.
        "--alias",
        model.id,
    ]
    threads = _pod_cores(spec)
    if threads is not None:
        args += ["--threads", str(threads)]
    return args


def overridden_env(spec: VLMServiceSpec) -> dict[str, str]:
    """The variables of ``spec.model.env`` that a flag of the preset's command line
    overrides (the servers take a flag over its variable), each with that flag."""
    model = spec.model
    if model.runtime not in ("llamacpp", "transformers"):
        return {}
    rendered = model_container(spec, operator_image="")
    preset_args = rendered.args[: len(rendered.args) - len(model.args)]
    flags = {arg.split("=", 1)[0] for arg in preset_args if arg.startswith("-")}
    if model.runtime == "llamacpp":
        by_env = {_LLAMACPP_FLAG_ENV[f]: f for f in flags if f in _LLAMACPP_FLAG_ENV}
    else:
        by_env = {MODEL_SERVER_ENV_PREFIX + f[2:].upper().replace("-", "_"): f for f in flags}
    return {var.name: by_env[var.name] for var in model.env if var.name in by_env}


def _merged_env(preset: list[EnvVar], overrides: list[EnvVar]) -> list[dict[str, str]]:
    """The preset's environment with the spec's variables replacing same-named ones."""
    merged: dict[str, str] = {var.name: var.value for var in preset}
    for var in overrides:
        merged.pop(var.name, None)
        merged[var.name] = var.value
    return [{"name": name, "value": value} for name, value in merged.items()]


def _pod_cores(spec: VLMServiceSpec) -> int | None:
    """The model's cores: its CPU request, else its limit (which Kubernetes then
    also makes the request). Left alone, llama.cpp and torch size their thread
    pools to the node's cores, far more than a pod's share on a large node."""
    resources = spec.resources
    return _cpu_count(resources.requests.cpu or resources.limits.cpu)


def _cpu_count(quantity: str | None) -> int | None:
    """Whole cores of a CPU quantity (any the API server takes: ``2``, ``+2``, ``2e0``,
    ``2000m``, ``0.002k``), at least 1; None when unset or not a quantity."""
    if quantity is None:
        return None
    try:
        cores = float(quantity_value(quantity))
    except (ValueError, ArithmeticError):
        return None
    if not math.isfinite(cores):  # hundreds of digits: no machine has them
        return None
    return max(1, math.floor(cores))


def plain_number(value: float) -> str:
    """A number as people write it: 20 rather than 20.0, 0.185 as it is."""
    return str(int(value)) if float(value).is_integer() else repr(value)
