"""Reading VLMServices from users, with errors that name the field.

pydantic reports a bad spec as a ``ValidationError`` whose locations are
tuples and whose messages speak Python ("Input should be a valid integer").
People (``vlm-operator render``) and the operator (the ``InvalidSpec``
condition) need one line per problem, naming the field the way the manifest
spells it: ``spec.autoscaling.minReplicas: must be >= 0, got -1``. This module
does that translation, and rejects input that is not a VLMService at all (not
YAML, not a mapping, another kind) just as clearly.

:func:`spec_warnings` adds the problems the schema cannot see but that would
leave a pod that never starts (a runtime that reads model files without any
model storage, a model port that collides with the gate's).

This module is pure.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from vlm_operator.contract import HELD_BODY_BYTES_CAP, held_body_bytes
from vlm_operator.models import (
    ABSOLUTE_PATH_PATTERN,
    API_VERSION,
    DNS_SUBDOMAIN_PATTERN,
    ENV_NAME_PATTERN,
    HTTP_URL_PATTERN,
    IMAGE_PATTERN,
    INSIDE_PATH_PATTERN,
    KIND,
    LABEL_VALUE_PATTERN,
    QUANTITY_PATTERN,
    VLMService,
    VLMServiceSpec,
    quantity_value,
)
from vlm_operator.runtimes import (
    LLAMACPP_CONTEXT_PER_SLOT,
    LLAMACPP_MAX_SLOTS,
    PRESETS,
    QWEN3_VL_2B_GGUF_BASE_BYTES,
    QWEN3_VL_2B_ID,
    QWEN3_VL_2B_KV_BYTES_PER_TOKEN,
    overridden_env,
    plain_number,
)
from vlm_operator.yamlio import YAMLError, load_documents

__all__ = [
    "NAME_PATTERN",
    "FieldError",
    "InvalidManifest",
    "field_errors",
    "load_services",
    "parse_service",
    "parse_spec",
    "quantity_bytes",
    "spec_warnings",
]

#: A VLMService's name names its Service: a DNS-1035 label.
NAME_PATTERN = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_NAME_MAX = 63


@dataclass(frozen=True)
class FieldError:
    """One problem: where (``spec.autoscaling.minReplicas``) and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class InvalidManifest(ValueError):
    """A manifest that is not a valid VLMService; ``errors`` lists every problem."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(error) for error in self.errors))


def field_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    """pydantic's errors as (camelCase path, reason) pairs."""
    found: list[FieldError] = []
    for error in exc.errors(include_url=False):
        path = _path(prefix, error["loc"])
        found.append(FieldError(path, _reason(error)))
    return found


def parse_spec(spec: Any, prefix: str = "spec") -> VLMServiceSpec:
    """A VLMService spec from a mapping; raises :class:`InvalidManifest`."""
    if not isinstance(spec, Mapping):
        raise InvalidManifest([FieldError(prefix, f"must be a mapping, got {_kind(spec)}")])
    try:
        return VLMServiceSpec.model_validate(dict(spec))
    except ValidationError as exc:
        raise InvalidManifest(field_errors(exc, prefix)) from None


def parse_service(document: Any, *, strict: bool = False) -> VLMService:
    """A whole VLMService from a mapping; raises :class:`InvalidManifest`.

    ``strict`` types the fields as the CRD's schema does (``port: "8000"`` is
    refused, not read as 8000): for manifests not yet through an API server.
    """
    if not isinstance(document, Mapping):
        raise InvalidManifest(
            [FieldError("", f"a VLMService must be a mapping, got {_kind(document)}")]
        )
    problems: list[FieldError] = []
    api_version, kind = document.get("apiVersion"), document.get("kind")
    if kind != KIND or api_version != API_VERSION:
        raise InvalidManifest(
            [
                FieldError(
                    "",
                    f"expected apiVersion: {API_VERSION} and kind: {KIND}, "
                    f"got apiVersion: {api_version!r} and kind: {kind!r}",
                )
            ]
        )
    metadata = document.get("metadata")
    if not isinstance(metadata, Mapping):
        problems.append(FieldError("metadata", "must be a mapping with a name"))
    else:
        problems += _name_errors(metadata.get("name"))
    try:
        if strict:
            service = VLMService.model_validate_json(_as_sent(document), strict=True)
        else:
            service = VLMService.model_validate(dict(document))
    except ValidationError as exc:
        problems += [e for e in field_errors(exc) if not e.path.startswith("metadata")]
    if problems:
        raise InvalidManifest(problems)
    return service


def load_services(text: str) -> list[VLMService]:
    """Every VLMService of a YAML stream, typed as the API server would type it;
    raises :class:`InvalidManifest`."""
    try:
        documents = load_documents(text, kubectl_numbers=True)
    except YAMLError as exc:
        raise InvalidManifest([FieldError("", str(exc))]) from None
    if not documents:
        raise InvalidManifest([FieldError("", "no VLMService in the input (it is empty)")])
    services: list[VLMService] = []
    for index, document in enumerate(documents):
        try:
            services.append(parse_service(document, strict=True))
        except InvalidManifest as exc:
            if len(documents) == 1:
                raise
            where = f"document {index + 1}"
            raise InvalidManifest(
                [
                    FieldError(f"{where}: {e.path}" if e.path else where, e.reason)
                    for e in exc.errors
                ]
            ) from None
    return services


def _as_sent(document: Mapping[Any, Any]) -> str:
    """The manifest as kubectl sends it to the API server: JSON, with YAML's dates as
    the strings they were written as, and whole floats (``4.0``) as the integers the
    API server's schema accepts them as. JSON cannot carry NaN or infinities, so
    they stay floats pydantic refuses in strict mode."""

    def sent(value: Any) -> Any:
        if isinstance(value, Mapping):
            # A key kubectl reads as a bool (y, on, true) is sent as JSON spells it.
            return {(str(k).lower() if isinstance(k, bool) else str(k)): sent(v)
                    for k, v in value.items()}  # fmt: skip
        if isinstance(value, list | tuple):
            return [sent(v) for v in value]
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, datetime.date):
            return value.isoformat()
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        return value

    return json.dumps(sent(document))


def spec_warnings(spec: VLMServiceSpec) -> list[FieldError]:
    """Problems the schema accepts but that leave pods that never become ready, or a
    setting that does nothing."""
    warnings: list[FieldError] = []
    model, storage = spec.model, spec.model.storage
    preset = PRESETS[model.runtime]
    has_source = any(s is not None for s in (storage.pvc, storage.host_path, storage.empty_dir))
    if preset.needs_model_files and not has_source:
        warnings.append(
            FieldError(
                "spec.model.storage",
                f"runtime {model.runtime} reads its model files from storage; "
                "set pvc, hostPath, or emptyDir with a download step",
            )
        )
    model_port = model.port or preset.port
    if model_port == spec.gate.port:
        warnings.append(
            FieldError(
                "spec.model.port",
                f"the model server and the gate would both listen on port {model_port}",
            )
        )
    if storage.download is not None and storage.pvc is not None and storage.pvc.read_only:
        warnings.append(
            FieldError(
                "spec.model.storage.pvc.readOnly",
                "the download step cannot write into a read-only claim; set readOnly: false",
            )
        )
    if storage.download is not None and not has_source:
        warnings.append(FieldError("spec.model.storage.download", "has no storage to write into"))
    monitoring = spec.monitoring
    interval = _duration_seconds(monitoring.interval)
    window = spec.metrics.window_seconds
    if monitoring.pod_monitor and window < RATE_WINDOW_SCRAPES * interval:
        # rate() needs two samples inside its window; with fewer than four scrapes
        # one late or failed scrape leaves it empty, and a rate that is missing
        # holds the replicas (never a scale-down).
        warnings.append(
            FieldError(
                "spec.metrics.windowSeconds",
                f"{window}s holds fewer than {RATE_WINDOW_SCRAPES} scrapes at the PodMonitor's "
                f"interval of {monitoring.interval}: the rates (P95, arrivals, errors) may read "
                f"empty, which holds the replicas; make it at least "
                f"{math.ceil(RATE_WINDOW_SCRAPES * interval)}s or scrape more often",
            )
        )
    gate_memory = _gate_memory_warning(spec)
    if gate_memory is not None:
        warnings.append(gate_memory)
    warnings += _model_files_warnings(spec)
    warnings += _runtime_warnings(spec)
    fallback = spec.autoscaling.missing_signals.fallback_replicas
    if (
        spec.autoscaling.missing_signals.action == "Fallback"
        and fallback is not None
        and fallback > spec.autoscaling.max_replicas
    ):
        warnings.append(
            FieldError(
                "spec.autoscaling.missingSignals.fallbackReplicas",
                f"{fallback} is above maxReplicas ({spec.autoscaling.max_replicas}): without "
                f"signals the fleet is raised to {spec.autoscaling.max_replicas} only",
            )
        )
    if spec.replicas is not None and spec.autoscaling.enabled:
        # `kubectl scale` (or an HPA) on the VLMService writes spec.replicas through
        # the scale subresource; with the autoscaler on, nothing would say it is moot.
        warnings.append(
            FieldError(
                "spec.replicas",
                f"{spec.replicas} is ignored while autoscaling is enabled (minReplicas and "
                "maxReplicas bound the fleet); set autoscaling.enabled: false to fix the count",
            )
        )
    return warnings


def _model_files_warnings(spec: VLMServiceSpec) -> list[FieldError]:
    """Empty file names stand for Qwen3-VL-2B-Instruct's files, whatever the model id says:
    another model's id then names those weights, or a pod that finds no such file."""
    model = spec.model
    if model.runtime not in ("llamacpp", "transformers") or model.id == QWEN3_VL_2B_ID:
        return []
    empty = ["model"] if not model.files.model else []
    if model.runtime == "llamacpp" and not model.files.mmproj:
        empty.append("mmproj")
    return [
        FieldError(
            f"spec.model.files.{name}",
            f"empty selects Qwen3-VL-2B-Instruct's {'projector' if name == 'mmproj' else 'files'}"
            f", not {model.id}'s; name the file inside {model.storage.mount_path}",
        )
        for name in empty
    ]


#: Directories of the model images (and of any Linux image) that a volume mounted over
#: them would hide: the server's binary, its interpreter or its libraries.
_IMAGE_DIRECTORIES = ("/app", "/bin", "/etc", "/lib", "/lib64", "/sbin", "/usr/lib", "/usr/local")


#: The field behind each flag of a preset's command line.
_FLAG_FIELDS = {
    "--parallel": "spec.concurrency.maxInFlight",
    "--max-concurrent": "spec.concurrency.maxInFlight",
    "--max-body-bytes": "spec.concurrency.maxRequestBytes",
    "--alias": "spec.model.id",
    "--model-id": "spec.model.id",
    "-m": "spec.model.files.model",
    "--model": "spec.model.files.model",
    "--mmproj": "spec.model.files.mmproj",
    "--port": "spec.model.port",
}


def _runtime_warnings(spec: VLMServiceSpec) -> list[FieldError]:
    """Settings the runtime's server ignores, refuses at start, or cannot hold in memory."""
    model, warnings = spec.model, []
    slots = spec.concurrency.max_in_flight
    if model.runtime == "llamacpp":
        if slots > LLAMACPP_MAX_SLOTS:
            warnings.append(
                FieldError(
                    "spec.concurrency.maxInFlight",
                    f"{slots} slots (llama-server's --parallel): it runs at most "
                    f"{LLAMACPP_MAX_SLOTS} and exits at start, so no pod would become ready",
                )
            )
        if "," in model.id:
            warnings.append(
                FieldError(
                    "spec.model.id",
                    f"{model.id!r} is llama-server's --alias, which it splits at commas: "
                    "its answers would name another model than clients ask for",
                )
            )
        warnings += _llamacpp_memory_warning(spec)
    if model.files.mmproj and model.runtime != "llamacpp":
        warnings.append(
            FieldError(
                "spec.model.files.mmproj",
                f"only the llamacpp runtime reads a projector file; {model.runtime} ignores it",
            )
        )
    if model.files.model and not PRESETS[model.runtime].needs_model_files:
        warnings.append(
            FieldError(
                "spec.model.files.model",
                f"the {model.runtime} runtime reads no model file; it is ignored"
                + (" (name the files in args)" if model.runtime == "custom" else ""),
            )
        )
    for name, flag in overridden_env(spec).items():
        index = next(i for i, var in enumerate(model.env) if var.name == name)
        if flag == "--threads":
            how = "the model's CPU request; append --threads to spec.model.args instead"
        elif flag == "--ctx-size":
            how = "4096 tokens a slot; append --ctx-size (all slots') to spec.model.args instead"
        elif flag in _FLAG_FIELDS:
            how = f"set {_FLAG_FIELDS[flag]} instead"
        else:
            how = "the gate reaches the server there"
        warnings.append(
            FieldError(
                f"spec.model.env[{index}]",
                f"{name} is overridden by the preset's {flag} on the command line: {how}",
            )
        )
    storage = model.storage
    if any(s is not None for s in (storage.pvc, storage.host_path, storage.empty_dir)):
        mount = storage.mount_path.rstrip("/") + "/"
        hidden = [d for d in _IMAGE_DIRECTORIES if (d + "/").startswith(mount)]
        if hidden:
            warnings.append(
                FieldError(
                    "spec.model.storage.mountPath",
                    f"{storage.mount_path} hides the image's {', '.join(hidden)} (its server, "
                    "interpreter or libraries, in most images): the model container would not "
                    "start; mount the files elsewhere, e.g. /models",
                )
            )
    return warnings


def _llamacpp_memory_warning(spec: VLMServiceSpec) -> list[FieldError]:
    """llama-server allocates every slot's KV cache when it starts: over the memory limit,
    the pod is OOM-killed before it serves anything. Estimated for the default weights
    (Qwen3-VL-2B) only; another model's cache is its own."""
    limit = spec.resources.limits.memory
    if spec.model.files.model or limit is None:
        return []
    limit_bytes = quantity_bytes(limit)
    slots = spec.concurrency.max_in_flight
    context = slots * LLAMACPP_CONTEXT_PER_SLOT
    args = spec.model.args
    for i, arg in enumerate(args):  # the last --ctx-size is the server's
        value = arg.split("=", 1)[1] if arg.startswith("--ctx-size=") else None
        if arg in ("--ctx-size", "-c") and i + 1 < len(args):
            value = args[i + 1]
        if value is not None and value.isdigit() and int(value) > 0:
            context = int(value)
    kv = context * QWEN3_VL_2B_KV_BYTES_PER_TOKEN
    needed = kv + QWEN3_VL_2B_GGUF_BASE_BYTES
    if limit_bytes is None or limit_bytes >= needed:
        return []
    gib = 1024**3
    return [
        FieldError(
            "spec.resources.limits.memory",
            f"{limit} is less than llama-server allocates at start for {slots} slots of "
            f"Qwen3-VL-2B: {kv / gib:.1f} GiB of KV cache ({context} tokens of context) and "
            f"about {QWEN3_VL_2B_GGUF_BASE_BYTES // gib} GiB of weights and buffers; raise it "
            f"to {math.ceil(needed / gib)}Gi or lower concurrency.maxInFlight",
        )
    ]


#: Scrapes a rate window should hold (Prometheus's rate() needs two samples).
RATE_WINDOW_SCRAPES = 4


#: An allowance for the gate's process besides the request bodies it holds (interpreter,
#: event loop, allocator slack): generous, so that the defaults (96 MiB of bodies, 256Mi)
#: raise no warning and a limit that can only be an OOM kill does.
GATE_BASE_MEMORY_BYTES = 128 * 1024 * 1024


def quantity_bytes(quantity: str) -> float | None:
    """A Kubernetes memory quantity (``256Mi``, ``1G``, ``1e9``) in bytes; None if unreadable."""
    try:
        return float(quantity_value(quantity))
    except ValueError:
        return None


def _gate_memory_warning(spec: VLMServiceSpec) -> FieldError | None:
    """The gate holds request bodies whole; a memory limit below them and its own process
    is an OOM kill that drops every request of the pod."""
    limit = spec.gate.resources.limits.memory
    if limit is None:
        return None
    limit_bytes = quantity_bytes(limit)
    c = spec.concurrency
    held = held_body_bytes(c.max_in_flight, c.queue_size, c.max_request_bytes)
    needed = GATE_BASE_MEMORY_BYTES + held
    if limit_bytes is None or limit_bytes >= needed:
        return None
    mib = 1024 * 1024
    return FieldError(
        "spec.gate.resources.limits.memory",
        f"{limit} is less than the gate may need: it holds up to {held // mib} MiB of request "
        f"bodies at once (concurrency.maxRequestBytes {c.max_request_bytes // mib} MiB; every "
        f"slot and queue place, at most {HELD_BODY_BYTES_CAP // mib} MiB, at least one body) "
        f"besides its own {GATE_BASE_MEMORY_BYTES // mib} MiB: raise it to "
        f"{math.ceil(needed / mib)}Mi or lower concurrency.maxRequestBytes",
    )


def _duration_seconds(duration: str) -> float:
    """A PodMonitor interval (``500ms``, ``5s``, ``1m``, as the schema allows) in seconds."""
    for unit, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if duration.endswith(unit):
            return float(duration[: -len(unit)]) * scale
    raise ValueError(f"not a duration: {duration!r}")


# ---------------------------------------------------------------------- internals


def _name_errors(name: Any) -> list[FieldError]:
    if not isinstance(name, str) or not name:
        return [FieldError("metadata.name", "required: it names the Deployment and Service")]
    if len(name) > _NAME_MAX or NAME_PATTERN.match(name) is None:
        return [
            FieldError(
                "metadata.name",
                f"must be a DNS-1035 label (at most {_NAME_MAX} lowercase letters, digits "
                f"and '-', starting with a letter), got {name!r}",
            )
        ]
    return []


def _path(prefix: str, loc: Sequence[int | str]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith("function-") or part in {"str", "int", "float", "bool"}:
            continue  # pydantic's names for validator and union branches, not fields
        else:
            path = f"{path}.{part}" if path else part
    return path


#: What a pattern means, in words: a regular expression is no explanation.
_PATTERN_WORDS = {
    QUANTITY_PATTERN: "must be a Kubernetes quantity such as 8, 500m or 12Gi",
    HTTP_URL_PATTERN: "must be an http(s) URL with a host and a numeric port if any",
    LABEL_VALUE_PATTERN: "must be a label value: empty, or at most 63 letters, digits, '-', "
    "'_' or '.', alphanumeric at both ends",
    DNS_SUBDOMAIN_PATTERN: "must be a DNS subdomain name: lowercase letters, digits, '-' and "
    "'.', alphanumeric at both ends",
    INSIDE_PATH_PATTERN: "must be a path inside the storage's mountPath: relative (no leading "
    "'/'), with no '..' segment",
    ABSOLUTE_PATH_PATTERN: "must be an absolute path with no '..' segment",
    IMAGE_PATTERN: "must be an image reference, with no blanks",
    ENV_NAME_PATTERN: "must be letters, digits, '-', '_' or '.', not starting with a digit",
}

_BOUNDS = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "string_too_short": "must have at least {min_length} characters",
    "string_too_long": "must have at most {max_length} characters",
    "string_pattern_mismatch": "must match {pattern}",
}


def _reason(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    context = error.get("ctx") or {}
    value = error.get("input")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind == "value_error":
        return str(context.get("error", error["msg"]))
    if kind in {"model_type", "model_attributes_type", "dict_type"}:
        return f"must be a mapping, got {_kind(value)}"
    if kind == "list_type":
        return f"must be a list, got {_kind(value)}"
    if kind == "string_pattern_mismatch" and context.get("pattern") in _PATTERN_WORDS:
        return f"{_PATTERN_WORDS[context['pattern']]}, got {value!r}"
    if kind == "literal_error":
        return f"must be one of {context.get('expected', '')}, got {value!r}"
    if kind in _BOUNDS and isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value!r}"  # no bound holds NaN or infinity
    if kind in _BOUNDS:
        bounds = {k: plain_number(v) if isinstance(v, float) else v for k, v in context.items()}
        return f"{_BOUNDS[kind].format(**bounds)}, got {value!r}"
    message = str(error["msg"])
    for python_words, plain in (
        ("Input should be", "must be"),
        ("Value should be", "must be"),
        ("String should", "must"),
    ):
        if message.startswith(python_words):
            message = plain + message[len(python_words) :]
            break
    if isinstance(value, str | int | float | bool) or value is None:
        return f"{message}, got {value!r}"
    return f"{message}, got {_kind(value)}"


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{type(value).__name__} {value!r}"
