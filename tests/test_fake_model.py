"""The fake model: processor-sharing latency, real image payloads, streams, start-up."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from vlm_operator.cli import main
from vlm_operator.fake_model import FAKE_MODEL, FakeModel, FakeModelConfig, create_app, image_size
from vlm_operator.latency import LatencyModel
from vlm_operator.loadgen import chat_payload

DEADLINE_S = 10.0


def png(width: int, height: int) -> bytes:
    """A valid grey PNG of the given size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    raw = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


async def until(predicate: Callable[[], bool], deadline_s: float = DEADLINE_S) -> None:
    async with asyncio.timeout(deadline_s):
        for _ in range(1_000_000):
            if predicate():
                return
            await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


class Served:
    def __init__(self, url: str, model: FakeModel, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.model = model
        self.session = session

    async def chat(self, payload: Any) -> tuple[int, Any, float]:
        start = time.monotonic()
        async with self.session.post(self.url + "/v1/chat/completions", json=payload) as r:
            body = await r.json()
            return r.status, body, time.monotonic() - start


@asynccontextmanager
async def served(**overrides: Any) -> AsyncIterator[Served]:
    settings: dict[str, Any] = {"time_scale": 20.0, "startup_seconds": 0.0, "sigma": 0.0}
    settings.update(overrides)
    app = create_app(FakeModelConfig(**settings))
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    try:
        yield Served(url, app[FAKE_MODEL], session)
    finally:
        await session.close()
        await runner.cleanup()


@pytest.mark.parametrize("concurrent", [1, 2, 4, 8])
async def test_latency_follows_processor_sharing(concurrent: int) -> None:
    model = LatencyModel(base_seconds=6.2, alpha=0.185, sigma=0.0, time_scale=20.0)
    expected = model.mean_latency(concurrent)
    async with served() as fake:
        payload = chat_payload("m", image_png=png(4, 3))
        results = await asyncio.gather(*(fake.chat(payload) for _ in range(concurrent)))
    for status, _, latency in results:
        assert status == 200
        assert latency == pytest.approx(expected, rel=0.05)


async def test_a_request_joining_later_shares_only_the_remaining_work() -> None:
    # A alone for half its work (0.155 s), then with B at rate 1/1.185 until A ends:
    # A = 0.155 + 0.155*1.185; B then finishes its remainder alone.
    async with served() as fake:
        payload = chat_payload("m")
        first = asyncio.create_task(fake.chat(payload))
        await until(lambda: fake.model.in_flight == 1)
        await asyncio.sleep(0.155)  # the scenario itself: B arrives half-way through A
        second = asyncio.create_task(fake.chat(payload))
        (_, _, a), (_, _, b) = await asyncio.gather(first, second)
    assert a == pytest.approx(0.155 + 0.155 * 1.185, rel=0.05)
    shared = 0.155 * 1.185
    assert b == pytest.approx(shared + (0.31 - 0.155), rel=0.05)


async def test_answers_describe_images_deterministically() -> None:
    async with served() as fake:
        status, body, _ = await fake.chat(chat_payload("qwen", image_png=png(800, 600)))
        assert status == 200
        assert body["object"] == "chat.completion"
        assert body["model"] == "qwen"
        text = body["choices"][0]["message"]["content"]
        assert "800×600 pixels" in text
        again = await fake.chat(chat_payload("qwen", image_png=png(800, 600)))
        assert again[1]["choices"][0]["message"]["content"] == text
        other = await fake.chat(chat_payload("qwen", prompt="What is it?", image_png=png(8, 6)))
        assert other[1]["choices"][0]["message"]["content"] != text


async def test_bad_requests_get_400_naming_the_field() -> None:
    async with served() as fake:
        broken = chat_payload("m")
        broken["messages"][0]["content"].append(
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@not-base64@@"}}
        )
        status, body, _ = await fake.chat(broken)
        assert status == 400
        assert "messages[0].content[1].image_url.url" in body["error"]["message"]
        status, body, _ = await fake.chat({"messages": []})
        assert status == 400
        assert "messages" in body["error"]["message"]
        async with fake.session.post(fake.url + "/v1/chat/completions", data=b"{nope") as r:
            assert r.status == 400
            assert "JSON" in (await r.json())["error"]["message"]
        assert fake.model.in_flight == 0


async def test_stream_spreads_chunks_over_the_service_time() -> None:
    async with served() as fake:
        payload = {**chat_payload("m"), "stream": True}
        arrivals: list[float] = []
        start = time.monotonic()
        async with fake.session.post(fake.url + "/v1/chat/completions", json=payload) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            events = []
            async for line in r.content:
                if line.startswith(b"data: "):
                    events.append(line[6:].strip())
                    arrivals.append(time.monotonic() - start)
    assert events[-1] == b"[DONE]"
    pieces = [json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1]]
    assert len(pieces) > 5
    assert arrivals[1] < 0.31 / 2  # first word long before the end
    assert arrivals[-1] == pytest.approx(0.31, rel=0.05)


async def test_health_is_503_until_start_up_is_over() -> None:
    async with served(startup_seconds=4.0) as fake:  # 0.2 s at time scale 20
        codes: list[int] = []

        async def healthy() -> bool:
            async with fake.session.get(fake.url + "/health") as r:
                codes.append(r.status)
                return r.status == 200

        async with asyncio.timeout(DEADLINE_S):
            for _ in range(10_000):
                if await healthy():
                    break
                await asyncio.sleep(0.01)
        assert codes[0] == 503
        async with fake.session.get(fake.url + "/v1/models") as r:
            assert (await r.json())["data"][0]["id"] == "Qwen/Qwen3-VL-2B-Instruct"


async def test_a_client_that_disconnects_leaves_the_shared_pod() -> None:
    async with served(time_scale=1.0) as fake:  # 6.2 s: far longer than the test
        leaving = asyncio.create_task(fake.chat(chat_payload("m")))
        await until(lambda: fake.model.in_flight == 1)
        leaving.cancel()
        await until(lambda: fake.model.in_flight == 0)


def test_image_size_reads_png_and_jpeg_headers() -> None:
    assert image_size(png(17, 5)) == (17, 5)
    jpeg = (
        b"\xff\xd8"
        + b"\xff\xe0\x00\x10"
        + b"JFIF\x00" * 2
        + b"\x00\x00\x00\x00"
        + b"\xff\xc0\x00\x11\x08\x02\x58\x03\x20\x03"
        + b"\x00" * 9
    )
    assert image_size(jpeg) == (800, 600)
    assert image_size(b"GIF89a") is None
    assert (
        base64.b64decode(
            chat_payload("m", image_png=b"abc")["messages"][0]["content"][1]["image_url"][
                "url"
            ].split(",")[1]
        )
        == b"abc"
    )


def test_bad_environment_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VLM_FAKE_TIME_SCALE", "fast")
    with pytest.raises(SystemExit) as exited:
        main(["fake-model"])
    assert exited.value.code == 2
    assert "VLM_FAKE_TIME_SCALE" in capsys.readouterr().err
