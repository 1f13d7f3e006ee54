"""Signals from Prometheus, batched across every VLMService.

The operator asks Prometheus once per signal for ALL services
(``sum by (namespace, vlmservice) (...)``) and hands each service its own
series, so the number of queries per cycle does not grow with the number of
services. Every autoscaling cycle of every service goes through one
:class:`SignalReader`, which holds

* ONE shared ``httpx.AsyncClient`` with explicit timeouts and a deadline on
  each whole answer (a dead or trickling Prometheus must fail fast, not stall
  a thousand control loops), a cap on the answer's size, bearer-token and TLS
  options; URLs that services name (``metrics.prometheusUrl``) go through a
  second client, so that a server of theirs cannot take the connections the
  operator's own Prometheus needs;
* a cache keyed by ``(prometheus_url, query)``: a result younger than the
  caller's ``max_age`` (half its sync period) is reused, and a lock per key
  makes concurrent callers await the one query in flight instead of sending
  their own. Failures are cached the same way, so an outage costs one failed
  query per signal per cycle, not one per service.

Meaning of the answers (the signals contract in docs/design.md):

* an empty result or NaN for a service is "no signal" (``None``), never zero
  (KEDA read empty as 0 and scaled fleets to the minimum during an outage,
  kedacore/keda#3065);
* a failure of any kind (connection refused, timeout, non-200, bad JSON,
  Prometheus ``"status": "error"``) makes the whole reading unavailable:
  :attr:`Signals.error` is set and every value is ``None``. The policy never
  scales down on either;
* an answer with ``warnings`` (Thanos and Mimir answer "success" with a
  warning when a store did not answer, and fewer series) is a lower bound:
  :attr:`Signals.partial` says so, and the operator scales up on it but never
  down, as with an unscraped pod.

One pod's bad scrape (aibrix#1032): when a gate's scrape fails, its series go
stale and drop out of the sums, so the fleet looks less loaded than it is.
:meth:`SignalReader.unscraped_pods` counts the failed targets of a service
from ``up == 0`` (one batched query too); the operator keeps the readings for
scaling up (they are a lower bound of the demand) and refuses to scale down
while any target is unscraped.

Pods gone from the cluster: the two gauges (running, waiting) are read per pod
and summed here over the pods of the service that exist (the operator's pod
index; terminating pods included, they still serve). Prometheus writes no
staleness marker for a target that vanished while it was down, so after a
restart the last samples of pods deleted meanwhile stay in every instant query
for the 5-minute lookback, and a PromQL sum would count their load as the
fleet's: a phantom queue that buys pods. Rates need two samples inside their
window and let such series go by themselves. A ``pod`` label that names none
of the service's pods is not the pod's name (a scrape config of one's own):
then nothing is dropped.

Per-service query overrides (``spec.metrics.queries``, with ``$window``
replaced) are the documented exception to batching: they run once per service
(still cached and shared by key), because nothing says two services'
overrides have the same shape.
"""

from __future__ import annotations

import asyncio
import json
import math
import ssl
import time
from collections.abc import Callable, Collection, Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from vlm_operator import contract
from vlm_operator.models import VLMServiceSpec
from vlm_operator.operator_metrics import OperatorMetrics
from vlm_operator.policy import Signals

#: The signals of the contract, in the order the policy's :class:`Signals` names them.
SIGNAL_NAMES = ("running", "waiting", "p95", "arrival_rate", "error_rate")

#: A batched answer: one value per (namespace, vlmservice); None is "no signal".
ServiceValues = dict[tuple[str, str], float | None]

_BY = "namespace, vlmservice"
_BY_POD = "namespace, vlmservice, pod"
#: Signals read per pod and summed over the pods that exist (see the module docstring).
PER_POD_SIGNALS = ("running", "waiting")
# A gate scraped by two jobs (both PodMonitors, or one of them and a scrape config of
# one's own) has a series per job: every series is taken once per target (its
# ``instance``) before the sums, so such a pod does not count twice. The gauges by
# target; the counters by target and by what tells a target's series apart (the
# status code; the bucket's bound), so a rate or a P95 does not double or lean
# towards the pod scraped twice either.
_BY_TARGET = "namespace, vlmservice, pod, instance"


def _requests_rate(selector: str = "") -> str:
    """The rate of answered requests per target and status code."""
    rate = f"rate({contract.REQUESTS}_total{selector}[$window])"
    return f"max by ({_BY_TARGET}, {contract.CODE_LABEL}) ({rate})"


_FAILED = "{" + contract.CODE_LABEL + '=~"5..|429"}'
_DEFAULT_QUERIES: dict[str, str] = {
    "running": f"sum by ({_BY_POD}) (max by ({_BY_TARGET}) ({contract.RUNNING}))",
    "waiting": f"sum by ({_BY_POD}) (max by ({_BY_TARGET}) ({contract.WAITING}))",
    "p95": (
        f"histogram_quantile(0.95, sum by ({_BY}, le) "
        f"(max by ({_BY_TARGET}, le) (rate({contract.DURATION}_bucket[$window]))))"
    ),
    "arrival_rate": f"sum by ({_BY}) ({_requests_rate()})",
    # 5xx and 429 (queue full) over everything answered. The ``or ... * 0``
    # turns "no failed request" into 0 instead of an empty result, while no
    # traffic at all stays 0/0 = NaN = no signal.
    "error_rate": (
        f"(sum by ({_BY}) "
        f"({_requests_rate(_FAILED)}) "
        f"or sum by ({_BY}) ({_requests_rate()}) * 0) "
        f"/ sum by ({_BY}) ({_requests_rate()})"
    ),
}
#: Targets whose last scrape failed, per pod (empty when all are up).
UNSCRAPED_QUERY = f"count by ({_BY_POD}) (up == 0)"
#: The answers read per pod (the others keep only their per-service values).
_PER_POD_QUERIES = frozenset(
    [*(_DEFAULT_QUERIES[signal] for signal in PER_POD_SIGNALS), UNSCRAPED_QUERY]
)

DEFAULT_TIMEOUT = httpx.Timeout(5.0, connect=2.0)
#: The most one answer may take, whole. httpx's timeouts are per socket read: a
#: server that sends a byte a second never trips them, and would hold a
#: connection of the pool, and the loops waiting on its answer, for ever.
DEFAULT_DEADLINE_SECONDS = 10.0
#: The largest answer read. A thousand services' per-pod gauges are a few MB;
#: parsed, JSON takes about eight times its size, and an answer the size of
#: the operator's memory limit would have it killed, again at every restart.
MAX_ANSWER_BYTES = 32 * 1024 * 1024
#: How much of Prometheus's error text goes into the status and Events.
_DETAIL_CHARS = 200
#: How Prometheus's annotations of a complete answer begin.
_PROMQL_ANNOTATIONS = ("PromQL info:", "PromQL warning:")
#: Prometheus's ``errorType`` of a failure that is its, not the query's.
_ERROR_TYPE_REASONS = {"timeout": "timeout", "canceled": "timeout", "unavailable": "status"}


class PrometheusError(Exception):
    """A query failed; ``reason`` is one of connect, timeout, status, json, promql."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def default_queries(window_seconds: int) -> dict[str, str]:
    """The batched queries of the signals contract for one rate window."""
    return {
        name: q.replace("$window", f"{window_seconds}s") for name, q in _DEFAULT_QUERIES.items()
    }


def service_queries(spec: VLMServiceSpec) -> tuple[dict[str, str], set[str]]:
    """The query of each signal for a service, and the names that are overrides."""
    window = f"{spec.metrics.window_seconds}s"
    queries = default_queries(spec.metrics.window_seconds)
    overridden: set[str] = set()
    for name in SIGNAL_NAMES:
        custom = getattr(spec.metrics.queries, name)
        if custom:
            queries[name] = custom.replace("$window", window)
            overridden.add(name)
    return queries, overridden


class _BearerTokenFile(httpx.Auth):
    """Reads the token file on every request: projected tokens rotate.

    The token goes to the operator's own Prometheus only (scheme, host and
    port of ``--prometheus-url``): whoever may write a VLMService names its
    ``metrics.prometheusUrl``, and must not receive the operator's credentials
    by pointing it at a server of their own.
    """

    def __init__(self, path: str, origin: str | None) -> None:
        self._path = Path(path)
        self._origin = _origin(httpx.URL(origin)) if origin else None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._origin is not None and _origin(request.url) == self._origin:
            try:
                token = self._path.read_text().strip()
            except (OSError, UnicodeDecodeError) as exc:
                # A read that failed, not the loop's: the status says so, and the
                # query-error metric and its alert see it (a Secret unmounted, a
                # projected token not yet rotated in).
                raise PrometheusError(
                    "connect", f"cannot read the bearer token file {self._path}: {exc}"
                ) from exc
            request.headers["Authorization"] = f"Bearer {token}"
        yield request


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default_port = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host, url.port or default_port


def tls_verification(*, ca_file: str | None, insecure: bool) -> ssl.SSLContext | bool:
    """How the client checks certificates: ``ca_file`` is trusted besides the
    system's CAs, not instead of them. The file is for the operator's own
    Prometheus; a service that names another, under a public CA, must still
    be read (one client serves them all)."""
    if insecure:
        return False
    if not ca_file:
        return True
    context = ssl.create_default_context(cafile=ca_file)
    context.load_default_certs()
    return context


def build_client(
    *,
    bearer_token_file: str | None = None,
    token_url: str | None = None,
    ca_file: str | None = None,
    insecure: bool = False,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    event_hooks: Mapping[str, list[Callable[..., Any]]] | None = None,
) -> httpx.AsyncClient:
    """The one HTTP client for every query of the operator.

    The bearer token, if any, is sent only to ``token_url``'s origin (the
    operator's ``--prometheus-url``), never to a URL a VLMService names.
    """
    return httpx.AsyncClient(
        timeout=timeout,
        verify=tls_verification(ca_file=ca_file, insecure=insecure),
        auth=_BearerTokenFile(bearer_token_file, token_url) if bearer_token_file else None,
        limits=httpx.Limits(max_connections=10, max_keepalive_connections=10),
        event_hooks=dict(event_hooks or {}),
    )


@dataclass
class _Entry:
    """One answer, parsed once and read by every service.

    Only the per-service and per-pod values are kept, not the raw JSON: a
    thousand services' series are ~0.8 KB each as parsed JSON, several MB per
    answer, and a thousand services must not each walk them (quadratic).
    """

    fetched_at: float
    by_service: ServiceValues = field(default_factory=dict)
    #: Per service, each series' value by its ``pod`` label ("" without one).
    by_pod: dict[tuple[str, str], dict[str, float | None]] = field(default_factory=dict)
    #: Whether any series carries the namespace/vlmservice labels.
    labelled: bool = False
    #: Series in the answer (an override that lost our labels is read only if one).
    series: int = 0
    error: PrometheusError | None = None
    #: Prometheus's first warning: the answer may lack series.
    warning: str | None = None

    @classmethod
    def parse(
        cls,
        fetched_at: float,
        result: list[dict[str, Any]],
        warning: str | None = None,
        *,
        per_pod: bool = True,
    ) -> _Entry:
        entry = cls(
            fetched_at=fetched_at,
            labelled=_has_service_labels(result),
            series=len(result),
            warning=warning,
        )
        seen: set[tuple[str, str]] = set()
        for sample in result:
            labels = sample.get("metric") or {}
            raw = sample.get("value") or [None, None]
            value = _number(raw[1] if len(raw) > 1 else None)
            key = (str(labels.get("namespace", "")), str(labels.get("vlmservice", "")))
            # Two series for one service (an override without its `sum by`): neither is the
            # service's value, and one pod's read as the fleet's would look like less load.
            entry.by_service[key] = None if key in seen else value
            seen.add(key)
            if not per_pod:
                continue
            pods = entry.by_pod.setdefault(key, {})
            pod = str(labels.get("pod", ""))
            # Two series of one pod (an override's shape): the pod's value is unknown.
            pods[pod] = None if pod in pods else value
        return entry

    def names_pods(self, key: tuple[str, str], pods: Collection[str] | None) -> bool:
        """Whether a series of the service carries the name of one of ``pods`` as
        its pod label (else the label is something else: a scrape config of one's own)."""
        return pods is not None and any(pod in pods for pod in self.by_pod.get(key, ()))

    def pods_of(self, key: tuple[str, str], pods: Collection[str] | None) -> list[float | None]:
        """The values of a service's series but those of pods not in ``pods`` (None:
        every series). Series without a pod label stay."""
        series = self.by_pod.get(key, {})
        return [value for pod, value in series.items() if pods is None or not pod or pod in pods]


def _number(raw: Any) -> float | None:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) or math.isinf(value) else value


#: Answers older than this are dropped at the next sweep: the longest staleAfterSeconds
#: is an hour, and the queries of services since deleted (or whose overrides changed)
#: would otherwise stay for the operator's life.
EVICT_AFTER_SECONDS = 3600.0
#: How often the cache is swept (at a fetch).
_SWEEP_EVERY_SECONDS = 60.0


class SignalReader:
    """Reads the signals of any VLMService, sharing queries across services."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        default_url: str | None,
        metrics: OperatorMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        service_client: httpx.AsyncClient | None = None,
        deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
    ) -> None:
        self._client = client
        #: For the URLs services name: a server of theirs that is slow, or holds its
        #: connections open, exhausts this client's pool, not the operator's own.
        self._service_client = service_client
        self._deadline = deadline_seconds
        self._default_url = default_url.rstrip("/") if default_url else None
        self._metrics = metrics
        self._clock = clock
        self._cache: dict[tuple[str, str], _Entry] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._swept_at = clock()
        #: Queries actually sent to Prometheus (the benchmark reads it).
        self.queries_sent = 0

    async def aclose(self) -> None:
        await self._client.aclose()
        if self._service_client is not None:
            await self._service_client.aclose()

    def prometheus_url(self, spec: VLMServiceSpec) -> str | None:
        url = spec.metrics.prometheus_url or self._default_url
        return url.rstrip("/") if url else None

    async def read(
        self,
        namespace: str,
        name: str,
        spec: VLMServiceSpec,
        *,
        max_age: float,
        pods: Collection[str] | None = None,
    ) -> Signals:
        """The signals of one service; never raises for Prometheus trouble.

        ``pods`` names the service's pods that exist: the gauges of others are
        not load (see the module docstring). None counts every series.
        """
        url = self.prometheus_url(spec)
        if url is None:
            return _unavailable("no Prometheus URL: set --prometheus-url or metrics.prometheusUrl")
        queries, overridden = service_queries(spec)
        values: dict[str, float | None] = {}
        oldest = self._clock()
        warning: str | None = None
        key = (namespace, name)
        try:
            entries = {
                signal: await self._fetch(
                    url,
                    queries[signal],
                    max_age=max_age,
                    source=self._source(url, overridden=signal in overridden),
                )
                for signal in SIGNAL_NAMES
            }
        except PrometheusError as exc:
            return _unavailable(f"{redacted(url)}: {exc}")
        live = _existing([entries[s] for s in PER_POD_SIGNALS if s not in overridden], key, pods)
        for signal, entry in entries.items():
            oldest = min(oldest, entry.fetched_at)
            warning = warning or entry.warning
            series = entry.by_service
            value = series.get(key)
            if signal in PER_POD_SIGNALS and signal not in overridden:
                value = _total(entry.pods_of(key, live))
            elif value is None and signal in overridden and entry.series == 1:
                # An override scoped to this service may drop our labels.
                ((_, only),) = series.items()
                value = only if not entry.labelled else None
            values[signal] = value
        return Signals(
            running=values["running"],
            waiting=values["waiting"],
            p95_seconds=values["p95"],
            arrival_rate=values["arrival_rate"],
            error_rate=values["error_rate"],
            age_seconds=max(0.0, self._clock() - oldest),
            partial=warning,
        )

    async def unscraped_pods(
        self,
        namespace: str,
        name: str,
        spec: VLMServiceSpec,
        *,
        max_age: float,
        pods: Collection[str] | None = None,
        ready: Collection[str] = (),
    ) -> int | None:
        """Pods of the service whose load is not in the sums; None if unknown.

        Those are the targets whose last scrape failed, and the ``ready`` pods
        (ready long enough to have been scraped) of which the gauges have no
        series at all: a target Prometheus has not discovered, another
        shard's, one a relabelling dropped. ``up == 0`` sees none of those,
        and their load, missing from the sums, would read as a fall.

        ``pods`` as for :meth:`read`: a pod deleted while Prometheus was down is
        not unscraped, it is gone.
        """
        entry = await self._batched_entry(spec, UNSCRAPED_QUERY, max_age=max_age)
        if entry is None or entry.warning is not None:
            return None  # a partial answer may lack the failed targets: unknown
        key = (namespace, name)
        # The failed targets alone cannot tell a pod label from something else; the
        # gauges :meth:`read` fetched (cached) can.
        queries, overridden = service_queries(spec)
        gauges = (
            []
            if pods is None
            else [
                await self._batched_entry(spec, queries[s], max_age=max_age)
                for s in PER_POD_SIGNALS
                if s not in overridden
            ]
        )
        answered = [g for g in gauges if g is not None]
        live = _existing(answered, key, pods)
        failed = int(sum(count or 0 for count in entry.pods_of(key, live)))
        if live is None:
            return failed  # the pod label is something else: pods cannot be matched
        if len(answered) < len(gauges):
            return None  # a gauge's answer failed: which pods have series is unknown
        seen = {pod for gauge in answered for pod in gauge.by_pod.get(key, {})}
        failing = {pod for pod, count in entry.by_pod.get(key, {}).items() if count}
        silent = [pod for pod in ready if pod not in seen and pod not in failing]
        return failed + len(silent)

    async def pod_load(
        self, namespace: str, name: str, spec: VLMServiceSpec, *, max_age: float
    ) -> dict[str, float] | None:
        """Requests running or waiting per pod of the service; None if unknown.

        From the gate's own gauges (the queries :meth:`read` sends unless
        overridden, so usually the answers it cached), whatever the overrides.
        """
        queries = default_queries(spec.metrics.window_seconds)
        load: dict[str, float] = {}
        for signal in PER_POD_SIGNALS:
            entry = await self._batched_entry(spec, queries[signal], max_age=max_age)
            if entry is None:
                return None
            for pod, value in entry.by_pod.get((namespace, name), {}).items():
                if pod and value is not None:
                    load[pod] = load.get(pod, 0.0) + value
        return load

    async def _batched_entry(
        self, spec: VLMServiceSpec, promql: str, *, max_age: float
    ) -> _Entry | None:
        url = self.prometheus_url(spec)
        if url is None:
            return None
        try:
            return await self._fetch(
                url, promql, max_age=max_age, source=self._source(url, overridden=False)
            )
        except PrometheusError:
            return None

    def _source(self, url: str, *, overridden: bool) -> str:
        """Whose a query is, for the error counter: the operator's own (its
        ``--prometheus-url``, its queries) or one a service chose."""
        return "operator" if url == self._default_url and not overridden else "service"

    async def _fetch(self, url: str, promql: str, *, max_age: float, source: str) -> _Entry:
        key = (url, promql)
        entry = self._cache.get(key)
        if entry is None or self._clock() - entry.fetched_at > max_age:
            lock = self._locks.setdefault(key, asyncio.Lock())
            async with lock:
                # Whoever held the lock before us refreshed it if the entry changed
                # meanwhile: that is the answer we waited for, however long the query
                # took (timed from its start, a slow answer is already "old").
                latest = self._cache.get(key)
                if latest is None or latest is entry:
                    latest = await self._send(url, promql, source)
                    self._cache[key] = latest
                entry = latest
            self._sweep()
        if entry.error is not None:
            raise entry.error
        return entry

    def _sweep(self) -> None:
        """Drop answers no service has asked for within EVICT_AFTER_SECONDS."""
        now = self._clock()
        if now - self._swept_at < _SWEEP_EVERY_SECONDS:
            return
        self._swept_at = now
        for key, entry in list(self._cache.items()):
            lock = self._locks.get(key)
            if now - entry.fetched_at > EVICT_AFTER_SECONDS and not (lock and lock.locked()):
                del self._cache[key]
                self._locks.pop(key, None)

    async def _send(self, url: str, promql: str, source: str) -> _Entry:
        started = self._clock()
        self.queries_sent += 1
        if self._metrics is not None:
            self._metrics.queries.labels(source).inc()
        try:
            result, warning = await self._instant_query(url, promql)
        except PrometheusError as exc:
            if self._metrics is not None:
                self._metrics.query_errors.labels(exc.reason, source).inc()
            return _Entry(fetched_at=started, error=exc)
        finally:
            if self._metrics is not None:
                self._metrics.query_seconds.observe(self._clock() - started)
        return _Entry.parse(started, result, warning, per_pod=promql in _PER_POD_QUERIES)

    async def _instant_query(
        self, url: str, promql: str
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The answer's series, and its first warning (None without)."""
        client = self._client
        if self._service_client is not None and url != self._default_url:
            client = self._service_client
        try:
            async with asyncio.timeout(self._deadline):
                status, body = await _get(client, f"{url}/api/v1/query", {"query": promql})
        except (httpx.TimeoutException, TimeoutError) as exc:
            raise PrometheusError("timeout", f"query timed out ({type(exc).__name__})") from exc
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            # InvalidURL is no HTTPError, and a host that is no valid IDNA name
            # (``xn--a``) a ValueError: a URL the schema let through must fail as a
            # read, not as the loop.
            raise PrometheusError("connect", f"cannot reach Prometheus: {exc!s:.200}") from exc
        if body is None:
            raise PrometheusError("json", f"answer larger than {MAX_ANSWER_BYTES} bytes")
        try:
            payload = json.loads(body)
        except ValueError as exc:
            if status != 200:
                raise PrometheusError("status", f"HTTP {status}") from exc
            raise PrometheusError("json", "response is not JSON") from exc
        if not isinstance(payload, dict):
            raise PrometheusError("json", "response is not a JSON object")
        if payload.get("status") != "success":
            detail = str(payload.get("error") or f"HTTP {status}")[:_DETAIL_CHARS]
            kind = str(payload.get("errorType", "error"))[:_DETAIL_CHARS]
            # Prometheus's own time-outs and overload are not the query's fault.
            reason = _ERROR_TYPE_REASONS.get(kind, "promql")
            raise PrometheusError(reason, f"{kind}: {detail}")
        if status != 200:
            raise PrometheusError("status", f"HTTP {status}")
        data = payload.get("data")
        if not isinstance(data, dict) or data.get("resultType") != "vector":
            raise PrometheusError("json", "expected an instant vector")
        result = data.get("result")
        if not isinstance(result, list):
            raise PrometheusError("json", "data.result is not a list")
        for item in result:
            # A sample is {metric: {labels}, value: [time, "value"]}; one of another
            # shape (a proxy's, a broken store's) is a failed read, cached and counted
            # as any other, not an exception out of the reading.
            if not (
                isinstance(item, dict)
                and isinstance(item.get("metric") or {}, dict)
                and isinstance(item.get("value") or [], list)
            ):
                raise PrometheusError("json", f"not a sample of an instant vector: {item!r:.100}")
        return result, _missing_data_warning(payload.get("warnings"))


async def _get(
    client: httpx.AsyncClient, url: str, params: Mapping[str, str]
) -> tuple[int, bytes | None]:
    """The status and body of a GET; the body None past MAX_ANSWER_BYTES (not read)."""
    async with client.stream("GET", url, params=params) as response:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
            return response.status_code, None
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                return response.status_code, None
            chunks.append(chunk)
        return response.status_code, b"".join(chunks)


def redacted(url: str) -> str:
    """``url`` without the user and password it may carry: it goes into statuses and
    Events that whoever may read a VLMService reads."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        return url.rpartition("@")[2] if "@" in url else url
    if not parsed.userinfo:
        return url
    return str(parsed.copy_with(username=None, password=None))


def missing_data_warnings(warnings: Any) -> list[str]:
    """The warnings of an answer (its ``warnings``) that say series may be missing,
    each bounded (the first goes into the status).

    Prometheus's own annotations on a complete answer (``PromQL info: input to
    histogram_quantile needed to be fixed for monotonicity``, ``PromQL warning:
    ...``, in ``warnings`` before 3.0) are no such thing; what a Thanos or Mimir
    querier says of a store that did not answer is.
    """
    if not isinstance(warnings, list):
        return []
    texts = (str(warning) for warning in warnings)
    return [text[:200] for text in texts if text and not text.startswith(_PROMQL_ANNOTATIONS)]


def _missing_data_warning(warnings: Any) -> str | None:
    """The first of :func:`missing_data_warnings`, or None."""
    return next(iter(missing_data_warnings(warnings)), None)


def _existing(
    gauges: list[_Entry], key: tuple[str, str], pods: Collection[str] | None
) -> Collection[str] | None:
    """``pods`` if a gauge read per pod names one of them, else None: the pod label is
    something else (or the gauges are overridden), and no series is dropped."""
    return pods if any(gauge.names_pods(key, pods) for gauge in gauges) else None


def _total(values: list[float | None]) -> float | None:
    """The sum, or None (no signal) for no series or one without a value, as PromQL's
    ``sum`` of them would be empty or NaN."""
    if not values or any(value is None for value in values):
        return None
    return float(sum(value for value in values if value is not None))


def _unavailable(message: str) -> Signals:
    return Signals(
        running=None,
        waiting=None,
        p95_seconds=None,
        arrival_rate=None,
        error_rate=None,
        error=message,
    )


def _has_service_labels(result: list[dict[str, Any]]) -> bool:
    return any("vlmservice" in (sample.get("metric") or {}) for sample in result)
