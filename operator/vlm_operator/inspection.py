"""Why did it scale? The recent history of one VLMService, from Prometheus.

``vlm-operator inspect`` answers the question a user asks after a scale-up or a
latency spike: how many pods were serving, how many requests each held against
its in-flight limit, how long the queue was, and where P95 stood against its
target, step by step over the last minutes. It reads the same gate series the
operator decides from (the signals contract in docs/design.md), through Prometheus
range queries, so what it shows is what the operator saw.

It uses prometheus-api-client (the ``inspect`` extra). That client is
synchronous and, by default, retries and waits without a deadline; fine for a
command line, so long as every request carries an explicit timeout and
retries are off, which :func:`connect` does. It is never used by the
operator's control loop. The PNG uses matplotlib (the ``plot`` extra); both are
imported only when needed, so a missing extra is reported, not a traceback.
"""

from __future__ import annotations

import ast
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from vlm_operator.models import AutoscalingSpec, MetricsSpec
from vlm_operator.signals import missing_data_warnings

__all__ = [
    "MAX_POINTS",
    "ExtraMissing",
    "Inspection",
    "PrometheusError",
    "PrometheusRefused",
    "PrometheusTLSFailed",
    "PrometheusUnreachable",
    "RangeClient",
    "Series",
    "ServiceRef",
    "check_plot_extra",
    "check_points",
    "connect",
    "default_step",
    "format_table",
    "inspect_service",
    "parse_service_ref",
    "plot_png",
    "queries",
]

#: The operator's defaults, so the table compares against what a service gets
#: when its spec says nothing.
DEFAULT_P95_TARGET_SECONDS: float = AutoscalingSpec.model_fields[
    "p95_latency_target_seconds"
].default
DEFAULT_WINDOW_SECONDS: int = MetricsSpec.model_fields["window_seconds"].default

#: About this many rows in the table when the step is not given.
_TARGET_ROWS = 30

#: Prometheus refuses a range query with more steps than this per series.
MAX_POINTS = 11_000

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class ExtraMissing(Exception):
    """An optional dependency (an extra of the distribution) is not installed."""


class PrometheusError(Exception):
    """A range query failed; the message says how and names the query."""


class PrometheusUnreachable(PrometheusError):
    """No answer: the connection failed or the timeout ran out."""


class PrometheusRefused(PrometheusError):
    """An answer, but an HTTP error (with Prometheus's error text) or not Prometheus's API."""


class PrometheusTLSFailed(PrometheusError):
    """The TLS handshake failed, typically: the server's certificate could not be verified."""


@dataclass(frozen=True)
class ServiceRef:
    """A VLMService by namespace and name."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def selector(self) -> str:
        """The PromQL label matchers of the signals contract for this service."""
        return f'namespace="{self.namespace}",vlmservice="{self.name}"'


def parse_service_ref(text: str) -> ServiceRef:
    """Parse ``NAMESPACE/NAME``; ValueError says which part is wrong and why."""
    parts = text.split("/")
    if len(parts) != 2:
        raise ValueError(f"expected NAMESPACE/NAME, got {text!r}")
    namespace, name = parts
    if not (len(namespace) <= 63 and _DNS_LABEL.match(namespace)):
        raise ValueError(
            f"namespace {namespace!r} is not a valid namespace name "
            "(lower-case letters, digits and '-', at most 63 characters)"
        )
    if not (len(name) <= 253 and _DNS_SUBDOMAIN.match(name)):
        raise ValueError(
            f"name {name!r} is not a valid VLMService name "
            "(lower-case letters, digits, '-' and '.', at most 253 characters)"
        )
    return ServiceRef(namespace, name)


def default_step(minutes: float) -> float:
    """A step giving about thirty rows, in whole seconds, at least one."""
    return float(max(1, round(minutes * 60 / _TARGET_ROWS)))


def check_points(minutes: float, step: float) -> None:
    """ValueError when Prometheus would refuse ``minutes`` at ``step``: too many steps.

    Prometheus refuses when the range holds more than :data:`MAX_POINTS` whole
    steps (``(end - start) / step`` in Go's integer division of durations).
    """
    # The client rounds both ends of the range to whole seconds: one more, at most.
    seconds = minutes * 60 + 1
    steps = math.floor(seconds / step)
    if steps > MAX_POINTS:
        raise ValueError(
            f"{minutes:g} minutes at a {step:g} s step are {steps} steps, and Prometheus "
            f"answers at most {MAX_POINTS} per series: take a step of "
            f"{math.floor(seconds / (MAX_POINTS + 1)) + 1} s or more, or fewer minutes"
        )


def queries(service: ServiceRef, window_seconds: int) -> dict[str, str]:
    """The range queries, by name. ``in_flight`` is per pod; the others per service.

    ``pods`` counts the gates Prometheus scrapes successfully (their config
    gauge exists only while the target is up), which is the replicas that
    actually serve, kube-state-metrics or not. Every series is taken once per
    target (``pod``, ``instance``) first, as the operator takes its signals: a
    gate scraped by two jobs counts once.
    """
    sel = service.selector
    window = f"{window_seconds}s"
    target = "pod, instance"
    return {
        "pods": f"count(count by ({target}) (vlm_gate_max_in_flight{{{sel}}}))",
        "limit": f"max(vlm_gate_max_in_flight{{{sel}}})",
        "in_flight": f"sum by (pod) (max by ({target}) (vlm_requests_running{{{sel}}}))",
        "waiting": f"sum(max by ({target}) (vlm_requests_waiting{{{sel}}}))",
        "p95": (
            f"histogram_quantile(0.95, sum by (le) (max by ({target}, le) "
            f"(rate(vlm_request_duration_seconds_bucket{{{sel}}}[{window}]))))"
        ),
        "request_rate": (
            f"sum(max by ({target}, code) (rate(vlm_requests_total{{{sel}}}[{window}])))"
        ),
        "rejected_rate": (
            f"sum(max by ({target}, reason) (rate(vlm_requests_rejected_total{{{sel}}}[{window}])))"
        ),
    }


@dataclass(frozen=True)
class Series:
    """One time series: ``(unix seconds, value)`` points, NaN and ±Inf dropped."""

    label: str
    points: tuple[tuple[float, float], ...]

    def at(self, timestamp: float) -> float | None:
        """The value at exactly this step, or None when there was none."""
        return self._by_time.get(timestamp)

    @cached_property
    def _by_time(self) -> dict[float, float]:
        return dict(self.points)

    @property
    def values(self) -> list[float]:
        return [value for _, value in self.points]


@dataclass(frozen=True)
class Inspection:
    """Everything ``inspect`` shows about one service over a time range."""

    service: ServiceRef
    start: float
    end: float
    step: float
    p95_target_seconds: float
    pods: Series | None = None
    limit: Series | None = None
    in_flight: tuple[Series, ...] = ()
    waiting: Series | None = None
    p95: Series | None = None
    request_rate: Series | None = None
    rejected_rate: Series | None = None
    queries: Mapping[str, str] = field(default_factory=dict)
    #: What Prometheus warned of in its answers: series may be missing.
    warnings: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """No gate of this service was scraped in the range."""
        return self.pods is None and not self.in_flight

    def timestamps(self) -> list[float]:
        """Every step at which any series has a value, in order."""
        stamps: set[float] = set()
        for series in self._all_series():
            stamps.update(t for t, _ in series.points)
        return sorted(stamps)

    def in_flight_at(self, timestamp: float) -> list[float]:
        """In-flight requests of each pod scraped at this step."""
        found = (series.at(timestamp) for series in self.in_flight)
        return [value for value in found if value is not None]

    def _all_series(self) -> Iterable[Series]:
        singles = (
            self.pods,
            self.limit,
            self.waiting,
            self.p95,
            self.request_rate,
            self.rejected_rate,
        )
        yield from (s for s in singles if s is not None)
        yield from self.in_flight


class RangeClient(Protocol):
    """The part of prometheus-api-client's ``PrometheusConnect`` used here."""

    def custom_query_range(
        self,
        query: str,
        start_time: datetime,
        end_time: datetime,
        step: str,
        params: dict[str, Any] | None = None,
        timeout: int | None = None,
    ) -> Any: ...


def connect(
    url: str,
    *,
    timeout_seconds: float,
    bearer_token: str | None = None,
    ca_file: str | None = None,
) -> RangeClient:
    """A ``PrometheusConnect`` with no retries and a timeout on every request.

    Raises :class:`ExtraMissing` when prometheus-api-client is not installed.
    """
    try:
        from prometheus_api_client import PrometheusConnect
        from urllib3.util.retry import Retry
    except ImportError as exc:
        raise ExtraMissing(
            "prometheus-api-client is not installed; install the inspect extra: "
            "pip install '.[inspect]' in a vlm-operator checkout"
        ) from exc
    headers = {"Authorization": f"Bearer {bearer_token}"} if bearer_token else None
    # Its default retries connection errors three times with back-off, which
    # turns an unreachable Prometheus into a long silent wait.
    client = PrometheusConnect(
        url=url.rstrip("/"),
        headers=headers,
        retry=Retry(total=0, connect=0, read=0, status=0, redirect=0),
        timeout=timeout_seconds,
    )
    if ca_file:
        client._session.verify = ca_file
    connection = _Connection(client)
    # The client returns an answer's series only: its warnings are read on the way.
    client._session.hooks["response"].append(connection.note_warnings)
    return connection


class _Connection:
    """A ``PrometheusConnect``, and the warnings its answers carried that say series
    may be missing (a Thanos or Mimir querier whose store did not answer), which the
    operator reads as a partial answer and the client drops."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.warnings: list[str] = []

    def custom_query_range(self, *args: Any, **kwargs: Any) -> Any:
        return self.client.custom_query_range(*args, **kwargs)

    def note_warnings(self, response: Any, *args: Any, **kwargs: Any) -> None:
        if b'"warnings"' not in response.content:
            return  # the client parses the body again: only an answer with them twice
        try:
            answer = response.json()
        except ValueError:
            return
        if isinstance(answer, dict):
            self.warnings += missing_data_warnings(answer.get("warnings"))


def inspect_service(
    client: RangeClient,
    service: ServiceRef,
    *,
    minutes: float,
    step_seconds: float | None = None,
    p95_target_seconds: float = DEFAULT_P95_TARGET_SECONDS,
    window_seconds: int = DEFAULT_WINDOW_SECONDS,
    now: Callable[[], float] = time.time,
) -> Inspection:
    """Run the range queries over the last ``minutes`` and collect the series.

    Raises a :class:`PrometheusError` when a query fails (connection,
    timeout, TLS, HTTP error or a PromQL error), naming the query, and
    ValueError for a range of more than :data:`MAX_POINTS` steps.
    """
    step = step_seconds if step_seconds is not None else default_step(minutes)
    check_points(minutes, step)
    end = float(math.floor(now()))
    # Align to the step so every query returns the same timestamps.
    end -= end % step
    start = end - minutes * 60
    # A rate window shorter than the step would skip samples between steps.
    window = max(window_seconds, math.ceil(step))
    named = queries(service, window)
    noted: list[str] = getattr(client, "warnings", [])  # what connect() returns notes them
    first = len(noted)
    results = {
        key: _query_range(client, promql, start=start, end=end, step=step)
        for key, promql in named.items()
    }
    return Inspection(
        service=service,
        start=start,
        end=end,
        step=step,
        p95_target_seconds=p95_target_seconds,
        pods=_single(results["pods"], "pods"),
        limit=_single(results["limit"], "limit"),
        in_flight=tuple(_by_label(results["in_flight"], "pod")),
        waiting=_single(results["waiting"], "waiting"),
        p95=_single(results["p95"], "p95"),
        request_rate=_single(results["request_rate"], "request rate"),
        rejected_rate=_single(results["rejected_rate"], "rejected rate"),
        queries=named,
        warnings=tuple(dict.fromkeys(noted[first:])),
    )


def _query_range(
    client: RangeClient, promql: str, *, start: float, end: float, step: float
) -> list[Mapping[str, Any]]:
    try:
        result = client.custom_query_range(
            promql,
            start_time=datetime.fromtimestamp(start, UTC),
            end_time=datetime.fromtimestamp(end, UTC),
            # Plain seconds, which Prometheus takes as a float: a duration
            # ("2.5s") must be whole units, and ``:g`` writes 1e+06.
            step=repr(step),
        )
    except Exception as exc:  # requests' and the client's exceptions alike
        raise _classify(exc, promql) from exc
    if not isinstance(result, list):
        raise PrometheusRefused(f"not a Prometheus answer: {result!r:.300} (query: {promql})")
    for item in result:
        if not _is_range_series(item):
            raise PrometheusRefused(
                f"not a Prometheus answer: a series {item!r:.200} (query: {promql})"
            )
    return result


def _is_range_series(item: Any) -> bool:
    """Whether ``item`` is a range vector's series: {metric: {labels}, values: [[t, "v"], ...]}."""
    if not isinstance(item, dict) or not isinstance(item.get("metric") or {}, dict):
        return False
    values = item.get("values") or []
    if not isinstance(values, list):
        return False
    for point in values:
        if not isinstance(point, list | tuple) or len(point) != 2:
            return False
        try:
            float(point[0]), float(point[1])
        except (TypeError, ValueError):
            return False
    return True


def _classify(exc: Exception, promql: str) -> PrometheusError:
    """The failure as what it means to the user: no answer, a refusal, or TLS."""
    import requests
    from prometheus_api_client.exceptions import PrometheusApiClientException

    where = f" (query: {promql})"
    # SSLError is a ConnectionError: test it first.
    if isinstance(exc, requests.exceptions.SSLError):
        return PrometheusTLSFailed(_tls_reason(exc) + where)
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return PrometheusUnreachable(_reason(exc) + where)
    if isinstance(exc, PrometheusApiClientException):
        return PrometheusRefused(_refusal(str(exc)) + where)
    if isinstance(exc, ValueError | KeyError | TypeError):  # a 200 whose body is not the API's
        return PrometheusRefused(
            f"not a Prometheus answer: {type(exc).__name__}: {exc}"[:300] + where
        )
    return PrometheusError(f"{type(exc).__name__}: {str(exc)[:300]}{where}")


def _reason(exc: BaseException) -> str:
    """The root cause, without urllib3's nested retry wrappers."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] [^'\")(]+", text)
    if errno:
        return errno.group(0).strip()
    return f"{type(exc).__name__}: {text[:300]}"


def _tls_reason(exc: BaseException) -> str:
    """OpenSSL's own words (``[SSL: ...]``, ``[X509: ...]``), without urllib3's wrappers."""
    text = str(exc)
    found = re.search(r"\[[A-Z0-9]+: [A-Z0-9_]+\] .*?(?= \(_ssl\.c:\d+\)|$)", text)
    return found.group(0).strip() if found else f"{type(exc).__name__}: {text[:300]}"


def _refusal(text: str) -> str:
    """``HTTP 400: bad_data: <Prometheus's error>`` from the client's exception text.

    prometheus-api-client says ``HTTP Status Code 400 (b'<the body>')``;
    Prometheus's body is JSON with ``errorType`` and ``error``.
    """
    found = re.fullmatch(r"HTTP Status Code (\d+) \((b'.*'|b\".*\")\)", text, re.DOTALL)
    if found is None:
        return text[:300]
    status = f"HTTP {found.group(1)}"
    try:
        body = ast.literal_eval(found.group(2)).decode("utf-8", "replace")
    except (ValueError, SyntaxError):
        return status
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and answer.get("error"):
        kind = answer.get("errorType")
        return f"{status}: {kind}: {answer['error']}" if kind else f"{status}: {answer['error']}"
    # Not Prometheus's JSON (a proxy's page, say): its first line is the best clue.
    first = body.strip().splitlines()[0][:200] if body.strip() else "(empty body)"
    return f"{status}: {first}"


def _points(raw: Sequence[Sequence[Any]]) -> tuple[tuple[float, float], ...]:
    points = []
    for timestamp, value in raw:
        number = float(value)
        # Prometheus writes "NaN" for an empty histogram window: no signal, not zero.
        if math.isfinite(number):
            points.append((float(timestamp), number))
    return tuple(points)


def _single(result: Sequence[Mapping[str, Any]], label: str) -> Series | None:
    for item in result:
        points = _points(item.get("values", []))
        if points:
            return Series(label, points)
    return None


def _by_label(result: Sequence[Mapping[str, Any]], label_name: str) -> list[Series]:
    found = []
    for item in result:
        points = _points(item.get("values", []))
        if points:
            found.append(Series(str(item.get("metric", {}).get(label_name, "?")), points))
    return sorted(found, key=lambda series: series.label)


# ---------------------------------------------------------------------- output


def _cell(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _value(series: Series | None, timestamp: float) -> float | None:
    return None if series is None else series.at(timestamp)


def format_table(inspection: Inspection) -> str:
    """A terminal table, one row per step, with a summary line on top."""
    lines = [_summary(inspection)]
    # The operator reads such an answer as partial (and holds every scale-down on it).
    lines += [
        f"warning: Prometheus says series may be missing: {warning}"
        for warning in inspection.warnings
    ]
    if inspection.empty:
        lines.append(
            f"no gate series for {inspection.service} in this range: is Prometheus scraping "
            "its gates with the labels namespace and vlmservice (see manifests/prometheus/)?"
        )
        return "\n".join(lines) + "\n"
    header = (
        "TIME(UTC)",
        "PODS",
        "LIMIT",
        "IN-FLIGHT/POD",
        "MAX-POD",
        "QUEUE",
        "P95(s)",
        "TARGET",
        "REQ/s",
        "REJ/s",
    )
    rows = [header]
    for timestamp in inspection.timestamps():
        pods = _value(inspection.pods, timestamp)
        per_pod = inspection.in_flight_at(timestamp)
        mean = sum(per_pod) / len(per_pod) if per_pod else None
        p95 = _value(inspection.p95, timestamp)
        over = p95 is not None and p95 > inspection.p95_target_seconds
        rows.append(
            (
                datetime.fromtimestamp(timestamp, UTC).strftime("%H:%M:%S"),
                _cell(pods, 0),
                _cell(_value(inspection.limit, timestamp), 0),
                _cell(mean),
                _cell(max(per_pod) if per_pod else None, 0),
                _cell(_value(inspection.waiting, timestamp), 0),
                _cell(p95) + ("!" if over else ""),
                _cell(inspection.p95_target_seconds),
                _cell(_value(inspection.request_rate, timestamp), 2),
                _cell(_value(inspection.rejected_rate, timestamp), 2),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        lines.append("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    lines.append(
        "P95 marked ! is above the target; MAX-POD above LIMIT would mean a gate let too many in."
    )
    return "\n".join(lines) + "\n"


def _summary(inspection: Inspection) -> str:
    minutes = (inspection.end - inspection.start) / 60
    text = (
        f"{inspection.service}: last {minutes:g} min, step {inspection.step:g} s, "
        f"P95 target {inspection.p95_target_seconds:g} s"
    )
    if inspection.pods is not None:
        pods = inspection.pods.values
        text += f"; pods {min(pods):g}..{max(pods):g}"
    peak = max((max(series.values) for series in inspection.in_flight), default=None)
    if peak is not None:
        text += f"; peak in flight in one pod {peak:g}"
    if inspection.p95 is not None:
        above = sum(1 for v in inspection.p95.values if v > inspection.p95_target_seconds)
        text += f"; P95 above target in {above} of {len(inspection.p95.points)} steps"
    return text


def plot_png(inspection: Inspection, path: Path) -> None:
    """Four stacked panels: pods, in flight per pod vs the limit, queue, P95 vs target.

    Raises :class:`ExtraMissing` when matplotlib is not installed. The file is
    PNG whatever its name says.
    """
    plt = _pyplot()

    def minutes_ago(series: Series) -> list[float]:
        return [(t - inspection.end) / 60 for t, _ in series.points]

    figure, axes = plt.subplots(4, 1, sharex=True, figsize=(10, 10))
    pods_ax, flight_ax, queue_ax, p95_ax = axes
    if inspection.pods is not None:
        pods_ax.step(minutes_ago(inspection.pods), inspection.pods.values, where="post")
    pods_ax.set_ylabel("pods scraped")
    for series in inspection.in_flight:
        flight_ax.plot(minutes_ago(series), series.values, label=series.label, linewidth=1)
    if inspection.limit is not None:
        flight_ax.plot(
            minutes_ago(inspection.limit),
            inspection.limit.values,
            color="red",
            linestyle="--",
            label="limit",
        )
    flight_ax.set_ylabel("in flight per pod")
    # No legend without lines: matplotlib would warn that it found no labels.
    if (inspection.in_flight or inspection.limit is not None) and len(inspection.in_flight) <= 10:
        flight_ax.legend(loc="upper left", fontsize="small")
    if inspection.waiting is not None:
        queue_ax.plot(minutes_ago(inspection.waiting), inspection.waiting.values)
    queue_ax.set_ylabel("queued")
    if inspection.p95 is not None:
        p95_ax.plot(minutes_ago(inspection.p95), inspection.p95.values, label="P95")
    p95_ax.axhline(inspection.p95_target_seconds, color="red", linestyle="--", label="target")
    p95_ax.set_ylabel("P95 (s)")
    p95_ax.legend(loc="upper left", fontsize="small")
    p95_ax.set_xlabel("minutes before the end of the range")
    for ax in axes:
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    pods_ax.yaxis.get_major_locator().set_params(integer=True)
    figure.suptitle(f"{inspection.service}")
    figure.tight_layout()
    try:
        # The format by name, not by the extension: it is PNG whatever the file is called.
        figure.savefig(path, dpi=100, format="png")
    finally:
        plt.close(figure)


def check_plot_extra() -> None:
    """Raise :class:`ExtraMissing` now, before any query, when a PNG cannot be drawn."""
    _pyplot()


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ExtraMissing(
            "matplotlib is not installed; install the plot extra: "
            "pip install '.[plot]' in a vlm-operator checkout"
        ) from exc
    return plt
