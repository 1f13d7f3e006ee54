"""Load traces: the workloads the simulator (and the local cluster) replay.

A trace is a list of phases. A ``closed`` trace gives each phase a number of
users who each send one request, wait for its answer (or the client
timeout) and send the next, like the measured load test. An ``open`` trace
gives each phase an arrival rate in requests per second (Poisson arrivals),
optionally ramping linearly to ``rateEnd`` over the phase, which is how the
24-hour diurnal curve is written. A trace may also carry ``service``: a
partial VLMService spec (camelCase, as in a manifest) that the scenario needs,
e.g. a larger ``maxReplicas`` for a peak of dozens of pods.

The shipped traces live in ``vlm_operator/data/traces/*.yaml`` and are
named after what they are; :func:`load_trace` accepts such a name or a path.

This module is pure: standard library and PyYAML only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from vlm_operator.latency import LatencyModel
from vlm_operator.yamlio import YAMLError, load_documents

__all__ = ["Phase", "Trace", "TraceError", "list_traces", "load_trace"]

TraceKind = Literal["closed", "open"]
_TRACE_DIR = ("data", "traces")


class TraceError(ValueError):
    """A trace file that cannot be used; the message names the field and why."""


@dataclass(frozen=True)
class Phase:
    """One stretch of constant users (closed) or of a rate, ramping or not (open)."""

    name: str
    start_s: float
    duration_s: float
    users: int | None = None
    rate: float | None = None
    rate_end: float | None = None

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    def rate_at(self, t: float) -> float:
        """Arrival rate at absolute time ``t`` inside this phase (requests/s)."""
        start = self.rate or 0.0
        if self.rate_end is None or self.duration_s <= 0:
            return start
        frac = min(max((t - self.start_s) / self.duration_s, 0.0), 1.0)
        return start + (self.rate_end - start) * frac

    def peak_rate(self) -> float:
        return max(self.rate or 0.0, self.rate_end if self.rate_end is not None else 0.0)


@dataclass(frozen=True)
class Trace:
    """A named workload: phases back to back from time 0."""

    name: str
    kind: TraceKind
    phases: list[Phase]
    description: str = ""
    service: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return self.phases[-1].end_s if self.phases else 0.0

    def phase_at(self, t: float) -> Phase | None:
        """The phase running at ``t`` (phases are half-open: [start, end))."""
        for phase in self.phases:
            if phase.start_s <= t < phase.end_s:
                return phase
        return None

    def rate_at(self, t: float) -> float:
        phase = self.phase_at(t)
        return phase.rate_at(t) if phase is not None else 0.0

    def users_at(self, t: float) -> int:
        phase = self.phase_at(t)
        return phase.users or 0 if phase is not None else 0

    def scaled(self, time_scale: float) -> Trace:
        """The same trace ``time_scale`` times faster (durations ÷, rates ×)."""
        if not time_scale > 0 or not math.isfinite(time_scale):
            raise TraceError(f"time_scale: must be a positive number, got {time_scale}")
        phases = [
            replace(
                p,
                start_s=p.start_s / time_scale,
                duration_s=p.duration_s / time_scale,
                rate=None if p.rate is None else p.rate * time_scale,
                rate_end=None if p.rate_end is None else p.rate_end * time_scale,
            )
            for p in self.phases
        ]
        return replace(self, phases=phases)


def list_traces() -> list[str]:
    """Names of the shipped traces."""
    folder = resources.files("vlm_operator").joinpath(*_TRACE_DIR)
    return sorted(
        entry.name.removesuffix(".yaml")
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    )


def load_trace(path_or_name: str | Path) -> Trace:
    """A shipped trace by name, or a trace file by path."""
    text, origin = _read(path_or_name)
    try:
        documents = load_documents(text)
    except YAMLError as exc:
        raise TraceError(f"{origin}: {exc}") from None
    if len(documents) != 1 or not isinstance(documents[0], Mapping):
        raise TraceError(f"{origin}: expected one YAML mapping with name, kind and phases")
    return parse_trace(documents[0], default_name=Path(origin).stem, origin=origin)


def _read(path_or_name: str | Path) -> tuple[str, str]:
    if not str(path_or_name).strip():
        raise TraceError(
            f"trace: empty; give a file or a shipped trace ({', '.join(list_traces())})"
        )
    candidate = Path(path_or_name)
    # A folder named after a shipped trace (a results folder, say) does not hide it.
    shipped = str(path_or_name) in list_traces() and not candidate.is_file()
    if not shipped and (candidate.suffix in (".yaml", ".yml") or candidate.exists()):
        try:
            return candidate.read_text(encoding="utf-8"), str(candidate)
        except OSError as exc:
            raise TraceError(f"{candidate}: cannot read: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise TraceError(
                f"{candidate}: cannot read: not UTF-8 text (byte {exc.start})"
            ) from None
    name = str(path_or_name)
    if name in list_traces():
        item = resources.files("vlm_operator").joinpath(*_TRACE_DIR, f"{name}.yaml")
        return item.read_text(encoding="utf-8"), f"{name}.yaml"
    raise TraceError(
        f"trace {name!r}: no such file and no shipped trace of that name "
        f"(shipped: {', '.join(list_traces())})"
    )


#: Bounds of a trace: a month, and loads far beyond what a cluster of
#: maxReplicas pods could serve. Past them a simulation would run for hours,
#: or for ever, without a word.
MAX_TRACE_SECONDS = 30 * 86400.0
MAX_RATE = 10_000.0
MAX_USERS = 100_000
#: Requests a trace may send in all: the simulator keeps each (some 300-500 bytes)
#: until the end, so ten million hold a few GB and run a minute or two. A closed
#: loop's users count a request per second each (a failed one is sent again after
#: a second), an open trace its arrivals.
MAX_REQUESTS = 10_000_000


def parse_trace(
    data: Mapping[str, Any], *, default_name: str = "trace", origin: str = "trace"
) -> Trace:
    """Validate a trace mapping; errors name the field (e.g. ``phases[2].rate``)."""

    def fail(where: str, why: str) -> TraceError:
        return TraceError(f"{origin}: {where}: {why}")

    known = {"name", "kind", "description", "phases", "service"}
    # YAML keys need not be strings (``1: x``), nor of one type: sort by text.
    unknown = sorted(set(data) - known, key=str)
    if unknown:
        raise fail(str(unknown[0]), f"unknown field (expected {', '.join(sorted(known))})")
    kind = data.get("kind")
    if kind not in ("closed", "open"):
        raise fail("kind", f"must be 'closed' (users) or 'open' (rate), got {kind!r}")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise fail("name", "must be a non-empty string")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise fail("description", "must be a string")
    service = data.get("service", {})
    if not isinstance(service, Mapping):
        raise fail("service", "must be a mapping (a partial VLMService spec)")
    raw_phases = data.get("phases")
    if not isinstance(raw_phases, list) or not raw_phases:
        raise fail("phases", "must be a non-empty list")

    phases: list[Phase] = []
    start = 0.0
    for i, raw in enumerate(raw_phases):
        where = f"phases[{i}]"
        if not isinstance(raw, Mapping):
            raise fail(where, "must be a mapping")
        allowed = (
            {"name", "duration", "users"}
            if kind == "closed"
            else {
                "name",
                "duration",
                "rate",
                "rateEnd",
            }
        )
        extra = sorted(set(raw) - allowed, key=str)
        if extra:
            raise fail(
                f"{where}.{extra[0]}",
                f"not allowed in {'an open' if kind == 'open' else 'a closed'} trace",
            )
        duration = _number(raw.get("duration"), f"{where}.duration", fail)
        if duration <= 0:
            raise fail(f"{where}.duration", f"must be positive seconds, got {duration}")
        if start + duration > MAX_TRACE_SECONDS:
            raise fail(
                f"{where}.duration",
                f"the trace would last past {MAX_TRACE_SECONDS:.0f} s (30 days)",
            )
        phase_name = raw.get("name", f"phase {i + 1}")
        if not isinstance(phase_name, str):
            raise fail(f"{where}.name", "must be a string")
        if kind == "closed":
            users = raw.get("users")
            if isinstance(users, bool) or not isinstance(users, int) or users < 0:
                raise fail(f"{where}.users", f"must be a whole number >= 0, got {users!r}")
            if users > MAX_USERS:
                raise fail(f"{where}.users", f"must be at most {MAX_USERS}, got {users}")
            phases.append(Phase(phase_name, start, duration, users=users))
        else:
            rate = _number(raw.get("rate"), f"{where}.rate", fail)
            rate_end = raw.get("rateEnd")
            end = None if rate_end is None else _number(rate_end, f"{where}.rateEnd", fail)
            for label, value in (("rate", rate), ("rateEnd", end)):
                if value is not None and value < 0:
                    raise fail(f"{where}.{label}", f"must be >= 0 requests/s, got {value}")
                if value is not None and value > MAX_RATE:
                    raise fail(
                        f"{where}.{label}",
                        f"must be at most {MAX_RATE:.0f} requests/s, got {value}",
                    )
            phases.append(Phase(phase_name, start, duration, rate=rate, rate_end=end))
        start += duration
    # A ramp's arrivals: its duration at the mean of its two rates. A closed loop's
    # user sends its next request on an answer, or a second after a failure: at most
    # one a second, or one per half a request's solo time if that is shorter (a fast
    # model of the trace's own, service.model.fake.baseSeconds).
    per_user = 1.0 / min(1.0, _base_seconds(service) / 2)
    requests = math.fsum(
        (p.users or 0) * p.duration_s * per_user
        if kind == "closed"
        else p.duration_s * (p.rate_at(p.start_s) + p.rate_at(p.end_s)) / 2
        for p in phases
    )
    if requests > MAX_REQUESTS:
        hint = "a rate per minute written as per second?" if kind == "open" else "at most"
        raise fail(
            "phases",
            f"some {requests:,.0f} requests in all ({hint}), past the {MAX_REQUESTS:,} the "
            "simulator holds",
        )
    return Trace(
        name=name,
        kind=kind,
        phases=phases,
        description=description,
        service=dict(service),
    )


def _base_seconds(service: Mapping[str, Any]) -> float:
    """The solo time of the trace's own model, if it names one; else the calibrated."""
    model = service.get("model")
    fake = model.get("fake") if isinstance(model, Mapping) else None
    base = fake.get("baseSeconds") if isinstance(fake, Mapping) else None
    if isinstance(base, int | float) and not isinstance(base, bool) and base > 0:
        return float(base)
    return LatencyModel().base_seconds


def _number(value: Any, where: str, fail: Any) -> float:
    if isinstance(value, str) and "e" in value.lower():
        try:
            float(value)
        except ValueError:
            pass
        else:  # YAML 1.1 takes an exponent only after a dot and with a sign (3.6e+3)
            raise fail(where, f"must be a number, got the text {value!r} (YAML reads "
                       "an exponent as a number only with a dot and a sign: 3.6e+3)")  # fmt: skip
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(where, f"must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits: no float holds it
        raise fail(where, "too large (beyond any float)") from None
    if not math.isfinite(number):
        raise fail(where, f"must be finite, got {value!r}")
    return number
