"""The VLMService API: spec and status as pydantic models.

These models are the single source of truth for the API. The CRD's
openAPIV3Schema is generated from them (`vlm-operator crd`), the CLI validates
files with them, and the operator parses every object it reads through them.
Every field carries its description and its default here, and nowhere else.

Cross-field rules are written twice on purpose, in the same place: as a
pydantic validator (so the CLI and the operator report them with the field's
path) and as a CEL expression in ``x-kubernetes-validations`` (so the API
server rejects them before they are stored). Tests evaluate both on the same
good and bad examples so that they cannot drift apart.

This module is pure: it imports neither ``kubernetes``, ``kopf`` nor ``httpx``.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic.alias_generators import to_camel

GROUP = "vlm-operator.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "VLMService"
PLURAL = "vlmservices"
SINGULAR = "vlmservice"
SHORT_NAMES = ("vlms",)

#: Label put on every pod (and child object) of a VLMService; Prometheus
#: relabels it to the ``vlmservice`` label of the signals contract.
SERVICE_LABEL = f"{GROUP}/service"

Runtime = Literal["llamacpp", "transformers", "fake", "custom"]
MissingSignalsAction = Literal["Hold", "Fallback"]
LoadBalancing = Literal["RoundRobin", "LeastRequest"]

#: A Kubernetes resource quantity ("8", "500m", "12Gi"), as the API server's
#: own ``resource.Quantity`` pattern spells it, less the minus sign: the
#: quantities here are requests, limits and sizes, which a pod must not make
#: negative.
QUANTITY_PATTERN = (
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    # The exponent a whole number, as the API server's parser reads it (the
    # pattern documented with resource.Quantity lets "1e1.5" through, which the
    # parser then refuses).
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?[0-9]+))?$"
)

#: A label key: an optional DNS-subdomain prefix and "/", then a name of at most 63
#: characters (the API server's ValidateLabels).
LABEL_KEY_PATTERN = (
    r"^(([a-z0-9]([-a-z0-9]*[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
#: A label value: empty, or at most 63 characters of these, alphanumeric at both ends.
LABEL_VALUE_PATTERN = r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$"
#: A DNS subdomain (RFC 1123), as the names of priority classes and service accounts.
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: One path segment that is not "..": what a path may hold without escaping its root.
_SEGMENT = r"([^/.][^/]*|\.[^/.][^/]*|\.\.[^/]+|\.)"
#: A path relative to a mount that stays inside it (no leading "/", no ".." segment;
#: "a//b" is "a/b").
INSIDE_PATH_PATTERN = rf"^({_SEGMENT}(/+{_SEGMENT})*/*)?$"
#: An absolute path with no ".." segment (the API server's validatePathNoBacksteps).
ABSOLUTE_PATH_PATTERN = rf"^/+({_SEGMENT}(/+{_SEGMENT})*/*)?$"
#: An environment variable's name as the API server takes it before 1.34
#: (validateEnvVarName): letters, digits, "-", "_" and ".", not starting with a digit.
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
#: An image reference with no blank anywhere (the API server refuses them at the ends);
#: empty where the field means "the default image".
IMAGE_PATTERN = r"^[^ \t\n\r\f\v]*$"  # the ASCII blanks: Go's RE2 and pydantic agree on them

LabelValue = Annotated[str, StringConstraints(max_length=63, pattern=LABEL_VALUE_PATTERN)]


def _label_keys(labels: dict[str, str]) -> dict[str, str]:
    for key in labels:
        # A prefix of 253 at most, "/", a name of 63 (the pattern bounds the name).
        prefix = key.rpartition("/")[0]
        if len(prefix) > 253 or re.fullmatch(LABEL_KEY_PATTERN.strip("^$"), key) is None:
            raise ValueError(
                f"key {key!r} must be a label key: an optional DNS-subdomain prefix and '/', "
                "then at most 63 letters, digits, '-', '_' or '.', alphanumeric at both ends"
            )
    return labels


#: Labels as a selector or an object's metadata takes them. The schema checks the
#: values; the keys the operator checks (a rule over a map's keys is priced by the API
#: server at the request's size), and reports in the status and Events.
LabelMap = Annotated[dict[str, LabelValue], AfterValidator(_label_keys)]

#: Marks a string field that also takes an integer, like Kubernetes quantities.
INT_OR_STRING_KEY = "x-kubernetes-int-or-string"


def _integer_to_string(value: object) -> object:
    # YAML reads `cpu: 8` as an integer; Kubernetes takes both spellings.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


_QUANTITY_SUFFIXES = {
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{s: Decimal(10) ** e for s, e in (("n", -9), ("u", -6), ("m", -3), ("k", 3), ("M", 6))},
    **{s: Decimal(10) ** e for s, e in (("G", 9), ("T", 12), ("P", 15), ("E", 18))},
}


def quantity_value(quantity: str) -> Decimal:
    """The amount a quantity stands for ("1Gi" -> 1073741824); ValueError if it is none."""
    quantity = quantity.strip()
    if re.match(QUANTITY_PATTERN, quantity) is None:
        raise ValueError(f"not a quantity: {quantity!r}")
    for suffix in (quantity[-2:], quantity[-1:]):
        if suffix in _QUANTITY_SUFFIXES:
            return Decimal(quantity[: -len(suffix)]) * _QUANTITY_SUFFIXES[suffix]
    try:
        return Decimal(quantity)  # a plain number or one with an exponent ("1e3")
    except InvalidOperation:  # what the pattern passes Decimal reads; kept a ValueError anyway
        raise ValueError(f"not a quantity: {quantity!r}") from None


Quantity = Annotated[
    str,
    BeforeValidator(_integer_to_string),
    StringConstraints(pattern=QUANTITY_PATTERN),
    # The pattern is repeated for the schema: pydantic drops it from a union branch.
    # A quantity written as a number: the pattern refuses a negative string, this a number.
    Field(json_schema_extra={INT_OR_STRING_KEY: True, "pattern": QUANTITY_PATTERN, "minimum": 0}),
]

#: ``http(s)://[user@]host[:port][/path]``: a host (a name or a bracketed IPv6
#: address) and, if any, a port of 0-65535; the API server refuses the rest.
HTTP_URL_PATTERN = (
    r"^https?://([^\s/?#@]+@)?([^\s/?#@:\[\]]+|\[[0-9A-Fa-f:.]+\])"
    r"(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))?"
    r"([/?#]\S*)?$"
)


def _parses(url: str) -> str:
    # What the pattern lets through a client may still refuse (a bracketed host
    # that is no IPv6 address).
    try:
        urlsplit(url).port  # noqa: B018 - parsing is the check
    except ValueError as exc:
        raise ValueError(f"not a usable URL: {exc}") from None
    return url


HttpURL = Annotated[
    str,
    StringConstraints(pattern=HTTP_URL_PATTERN),
    AfterValidator(_parses),
]

#: ``x-kubernetes-validations`` rules attached to a model class, read by the
#: CRD generator. Key: the class; value: list of {rule, message, fieldPath?}.
CEL_KEY = "x-kubernetes-validations"


def _cel(*rules: dict[str, str]) -> dict[str, Any]:
    return {CEL_KEY: list(rules)}


class APIModel(BaseModel):
    """Base for every API object: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    def to_api(self) -> dict[str, Any]:
        """The object as it appears in a manifest (camelCase, no unset Nones)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# ----------------------------------------------------------------------- resources


class ResourceList(APIModel):
    """CPU and memory quantities."""

    cpu: Quantity | None = Field(default=None, description="CPU quantity, e.g. '8' or '500m'.")
    memory: Quantity | None = Field(default=None, description="Memory quantity, e.g. '12Gi'.")


class ResourceRequirements(APIModel):
    """Requests and limits of a container.

    A request over its limit is refused here, not in the schema (its CEL would
    need the API server's quantity extension): the API server refuses such a
    Deployment, naming the container, not this field.
    """

    requests: ResourceList = Field(default_factory=ResourceList, description="Requests.")
    limits: ResourceList = Field(default_factory=ResourceList, description="Limits.")

    @model_validator(mode="after")
    def _request_within_limit(self) -> ResourceRequirements:
        for name in ("cpu", "memory"):
            request, limit = getattr(self.requests, name), getattr(self.limits, name)
            over = request is not None and limit is not None
            if over and quantity_value(request) > quantity_value(limit):
                raise ValueError(
                    f"requests.{name} ({request}) is more than limits.{name} ({limit}): "
                    "a container may not request more than its limit"
                )
        return self


def _model_resources() -> ResourceRequirements:
    # Measured: 10.2 GB idle, +0.28 GB per request in flight (14.7 GB at 16).
    # At the default limit of 4 in flight that is ~11.3 GB: request 12Gi, and
    # keep the limit well above the 16-in-flight peak so a burst never OOMs.
    # No CPU limit: CFS throttling of a compute-bound model only adds latency.
    return ResourceRequirements(
        requests=ResourceList(cpu="8", memory="12Gi"),
        limits=ResourceList(memory="16Gi"),
    )


def _download_resources() -> ResourceRequirements:
    # A download streams files to disk: a core and little memory, with room for a
    # client that buffers a shard (a limit, so a runaway one does not starve the node).
    return ResourceRequirements(
        requests=ResourceList(cpu="1", memory="512Mi"),
        limits=ResourceList(memory="2Gi"),
    )


def _gate_resources() -> ResourceRequirements:
    # Measured: ~0.08 ms CPU per proxied request (~0.5 ms when idle between
    # requests) and ~55 MB RSS (docs/benchmarks.md, "Gate proxy overhead").
    return ResourceRequirements(
        requests=ResourceList(cpu="50m", memory="64Mi"),
        limits=ResourceList(memory="256Mi"),
    )


# --------------------------------------------------------------------------- model


class EnvVar(APIModel):
    """An environment variable for the model container."""

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=ENV_NAME_PATTERN,
        description="Variable name (letters, digits, -, _ and ., not starting with a digit).",
    )
    value: str = Field(default="", description="Variable value.")


class DownloadSpec(APIModel):
    """An init container that fills the model storage before the server starts."""

    image: str = Field(
        min_length=1, pattern=IMAGE_PATTERN, description="Image that downloads the model files."
    )
    command: list[str] = Field(
        default_factory=list, description="Command of the download container."
    )
    args: list[str] = Field(default_factory=list, description="Arguments of the download step.")
    env: list[EnvVar] = Field(
        default_factory=list, description="Environment of the download step (e.g. tokens)."
    )
    resources: ResourceRequirements = Field(
        default_factory=_download_resources,
        description=(
            "Resources of the download container. It runs before the model starts, so "
            "the pod's request is the larger of these and the model's and gate's together."
        ),
    )


class PersistentVolumeClaimSource(APIModel):
    """An existing PersistentVolumeClaim holding the model files."""

    claim_name: str = Field(min_length=1, max_length=253, description="Name of the claim.")
    read_only: bool = Field(
        default=True,
        description="Mount read-only. Set false only when a download step writes into it.",
    )


class HostPathSource(APIModel):
    """A directory on the node holding the model files (single-node clusters, labs)."""

    path: str = Field(
        pattern=ABSOLUTE_PATH_PATTERN,
        description="Absolute path on the node, with no '..' segment.",
    )


class EmptyDirSource(APIModel):
    """Scratch space per pod; needs a download step to be useful."""

    size_limit: Quantity | None = Field(
        default="20Gi",
        description=(
            "Size limit of the scratch volume, also requested as the model container's "
            "ephemeral-storage so that the scheduler places the pod where the disk is free."
        ),
    )


_TMP_MOUNT_MESSAGE = "/tmp is the model container's scratch volume; mount the model elsewhere"


class ModelStorage(APIModel):
    """Where the model files live. Exactly one of pvc, hostPath, emptyDir."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            {
                "rule": "[has(self.pvc), has(self.hostPath), has(self.emptyDir)]"
                ".filter(x, x).size() <= 1",
                "message": "set at most one of pvc, hostPath, emptyDir",
            },
            {
                "rule": "!has(self.emptyDir) || has(self.download)",
                "message": "emptyDir storage needs a download step to fill it",
            },
            {
                "rule": "!self.mountPath.matches('^/tmp/*$')",
                "message": _TMP_MOUNT_MESSAGE,
                "fieldPath": ".mountPath",
            },
        )
    )

    pvc: PersistentVolumeClaimSource | None = Field(
        default=None, description="Model files on an existing PersistentVolumeClaim."
    )
    host_path: HostPathSource | None = Field(
        default=None, description="Model files in a directory on the node."
    )
    empty_dir: EmptyDirSource | None = Field(
        default=None, description="Per-pod scratch space filled by the download step."
    )
    mount_path: str = Field(
        default="/models", pattern=r"^/", description="Where the storage is mounted."
    )
    download: DownloadSpec | None = Field(
        default=None, description="Optional init step that fills the storage."
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelStorage:
        chosen = [n for n in ("pvc", "host_path", "empty_dir") if getattr(self, n) is not None]
        if len(chosen) > 1:
            raise ValueError("set at most one of pvc, hostPath, emptyDir")
        if self.empty_dir is not None and self.download is None:
            raise ValueError("emptyDir storage needs a download step to fill it")
        if self.mount_path.rstrip("/") == "/tmp":
            raise ValueError(f"mountPath: {_TMP_MOUNT_MESSAGE}")
        return self


class FakeModelSpec(APIModel):
    """Parameters of the `fake` runtime's latency model (docs/design.md: processor sharing)."""

    base_seconds: float = Field(
        default=6.2, gt=0, le=3600, description="Solo service time of one request."
    )
    alpha: float = Field(
        default=0.185, ge=0, le=10, description="Contention: each extra request slows all by α."
    )
    startup_seconds: float = Field(
        default=60.0, ge=0, le=3600, description="Simulated model load time."
    )
    time_scale: float = Field(
        default=1.0,
        # A slower clock than a thousandth stretches the probes' delays past int32.
        ge=0.001,
        le=1000,
        description="Divides every duration (tests and demos run 10-50x faster).",
    )


class ModelFiles(APIModel):
    """Files of the model inside the storage mount, relative to mountPath."""

    model: str = Field(
        default="",
        max_length=1024,
        pattern=INSIDE_PATH_PATTERN,
        description=(
            "GGUF weights for llamacpp, or the model directory for transformers, relative "
            "to mountPath (no leading '/', no '..'). Empty selects the preset's files, "
            "which are Qwen3-VL-2B-Instruct's whatever model.id says."
        ),
    )
    mmproj: str = Field(
        default="",
        max_length=1024,
        pattern=INSIDE_PATH_PATTERN,
        description=(
            "Multimodal projector GGUF (llamacpp only), relative to mountPath; empty "
            "selects Qwen3-VL-2B-Instruct's."
        ),
    )


class ModelSpec(APIModel):
    """What to serve and with which runtime."""

    id: str = Field(
        min_length=1,
        max_length=253,
        # Servers strip or refuse blanks at the ends, and clients would not send them.
        pattern=r"^\S(.*\S)?$",
        description=(
            "Model id as clients name it in requests (e.g. Qwen/Qwen3-VL-2B-Instruct); "
            "one line, no blanks at either end."
        ),
    )
    runtime: Runtime = Field(
        default="llamacpp",
        description=(
            "Runtime preset: llamacpp (llama-server, GGUF; the fast CPU path), transformers "
            "(reference float32 server), fake (latency emulator for tests and demos), "
            "custom (any OpenAI-compatible image; set image and port)."
        ),
    )
    image: str | None = Field(
        default=None,
        pattern=IMAGE_PATTERN,
        description="Container image; empty selects the runtime preset's image.",
    )
    command: list[str] = Field(
        default_factory=list, description="Overrides the preset's entrypoint."
    )
    args: list[str] = Field(
        default_factory=list, description="Extra arguments appended to the preset's arguments."
    )
    env: list[EnvVar] = Field(
        default_factory=list, description="Extra environment for the model container."
    )
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Port the model server listens on inside the pod; empty: preset default.",
    )
    health_path: str | None = Field(
        default=None,
        pattern=r"^/",
        description="Health endpoint of the model server; unset: the runtime's default.",
    )
    files: ModelFiles = Field(
        default_factory=ModelFiles, description="Model files inside the storage."
    )
    storage: ModelStorage = Field(
        default_factory=ModelStorage, description="Where the model files live."
    )
    fake: FakeModelSpec = Field(
        default_factory=FakeModelSpec, description="Latency model of the fake runtime."
    )


class GateSpec(APIModel):
    """The gate sidecar in front of the model server."""

    image: str | None = Field(
        default=None,
        pattern=IMAGE_PATTERN,
        description="Gate image; empty uses the operator's own image.",
    )
    port: int = Field(
        default=8000, ge=1, le=65535, description="Port the gate listens on (the pod's only port)."
    )
    resources: ResourceRequirements = Field(
        default_factory=_gate_resources, description="Resources of the gate container."
    )


# --------------------------------------------------------------------- concurrency


class ConcurrencySpec(APIModel):
    """How much work a pod accepts. The gate enforces it; the autoscaler targets it."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            {
                "rule": "self.queueTimeoutSeconds > 0.0",
                "message": "queueTimeoutSeconds must be positive",
                "fieldPath": ".queueTimeoutSeconds",
            },
            {
                "rule": "self.responseTimeoutSeconds > 0.0",
                "message": "responseTimeoutSeconds must be positive",
                "fieldPath": ".responseTimeoutSeconds",
            },
        )
    )

    max_in_flight: int = Field(
        default=4,
        ge=1,
        le=1024,
        description=(
            "Hard limit of requests inside the model at once. Measured for Qwen3-VL-2B on "
            "CPU: 4 keeps P95 at 10.5 s; 8 starts failing."
        ),
    )
    queue_size: int = Field(
        default=8,
        ge=0,
        le=100000,
        description="Requests that may wait in the gate's FIFO queue; beyond it: 429.",
    )
    queue_timeout_seconds: float = Field(
        default=20.0,
        le=3600,
        description="Longest wait in the queue before the request is answered 504.",
    )
    response_timeout_seconds: float = Field(
        default=600.0,
        le=86400,
        description=(
            "Longest the model may send nothing on a request (before its answer starts, or "
            "between two pieces of a streamed answer); past it the gate answers 504, or cuts "
            "a stream, and frees the slot. 600 is openai-python's own default timeout."
        ),
    )
    max_request_bytes: int = Field(
        default=20 * 1024 * 1024,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="Largest request body accepted (a few base64 images); beyond it: 413.",
    )

    @model_validator(mode="after")
    def _positive_timeout(self) -> ConcurrencySpec:
        if not self.queue_timeout_seconds > 0:
            raise ValueError("queueTimeoutSeconds must be positive")
        if not self.response_timeout_seconds > 0:
            raise ValueError("responseTimeoutSeconds must be positive")
        return self


# --------------------------------------------------------------------- autoscaling


class ScaleUpRules(APIModel):
    """How fast replicas may rise."""

    stabilization_window_seconds: int = Field(
        default=0,
        ge=0,
        le=3600,
        description="Scale up only to the lowest recommendation seen in this window.",
    )
    max_pods_per_step: int = Field(
        default=4,
        ge=1,
        le=1000,
        description="At most this many pods added per step (a burst goes past it)...",
    )
    max_percent_per_step: int = Field(
        default=100,
        ge=1,
        le=10000,
        description="...or this percentage of the current replicas, whichever is larger.",
    )
    burst_window_seconds: int = Field(
        default=10,
        ge=0,
        le=600,
        description=(
            "Short window for bursts: when the latest demand needs twice the ready pods "
            "and more than are on their way, scale up to it at once, past the step limits "
            "(maxReplicas still holds), and never down while a sample of this window did."
        ),
    )


class ScaleDownRules(APIModel):
    """How slowly replicas may fall."""

    stabilization_window_seconds: int = Field(
        default=120,
        ge=0,
        le=7200,
        description="Scale down only to the highest recommendation seen in this window.",
    )
    max_pods_per_step: int = Field(
        default=1000, ge=1, le=1000, description="At most this many pods removed per step..."
    )
    max_percent_per_step: int = Field(
        default=50,
        ge=1,
        le=100,
        description="...and at most this percentage of the current replicas.",
    )


class MissingSignalsSpec(APIModel):
    """What to do when Prometheus is down, empty or stale. Never scales down."""

    action: MissingSignalsAction = Field(
        default="Hold",
        description="Hold: keep the current replicas. Fallback: raise to fallbackReplicas.",
    )
    fallback_replicas: int | None = Field(
        default=None, ge=0, description="Replicas to raise to with action Fallback."
    )
    stale_after_seconds: int = Field(
        default=60,
        ge=1,
        le=3600,
        description="Signals older than this count as missing.",
    )


class AutoscalingSpec(APIModel):
    """Replica autoscaling from the gates' signals."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            {
                "rule": "self.minReplicas <= self.maxReplicas",
                "message": "minReplicas must be less than or equal to maxReplicas",
                "fieldPath": ".minReplicas",
            },
            {
                "rule": "self.missingSignals.action != 'Fallback' || "
                "has(self.missingSignals.fallbackReplicas)",
                "message": "missingSignals.action Fallback needs fallbackReplicas",
                "fieldPath": ".missingSignals.fallbackReplicas",
            },
        )
    )

    enabled: bool = Field(
        default=True, description="Off: spec.replicas (or the scale subresource) decides."
    )
    min_replicas: int = Field(
        default=1,
        ge=1,
        le=10000,
        description=(
            "Lowest replica count, at least 1: with no pod there is no gate to count "
            "requests, so nothing would scale the service up again. To park a service, "
            "disable autoscaling and set replicas to 0."
        ),
    )
    max_replicas: int = Field(default=10, ge=1, le=10000, description="Highest replica count.")
    target_utilization: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description=(
            "Fraction of maxInFlight to aim for per pod. 0.9 absorbs the demand's noise: a "
            "pod at its cap runs slowest, so aiming exactly at it makes replicas churn. "
            "Lower values buy more headroom with whole pods."
        ),
    )
    p95_latency_target_seconds: float = Field(
        default=12.0,
        gt=0,
        le=3600,
        description="Fleet P95 above this never scales down and forces a scale-up.",
    )
    sync_period_seconds: float = Field(
        default=5.0,
        ge=1,
        le=300,
        description="Control loop period. Reaction time decides latency after a load step.",
    )
    scale_up: ScaleUpRules = Field(default_factory=ScaleUpRules, description="Scale-up rules.")
    scale_down: ScaleDownRules = Field(
        default_factory=ScaleDownRules, description="Scale-down rules."
    )
    missing_signals: MissingSignalsSpec = Field(
        default_factory=MissingSignalsSpec, description="Behaviour when signals are missing."
    )
    pending_timeout_seconds: int = Field(
        default=600,
        # 0 would count a pod as stuck the instant it is created, and buy another each tick.
        ge=1,
        le=86400,
        description=(
            "Pods Pending (no node) longer than this, or on a node and not ready longer than "
            "this and the model's start-up budget, stop counting as capacity on its way; "
            "the service shows ScalingLimited."
        ),
    )
    load_balancing: LoadBalancing = Field(
        default="RoundRobin",
        description=(
            "How requests reach the pods. RoundRobin: a Kubernetes Service (kube-proxy), "
            "which keeps sending a pod with a queue its share, so every waiting request is "
            "demand a slot must be added for. LeastRequest: one routing tier that sees every "
            "request and sends each to the pod with the fewest in flight (an inference "
            "gateway's endpoint picker, a gateway Deployment; not per-client sidecars, each "
            "counting only its own requests). It drains a queue into the next free slot, so "
            "waiting requests get the quarter-pod band running requests over the target get, "
            "and a step is sized without round-robin's extra pod (8 in flight on one pod: 2 "
            "pods, not 3). Set where it is not so, it misses the P95 target."
        ),
    )

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must be less than or equal to maxReplicas")
        if (
            self.missing_signals.action == "Fallback"
            and self.missing_signals.fallback_replicas is None
        ):
            raise ValueError("missingSignals.action Fallback needs fallbackReplicas")
        return self


# ------------------------------------------------------------------------- metrics


class SignalQueries(APIModel):
    """PromQL overrides, one per signal. Each must return one series per
    (namespace, vlmservice); ``$window`` is replaced by the rate window."""

    running: str | None = Field(default=None, description="Requests inside the models.")
    waiting: str | None = Field(default=None, description="Requests queued in the gates.")
    p95: str | None = Field(default=None, description="Fleet P95 latency in seconds.")
    arrival_rate: str | None = Field(default=None, description="Finished requests per second.")
    error_rate: str | None = Field(
        default=None, description="Fraction of requests answered 5xx or 429 (queue full)."
    )


class MetricsSpec(APIModel):
    """Where the signals come from."""

    prometheus_url: HttpURL | None = Field(
        default=None,
        description=(
            "Prometheus for this service; unset uses the operator's --prometheus-url. The "
            "operator's bearer token is sent only to the origin of its --prometheus-url."
        ),
    )
    window_seconds: int = Field(
        default=30,
        ge=5,
        le=3600,
        description="Rate window for P95, arrival and error rates.",
    )
    queries: SignalQueries = Field(
        default_factory=SignalQueries, description="Per-signal PromQL overrides."
    )


class MonitoringSpec(APIModel):
    """Prometheus Operator integration."""

    pod_monitor: bool = Field(default=False, description="Create a PodMonitor for the gates.")
    interval: str = Field(
        default="5s",
        # Bounded: a number of hundreds of digits is no interval (and no float).
        max_length=16,
        pattern=r"^0*[1-9][0-9]*(ms|s|m)$",
        description=(
            "Scrape interval, more than zero (short: reaction time decides latency after a step)."
        ),
    )
    labels: LabelMap = Field(
        default_factory=dict,
        description="Extra labels on the PodMonitor (e.g. release for kube-prometheus-stack).",
    )


class NetworkPolicySpec(APIModel):
    """Optional NetworkPolicy restricting who may reach the gate."""

    enabled: bool = Field(default=False, description="Create a NetworkPolicy.")
    # Two allow-lists, not one selector: a NetworkPolicy's peers are ORed, so "the
    # gateway pods of the web namespaces" is not expressible with both set.
    allow_from_namespaces: LabelMap = Field(
        default_factory=dict,
        description=(
            "Labels of namespaces every pod of which may reach the gate. With "
            "allowFromPods, either list admits (they are not combined into one "
            "selector). Both empty: every pod of this namespace."
        ),
    )
    allow_from_pods: LabelMap = Field(
        default_factory=dict,
        description=(
            "Labels of pods of this namespace that may reach the gate (pods of other "
            "namespaces: allowFromNamespaces admits them all)."
        ),
    )
    prometheus_namespace_labels: LabelMap = Field(
        default_factory=lambda: {"kubernetes.io/metadata.name": "monitoring"},
        description="Namespace labels of Prometheus, allowed to scrape /metrics.",
    )


_EMPTY_KEY_MESSAGE = "an empty key needs operator Exists (it then tolerates every taint)"
_EXISTS_VALUE_MESSAGE = "operator Exists takes no value"
_SECONDS_EFFECT_MESSAGE = "needs effect NoExecute"


class Toleration(APIModel):
    """A toleration, as in a pod spec, checked as the API server checks it there.

    Typed, not passed through: the API server drops an unknown field of a pod
    spec with a mere warning (``operater: Exists`` becomes ``Equal ""``), and
    the pods would stay Pending with nothing naming the typo.
    """

    model_config = ConfigDict(
        json_schema_extra=_cel(
            {
                "rule": "(has(self.operator) && self.operator == 'Exists') || "
                "(has(self.key) && self.key != '')",
                "message": _EMPTY_KEY_MESSAGE,
            },
            {
                "rule": "!has(self.operator) || self.operator != 'Exists' || "
                "!has(self.value) || self.value == ''",
                "message": _EXISTS_VALUE_MESSAGE,
                "fieldPath": ".value",
            },
            {
                "rule": "!has(self.tolerationSeconds) || "
                "(has(self.effect) && self.effect == 'NoExecute')",
                "message": _SECONDS_EFFECT_MESSAGE,
                "fieldPath": ".tolerationSeconds",
            },
        )
    )

    key: str | None = Field(
        default=None,
        max_length=317,  # a prefix of 253, "/", a name of 63
        # A label key, or empty (with operator Exists: every taint).
        pattern=r"^((([a-z0-9]([-a-z0-9]*[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$",
        description="Taint key (a label key); empty with operator Exists tolerates every taint.",
    )
    operator: Literal["Exists", "Equal", ""] | None = Field(
        default=None, description="Exists or Equal (the default, also when empty)."
    )
    value: str | None = Field(
        default=None,
        max_length=63,
        pattern=LABEL_VALUE_PATTERN,
        description="Taint value (a label value) for operator Equal.",
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute", ""] | None = Field(
        default=None, description="Taint effect to tolerate; empty tolerates every effect."
    )
    toleration_seconds: int | None = Field(
        default=None,
        description="With effect NoExecute: how long the pod stays once the taint appears.",
    )

    @model_validator(mode="after")
    def _as_a_pod_spec_allows(self) -> Toleration:
        if self.operator != "Exists" and not self.key:
            raise ValueError(_EMPTY_KEY_MESSAGE)
        if self.operator == "Exists" and self.value:
            raise ValueError(f"value: {_EXISTS_VALUE_MESSAGE}")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError(f"tolerationSeconds: {_SECONDS_EFFECT_MESSAGE}")
        return self


class PlacementSpec(APIModel):
    """Where pods may run."""

    node_selector: LabelMap = Field(
        default_factory=dict, description="Node selector: node labels, keys and values."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        # Bounded, as the API server prices each item's CEL rules by the list's length.
        max_length=100,
        description="Tolerations, as in a pod spec.",
    )
    priority_class_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="Priority class (a DNS subdomain name).",
    )
    service_account_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="Service account of the model pods (a DNS subdomain name).",
    )
    image_pull_secrets: list[
        Annotated[str, StringConstraints(max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
    ] = Field(default_factory=list, description="Names of image pull secrets.")


# ---------------------------------------------------------------------------- spec


class VLMServiceSpec(APIModel):
    """Desired state of a VLMService."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            {
                "rule": "self.model.runtime != 'custom' || "
                "(has(self.model.image) && size(self.model.image) > 0)",
                "message": "runtime custom needs model.image",
                "fieldPath": ".model.image",
            },
        )
    )

    model: ModelSpec = Field(description="The model and its runtime.")
    replicas: int | None = Field(
        default=None,
        ge=0,
        le=10000,
        description="Replicas when autoscaling is off (also set through the scale subresource).",
    )
    resources: ResourceRequirements = Field(
        default_factory=_model_resources, description="Resources of the model container."
    )
    gate: GateSpec = Field(default_factory=GateSpec, description="The gate sidecar.")
    concurrency: ConcurrencySpec = Field(
        default_factory=ConcurrencySpec, description="Per-pod concurrency limits."
    )
    autoscaling: AutoscalingSpec = Field(
        default_factory=AutoscalingSpec, description="Autoscaling."
    )
    metrics: MetricsSpec = Field(default_factory=MetricsSpec, description="Signal source.")
    monitoring: MonitoringSpec = Field(
        default_factory=MonitoringSpec, description="Prometheus Operator integration."
    )
    network_policy: NetworkPolicySpec = Field(
        default_factory=NetworkPolicySpec, description="NetworkPolicy."
    )
    placement: PlacementSpec = Field(default_factory=PlacementSpec, description="Pod placement.")

    @model_validator(mode="after")
    def _custom_needs_image(self) -> VLMServiceSpec:
        if self.model.runtime == "custom" and not self.model.image:
            raise ValueError("runtime custom needs model.image")
        return self


# -------------------------------------------------------------------------- status


class ObservedSignals(APIModel):
    """The last signals read from Prometheus (absent: no signal)."""

    in_flight: float | None = Field(default=None, description="Requests inside the models.")
    waiting: float | None = Field(default=None, description="Requests queued in the gates.")
    in_flight_per_pod: float | None = Field(
        default=None, description="In-flight requests per ready pod."
    )
    p95_seconds: float | None = Field(default=None, description="Fleet P95 latency.")
    arrival_rate: float | None = Field(default=None, description="Requests per second.")
    error_rate: float | None = Field(default=None, description="Fraction of failed requests.")
    observed_at: str | None = Field(default=None, description="When they were read (RFC 3339).")


class Decision(APIModel):
    """The autoscaler's last decision."""

    time: str = Field(description="When it was made (RFC 3339).")
    replicas: int = Field(ge=0, description="Replicas decided.")
    direction: Literal["up", "down", "hold"] = Field(description="Change it made.")
    reason: str = Field(description="Why, in numbers.")


class Condition(APIModel):
    """A standard Kubernetes condition."""

    type: str = Field(description="Ready, MetricsAvailable, ScalingLimited, InvalidSpec, ...")
    status: Literal["True", "False", "Unknown"] = Field(description="Condition status.")
    reason: str = Field(default="", description="CamelCase reason.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: str | None = Field(
        default=None, description="When the status last changed."
    )
    observed_generation: int | None = Field(
        default=None, description="Generation the condition was computed for."
    )


class VLMServiceStatus(APIModel):
    """Observed state of a VLMService, written by the operator."""

    model_config = ConfigDict(
        extra="ignore", frozen=True, alias_generator=to_camel, populate_by_name=True
    )

    replicas: int = Field(default=0, ge=0, description="Pods of the Deployment.")
    ready_replicas: int = Field(default=0, ge=0, description="Ready pods.")
    desired_replicas: int = Field(default=0, ge=0, description="Replicas the autoscaler wants.")
    selector: str = Field(default="", description="Label selector of the pods (scale subresource).")
    observed_generation: int | None = Field(
        default=None, description="Spec generation the operator last acted on."
    )
    signals: ObservedSignals = Field(
        default_factory=ObservedSignals, description="Last observed signals."
    )
    last_decision: Decision | None = Field(
        default=None,
        description="Last scaling decision that changed the replicas, the direction or its "
        "reason's words (the numbers in it are those of that moment; signals has the current).",
    )
    last_scale_time: str | None = Field(default=None, description="Last replica change.")
    conditions: list[Condition] = Field(default_factory=list, description="Conditions.")
    autoscaler_state: dict[str, Any] = Field(
        default_factory=dict,
        description="The scaling policy's state, so a restarted operator keeps stabilization.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class VLMService(APIModel):
    """A whole VLMService object as read from a file or the API."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    api_version: Literal["vlm-operator.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["VLMService"]
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: VLMServiceSpec
    status: VLMServiceStatus | None = None

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace") or "default")
