"""The signal reader against a real HTTP server speaking Prometheus's query API.

The stub is an aiohttp server on 127.0.0.1 that answers ``/api/v1/query`` from
a table the test controls and records every query it receives, so the tests
see what crosses the wire: how many queries, which ones, with which headers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from vlm_operator import signals as signals_module
from vlm_operator.models import VLMServiceSpec
from vlm_operator.operator_metrics import OperatorMetrics
from vlm_operator.signals import (
    EVICT_AFTER_SECONDS,
    UNSCRAPED_QUERY,
    SignalReader,
    build_client,
    default_queries,
    redacted,
    tls_verification,
)

from e2e.exporters import Exporter
from e2e.prometheus import PROMETHEUS_BINARY, PrometheusServer

Answer = Callable[[str], web.StreamResponse]


class StubPrometheus:
    def __init__(self) -> None:
        self.queries: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.series: dict[str, list[dict[str, Any]]] = {}
        self.answer: Answer | None = None  # overrides every reply when set
        #: Answers every request itself when set (a reply written piece by piece).
        self.handler: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None
        #: Replies sent chunked, with no Content-Length.
        self.chunked = False
        self.delay = 0.0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/v1/query", self._query)
        app.router.add_get("/prom/api/v1/query", self._query)  # another path, same origin
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _query(self, request: web.Request) -> web.StreamResponse:
        query = request.query["query"]
        self.queries.append(query)
        self.headers.append(dict(request.headers))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.handler is not None:
            return await self.handler(request)
        if self.answer is not None:
            return self.answer(query)
        payload = {
            "status": "success",
            "data": {"resultType": "vector", "result": self.series.get(query, [])},
        }
        if self.chunked:
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(json.dumps(payload).encode())
            await response.write_eof()
            return response
        return web.json_response(payload)


def sample(value: float | str, **labels: str) -> dict[str, Any]:
    return {"metric": labels, "value": [1700000000.0, str(value)]}


def spec(**metrics: Any) -> VLMServiceSpec:
    return VLMServiceSpec.model_validate({"model": {"id": "m", "runtime": "fake"}, **metrics})


@pytest.fixture
async def prom() -> AsyncIterator[StubPrometheus]:
    stub = StubPrometheus()
    await stub.start()
    yield stub
    await stub.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with build_client(timeout=httpx.Timeout(1.0, connect=0.5)) as c:
        yield c


def fill(prom: StubPrometheus, services: list[tuple[str, str]], window: int = 30) -> None:
    q = default_queries(window)
    for signal, value in (
        ("running", 3),
        ("waiting", 2),
        ("p95", 9.5),
        ("arrival_rate", 0.4),
        ("error_rate", 0.0),
    ):
        prom.series[q[signal]] = [
            sample(value, namespace=ns, vlmservice=name) for ns, name in services
        ]


async def test_one_query_per_signal_for_all_services(
    prom: StubPrometheus, client: httpx.AsyncClient
) -> None:
    services = [("team-a", f"svc-{i}") for i in range(200)]
    fill(prom, services)
    reader = SignalReader(client, default_url=prom.url)
    readings = await asyncio.gather(
        *(reader.read(ns, name, spec(), max_age=2.5) for ns, name in services)
    )
    assert len(prom.queries) == 5, prom.queries
    assert sorted(prom.queries) == sorted(default_queries(30).values())
    for signals in readings:
        assert signals.error is None
        assert (signals.running, signals.waiting, signals.p95_seconds) == (3.0, 2.0, 9.5)
        assert (signals.arrival_rate, signals.error_rate) == (0.4, 0.0)
    # A second round inside max_age is served from the cache.
    await reader.read("team-a", "svc-7", spec(), max_age=2.5)
    assert len(prom.queries) == 5
    assert reader.queries_sent == 5


async def test_callers_waiting_on_a_slow_query_take_its_answer(
    prom: StubPrometheus, client: httpx.AsyncClient
) -> None:
    # An answer that takes longer than max_age is "old" by the time it comes (it is
    # timed from the query's start); the callers that waited for it must not each
    # send the query again, one after another.
    services = [("team-a", f"svc-{i}") for i in range(8)]
    fill(prom, services)
    prom.delay = 0.3
    reader = SignalReader(client, default_url=prom.url)
    readings = await asyncio.gather(
        *(reader.read(ns, name, spec(), max_age=0.1) for ns, name in services)
    )
    assert [r.error for r in readings] == [None] * 8
    assert len(prom.queries) == 5, prom.queries


async def test_callers_waiting_on_a_query_that_times_out_share_its_failure(
    prom: StubPrometheus, client: httpx.AsyncClient
) -> None:
    services = [("team-a", f"svc-{i}") for i in range(4)]
    fill(prom, services)
    prom.delay = 1.5  # past the client's 1 s timeout, itself past max_age
    reader = SignalReader(client, default_url=prom.url)
    readings = await asyncio.gather(
        *(reader.read(ns, name, spec(), max_age=0.5) for ns, name in services)
    )
    assert all(r.error is not None and "timed out" in r.error for r in readings)
    # One service's read stops at its first failed query; the others share it.
    assert len(prom.queries) == 1, prom.queries


async def test_results_older_than_max_age_are_queried_again(
    prom: StubPrometheus, client: httpx.AsyncClient
) -> None:
    now = [100.0]
    fill(prom, [("ns", "a")])
    reader = SignalReader(client, default_url=prom.url, clock=lambda: now[0])
    await reader.read("ns", "a", spec(), max_age=1.0)
    now[0] += 0.5
    signals = await reader.read("ns", "a", spec(), max_age=1.0)
    assert len(prom.queries) == 5
    assert signals.age_seconds == pytest.approx(0.5)
    now[0] += 1.0
    await reader.read("ns", "a", spec(), max_age=1.0)
    assert len(prom.queries) == 10


async def test_answers_no_service_asks_for_any_more_leave_the_cache(
    prom: StubPrometheus, client: httpx.AsyncClient
) -> None:
    # A service's own queries (an override) stay cached after it is deleted, unless swept.
    now = [100.0]
    fill(prom, [("ns", "a"), ("ns", "b")])
    reader = SignalReader(client, default_url=prom.url, clock=lambda: now[0])
    gone = spec(metrics={"queries": {"running": 'sum by (namespace, vlmservice) (up{x="gone"})'}})
    await reader.read("ns", "b", gone, max_age=1.0)
    keys = set(reader._cache)
    assert any("gone" in query for _, query in keys)
    now[0] += EVICT_AFTER_SECONDS / 2
    await reader.read("ns", "a", spec(), max_age=1.0)
    assert keys <= set(reader._cache)  # not yet: a service may ask again
    now[0] += EVICT_AFTER_SECONDS / 2 + 61
    await reader.read("ns", "a", spec(), max_age=1.0)
    kept = set(reader._cache)
    assert not any("gone" in query for _, query in kept)
    assert len(kept) == 5  # the five default queries, just asked
    assert set(reader._locks) == kept


async def test_empty_and_nan_are_no_signal_not_zero(
    prom: StubPrometheus, client: httpx.AsyncClient
) -> None:
    q = default_queries(30)
    prom.series[q["running"]] = [sample(0, namespace="ns", vlmservice="a")]
    prom.series[q["p95"]] = [sample("NaN", namespace="ns", vlmservice="a")]
    # waiting, arrival and error rate: no series at all for this service
    prom.series[q["waiting"]] = [sample(5, namespace="ns", vlmservice="other")]
    reader = SignalReader(client, default_url=prom.url)
    signals = await reader.read("ns", "a", spec(), max_age=1.0)
    assert signals.error is None
    assert signals.running == 0.0
    assert signals.p95_seconds is None
    assert signals.waiting is None
    assert signals.arrival_rate is None
    assert not math.isnan(signals.running)


def _text(status: int, body: str) -> Answer:
    return lambda _q: web.Response(status=status, text=body)


def _vector(result: list[Any]) -> Answer:
    return lambda _q: web.json_response(
        {"status": "success", "data": {"resultType": "vector", "result": result}}
    )


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (_text(500, "internal error"), "status"),
        (_text(200, "this is not json"), "json"),
        (
            lambda _q: web.json_response(
                {"status": "error", "errorType": "bad_data", "error": "parse error"}, status=400
            ),
            "promql",
        ),
        (
            lambda _q: web.json_response({"status": "success", "data": {"resultType": "matrix"}}),
            "json",
        ),
        # Samples of another shape than {metric, value: [time, "value"]}.
        (_vector([{"metric": {}, "value": 1}]), "json"),
        (_vector(["a"]), "json"),
        (_vector([{"metric": "a", "value": [1, "1"]}]), "json"),
        # Prometheus's own time-out or overload, not a bad query.
        (
            lambda _q: web.json_response(
                {"status": "error", "errorType": "timeout", "error": "query timed out"},
                status=503,
            ),
            "timeout",
        ),
        (
            lambda _q: web.json_response(
                {"status": "error", "errorType": "unavailable", "error": "too many queries"},
                status=503,
            ),
            "status",
        ),
    ],
)
async def test_prometheus_errors_make_the_reading_unavailable(
    prom: StubPrometheus, client: httpx.AsyncClient, answer: Answer, reason: str
) -> None:
    prom.answer = answer
    metrics = OperatorMetrics()
    reader = SignalReader(client, default_url=prom.url, metrics=metrics)
    readings = await asyncio.gather(
        *(reader.read("ns", f"s{i}", spec(), max_age=2.0) for i in range(20))
    )
    for signals in readings:
        assert signals.error is not None
        assert (signals.running, signals.waiting, signals.p95_seconds) == (None, None, None)
    # The failure is cached too: twenty services cost one failed query, not twenty.
    assert len(prom.queries) == 1
    assert (
        metrics.registry.get_sample_value(
            "vlm_operator_prometheus_query_errors_total", {"reason": reason, "source": "operator"}
        )
        == 1.0
    )


async def test_failed_queries_a_service_chose_are_counted_as_the_services(
    prom: StubPrometheus, client: httpx.AsyncClient
) -> None:
    # The alert on the operator's Prometheus must not fire for one service's bad
    # override: its failures are counted apart from the operator's own.
    fill(prom, [("ns", "a"), ("ns", "b")])
    bad = "sum(rate(nope[5m])"  # unbalanced: Prometheus answers 400 bad_data

    def answer(query: str) -> web.StreamResponse:
        if query == bad:
            body = {"status": "error", "errorType": "bad_data", "error": "unclosed paren"}
            return web.json_response(body, status=400)
        return web.json_response(
            {
                "status": "success",
                "data": {"resultType": "vector", "result": prom.series.get(query, [])},
            }
        )

    prom.answer = answer
    metrics = OperatorMetrics()
    reader = SignalReader(client, default_url=prom.url, metrics=metrics)

    def errors(source: str) -> float | None:
        return metrics.registry.get_sample_value(
            "vlm_operator_prometheus_query_errors_total", {"reason": reason, "source": source}
        )

    reason = "promql"
    broken = await reader.read("ns", "a", spec(metrics={"queries": {"waiting": bad}}), max_age=1.0)
    assert broken.error is not None
    assert "unclosed paren" in broken.error
    fine = await reader.read("ns", "b", spec(), max_age=1.0)
    assert fine.error is None
    assert fine.waiting == 2.0
    assert (errors("service"), errors("operator")) == (1.0, 0.0)

    # A Prometheus of the service's own that cannot be reached: the service's too.
    reason = "connect"
    own = spec(metrics={"prometheusUrl": "http://127.0.0.1:9"})  # discard: nothing listens
    assert (await reader.read("ns", "c", own, max_age=1.0)).error is not None
    assert (errors("service"), errors("operator")) == (1.0, 0.0)

    # The operator's own Prometheus failing is the operator's.
    await prom.stop()
    assert (await reader.read("ns", "b", spec(), max_age=0.0)).error is not None
    assert errors("operator") == 1.0

    # Every query sent is counted by whose it is: the share that fails is an alert's.
    def sent(source: str) -> float:
        value = metrics.registry.get_sample_value(
            "vlm_operator_prometheus_queries_total", {"source": source}
        )
        return value or 0.0

    assert sent("service") >= 2  # the override and the own URL's
    assert sent("operator") + sent("service") == reader.queries_sent


async def test_timeout_and_connection_refused(
    prom: StubPrometheus, client: httpx.AsyncClient
) -> None:
    prom.delay = 2.0  # the client gives up after 1 s
    reader = SignalReader(client, default_url=prom.url)
    signals = await reader.read("ns", "a", spec(), max_age=1.0)
    assert signals.error is not None
    assert "timed out" in signals.error

    await prom.stop()
    reader = SignalReader(client, default_url=prom.url)
    signals = await reader.read("ns", "a", spec(), max_age=1.0)
    assert signals.error is not None
    assert "cannot reach" in signals.error


async def test_an_answer_that_trickles_in_fails_at_the_deadline(
    prom: StubPrometheus, client: httpx.AsyncClient
) -> None:
    # A byte every 0.3 s never trips the client's 1 s read timeout.
    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(100):  # 30 s at most
            await response.write(b" ")
            await asyncio.sleep(0.3)
        return response

    started = asyncio.get_running_loop().time()
    reader = SignalReader(client, default_url=prom.url, deadline_seconds=1.5)
    prom.handler = trickle
    signals = await reader.read("ns", "a", spec(), max_age=1.0)
    took = asyncio.get_running_loop().time() - started
    assert signals.error is not None
    assert "timed out" in signals.error
    assert took < 10.0  # the deadline, not the trickle's 30 s


async def test_an_answer_too_large_is_a_failed_read(
    prom: StubPrometheus, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(signals_module, "MAX_ANSWER_BYTES", 1000)
    fill(prom, [("ns", f"s{i}") for i in range(40)])  # ~2.5 KB per answer
    reader = SignalReader(client, default_url=prom.url)
    signals = await reader.read("ns", "s1", spec(), max_age=1.0)
    assert signals.error is not None
    assert "larger than 1000 bytes" in signals.error
    # Chunked, with no Content-Length to refuse it by: read up to the cap only.
    prom.chunked = True
    signals = await SignalReader(client, default_url=prom.url).read("ns", "s1", spec(), max_age=1.0)
    assert signals.error is not None
    assert "larger than 1000 bytes" in signals.error


async def test_credentials_in_the_url_stay_out_of_the_error(client: httpx.AsyncClient) -> None:
    reader = SignalReader(client, default_url="http://opuser:S3cret@127.0.0.1:9")
    signals = await reader.read("ns", "a", spec(), max_age=1.0)
    assert signals.error is not None
    assert "S3cret" not in signals.error
    assert "opuser" not in signals.error
    assert signals.error.startswith("http://127.0.0.1:9: cannot reach")
    assert redacted("http://u:p@h:1/x") == "http://h:1/x"
    assert redacted("http://h:1") == "http://h:1"


async def test_a_host_that_is_no_idna_name_is_a_failed_read(client: httpx.AsyncClient) -> None:
    # ``xn--a`` passes the URL pattern; httpx refuses it with a ValueError of idna's.
    reader = SignalReader(client, default_url="http://xn--a:9090")
    signals = await reader.read("ns", "a", spec(), max_age=1.0)
    assert signals.error is not None
    assert "cannot reach" in signals.error


async def test_prometheus_error_text_is_bounded(
    prom: StubPrometheus, client: httpx.AsyncClient
) -> None:
    prom.answer = lambda query: web.json_response(
        {"status": "error", "errorType": "bad_data", "error": "x" * 100_000}, status=400
    )
    signals = await SignalReader(client, default_url=prom.url).read("ns", "a", spec(), max_age=1.0)
    assert signals.error is not None
    assert len(signals.error) < 400


async def test_urls_services_name_use_their_own_client(prom: StubPrometheus) -> None:
    fill(prom, [("ns", "a")])
    async with build_client() as own, build_client() as theirs:
        sent: list[str] = []

        async def count(request: httpx.Request) -> None:
            sent.append(str(request.url.host))

        theirs.event_hooks["request"] = [count]
        reader = SignalReader(own, default_url=prom.url, service_client=theirs)
        assert (await reader.read("ns", "a", spec(), max_age=1.0)).error is None
        assert sent == []
        named = spec(metrics={"prometheusUrl": prom.url.replace("127.0.0.1", "localhost")})
        await reader.read("ns", "a", named, max_age=1.0)
        assert sent
        assert set(sent) == {"localhost"}


async def test_a_url_no_client_can_parse_is_a_failed_read_not_a_crash(
    client: httpx.AsyncClient,
) -> None:
    # The schema refuses it; a service stored before it did may still hold one.
    reader = SignalReader(client, default_url="http://prometheus:9O90")
    signals = await reader.read("ns", "a", spec(), max_age=1.0)
    assert signals.error is not None
    assert "cannot reach" in signals.error
    assert await reader.unscraped_pods("ns", "a", spec(), max_age=1.0) is None
    assert await reader.pod_load("ns", "a", spec(), max_age=1.0) is None


async def test_no_prometheus_url_is_an_error_not_zero(client: httpx.AsyncClient) -> None:
    reader = SignalReader(client, default_url=None)
    signals = await reader.read("ns", "a", spec(), max_age=1.0)
    assert signals.error is not None
    assert "prometheus" in signals.error.lower()


async def test_per_service_overrides_and_url(
    prom: StubPrometheus, client: httpx.AsyncClient
) -> None:
    fill(prom, [("ns", "a")], window=60)
    custom = "sum(avg_over_time(my_running{job='x'}[$window]))"  # valid PromQL
    prom.series["sum(avg_over_time(my_running{job='x'}[60s]))"] = [sample(7)]
    s = spec(
        metrics={"prometheusUrl": prom.url, "windowSeconds": 60, "queries": {"running": custom}}
    )
    reader = SignalReader(client, default_url="http://127.0.0.1:9")  # unused: spec overrides
    signals = await reader.read("ns", "a", s, max_age=1.0)
    assert signals.error is None
    assert signals.running == 7.0  # one unlabelled series from a service-scoped override
    assert signals.waiting == 2.0
    assert "sum(avg_over_time(my_running{job='x'}[60s]))" in prom.queries
    assert all("$window" not in q for q in prom.queries)


async def test_an_override_answering_several_series_for_one_service_reads_as_missing(
    prom: StubPrometheus, client: httpx.AsyncClient
) -> None:
    # An override without its `sum`: one series per pod. Any one of them read as the
    # fleet's value would understate the load, so none is read.
    fill(prom, [("ns", "a")])
    prom.series["my_running"] = [sample(4), sample(4), sample(4)]
    prom.series["my_waiting"] = [
        sample(1, namespace="ns", vlmservice="a", pod="a-1"),
        sample(2, namespace="ns", vlmservice="a", pod="a-2"),
    ]
    s = spec(metrics={"queries": {"running": "my_running", "waiting": "my_waiting"}})
    signals = await SignalReader(client, default_url=prom.url).read("ns", "a", s, max_age=1.0)
    assert signals.running is None
    assert signals.waiting is None
    assert signals.p95_seconds == 9.5  # the signals not overridden are read as ever


async def test_unscraped_pods_and_pod_load(prom: StubPrometheus, client: httpx.AsyncClient) -> None:
    q = default_queries(30)
    prom.series[UNSCRAPED_QUERY] = [sample(1, namespace="ns", vlmservice="a", pod="a-2")]
    prom.series[q["running"]] = [
        sample(4, namespace="ns", vlmservice="a", pod="a-1"),
        sample(0, namespace="ns", vlmservice="a", pod="a-2"),
        sample(9, namespace="ns", vlmservice="b", pod="b-1"),
    ]
    prom.series[q["waiting"]] = [
        sample(3, namespace="ns", vlmservice="a", pod="a-1"),
        sample(1, namespace="ns", vlmservice="b", pod="b-1"),
    ]
    reader = SignalReader(client, default_url=prom.url)
    assert await reader.unscraped_pods("ns", "a", spec(), max_age=1.0) == 1
    assert await reader.unscraped_pods("ns", "b", spec(), max_age=1.0) == 0
    assert await reader.pod_load("ns", "a", spec(), max_age=1.0) == {"a-1": 7.0, "a-2": 0.0}
    assert len(prom.queries) == 3
    # The cycle read the gauges already: the pod load costs no query of its own.
    await reader.read("ns", "b", spec(), max_age=1.0)
    await reader.pod_load("ns", "b", spec(), max_age=1.0)
    assert len(prom.queries) == 6  # p95, arrival and error rate


async def test_a_ready_pod_without_series_counts_as_unscraped(
    prom: StubPrometheus, client: httpx.AsyncClient
) -> None:
    # Prometheus never found a-3 (not discovered, another shard, dropped by a
    # relabelling): no ``up == 0`` for it, and its load is missing from the sums.
    q = default_queries(30)
    prom.series[UNSCRAPED_QUERY] = [sample(1, namespace="ns", vlmservice="a", pod="a-2")]
    prom.series[q["running"]] = [
        sample(4, namespace="ns", vlmservice="a", pod="a-1"),
        sample(0, namespace="ns", vlmservice="a", pod="a-2"),
    ]
    prom.series[q["waiting"]] = [sample(3, namespace="ns", vlmservice="a", pod="a-1")]
    reader = SignalReader(client, default_url=prom.url)
    live = {"a-1", "a-2", "a-3"}

    async def unscraped(ready: set[str]) -> int | None:
        return await reader.unscraped_pods("ns", "a", spec(), max_age=1.0, pods=live, ready=ready)

    assert await unscraped({"a-1"}) == 1  # a-2's failed scrape
    assert await unscraped({"a-1", "a-2", "a-3"}) == 2  # a-2 once, and a-3
    # A pod label that is no pod name: which pod has series cannot be told.
    assert await reader.unscraped_pods("ns", "a", spec(), max_age=1.0, pods={"x"}, ready={"x"}) == 1


async def test_the_gauges_of_pods_that_are_gone_are_not_load(
    prom: StubPrometheus, client: httpx.AsyncClient
) -> None:
    # After a Prometheus restart the last samples of pods deleted while it was down are
    # answered for five minutes: read per pod, they are left out of the sums.
    fill(prom, [("ns", "a")])
    q = default_queries(30)
    prom.series[q["running"]] = [
        sample(4, namespace="ns", vlmservice="a", pod="a-1"),
        sample(2, namespace="ns", vlmservice="a", pod="a-2"),
        sample(4, namespace="ns", vlmservice="a", pod="a-gone"),
    ]
    prom.series[q["waiting"]] = [
        sample(1, namespace="ns", vlmservice="a", pod="a-1"),
        sample(8, namespace="ns", vlmservice="a", pod="a-gone"),
    ]
    prom.series[UNSCRAPED_QUERY] = [sample(1, namespace="ns", vlmservice="a", pod="a-gone")]
    reader = SignalReader(client, default_url=prom.url)
    live = {"a-1", "a-2"}
    signals = await reader.read("ns", "a", spec(), max_age=1.0, pods=live)
    assert (signals.running, signals.waiting) == (6.0, 1.0)
    assert await reader.unscraped_pods("ns", "a", spec(), max_age=1.0, pods=live) == 0
    # Without the pods, every series counts.
    signals = await reader.read("ns", "a", spec(), max_age=1.0)
    assert (signals.running, signals.waiting) == (10.0, 9.0)
    assert await reader.unscraped_pods("ns", "a", spec(), max_age=1.0) == 1
    # A pod label that names none of the pods is no pod name: nothing is dropped.
    signals = await reader.read("ns", "a", spec(), max_age=1.0, pods={"10.0.0.7"})
    assert (signals.running, signals.waiting) == (10.0, 9.0)
    # A gauge with only gone pods' series: no signal, not zero.
    prom.series[q["running"]] = [sample(4, namespace="ns", vlmservice="a", pod="a-gone")]
    prom.series[q["waiting"]] = [
        sample(0, namespace="ns", vlmservice="a", pod="a-1"),
        sample(8, namespace="ns", vlmservice="a", pod="a-gone"),
    ]
    signals = await reader.read("ns", "a", spec(), max_age=0.0, pods=live)
    assert signals.running is None
    assert signals.waiting == 0.0
    # Nothing names a pod that exists (the new pods not scraped yet): every series counts.
    prom.series[q["waiting"]] = [sample(8, namespace="ns", vlmservice="a", pod="a-gone")]
    signals = await reader.read("ns", "a", spec(), max_age=0.0, pods=live)
    assert (signals.running, signals.waiting) == (4.0, 8.0)


async def test_an_answer_with_warnings_is_read_as_partial(
    prom: StubPrometheus, client: httpx.AsyncClient
) -> None:
    # Thanos with partial responses: "success", fewer series, and a warning.
    fill(prom, [("ns", "a")])
    prom.series[UNSCRAPED_QUERY] = []
    warned = {default_queries(30)["running"], UNSCRAPED_QUERY}

    def answer(query: str) -> web.StreamResponse:
        payload: dict[str, Any] = {
            "status": "success",
            "data": {"resultType": "vector", "result": prom.series.get(query, [])},
        }
        if query in warned:
            payload["warnings"] = ["No StoreAPIs matched for this query: store eu-1 is down"]
        return web.json_response(payload)

    prom.answer = answer
    reader = SignalReader(client, default_url=prom.url)
    signals = await reader.read("ns", "a", spec(), max_age=1.0)
    assert signals.error is None
    assert signals.running == 3.0  # read as it is: a lower bound
    assert signals.partial is not None
    assert "store eu-1 is down" in signals.partial
    # Failed targets may be among the missing series: unknown, not none.
    assert await reader.unscraped_pods("ns", "a", spec(), max_age=1.0) is None
    warned.clear()
    again = await reader.read("ns", "a", spec(), max_age=0.0)
    assert again.partial is None
    assert await reader.unscraped_pods("ns", "a", spec(), max_age=0.0) == 0


async def test_prometheus_annotations_of_a_complete_answer_are_not_partial(
    prom: StubPrometheus, client: httpx.AsyncClient
) -> None:
    # Prometheus 2.46-2.55 puts its PromQL annotations in warnings too.
    fill(prom, [("ns", "a")])
    prom.series[UNSCRAPED_QUERY] = []

    def answer(query: str) -> web.StreamResponse:
        return web.json_response(
            {
                "status": "success",
                "data": {"resultType": "vector", "result": prom.series.get(query, [])},
                "warnings": [
                    "PromQL info: input to histogram_quantile needed to be fixed for monotonicity",
                    'PromQL warning: bucket label "le" is missing or has a malformed value',
                ],
            }
        )

    prom.answer = answer
    reader = SignalReader(client, default_url=prom.url)
    signals = await reader.read("ns", "a", spec(), max_age=1.0)
    assert signals.partial is None
    assert await reader.unscraped_pods("ns", "a", spec(), max_age=1.0) == 0


def test_a_ca_file_is_trusted_besides_the_systems_cas(tmp_path: Path) -> None:
    # One client reads every service's Prometheus: a private CA for the operator's
    # must not make a service's https Prometheus under a public CA fail.
    system = ssl.create_default_context()
    certificates = system.get_ca_certs(binary_form=True)
    if len(certificates) < 2:
        pytest.skip("this machine has no CA store to keep")
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text(ssl.DER_cert_to_PEM_cert(certificates[0]))
    context = tls_verification(ca_file=str(ca_file), insecure=False)
    assert isinstance(context, ssl.SSLContext)
    assert context.cert_store_stats()["x509_ca"] == system.cert_store_stats()["x509_ca"]
    assert tls_verification(ca_file=str(ca_file), insecure=True) is False
    assert tls_verification(ca_file=None, insecure=False) is True


async def test_bearer_token_is_read_from_its_file(prom: StubPrometheus, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    fill(prom, [("ns", "a")])
    async with build_client(bearer_token_file=str(token), token_url=prom.url) as c:
        reader = SignalReader(c, default_url=prom.url)
        await reader.read("ns", "a", spec(), max_age=0.0)
        token.write_text("rotated")
        await reader.read("ns", "a", spec(), max_age=0.0)
    auth = [h.get("Authorization") for h in prom.headers]
    assert auth[:5] == ["Bearer first"] * 5
    assert auth[5:] == ["Bearer rotated"] * 5


async def test_a_token_file_that_cannot_be_read_is_a_failed_read(
    prom: StubPrometheus, tmp_path: Path
) -> None:
    # A Secret unmounted, a projected token not there yet: the signals are missing
    # (the status says so, and nothing scales down), not a cycle lost to the exception.
    token = tmp_path / "token"
    fill(prom, [("ns", "a")])
    async with build_client(bearer_token_file=str(token), token_url=prom.url) as c:
        reader = SignalReader(c, default_url=prom.url)
        signals = await reader.read("ns", "a", spec(), max_age=0.0)
    assert signals.running is None
    assert signals.error is not None
    assert "cannot read the bearer token file" in signals.error
    assert prom.headers == []


@pytest.fixture
def token(tmp_path: Path) -> Path:
    """The operator's bearer token file."""
    path = tmp_path / "token"
    path.write_text("operator-secret")
    return path


async def test_bearer_token_goes_to_the_operators_prometheus_only(
    prom: StubPrometheus, token: Path
) -> None:
    # A service names its own Prometheus: the operator's credentials are not sent there.
    fill(prom, [("ns", "a")])
    async with build_client(bearer_token_file=str(token), token_url="http://127.0.0.1:1") as c:
        reader = SignalReader(c, default_url="http://127.0.0.1:1")
        signals = await reader.read(
            "ns", "a", spec(metrics={"prometheusUrl": prom.url}), max_age=0.0
        )
    assert signals.running is not None  # the service's Prometheus answered
    assert prom.headers
    assert all("Authorization" not in h for h in prom.headers)


async def test_the_operators_reader_sends_its_token_to_its_prometheus_origin_only(
    prom: StubPrometheus, token: Path
) -> None:
    # A service naming another path of the operator's Prometheus goes through the
    # services' client, and still gets the token; one naming another origin does not.
    from vlm_operator.commands.run import signal_reader

    fill(prom, [("ns", "a")])
    args = argparse.Namespace(
        prometheus_url=prom.url,
        prometheus_timeout=2.0,
        prometheus_bearer_token_file=str(token),
        prometheus_ca_file=None,
        prometheus_insecure=False,
    )
    reader = signal_reader(args, OperatorMetrics())
    try:
        for url, sent in (
            (prom.url + "/prom", True),
            (prom.url.replace("127.0.0.1", "localhost"), False),
        ):
            prom.headers.clear()
            signals = await reader.read(
                "ns", "a", spec(metrics={"prometheusUrl": url}), max_age=0.0
            )
            assert signals.error is None
            assert prom.headers
            auth = {h.get("Authorization") for h in prom.headers}
            assert auth == ({"Bearer operator-secret"} if sent else {None}), url
    finally:
        await reader.aclose()


@pytest.mark.skipif(not Path(PROMETHEUS_BINARY).exists(), reason="needs Debian's prometheus")
async def test_after_a_prometheus_restart_pods_deleted_meanwhile_are_not_load(
    tmp_path: Path,
) -> None:
    # A real Prometheus, stopped as a rollout or an eviction deletes a pod, then started
    # again: it wrote no staleness marker for the pod, whose last gauges are answered again.
    def labels(pod: str) -> dict[str, str]:
        return {"namespace": "ns", "vlmservice": "a", "pod": pod}

    server = PrometheusServer(tmp_path / "prometheus", scrape_interval="200ms")
    with Exporter() as live, Exporter() as gone:
        live.set(running=2, waiting=1)
        gone.set(running=4, waiting=8)
        with server:
            server.set_targets([(live.host_port, labels("a-1")), (gone.host_port, labels("a-2"))])
            server.wait_for_series('vlm_requests_waiting{vlmservice="a"} > 0', count=2)
        gone.stop()
        server.set_targets([(live.host_port, labels("a-1"))])
        restarted = time.time()
        with server:
            server.wait_for_series(f'timestamp(up{{pod="a-1"}}) > {restarted}')
            # The premise: a-2's last samples came back with the write-ahead log.
            server.wait_for_series('vlm_requests_waiting{pod="a-2"}', 5.0)
            async with build_client() as client:
                reader = SignalReader(client, default_url=server.url)
                summed = await reader.read("ns", "a", spec(), max_age=0.0)
                assert (summed.running, summed.waiting) == (6.0, 9.0)  # a-2's last samples
                signals = await reader.read("ns", "a", spec(), max_age=0.0, pods={"a-1"})
                assert (signals.running, signals.waiting) == (2.0, 1.0)
                load = await reader.pod_load("ns", "a", spec(), max_age=0.0)
                assert load is not None
                assert load["a-1"] == 3.0


@pytest.mark.skipif(not Path(PROMETHEUS_BINARY).exists(), reason="needs Debian's prometheus")
async def test_a_gate_scraped_twice_counts_once(tmp_path: Path) -> None:
    # Two scrapes of one gate (both PodMonitors, or one and a scrape config of one's own):
    # two series of each gauge, one target. Summed, the pod's load read double.
    labels = {"namespace": "ns", "vlmservice": "a", "pod": "a-1"}
    server = PrometheusServer(tmp_path / "prometheus", scrape_interval="200ms")
    with Exporter() as gate, Exporter() as other:
        gate.set(running=3, waiting=1)
        other.set(running=2, waiting=0)
        with server:
            server.set_targets(
                [
                    (gate.host_port, {**labels, "scraper": "first"}),
                    (gate.host_port, {**labels, "scraper": "second"}),
                    (other.host_port, {**labels, "pod": "a-2"}),
                ]
            )
            server.wait_for_series('vlm_requests_running{vlmservice="a"}', count=3)
            async with build_client() as client:
                reader = SignalReader(client, default_url=server.url)
                signals = await reader.read("ns", "a", spec(), max_age=0.0, pods={"a-1", "a-2"})
                assert (signals.running, signals.waiting) == (5.0, 1.0)
                assert await reader.pod_load("ns", "a", spec(), max_age=0.0) == {
                    "a-1": 4.0,
                    "a-2": 2.0,
                }


async def test_the_rates_and_the_p95_of_a_gate_scraped_twice_count_it_once(tmp_path: Path) -> None:
    # The gate scraped twice answers 14 requests in 1 s for each failed one of 20 s on
    # the other pod. Once per target: 1 in 15 failed (6.7 %), over the P95's 5 %, so
    # the P95 is the slow bucket's. Summed per series, the gate's answers weigh twice:
    # 1 in 29 (3.4 %), the P95 a fast answer's, and the arrival rate 29/15 of itself.
    labels = {"namespace": "ns", "vlmservice": "a", "pod": "a-1"}
    server = PrometheusServer(tmp_path / "prometheus", scrape_interval="200ms")
    stop = threading.Event()
    ticks = 0

    def answer() -> None:
        nonlocal ticks
        deadline = time.monotonic() + 60.0
        while not stop.wait(0.05) and time.monotonic() < deadline:
            gate.set(durations=[1.0] * 14, codes={200: 14})
            other.set(durations=[20.0], codes={500: 1})
            ticks += 1

    with Exporter() as gate, Exporter() as other, server:
        server.set_targets(
            [
                (gate.host_port, {**labels, "scraper": "first"}),
                (gate.host_port, {**labels, "scraper": "second"}),
                (other.host_port, {**labels, "pod": "a-2"}),
            ]
        )
        server.wait_for_series('vlm_requests_running{vlmservice="a"}', count=3)
        answering = threading.Thread(target=answer, daemon=True)
        started = time.monotonic()
        answering.start()
        try:
            # Enough scrapes of the rising counters for a rate of 5 s.
            server.wait_for_series('vlm_requests_total{vlmservice="a",code="500"}', count=1)
            window = spec(metrics={"windowSeconds": 5})
            async with build_client() as client:
                reader = SignalReader(client, default_url=server.url)
                deadline = time.monotonic() + 20.0
                signals = await reader.read("ns", "a", window, max_age=0.0, pods={"a-1", "a-2"})
                while time.monotonic() - started < 6.0 and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                    signals = await reader.read("ns", "a", window, max_age=0.0, pods={"a-1", "a-2"})
                per_second = ticks / (time.monotonic() - started)
        finally:
            stop.set()
            answering.join(timeout=5.0)
    assert signals.arrival_rate is not None
    assert signals.error_rate is not None
    assert signals.p95_seconds is not None
    # 15 answers a tick counted once; 29 when the gate's series are summed.
    assert 10 * per_second < signals.arrival_rate < 20 * per_second
    assert 0.05 < signals.error_rate < 0.085
    assert signals.p95_seconds > 10.0
