"""The gate measured from both sides: a test model that records what reaches it.

Every test runs the real gate application on a loopback port in front of a
small aiohttp backend that counts its own concurrency, holds requests until the
test lets them go, streams, dies mid-request, or echoes what it received. The
last test runs the real ``vlm-operator gate`` process and sends it SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from vlm_operator.contract import DURATION_BUCKETS
from vlm_operator.gate import GateConfig

from tests.gate_harness import (
    DEADLINE_S,
    Backend,
    Gate,
    error_code,
    hold_one_and_queue_one,
    running_gate,
    until,
)


async def test_limit_is_never_exceeded_under_64_concurrent_clients(backend: Backend) -> None:
    async with running_gate(backend, max_in_flight=4, queue_size=64) as gate:
        results = await asyncio.gather(
            *(gate.request("POST", "/sleep?s=0.01", data=b"{}") for _ in range(64))
        )
        assert [status for status, _, _ in results] == [200] * 64
        assert backend.peak == 4  # reached, never exceeded
        assert await gate.metric("vlm_requests_total", code="200") == 64
        assert await gate.metric("vlm_request_duration_seconds_count") == 64
        assert await gate.metric("vlm_requests_running") == 0


async def test_queued_requests_are_served_in_arrival_order(backend: Backend) -> None:
    async with running_gate(backend, max_in_flight=1, queue_size=16) as gate:
        tasks = []
        for i in range(6):
            tasks.append(
                asyncio.create_task(gate.request("POST", "/hold", headers={"x-id": str(i)}))
            )
            # each one in place before the next is sent, so arrival order is known
            await until(lambda: len(backend.arrivals) == 1)
            if i > 0:

                async def queued(n: int = i) -> bool:
                    return await gate.metric("vlm_requests_waiting") == n

                await until(queued)
        assert backend.arrivals == ["0"]
        backend.release.set()
        results = await asyncio.gather(*tasks)
        assert [json.loads(body)["id"] for _, _, body in results] == [str(i) for i in range(6)]
        assert backend.arrivals == [str(i) for i in range(6)]
        assert backend.peak == 1


async def test_full_queue_answers_429_with_retry_after(backend: Backend) -> None:
    async with running_gate(backend, max_in_flight=1, queue_size=1) as gate:
        first = asyncio.create_task(gate.request("POST", "/hold"))
        await until(lambda: backend.current == 1)
        second = asyncio.create_task(gate.request("POST", "/hold"))

        async def queued() -> bool:
            return await gate.metric("vlm_requests_waiting") == 1

        await until(queued)
        status, headers, body = await gate.request("POST", "/hold")
        assert status == 429
        assert int(headers["Retry-After"]) >= 1
        assert error_code(body) == "queue_full"
        assert await gate.metric("vlm_requests_running") == 1
        assert await gate.metric("vlm_requests_rejected_total", reason="queue_full") == 1
        assert await gate.metric("vlm_requests_total", code="429") == 1
        backend.release.set()
        assert (await first)[0] == (await second)[0] == 200
        assert backend.peak == 1


async def test_a_clients_last_retry_queues_first_where_a_fresh_request_is_refused(
    backend: Backend,
) -> None:
    # openai-python says how often it retried (x-stainless-retry-count); on its
    # second retry (its last, by default) a refusal would be a failure.
    async with running_gate(backend, max_in_flight=1, queue_size=1) as gate:
        first, queued = await hold_one_and_queue_one(gate, backend, "first", "queued")
        for count in ("1", "two", "", "99999999999999999999"):
            status, _, body = await gate.request(
                "POST", "/hold", headers={"X-Stainless-Retry-Count": count}
            )
            assert (status, error_code(body)) == (429, "queue_full"), count
        last = asyncio.create_task(
            gate.request("POST", "/hold", headers={"x-id": "last", "x-stainless-retry-count": "2"})
        )
        await until(lambda: gate.waiting_is(2))
        status, _, _ = await gate.request("POST", "/hold", headers={"x-stainless-retry-count": "3"})
        assert status == 429  # one reserved place for a queue of 1, and it is taken
        backend.release.set()
        results = await asyncio.gather(first, queued, last)
        assert [r[0] for r in results] == [200, 200, 200]
        assert backend.arrivals == ["first", "last", "queued"]
        assert backend.peak == 1


async def test_queue_deadline_answers_504_with_when_to_come_back(backend: Backend) -> None:
    async with running_gate(backend, max_in_flight=1, queue_size=4, queue_timeout=0.1) as gate:
        first = asyncio.create_task(gate.request("POST", "/hold"))
        await until(lambda: backend.current == 1)
        status, headers, body = await gate.request("POST", "/hold")
        assert status == 504
        # Retryable (openai-python retries a 5xx unless told not to), after the
        # gate's estimate: nothing served yet, the ~0.1 s the slot has been held
        # stands for the service time, under the floor of 1 s.
        assert "x-should-retry" not in headers
        assert headers["Retry-After"] == "1"
        assert error_code(body) == "deadline"
        assert await gate.metric("vlm_requests_rejected_total", reason="deadline") == 1
        assert await gate.metric("vlm_request_queue_seconds_count") == 2  # first + deadline
        assert await gate.metric("vlm_request_queue_seconds_bucket", le="0.5") == 2
        assert await gate.metric("vlm_requests_waiting") == 0
        backend.release.set()
        assert (await first)[0] == 200
        assert backend.arrivals == [""]  # the expired request never reached the model


async def test_oversized_bodies_answer_413_by_length_and_while_streaming(
    backend: Backend,
) -> None:
    async with running_gate(backend, max_body_bytes=1024) as gate:
        status, _, body = await gate.request("POST", "/echo", data=b"x" * 1025)
        assert status == 413
        assert error_code(body) == "too_large"

        async def chunked() -> AsyncIterator[bytes]:
            for _ in range(8):
                yield b"y" * 200

        status, _, body = await gate.request("POST", "/echo", data=chunked())
        assert status == 413
        assert error_code(body) == "too_large"
        status, _, _ = await gate.request("POST", "/echo", data=b"x" * 1024)
        assert status == 200
        assert await gate.metric("vlm_requests_rejected_total", reason="too_large") == 2
        assert backend.bodies == [b"x" * 1024]


async def test_model_dying_or_unreachable_answers_502(backend: Backend) -> None:
    async with running_gate(backend) as gate:
        status, _, body = await gate.request("POST", "/die")
        assert status == 502
        assert error_code(body) == "upstream_error"
        # headers already sent: the cut stream is passed on as a cut connection
        with pytest.raises(aiohttp.ClientPayloadError):
            await gate.request("POST", "/die-mid-stream")
        assert await gate.metric("vlm_requests_total", code="502") == 2
        assert await gate.metric("vlm_requests_running") == 0
    closed = Backend()
    closed.url = "http://127.0.0.1:9"  # discard port: nothing listens on loopback
    async with running_gate(closed, health_path="") as gate:
        status, _, body = await gate.request("POST", "/v1/chat/completions", data=b"{}")
        assert status == 502
        assert error_code(body) == "upstream_error"


async def test_a_silent_model_is_given_up_on_after_the_response_timeout(
    backend: Backend,
) -> None:
    timeout = 0.4
    # One slot: each request below finds it free only if the one before gave it back.
    async with running_gate(backend, response_timeout=timeout, max_in_flight=1) as gate:
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, _, body = await gate.request("POST", "/hold")  # the model never answers
        waited = loop.time() - started
        assert status == 504
        assert error_code(body) == "model_timeout"
        assert b"sent nothing for 0.4 s" in body
        # given up no earlier than the timeout, and within a quarter of it after
        assert timeout <= waited < timeout * 1.25 + 0.5
        await until(lambda: backend.cancelled == 1)  # the model's request is cancelled
        assert await gate.metric("vlm_requests_running") == 0
        assert await gate.metric("vlm_requests_total", code="504") == 1
        # a stream whose model falls silent after its first event is cut
        assert gate.client is not None
        async with gate.client.post(gate.url + "/stream", json={"stream": True}) as response:
            assert response.status == 200
            assert await response.content.readuntil(b"\n\n") == b"data: first\n\n"
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
        assert await gate.metric("vlm_requests_total", code="504") == 2
        assert await gate.metric("vlm_requests_running") == 0
        backend.release.set()
        status, _, _ = await gate.request("POST", "/hold")
        assert status == 200


async def test_the_response_timeout_spares_a_stream_that_keeps_coming(
    backend: Backend,
) -> None:
    # 30 events 0.05 s apart: 1.5 s in all, 2.5 times the timeout, never 0.6 s of silence
    # (a twelfth of it between two events: room for a loaded machine's stalls)
    async with running_gate(backend, response_timeout=0.6) as gate:
        status, _, body = await gate.request("POST", "/trickle?n=30&every=0.05")
        assert status == 200
        assert body == b"".join(b"data: %d\n\n" % i for i in range(30))


async def test_the_response_timeout_spares_a_model_held_back_by_a_slow_client(
    backend: Backend,
) -> None:
    size = 32 * 1024 * 1024  # far past every socket buffer between the model and the client
    async with running_gate(backend, response_timeout=0.3) as gate:
        host, port = gate.server.address
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /big?bytes=%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)
        await until(lambda: backend.finished == 1)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        # The client reads nothing for three timeouts: the gate stops reading the model.
        await asyncio.sleep(0.9)
        received = 0
        async with asyncio.timeout(DEADLINE_S):
            while received < size:
                chunk = await reader.read(1024 * 1024)
                assert chunk, f"cut after {received} of {size} bytes"
                received += len(chunk)
        writer.close()
        assert await gate.metric("vlm_requests_total", code="200") == 1
        assert await gate.metric("vlm_requests_total", code="504") == 0


async def test_streamed_chunks_are_relayed_as_they_arrive(backend: Backend) -> None:
    async with running_gate(backend) as gate:
        assert gate.client is not None
        async with gate.client.post(gate.url + "/stream", json={"stream": True}) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/event-stream"
            first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), DEADLINE_S)
            assert first == b"data: first\n\n"
            assert backend.finished == 0  # the model has not finished yet
            assert await gate.metric("vlm_requests_running") == 1
            backend.stream_gate.set()
            rest = await response.read()
        assert rest == b"data: second\n\ndata: [DONE]\n\n"

        async def released() -> bool:
            return await gate.metric("vlm_requests_running") == 0

        await until(released)


async def test_disconnected_client_frees_its_slot_and_queued_one_leaves(
    backend: Backend,
) -> None:
    async with running_gate(backend, max_in_flight=1, queue_size=4) as gate:
        running, queued = await hold_one_and_queue_one(gate, backend, "a", "b")
        queued.cancel()  # the waiting client hangs up: it leaves the queue at once
        await until(lambda: gate.waiting_is(0))
        running.cancel()  # the running client hangs up: the model request is cancelled
        await until(lambda: backend.cancelled == 1)

        async def freed() -> bool:
            return await gate.metric("vlm_requests_running") == 0

        await until(freed)
        backend.release.set()
        status, _, _ = await gate.request("POST", "/hold", headers={"x-id": "c"})
        assert status == 200
        assert backend.arrivals == ["a", "c"]  # "b" never reached the model
        assert await gate.metric("vlm_requests_total", code="499") == 2


async def test_a_queued_client_that_hangs_up_is_timed_with_its_wait(backend: Backend) -> None:
    async with running_gate(backend, max_in_flight=1, queue_size=4) as gate:
        running, queued = await hold_one_and_queue_one(gate, backend, "a", "b")
        queued.cancel()  # the waiting client hangs up

        async def left() -> bool:
            return await gate.metric("vlm_requests_total", code="499") == 1

        await until(left)
        # "a" was admitted at once (a queue time of 0) and is still running; "b" left the
        # queue: both histograms have its wait, as they would have for a 504 deadline
        assert await gate.metric("vlm_request_queue_seconds_count") == 2
        assert await gate.metric("vlm_request_duration_seconds_count") == 1
        waited = await gate.metric("vlm_request_queue_seconds_sum")
        assert 0 < waited <= await gate.metric("vlm_request_duration_seconds_sum")
        backend.release.set()
        assert (await running)[0] == 200

        async def timed() -> bool:
            return await gate.metric("vlm_request_duration_seconds_count") == 2

        await until(timed)


async def test_a_queued_client_gone_before_its_wait_began_gives_its_body_back(
    backend: Backend,
) -> None:
    # The request is read and must queue, and its client's hang-up is noticed in the
    # same turn of the loop (a pipelined request started by the answer before it): its
    # task is cancelled before it first runs, so the coroutine's own clean-up never does.
    async with running_gate(backend, max_in_flight=1, queue_size=4) as gate:
        running = asyncio.create_task(gate.request("POST", "/hold", headers={"x-id": "a"}))
        await until(lambda: backend.current == 1)
        proxy = gate.server.proxy
        before = set(proxy.connections)
        host, port = gate.server.address
        _, writer = await asyncio.open_connection(host, port)
        await until(lambda: len(proxy.connections) > len(before))
        (client,) = proxy.connections - before
        body = b"x" * 1000
        client.data_received(
            b"POST /hold HTTP/1.1\r\nHost: g\r\nContent-Length: 1000\r\n\r\n" + body
        )
        assert proxy.body_budget.held == 1000
        client.connection_lost(None)  # before the queue task's first step

        async def counted() -> bool:
            return await gate.metric("vlm_requests_total", code="499") == 1

        await until(counted)
        assert proxy.body_budget.held == 0
        assert await gate.metric("vlm_requests_waiting") == 0
        writer.close()
        backend.release.set()
        assert (await running)[0] == 200
        assert backend.arrivals == ["a"]


async def test_everything_else_passes_through_untouched(backend: Backend) -> None:
    # by host name: cookie jars ignore cookies from bare IP addresses
    by_name = backend.url.replace("127.0.0.1", "localhost")
    async with running_gate(backend, upstream=by_name) as gate:
        garbage = b'{"messages": [ not json'
        status, headers, body = await gate.request(
            "PUT",
            "/v1/anything?x=1&y=2",
            data=garbage,
            headers={
                "x-status": "418",
                "Authorization": "Bearer t",
                "Connection": "keep-alive",
                "x-set-cookie": "a=1",
            },
        )
        assert status == 418
        assert headers["x-backend"] == "yes"
        assert headers["Set-Cookie"] == "a=1"
        seen = json.loads(body)
        assert seen["method"] == "PUT"
        assert seen["path"] == "/v1/anything?x=1&y=2"
        assert seen["body"] == garbage.decode()
        assert seen["headers"]["Authorization"] == "Bearer t"
        assert seen["headers"]["x-status"] == "418"
        # targets go on byte for byte; absolute-form ones lose scheme and host
        for target, path in [
            (b"/v1/y?q=%41", b"/v1/y?q=%41"),
            (b"http://elsewhere.example/v1/x?q=%41", b"/v1/x?q=%41"),
        ]:
            reader, writer = await asyncio.open_connection(*gate.url.split("//")[1].split(":"))
            writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            raw = await asyncio.wait_for(reader.read(), DEADLINE_S)
            writer.close()
            assert raw.startswith(b"HTTP/1.1 200")
            assert b'"path": "' + path + b'"' in raw
        status, _, body = await gate.request("GET", "/v1/models")
        assert status == 200
        seen = json.loads(body)
        assert seen["path"] == "/v1/models"
        assert "Cookie" not in seen["headers"]  # the model's Set-Cookie was not kept by the gate
        # the gate's own endpoints are neither proxied nor counted
        assert (await gate.request("GET", "/healthz"))[0] == 200
        assert await gate.metric("vlm_requests_total", code="418") == 1
        assert await gate.metric("vlm_requests_total", code="200") == 3
        assert await gate.metric("vlm_request_duration_seconds_count") == 4


def gate_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, value: str
) -> str:
    """Run ``vlm-operator gate`` with one bad environment variable; its error output (exit 2)."""
    from vlm_operator.cli import main

    monkeypatch.setenv("VLM_GATE_UPSTREAM", "http://127.0.0.1:8080")
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exited:
        main(["gate"])
    assert exited.value.code == 2
    return capsys.readouterr().err


def test_bad_environment_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    err = gate_usage_error(monkeypatch, capsys, "VLM_GATE_MAX_IN_FLIGHT", "0")
    assert "VLM_GATE_MAX_IN_FLIGHT" in err
    assert "must be >= 1" in err


def test_the_bound_on_held_bodies_is_every_place_at_the_largest_body_within_a_cap(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vlm_operator.cli import main
    from vlm_operator.gate import HELD_BODY_BYTES_CAP

    mib = 1024 * 1024
    upstream = "http://127.0.0.1:9"
    # 4 slots and 8 queue places at 20 MiB would be 240 MiB: capped
    assert GateConfig(upstream=upstream).held_body_limit == HELD_BODY_BYTES_CAP == 96 * mib
    assert GateConfig(upstream=upstream, max_body_bytes=mib).held_body_limit == 12 * mib
    assert GateConfig(upstream=upstream, max_body_bytes=200 * mib).held_body_limit == 200 * mib
    assert GateConfig(upstream=upstream, max_held_body_bytes=50 * mib).held_body_limit == 50 * mib
    with pytest.raises(ValueError, match="max_held_body_bytes must be 0 or >= max_body_bytes"):
        GateConfig(upstream=upstream, max_held_body_bytes=mib)  # not even one largest body
    err = gate_usage_error(monkeypatch, capsys, "VLM_GATE_MAX_HELD_BODY_BYTES", "-1")
    assert "VLM_GATE_MAX_HELD_BODY_BYTES" in err
    monkeypatch.delenv("VLM_GATE_MAX_HELD_BODY_BYTES")
    assert main(["gate", "--upstream", upstream, "--max-held-body-bytes", "1000"]) == 2
    assert "max_held_body_bytes must be 0 or >=" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["gate", "fake-model"])
def test_a_listen_address_taken_is_a_usage_error(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from vlm_operator.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [command, "--listen", f"127.0.0.1:{port}"]
        if command == "gate":
            argv += ["--upstream", "http://127.0.0.1:9"]
        assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"vlm-operator {command}: error: --listen: cannot listen on ")
    assert f"127.0.0.1:{port}" in error


@pytest.mark.parametrize(
    ("upstream", "reason"),
    [
        ("http://", "with a host"),
        ("http://:8080", "with a host"),
        ("http://127.0.0.1:99999", "Port out of range"),
        ("http://host:abc", "Port could not be cast to integer"),
    ],
)
@pytest.mark.parametrize("source", ["flag", "environment"])
def test_an_upstream_without_a_usable_host_and_port_is_a_usage_error(
    upstream: str,
    reason: str,
    source: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from vlm_operator.cli import main

    if source == "flag":
        argv = ["gate", "--upstream", upstream]
    else:
        monkeypatch.setenv("VLM_GATE_UPSTREAM", upstream)
        argv = ["gate"]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]  # after argparse's usage lines
    assert error.startswith("vlm-operator gate: error: argument --upstream: must be an http(s) URL")
    assert reason in error
    assert error.endswith("(flag --upstream or $VLM_GATE_UPSTREAM)")


async def test_metrics_follow_the_signals_contract(backend: Backend) -> None:
    async with running_gate(backend, max_in_flight=2, queue_size=3) as gate:
        tasks = [asyncio.create_task(gate.request("POST", "/hold")) for _ in range(4)]

        async def state() -> bool:
            m = await gate.metrics()
            return m[("vlm_requests_running", ())] == 2 and m[("vlm_requests_waiting", ())] == 2

        await until(state)
        backend.release.set()
        await asyncio.gather(*tasks)
        m = await gate.metrics()
        names = {name for name, _ in m}
        assert not any(name.endswith("_created") for name in names)
        assert m[("vlm_gate_max_in_flight", ())] == 2
        assert m[("vlm_gate_queue_capacity", ())] == 3
        assert m[("vlm_request_duration_seconds_count", ())] == 4
        assert m[("vlm_request_queue_seconds_count", ())] == 4
        buckets = sorted(
            float(dict(labels)["le"])
            for name, labels in m
            if name == "vlm_request_duration_seconds_bucket"
        )
        assert buckets == [*map(float, DURATION_BUCKETS), float("inf")]
        assert m[("vlm_requests_total", (("code", "200"),))] == 4
        reasons = ("queue_full", "deadline", "draining", "too_large", "not_ready", "malformed")
        for reason in reasons:
            assert m[("vlm_requests_rejected_total", (("reason", reason),))] == 0
        assert m[("vlm_cache_hits_total", ())] == 0


async def test_a_fresh_gate_exports_its_answers_at_zero(backend: Backend) -> None:
    # No request yet: the arrival rate must read 0 (an idle pod), not "no
    # series" (a missing signal, on which the operator never scales down). The
    # failures the error rate counts are there too: a series born at its first
    # increase loses that increase to rate().
    async with running_gate(backend) as gate:
        m = await gate.metrics()
        codes = {dict(labels)["code"]: v for (name, labels), v in m.items()
                 if name == "vlm_requests_total"}  # fmt: skip
        assert codes == {"200": 0, "429": 0, "500": 0, "502": 0, "503": 0, "504": 0}


async def test_bucket_scale_divides_both_latency_histograms(backend: Backend) -> None:
    # A model whose time runs 10x faster: 0.25 s compressed stands for 2.5 s real, so it
    # must land in the (2, 3] bucket of real time, i.e. (0.2, 0.3] here.
    async with running_gate(backend, bucket_scale=10) as gate:
        status, _, _ = await gate.request("POST", "/sleep?s=0.25", data=b"{}")
        assert status == 200
        m = await gate.metrics()
        for histogram in ("vlm_request_duration_seconds", "vlm_request_queue_seconds"):
            bounds = sorted(
                float(dict(labels)["le"]) for name, labels in m if name == f"{histogram}_bucket"
            )
            assert bounds == pytest.approx([*(b / 10 for b in DURATION_BUCKETS), float("inf")])
        duration = "vlm_request_duration_seconds_bucket"
        assert m[(duration, (("le", "0.2"),))] == 0
        assert m[(duration, (("le", "0.3"),))] == 1
        assert m[("vlm_request_queue_seconds_bucket", (("le", "0.05"),))] == 1


@pytest.mark.parametrize("variable", ["VLM_GATE_BUCKET_SCALE", "VLM_GATE_RESPONSE_TIMEOUT"])
@pytest.mark.parametrize("value", ["0", "-1", "inf", "fast"])
def test_bad_positive_durations_name_the_variable(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert variable in gate_usage_error(monkeypatch, capsys, variable, value)


async def test_model_not_ready_answers_503_and_readyz_follows_health(backend: Backend) -> None:
    async with running_gate(backend) as gate:
        backend.healthy = False

        async def unready() -> bool:
            return (await gate.request("GET", "/readyz"))[0] == 503

        await until(unready)
        status, headers, body = await gate.request("POST", "/sleep")
        assert status == 503
        assert int(headers["Retry-After"]) >= 1
        assert error_code(body) == "not_ready"
        assert await gate.metric("vlm_requests_rejected_total", reason="not_ready") == 1
        backend.healthy = True

        async def ready() -> bool:
            return (await gate.request("GET", "/readyz"))[0] == 200

        await until(ready)
        assert (await gate.request("POST", "/sleep"))[0] == 200


async def test_modelz_follows_the_models_health_draining_or_not(backend: Backend) -> None:
    # The model container's liveness probe: a hung model is restarted, a draining gate's
    # healthy model is not (its readiness, /readyz, says draining instead).
    async with running_gate(backend) as gate:

        async def modelz(status: int) -> bool:
            return (await gate.request("GET", "/modelz"))[0] == status

        await until(lambda: modelz(200))
        backend.healthy = False
        await until(lambda: modelz(503))
        backend.healthy = True
        await until(lambda: modelz(200))
        drain = asyncio.create_task(gate.server.drain(5.0))
        try:
            await until(lambda: readyz_is(gate, 503))
            assert await modelz(200)
        finally:
            await drain


async def readyz_is(gate: Gate, status: int) -> bool:
    return (await gate.request("GET", "/readyz"))[0] == status


async def test_a_model_answering_requests_stays_ready_despite_failed_health_checks(
    backend: Backend,
) -> None:
    async with running_gate(backend, health_timeout=0.2) as gate:
        backend.healthy = False
        loop = asyncio.get_running_loop()
        end = loop.time() + 0.5  # ten health intervals of failed checks, with traffic
        for _ in range(1000):
            if loop.time() >= end:
                break
            assert (await gate.request("POST", "/sleep?s=0.01"))[0] == 200
            assert (await gate.request("GET", "/readyz"))[0] == 200
        # no answers any more: the failed checks now count

        async def unready() -> bool:
            return (await gate.request("GET", "/readyz"))[0] == 503

        await until(unready)


async def test_deterministic_requests_are_answered_from_the_cache(backend: Backend) -> None:
    async with running_gate(backend, cache_size=8, cache_ttl=60) as gate:
        body = json.dumps({"temperature": 0, "messages": [{"role": "user", "content": "hi"}]})
        first = await gate.request("POST", "/v1/chat/completions", data=body)
        second = await gate.request("POST", "/v1/chat/completions", data=body)
        assert first[0] == second[0] == 200
        assert second[2] == first[2]
        assert second[1]["x-vlm-cache"] == "hit"
        assert len(backend.bodies) == 1
        sampled = body.replace('"temperature": 0', '"temperature": 0.7')
        await gate.request("POST", "/v1/chat/completions", data=sampled)
        await gate.request("POST", "/v1/chat/completions", data=sampled)
        assert len(backend.bodies) == 3
        assert await gate.metric("vlm_cache_hits_total") == 1
        assert await gate.metric("vlm_requests_total", code="200") == 4


async def test_the_cache_never_answers_one_credential_with_anothers_answer(
    backend: Backend,
) -> None:
    async with running_gate(backend, cache_size=8, cache_ttl=60) as gate:
        body = json.dumps({"temperature": 0, "messages": [{"role": "user", "content": "hi"}]})

        async def ask(**headers: str) -> dict[str, str]:
            status, answer_headers, _ = await gate.request(
                "POST", "/v1/chat/completions", data=body, headers=headers
            )
            assert status == 200
            return answer_headers

        assert "x-vlm-cache" not in await ask(Authorization="Bearer alice")
        assert "x-vlm-cache" not in await ask(Authorization="Bearer bob")
        assert "x-vlm-cache" not in await ask()
        assert len(backend.bodies) == 3  # each asked the model
        assert (await ask(Authorization="Bearer alice"))["x-vlm-cache"] == "hit"
        assert "x-vlm-cache" not in await ask(**{"Authorization": "Bearer alice",
                                                 "Cache-Control": "no-cache"})  # fmt: skip
        assert len(backend.bodies) == 4
        assert await gate.metric("vlm_cache_hits_total") == 1
        # An answer that sets a cookie is not kept: replayed, it would hand it on.
        for _ in range(2):
            answer = await ask(Authorization="Bearer carol", **{"x-set-cookie": "session=carol"})
            assert "x-vlm-cache" not in answer
        assert len(backend.bodies) == 6


async def test_deeply_nested_json_passes_through_uncached(backend: Backend) -> None:
    deep = b'{"temperature": 0, "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    async with running_gate(backend, cache_size=8) as gate:
        for _ in range(2):
            status, headers, _ = await gate.request("POST", "/v1/chat/completions", data=deep)
            assert status == 200
            assert "x-vlm-cache" not in headers
        assert backend.bodies == [deep, deep]
        assert await gate.metric("vlm_requests_running") == 0


async def test_a_health_answer_the_gate_cannot_read_is_a_failed_check(
    caplog: pytest.LogCaptureFixture,
) -> None:
    status_line = [b"HTTP/1.1 200 OK"]
    probes = [0]

    async def health(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        probes[0] += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(status_line[0] + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(health, "127.0.0.1", 0)
    stand_in = Backend()
    stand_in.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with running_gate(stand_in) as gate:  # ready: the first checks passed
            status_line[0] = b"HTTP/1.1 200 " + b"A" * 70_000  # past the reader's line limit

            async def readyz(status: int) -> bool:
                return (await gate.request("GET", "/readyz"))[0] == status

            await until(lambda: readyz(503))
            failed = probes[0]
            await until(lambda: probes[0] >= failed + 4)  # the poller goes on
            status_line[0] = b"HTTP/1.1 200 OK"
            await until(lambda: readyz(200))
    finally:
        server.close()
        await server.wait_closed()
    logged = [r for r in caplog.records if r.getMessage().startswith("health check at")]
    assert len(logged) == 1  # once, not at every check
    assert "ValueError" in logged[0].getMessage()


async def test_closing_the_gate_survives_a_background_task_that_failed(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from vlm_operator.gate import GateServer, _server

    async def broken(proxy: object) -> None:
        raise RuntimeError("sweeper broke")

    monkeypatch.setattr(_server, "_sweep", broken)
    gate = GateServer(GateConfig(upstream=backend.url, port=0, health_path=""))
    await gate.start()
    await until(lambda: any(task.done() for task in gate._tasks))  # the sweeper's
    await gate.close()  # logs the failure; does not raise it
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert str(failures[0].exc_info[1]) == "sweeper broke"


@asynccontextmanager
async def gate_process(backend: Backend, *flags: str) -> AsyncIterator[tuple[Any, Gate]]:
    """The real ``vlm-operator gate`` command, configured partly from the environment."""
    env = {**os.environ, "VLM_GATE_UPSTREAM": backend.url}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vlm_operator",
        "gate",
        "--listen=127.0.0.1:0",
        *flags,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    client = Gate(GateConfig(upstream=backend.url))  # only a client of the process here
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), DEADLINE_S)).decode()
        client.url = line.split("listening on ")[1].split()[0]
        client.client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

        async def ready() -> bool:
            return (await client.request("GET", "/readyz"))[0] == 200

        await until(ready)
        yield process, client
    finally:
        if client.client is not None:
            await client.client.close()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_sigterm_drains_every_running_and_queued_request(backend: Backend) -> None:
    """The real command: 4 running + 20 queued survive SIGTERM; the process exits 0."""
    flags = ("--max-in-flight=4", "--queue-size=32", "--queue-timeout=30", "--drain-timeout=30")
    async with gate_process(backend, *flags) as (process, gate):
        tasks = [asyncio.create_task(gate.request("POST", "/hold")) for _ in range(24)]

        async def all_in() -> bool:
            m = await gate.metrics()
            return m[("vlm_requests_running", ())] == 4 and m[("vlm_requests_waiting", ())] == 20

        await until(all_in)
        process.send_signal(signal.SIGTERM)

        async def unready() -> bool:
            return (await gate.request("GET", "/readyz"))[0] == 503

        await until(unready)
        status, _, body = await gate.request("POST", "/hold")
        assert status == 503
        assert error_code(body) == "draining"
        backend.release.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE_S)
        assert [status for status, _, _ in results] == [200] * 24
        assert await asyncio.wait_for(process.wait(), DEADLINE_S) == 0
        assert backend.peak == 4


async def test_drain_timeout_bounds_the_exit(backend: Backend) -> None:
    async with gate_process(backend, "--drain-timeout=0.2") as (process, gate):
        stuck = asyncio.create_task(gate.request("POST", "/hold"))
        await until(lambda: backend.current == 1)
        process.send_signal(signal.SIGTERM)
        # the model never answers: the gate still exits 0, soon after the drain timeout
        assert await asyncio.wait_for(process.wait(), DEADLINE_S) == 0
        with pytest.raises(aiohttp.ClientError):
            await stuck


async def test_a_drain_out_of_time_refuses_the_queued_requests_with_503(
    backend: Backend,
) -> None:
    async with running_gate(backend, max_in_flight=1, queue_size=4) as gate:
        running, queued = await hold_one_and_queue_one(gate, backend, "a", "b")
        assert await gate.server.drain(0.2) is False
        # Told to retry elsewhere, not cut with the connection as the running one is.
        status, headers, body = await asyncio.wait_for(queued, DEADLINE_S)
        assert (status, error_code(body), headers["Retry-After"]) == (503, "draining", "1")
        assert await gate.metric("vlm_requests_rejected_total", reason="draining") == 1
        assert await gate.metric("vlm_requests_waiting") == 0
        backend.release.set()
        assert (await running)[0] == 200
        assert backend.arrivals == ["a"]


async def test_sigterm_lets_a_slow_reader_have_its_whole_answer(backend: Backend) -> None:
    """The real command: the end of an answer still in the gate is not cut off by its exit."""
    size = 4 * 1000 * 1000
    async with gate_process(backend, "--drain-timeout=30") as (process, gate):
        host, port = gate.url.split("//")[1].split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # set before connecting
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        reader, writer = await asyncio.open_connection(sock=sock, limit=16384)
        request = b"GET /big?bytes=%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        writer.write(request % size)
        received = bytearray()

        async def read_slowly() -> None:
            while chunk := await reader.read(16384):
                received.extend(chunk)
                await asyncio.sleep(0.002)  # slower than the gate writes: its buffers fill

        try:
            slow_reader = asyncio.create_task(read_slowly())
            # The model has answered; the gate relays it as fast as the client reads, and
            # frees the slot with the answer's end still in its buffers: the drain, over
            # once nothing runs, must not let the process exit before that end is out.
            await until(lambda: backend.finished == 1)
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(slow_reader, DEADLINE_S)
        finally:
            writer.close()
        head, _, body = bytes(received).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert len(body) == size
        assert await asyncio.wait_for(process.wait(), DEADLINE_S) == 0


def test_the_gate_runs_on_uvloop_only_when_it_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from vlm_operator.commands import gate as gate_command

    real_import = importlib.import_module

    def without_uvloop(name: str, package: str | None = None) -> Any:
        if name == "uvloop":
            raise ImportError("No module named 'uvloop'")
        return real_import(name, package)

    monkeypatch.setattr(gate_command.importlib, "import_module", without_uvloop)
    assert gate_command._loop_factory() is None  # asyncio's own loop
    with pytest.raises(ImportError):
        gate_command._loop_factory("uvloop")  # asked for by name: not silently replaced
    monkeypatch.undo()
    uvloop = pytest.importorskip("uvloop")
    assert gate_command._loop_factory() is uvloop.new_event_loop
    assert gate_command._loop_factory("uvloop") is uvloop.new_event_loop
    assert gate_command._loop_factory("asyncio") is None


def test_bad_loop_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    err = gate_usage_error(monkeypatch, capsys, "VLM_GATE_LOOP", "tokio")
    assert "VLM_GATE_LOOP" in err
    assert "must be one of auto, asyncio, uvloop" in err
