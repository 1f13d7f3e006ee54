"""Validation of built-in kinds, the part of it that catches real mistakes in rendered manifests,
and the canonical form of their resource quantities.

Always on (cheap, and the classic apps/v1 errors a real server rejects with 422): a Deployment or
ReplicaSet needs ``spec.selector`` and its ``matchLabels`` must match the pod template's labels,
and an update may not change a workload's selector. A selector or template labels of the wrong
JSON type is a 400, as the real server's decoder answers, never a crash. In every pod spec
(:func:`check_pod_spec`): container and volume names are unique DNS labels, container ports
are 1-65535, environment variable names are valid, no request exceeds its limit, each volume
mount names a volume at a path of its own, only init containers set ``restartPolicy``
(``Always``), probes sit on regular or sidecar containers with one handler, counts that are not
negative, a valid port and, for liveness and startup, a ``successThreshold`` of 1; a
PodDisruptionBudget sets ``minAvailable`` or ``maxUnavailable``, not both; a Service's ports are
unique, and named when there are several.
Opt-in (``validate_builtins=True``; ~20 ms per object): the full OpenAPI schema of the kind via
kubernetes-validate (the local-cluster extra), strict about unknown fields under
``fieldValidation=Strict`` (400 ``strict decoding error``, as a real server's decoder answers).
Only the first schema error is reported, as kubernetes-validate raises one at a time.

A real server stores a quantity in its canonical form (``0.5`` as ``500m``, ``2048Mi`` as
``2Gi``): a client that compares what it wrote with what it reads back must compare
amounts, not strings, and :func:`canonicalize_quantities` makes that visible here.
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, localcontext
from typing import Any

from . import errors
from .resources import ResourceKind

_UNEXPECTED = re.compile(r"'([^']+)'")

KUBERNETES_VERSION = "1.30"


def _cause(field: str, message: str, reason: str = "FieldValueInvalid") -> dict[str, str]:
    return {"reason": reason, "field": field, "message": message}


def check_workload(kind: ResourceKind, obj: dict[str, Any]) -> list[dict[str, str]]:
    """The selector rules of apps/v1 Deployments and ReplicaSets."""
    if (kind.group, kind.plural) not in (("apps", "deployments"), ("apps", "replicasets")):
        return []
    _check_selector_types(kind, obj)
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [_cause("spec", "Required value", "FieldValueRequired")]
    selector = spec.get("selector")
    if not isinstance(selector, dict) or not (
        selector.get("matchLabels") or selector.get("matchExpressions")
    ):
        return [_cause("spec.selector", "Required value", "FieldValueRequired")]
    template = spec.get("template")
    metadata = template.get("metadata") if isinstance(template, dict) else None
    labels = (metadata.get("labels") if isinstance(metadata, dict) else None) or {}
    wanted = selector.get("matchLabels") or {}
    if not isinstance(labels, dict) or any(labels.get(k) != v for k, v in wanted.items()):
        message = f"Invalid value: {labels!r}: `selector` does not match template `labels`"
        return [_cause("spec.template.metadata.labels", message)]
    return []


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_RULE = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character"
)
#: apimachinery's IsEnvVarName (since 1.30 any printable ASCII but "=" is allowed only
#: behind a feature gate; the default rule is this one).
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")


def check_pod_spec(kind: ResourceKind, obj: dict[str, Any]) -> list[dict[str, str]]:
    """What the real server's pod, PodDisruptionBudget and Service validation refuses and the
    operator could render: see the module docstring."""
    if (kind.group, kind.plural) == ("policy", "poddisruptionbudgets"):
        spec = obj.get("spec")
        if isinstance(spec, dict) and "minAvailable" in spec and "maxUnavailable" in spec:
            return [
                _cause("spec", "Invalid value: minAvailable and maxUnavailable cannot be both set")
            ]
        return []
    if (kind.group, kind.plural) == ("", "services"):
        return _check_service_ports(obj)
    path = _POD_SPECS.get((kind.group, kind.plural))
    if path is None:
        return []
    pod: Any = obj
    for key in path:
        pod = pod.get(key) if isinstance(pod, dict) else None
    if not isinstance(pod, dict):
        return []
    seen: set[str] = set()
    prefix = ".".join(path)
    volume_names, causes = _check_volumes(pod.get("volumes"), f"{prefix}.volumes")
    for group in ("initContainers", "containers"):
        containers = pod.get(group)
        for index, container in enumerate(containers if isinstance(containers, list) else []):
            if not isinstance(container, dict):
                continue
            where = f"{prefix}.{group}[{index}]"
            causes += _check_container(container, where, seen)
            causes += _check_mounts(
                container.get("volumeMounts"), f"{where}.volumeMounts", volume_names
            )
            causes += _check_lifecycle(container, where, init=group == "initContainers")
    return causes


def _check_volumes(volumes: Any, where: str) -> tuple[set[str], list[dict[str, str]]]:
    """The pod's volume names (unique DNS labels), and what is wrong with them."""
    names: set[str] = set()
    causes: list[dict[str, str]] = []
    for index, volume in enumerate(volumes if isinstance(volumes, list) else []):
        name = volume.get("name") if isinstance(volume, dict) else None
        if not isinstance(name, str):
            continue
        if not _DNS_LABEL.fullmatch(name) or len(name) > 63:
            causes.append(
                _cause(f"{where}[{index}].name", f'Invalid value: "{name}": {_LABEL_RULE}')
            )
        elif name in names:
            causes.append(
                _cause(
                    f"{where}[{index}].name", f'Duplicate value: "{name}"', "FieldValueDuplicate"
                )
            )
        names.add(name)
    return names, causes


def _check_mounts(mounts: Any, where: str, volumes: set[str]) -> list[dict[str, str]]:
    """Each mount names one of the pod's volumes, at a path of its own."""
    causes: list[dict[str, str]] = []
    paths: set[str] = set()
    for index, mount in enumerate(mounts if isinstance(mounts, list) else []):
        if not isinstance(mount, dict):
            continue
        name, path = mount.get("name"), mount.get("mountPath")
        if not name:
            causes.append(_cause(f"{where}[{index}].name", "Required value", "FieldValueRequired"))
        elif isinstance(name, str) and name not in volumes:
            causes.append(
                _cause(f"{where}[{index}].name", f'Not found: "{name}"', "FieldValueNotFound")
            )
        if not path:
            message = "Required value"
            causes.append(_cause(f"{where}[{index}].mountPath", message, "FieldValueRequired"))
        elif isinstance(path, str):
            if path in paths:
                message = f'Invalid value: "{path}": must be unique'
                causes.append(_cause(f"{where}[{index}].mountPath", message))
            paths.add(path)
    return causes


_HANDLERS = ("exec", "httpGet", "tcpSocket", "grpc")
_PROBE_FIELDS = (
    "initialDelaySeconds", "timeoutSeconds", "periodSeconds", "successThreshold",
    "failureThreshold",
)  # fmt: skip
#: apimachinery's IsValidPortName: an IANA service name.
_PORT_NAME = re.compile(r"(?=.*[a-z])[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def _check_lifecycle(container: dict[str, Any], where: str, *, init: bool) -> list[dict[str, str]]:
    """A container's restartPolicy and probes, as pod validation reads them: only an init
    container may set restartPolicy (Always: a sidecar), only a sidecar among init containers
    may have probes, and a probe has one handler, non-negative counts, and a liveness or
    startup probe a successThreshold of 1."""
    causes: list[dict[str, str]] = []
    policy = container.get("restartPolicy")
    if policy is not None and not init:
        message = "Forbidden: may not be set for non-init containers"
        causes.append(_cause(f"{where}.restartPolicy", message, "FieldValueForbidden"))
    elif policy is not None and policy != "Always":
        message = f'Unsupported value: "{policy}": supported values: "Always"'
        causes.append(_cause(f"{where}.restartPolicy", message, "FieldValueNotSupported"))
    for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
        probe = container.get(probe_name)
        if not isinstance(probe, dict):
            continue
        at = f"{where}.{probe_name}"
        if init and policy != "Always":
            message = "Forbidden: may not be set for init containers without restartPolicy=Always"
            causes.append(_cause(at, message, "FieldValueForbidden"))
            continue
        handlers = [h for h in _HANDLERS if probe.get(h) is not None]
        if not handlers:
            message = "Required value: must specify a handler type"
            causes.append(_cause(at, message, "FieldValueRequired"))
        for handler in handlers[1:]:
            message = "Forbidden: may not specify more than 1 handler type"
            causes.append(_cause(f"{at}.{handler}", message, "FieldValueForbidden"))
        for field in _PROBE_FIELDS:
            value = probe.get(field)
            if isinstance(value, int) and not isinstance(value, bool) and value < 0:
                message = f"Invalid value: {value}: must be greater than or equal to 0"
                causes.append(_cause(f"{at}.{field}", message))
        grace = probe.get("terminationGracePeriodSeconds")
        if grace is not None and probe_name == "readinessProbe":
            message = "Invalid value: must not be set for readinessProbes"
            causes.append(_cause(f"{at}.terminationGracePeriodSeconds", message))
        elif isinstance(grace, int) and not isinstance(grace, bool) and grace <= 0:
            message = f"Invalid value: {grace}: must be greater than 0"
            causes.append(_cause(f"{at}.terminationGracePeriodSeconds", message))
        # 0 is defaulted to 1 before validation, as the counts above are.
        threshold = probe.get("successThreshold")
        if probe_name != "readinessProbe" and threshold not in (None, 0, 1):
            message = f"Invalid value: {threshold}: must be 1"
            causes.append(_cause(f"{at}.successThreshold", message))
        # Only the first handler is read; the others are refused unread.
        action = probe.get(handlers[0]) if handlers else None
        if isinstance(action, dict) and "port" in action:
            causes += _check_probe_port(action["port"], f"{at}.{handlers[0]}.port")
    return causes


def _check_probe_port(port: Any, where: str) -> list[dict[str, str]]:
    if isinstance(port, int) and not isinstance(port, bool) and not 1 <= port <= 65535:
        return [_cause(where, f"Invalid value: {port}: must be between 1 and 65535, inclusive")]
    if isinstance(port, str) and (len(port) > 15 or not _PORT_NAME.fullmatch(port)):
        return [
            _cause(
                where,
                f'Invalid value: "{port}": a port name must be no more than 15 characters, '
                "contain only lowercase alphanumeric characters and '-', at least one letter, "
                "and start and end with an alphanumeric character",
            )
        ]
    return []


def _check_container(container: dict[str, Any], where: str, seen: set[str]) -> list[dict[str, str]]:
    causes: list[dict[str, str]] = []
    name = container.get("name")
    if isinstance(name, str):
        if not _DNS_LABEL.fullmatch(name) or len(name) > 63:
            causes.append(_cause(f"{where}.name", f'Invalid value: "{name}": {_LABEL_RULE}'))
        elif name in seen:
            causes.append(
                _cause(f"{where}.name", f'Duplicate value: "{name}"', "FieldValueDuplicate")
            )
        seen.add(name)
    ports = container.get("ports")
    for index, port in enumerate(ports if isinstance(ports, list) else []):
        number = port.get("containerPort") if isinstance(port, dict) else None
        if isinstance(number, int) and not isinstance(number, bool) and not 1 <= number <= 65535:
            causes.append(
                _cause(
                    f"{where}.ports[{index}].containerPort",
                    f"Invalid value: {number}: must be between 1 and 65535, inclusive",
                )
            )
    env = container.get("env")
    for index, variable in enumerate(env if isinstance(env, list) else []):
        name = variable.get("name") if isinstance(variable, dict) else None
        if isinstance(name, str) and not _ENV_NAME.fullmatch(name):
            causes.append(
                _cause(
                    f"{where}.env[{index}].name",
                    f'Invalid value: "{name}": a valid '
                    "environment variable name must consist of alphabetic "
                    "characters, digits, '_', '-', or '.', and must not start with "
                    "a digit",
                )
            )
    resources = container.get("resources")
    if isinstance(resources, dict):
        requests, limits = resources.get("requests"), resources.get("limits")
        for resource, request in (requests if isinstance(requests, dict) else {}).items():
            limit = limits.get(resource) if isinstance(limits, dict) else None
            wanted, bound = _amount(request), _amount(limit)
            if wanted is not None and bound is not None and wanted > bound:
                causes.append(
                    _cause(
                        f"{where}.resources.requests",
                        f'Invalid value: "{request}": '
                        f"must be less than or equal to {resource} limit of "
                        f"{limit}",
                    )
                )
    return causes


def _check_service_ports(obj: dict[str, Any]) -> list[dict[str, str]]:
    spec = obj.get("spec")
    ports = spec.get("ports") if isinstance(spec, dict) else None
    if not isinstance(ports, list):
        return []
    causes: list[dict[str, str]] = []
    seen: set[tuple[Any, Any]] = set()
    for index, port in enumerate(ports):
        if not isinstance(port, dict):
            continue
        key = (port.get("port"), port.get("protocol") or "TCP")
        if key in seen:
            causes.append(
                _cause(
                    f"spec.ports[{index}]",
                    f"Duplicate value: {key[0]}/{key[1]}",
                    "FieldValueDuplicate",
                )
            )
        seen.add(key)
        if len(ports) > 1 and not port.get("name"):
            causes.append(
                _cause(f"spec.ports[{index}].name", "Required value", "FieldValueRequired")
            )
    return causes


def _amount(value: Any) -> Decimal | None:
    """A quantity's amount (a number, or a string in resource.Quantity's format), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return Decimal(str(value))
    match = _QUANTITY.fullmatch(value) if isinstance(value, str) else None
    if match is None or not (match["whole"] or match["fraction"]):
        return None
    number = Decimal(f"{match['sign']}{match['whole'] or '0'}.{match['fraction'] or '0'}")
    if match["binary"]:
        return number * 2 ** (10 * _BINARY_SUFFIXES.index(match["binary"]))
    if match["exponent"]:
        return number.scaleb(int(match["exponent"]))
    return number.scaleb(_DECIMAL_EXPONENTS[match["decimal"] or ""])


def _check_selector_types(kind: ResourceKind, obj: dict[str, Any]) -> None:
    """A selector or template labels of the wrong JSON type is a 400, as the real server's
    decoder answers (``matchLabels: "x"``), before validation could see it."""
    spec = obj.get("spec")
    selector = spec.get("selector") if isinstance(spec, dict) else None
    template = spec.get("template") if isinstance(spec, dict) else None
    metadata = template.get("metadata") if isinstance(template, dict) else None
    fields: list[tuple[str, Any, type, str]] = [
        ("spec", spec, dict, f"v1.{kind.kind}Spec"),
        ("spec.selector", selector, dict, "v1.LabelSelector"),
        ("spec.template", template, dict, "v1.PodTemplateSpec"),
        ("spec.template.metadata", metadata, dict, "v1.ObjectMeta"),
    ]
    if isinstance(selector, dict):
        fields += [("spec.selector.matchLabels", selector.get("matchLabels"), dict,
                    "map[string]string"),
                   ("spec.selector.matchExpressions", selector.get("matchExpressions"), list,
                    "[]v1.LabelSelectorRequirement")]  # fmt: skip
    if isinstance(metadata, dict):
        fields.append(
            ("spec.template.metadata.labels", metadata.get("labels"), dict, "map[string]string")
        )
    for path, value, expected, go_type in fields:
        if go_type == "map[string]string" and isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(item, str):
                    raise _undecodable(kind, f"{path}.{key}", item, "string")
        elif value is not None and not isinstance(value, expected):
            raise _undecodable(kind, path, value, go_type)
    expressions = selector.get("matchExpressions") if isinstance(selector, dict) else None
    for expression in expressions or []:
        path = "spec.selector.matchExpressions"
        if not isinstance(expression, dict):
            raise _undecodable(kind, path, expression, "v1.LabelSelectorRequirement")
        for name in ("key", "operator"):
            if not isinstance(expression.get(name, ""), str):
                raise _undecodable(kind, f"{path}.{name}", expression[name], "string")
        values = expression.get("values")
        if values is not None and not (
            isinstance(values, list) and all(isinstance(value, str) for value in values)
        ):
            raise _undecodable(kind, f"{path}.values", values, "[]string")


def _undecodable(kind: ResourceKind, path: str, value: Any, go_type: str) -> errors.APIError:
    return errors.bad_request(
        f'{kind.kind} in version "{kind.version}" cannot be handled as a {kind.kind}: json: '
        f"cannot unmarshal {json_type(value)} into Go struct field {path} of type {go_type}"
    )


def json_type(value: Any) -> str:
    """How Go's encoding/json names a decoded value's JSON type in its errors."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), "null")


#: Workloads whose ``spec.selector`` a real server never lets change (apps/v1 validation).
_FIXED_SELECTORS = {
    ("apps", "deployments"),
    ("apps", "replicasets"),
    ("apps", "statefulsets"),
    ("apps", "daemonsets"),
}


def _selector_view(selector: Any) -> Any:
    """A selector as apimachinery's semantic equality sees it: empty parts are absent, at
    any depth (``values: []`` of a requirement is no ``values``)."""
    if isinstance(selector, list):
        return [_selector_view(item) for item in selector]
    if not isinstance(selector, dict):
        return selector
    views = {key: _selector_view(value) for key, value in selector.items()}
    return {key: value for key, value in views.items() if value not in (None, {}, [])}


def check_immutable(
    kind: ResourceKind, obj: dict[str, Any], old: dict[str, Any]
) -> list[dict[str, str]]:
    """Fields an update may not change: a workload's ``spec.selector``.

    A real server refuses the change with 422 "field is immutable", so a controller that
    renders a different selector for an existing workload (a new label scheme on upgrade)
    breaks there, and must break here too.
    """
    if (kind.group, kind.plural) not in _FIXED_SELECTORS:
        return []
    new_spec, old_spec = obj.get("spec"), old.get("spec")
    if not isinstance(new_spec, dict) or not isinstance(old_spec, dict):
        return []
    selector = new_spec.get("selector")
    if _selector_view(selector) == _selector_view(old_spec.get("selector")):
        return []
    return [_cause("spec.selector", f"Invalid value: {selector!r}: field is immutable")]


def _field_path(parts: Any) -> str:
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def check_schema(kind: ResourceKind, obj: dict[str, Any], strict: bool) -> list[dict[str, str]]:
    """The kind's OpenAPI schema, through kubernetes-validate; [] for kinds it does not know.

    Raises 400 for unknown fields under ``strict`` (a decoding error on a real server).
    """
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=strict)
    except kubernetes_validate.ValidationError as error:
        field = _field_path(error.path)
        if strict and error.validator == "additionalProperties":
            unknown = _UNEXPECTED.findall(str(error.message).split("(", 1)[-1])
            prefix = f"{field}." if field else ""
            raise errors.bad_request(
                "strict decoding error: "
                + ", ".join(f'unknown field "{prefix}{name}"' for name in unknown)
            ) from None
        return [_cause(field or "<root>", f"Invalid value: {error.message}")]
    except Exception:  # unknown kind or version: a real server would know, we cannot tell
        return []
    return []


_QUANTITY = re.compile(
    r"(?P<sign>[+-]?)(?P<whole>[0-9]*)(?:\.(?P<fraction>[0-9]*))?"
    r"(?:(?P<binary>[KMGTPE]i)|(?P<decimal>[numkMGTPE])|[eE](?P<exponent>[+-]?[0-9]+))?"
)  # fullmatch: "1\n" is unreadable, not 1
_DECIMAL_SUFFIXES = {-9: "n", -6: "u", -3: "m", 0: "", 3: "k", 6: "M", 9: "G", 12: "T",
                     15: "P", 18: "E"}  # fmt: skip
_DECIMAL_EXPONENTS = {suffix: exponent for exponent, suffix in _DECIMAL_SUFFIXES.items()}
_BINARY_SUFFIXES = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")
#: The kinds whose pod specs carry quantities, and where their pod spec is.
_POD_SPECS = {
    ("", "pods"): ("spec",),
    **{
        ("apps", plural): ("spec", "template", "spec")
        for plural in ("deployments", "replicasets", "statefulsets", "daemonsets")
    },
    ("batch", "jobs"): ("spec", "template", "spec"),
}


def canonical_quantity(text: str) -> str:
    """A quantity as the API server stores it (``resource.Quantity``): as written if its
    parser's fast path finds it canonical already, else in the format it was written in
    (binary suffix, decimal suffix or exponent) with the largest suffix that keeps the
    number whole, nano-units rounded up; unchanged if unreadable."""
    match = _QUANTITY.fullmatch(text)
    if match is None or not (match["whole"] or match["fraction"]):
        return text
    whole, fraction = match["whole"], match["fraction"] or ""
    if match["binary"]:
        exponent = 10 * _BINARY_SUFFIXES.index(match["binary"])
    elif match["exponent"]:
        exponent = int(match["exponent"])
    else:
        exponent = _DECIMAL_EXPONENTS[match["decimal"] or ""]
    if _kept_as_written(whole, fraction, exponent, binary=bool(match["binary"])):
        return text
    with localcontext() as context:
        context.prec = 100  # a quantity of exa-units in nano-units is 28 digits and more
        number = Decimal(f"{match['sign']}{whole or '0'}.{fraction or '0'}")
        amount = number * 2**exponent if match["binary"] else number.scaleb(exponent)
        # Nothing finer than a nano-unit is kept: it rounds up.
        amount = amount.quantize(Decimal("1e-9"), rounding=ROUND_CEILING)
        if amount == 0:
            return "0"
        if match["binary"] and abs(amount) >= 1024 and amount == amount.to_integral_value():
            units, power = int(amount), 0
            while units % 1024 == 0 and power < len(_BINARY_SUFFIXES) - 1:
                units, power = units // 1024, power + 1
            return f"{units}{_BINARY_SUFFIXES[power]}"
        # Decimal: the mantissa whole, the exponent a multiple of three, as large as it
        # goes (with a suffix, up to E).
        power, mantissa = -9, int(amount.scaleb(9))
        while mantissa % 1000 == 0 and (match["exponent"] or power < 18):
            mantissa, power = mantissa // 1000, power + 3
    if match["exponent"]:
        return f"{mantissa}e{power}" if power else str(mantissa)
    return f"{mantissa}{_DECIMAL_SUFFIXES[power]}"


def _kept_as_written(whole: str, fraction: str, exponent: int, *, binary: bool) -> bool:
    """Whether apimachinery's ``ParseQuantity`` keeps the string (its int64 fast path,
    for a number already canonical): decimal, a scale that is a multiple of three and
    digits that neither start with 0 nor end in 000; binary, a whole number of its unit
    that is not a multiple of eight."""
    if binary:
        precision = 15 - len(whole) - int(exponent * 3 / 10) - 1
        if fraction or precision < 0:
            return False
        value = int(whole)
        return value << exponent < 2**63 and value & 7 != 0
    digits, scale = whole + fraction, exponent - len(fraction)
    if 18 - len(digits) < 0 or scale < -9 or int(digits) >= 2**63:
        return False
    return scale % 3 == 0 and not digits.endswith("000") and digits[0] != "0"


def canonicalize_quantities(kind: ResourceKind, obj: dict[str, Any]) -> None:
    """The containers' requests and limits and the emptyDir size limits of a pod or a
    workload's pod template, in canonical form (in place)."""
    path = _POD_SPECS.get((kind.group, kind.plural))
    pod: Any = obj
    for key in path or ():
        pod = pod.get(key) if isinstance(pod, dict) else None
    if not isinstance(pod, dict):
        return
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for container in pod.get(field) or []:
            resources = container.get("resources") if isinstance(container, dict) else None
            for section in ("requests", "limits"):
                amounts = resources.get(section) if isinstance(resources, dict) else None
                if isinstance(amounts, dict):
                    for name, value in amounts.items():
                        if isinstance(value, str):
                            amounts[name] = canonical_quantity(value)
    for volume in pod.get("volumes") or []:
        empty_dir = volume.get("emptyDir") if isinstance(volume, dict) else None
        if isinstance(empty_dir, dict) and isinstance(empty_dir.get("sizeLimit"), str):
            empty_dir["sizeLimit"] = canonical_quantity(empty_dir["sizeLimit"])
