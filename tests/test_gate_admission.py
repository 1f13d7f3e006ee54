"""Admission control on its own: the limit, FIFO hand-over, deadlines, cancellation."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import pytest
from vlm_operator.contract import last_chance_places
from vlm_operator.gate._admission import Admission, Rejected
from vlm_operator.gate._cache import CachedResponse, ResponseCache


async def _until(predicate: Callable[[], bool], deadline_s: float = 2.0) -> None:
    """Let the loop run until ``predicate`` holds; bounded in steps and time."""
    async with asyncio.timeout(deadline_s):
        for _ in range(100_000):
            if predicate():
                return
            await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def test_hands_slots_over_in_fifo_order_without_exceeding_the_limit() -> None:
    admission = Admission(max_in_flight=2, queue_size=10, queue_timeout=5)
    order: list[int] = []
    peak = 0

    async def client(i: int) -> None:
        nonlocal peak
        await admission.acquire()
        order.append(i)
        peak = max(peak, admission.running)
        await asyncio.sleep(0)
        admission.release(0.01)

    await admission.acquire()
    await admission.acquire()  # both slots taken: everyone below queues
    tasks = []
    for i in range(8):
        tasks.append(asyncio.create_task(client(i)))
        await _until(lambda i=i: admission.waiting == i + 1)
    admission.release(None)
    admission.release(None)
    await asyncio.gather(*tasks)
    assert order == list(range(8))
    assert peak <= 2
    assert admission.running == 0
    assert admission.waiting == 0


async def test_full_queue_is_refused_with_a_retry_estimate_from_service_times() -> None:
    admission = Admission(max_in_flight=1, queue_size=1, queue_timeout=5)
    await admission.acquire()
    admission.release(3.0)  # one observed service time: 3 s
    await admission.acquire()
    waiter = asyncio.create_task(admission.acquire())
    await _until(lambda: admission.waiting == 1)
    with pytest.raises(Rejected) as refused:
        await admission.acquire()
    assert refused.value.reason == "queue_full"
    # Position 2 behind one slot of ~3 s each, stretched by the overload (one
    # arrival of the last few, moving weight 0.2, was refused: 1 / 0.8 = 1.25)
    # and erring long by half (RETRY_AFTER_MARGIN).
    assert refused.value.retry_after == math.ceil(3.0 * 2 / 1 / 0.8 * 1.5)
    admission.release(3.0)
    await waiter
    admission.release(3.0)
    assert admission.retry_after(1) == math.ceil(3.0 / 0.8 * 1.5)
    assert Admission(4, 1, 1).retry_after(1) == 1  # nothing observed yet: at least 1 s


async def test_before_the_first_answer_the_time_held_stands_for_the_service_time() -> None:
    # A new pod: its slots fill at once and nothing is answered for seconds. Advised
    # 1 s, a client would spend its retries before the first answer.
    now = [100.0]
    admission = Admission(max_in_flight=2, queue_size=2, queue_timeout=30, clock=lambda: now[0])
    await admission.acquire()
    now[0] += 2.0
    await admission.acquire()
    waiters = [asyncio.create_task(admission.acquire()) for _ in range(2)]
    await _until(lambda: admission.waiting == 2)
    now[0] += 6.0  # the first slot held for 8 s, unanswered
    with pytest.raises(Rejected) as refused:
        await admission.acquire()
    # Position 3 behind 2 slots of at least 8 s, stretched by the refusal (1 / 0.8), by half.
    assert refused.value.retry_after == math.ceil(8.0 * 3 / 2 / 0.8 * 1.5)
    # Once something is answered, its time is the mean; the time held no longer counts.
    admission.release(9.0)
    admission.release(9.0)
    await asyncio.gather(*waiters)
    now[0] += 50.0
    assert admission.retry_after(1) == math.ceil(9.0 / 2 / 0.8 * 1.5)
    # All slots free, nothing answered ever: the floor again.
    idle = Admission(1, 1, 1, clock=lambda: now[0])
    await idle.acquire()
    idle.release(None)  # the client left: no service time
    now[0] += 30.0
    assert idle.retry_after(1) == 1


async def test_a_last_chance_waits_at_the_head_and_may_take_a_reserved_place() -> None:
    # Queue of 4: a quarter (1 place) is kept beyond it for last chances.
    admission = Admission(max_in_flight=1, queue_size=4, queue_timeout=5)
    assert [last_chance_places(n) for n in (0, 1, 4, 8)] == [0, 1, 1, 2]
    await admission.acquire()
    order: list[str] = []

    async def client(name: str, *, last_chance: bool = False) -> None:
        await admission.acquire(last_chance=last_chance)
        order.append(name)
        admission.release(0.01)

    tasks = []
    for i, (name, last_chance) in enumerate(
        [("fresh0", False), ("last0", True), ("fresh1", False), ("fresh2", False)]
    ):
        tasks.append(asyncio.create_task(client(name, last_chance=last_chance)))
        await _until(lambda i=i: admission.waiting == i + 1)
    with pytest.raises(Rejected):  # full for a request with retries left
        await admission.acquire()
    tasks.append(asyncio.create_task(client("last1", last_chance=True)))
    await _until(lambda: admission.waiting == 5)
    with pytest.raises(Rejected) as refused:  # the reserve is bounded too
        await admission.acquire(last_chance=True)
    assert refused.value.reason == "queue_full"
    admission.release(None)
    await asyncio.gather(*tasks)
    # Last chances first, in their order; then the rest in theirs.
    assert order == ["last0", "last1", "fresh0", "fresh1", "fresh2"]
    assert admission.running == 0
    assert admission.waiting == 0


async def test_retry_after_grows_with_a_sustained_overload_and_falls_after() -> None:
    # One slot of ~3 s and no queue: while most arrivals are refused, a place goes
    # to one of many contenders, so the advice stretches, up to 60 s.
    admission = Admission(max_in_flight=1, queue_size=0, queue_timeout=5)
    await admission.acquire()
    admission.release(3.0)
    await admission.acquire()
    advice = []
    for _ in range(30):
        with pytest.raises(Rejected) as refused:
            await admission.acquire()
        advice.append(refused.value.retry_after)
    assert advice == sorted(advice)
    assert advice[0] == math.ceil(3.0 / 0.8 * 1.5)
    assert advice[-1] == 60  # capped: openai-python ignores longer ones
    # Admissions bring it back to the plain estimate.
    admission.release(3.0)
    for _ in range(40):
        await admission.acquire()
        admission.release(3.0)
    assert admission.retry_after(1) == math.ceil(3.0 * 1.5)


async def test_a_refusal_ahead_takes_nothing_and_counts_as_a_refusal() -> None:
    admission = Admission(max_in_flight=1, queue_size=1, queue_timeout=5)
    assert admission.refusal_ahead() is None  # a free slot
    assert admission.running == 0
    await admission.acquire()
    admission.release(3.0)
    await admission.acquire()
    assert admission.refusal_ahead() is None  # a place in the queue
    assert admission.waiting == 0  # ... which it does not take
    waiter = asyncio.create_task(admission.acquire())
    await _until(lambda: admission.waiting == 1)
    refused = admission.refusal_ahead()
    assert refused is not None
    assert refused.reason == "queue_full"
    # A last chance may still take a reserved place.
    assert admission.refusal_ahead(last_chance=True) is None
    # Counted as acquire() counts a refusal: the next advice is stretched by it.
    with pytest.raises(Rejected) as by_acquire:
        await admission.acquire()
    assert (by_acquire.value.retry_after or 0) > (refused.retry_after or 0) > 0
    admission.draining = True
    draining = admission.refusal_ahead()
    assert draining is not None
    assert draining.reason == "draining"
    admission.release(3.0)
    await waiter
    admission.release(3.0)


async def test_deadline_leaves_the_queue_and_never_holds_a_slot() -> None:
    admission = Admission(max_in_flight=1, queue_size=4, queue_timeout=0.05)
    await admission.acquire()
    with pytest.raises(Rejected) as refused:
        await admission.acquire()
    assert refused.value.reason == "deadline"
    assert admission.waiting == 0
    assert admission.running == 1
    admission.release(None)
    assert admission.running == 0


async def test_deadline_advises_coming_back_for_a_place_at_the_back_of_the_queue() -> None:
    admission = Admission(max_in_flight=2, queue_size=4, queue_timeout=60)
    await admission.acquire()
    admission.release(4.0)  # one observed service time: 4 s
    await admission.acquire()
    await admission.acquire()  # both slots taken
    behind = [asyncio.create_task(admission.acquire()) for _ in range(2)]
    await _until(lambda: admission.waiting == 2)
    # The next waiter gets a short deadline, so it expires with the two queued.
    admission.queue_timeout = 0.05
    with pytest.raises(Rejected) as expired:
        await admission.acquire()
    assert expired.value.reason == "deadline"
    # Two still queued: a place behind them is served after (2 + 1) slot times
    # of 4 s shared by 2 slots, 6 s, with no overload to stretch it; 9 s with
    # the margin.
    assert admission.waiting == 2
    assert expired.value.retry_after == math.ceil(4.0 * 3 / 2 * 1.5)
    admission.release(None)
    admission.release(None)
    await asyncio.gather(*behind)
    assert (admission.running, admission.waiting) == (2, 0)


async def test_cancelled_waiter_leaves_at_once_and_the_next_one_gets_the_slot() -> None:
    admission = Admission(max_in_flight=1, queue_size=4, queue_timeout=5)
    await admission.acquire()
    leaving = asyncio.create_task(admission.acquire())
    staying = asyncio.create_task(admission.acquire())
    await _until(lambda: admission.waiting == 2)
    leaving.cancel()
    await _until(lambda: admission.waiting == 1)
    admission.release(None)
    await staying
    assert admission.running == 1
    assert leaving.cancelled()


async def test_slot_handed_to_a_waiter_that_is_cancelled_moves_on() -> None:
    admission = Admission(max_in_flight=1, queue_size=4, queue_timeout=5)
    await admission.acquire()
    first = asyncio.create_task(admission.acquire())
    second = asyncio.create_task(admission.acquire())
    await _until(lambda: admission.waiting == 2)
    admission.release(None)  # slot goes to ``first`` ...
    first.cancel()  # ... which leaves before it runs: the slot must reach ``second``
    await second
    assert admission.running == 1
    admission.release(None)
    assert admission.running == 0


async def test_draining_refuses_new_work_and_waits_for_the_rest() -> None:
    admission = Admission(max_in_flight=1, queue_size=4, queue_timeout=5)
    await admission.acquire()
    admission.draining = True
    with pytest.raises(Rejected) as refused:
        await admission.acquire()
    assert refused.value.reason == "draining"
    assert not await admission.wait_idle(0.01)
    admission.release(None)
    assert await admission.wait_idle(0.01)


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        Admission(0, 1, 1)
    with pytest.raises(ValueError, match="queue_timeout"):
        Admission(1, 1, 0)


def test_cache_keys_only_deterministic_requests() -> None:
    key = ResponseCache.key_for
    body = b'{"temperature": 0, "messages": []}'
    assert key("POST", "/v1/chat/completions", body) is not None
    assert key("POST", "/v1/chat/completions", body) == key("POST", "/v1/chat/completions", body)
    assert key("POST", "/v1/other", body) != key("POST", "/v1/chat/completions", body)
    assert key("POST", "/x", b'{"temperature": 0.7}') is None
    assert key("POST", "/x", b'{"temperature": 0, "stream": true}') is None
    assert key("POST", "/x", b'{"messages": []}') is None  # default temperature is not 0
    assert key("POST", "/x", b'{"temperature": 0') is None  # garbage is simply not cached
    assert key("POST", "/x", b'["temperature"]') is None
    assert key("POST", "/x", b'{"temperature": false}') is None


def test_cache_keys_keep_credentials_apart_and_honour_cache_control() -> None:
    body = b'{"temperature": 0, "messages": []}'

    def key(*headers: tuple[bytes, bytes]) -> str | None:
        return ResponseCache.key_for("POST", "/x", body, headers)

    alice = (b"Authorization", b"Bearer alice")
    assert key(alice) == key((b"authorization", b"Bearer alice"))
    assert key(alice) != key((b"Authorization", b"Bearer bob"))
    assert key(alice) != key()
    for name in (b"Cookie", b"api-key", b"X-Api-Key"):
        assert key((name, b"a")) != key((name, b"b"))
    # Other headers are not part of it; how the credentials' values split is.
    assert key(alice, (b"User-Agent", b"y")) == key(alice)
    assert key((b"Cookie", b"a=1"), (b"Cookie", b"b=2")) != key((b"Cookie", b"a=1b=2"))
    for value in (b"no-store", b"No-Cache", b"max-age=0, no-cache"):
        assert key((b"Cache-Control", value)) is None
    assert key((b"Pragma", b"no-cache")) is None
    assert key((b"Cache-Control", b"max-age=60")) is not None


def test_answers_marked_not_for_a_shared_cache_are_not_kept() -> None:
    cache = ResponseCache(size=4, ttl=10)
    for value in ("no-store", "no-cache", "private", "Private, max-age=60"):
        cache.put(value, CachedResponse(200, (("Cache-Control", value),), b"{}"))
        assert cache.get(value) is None
    cache.put("cookie", CachedResponse(200, (("Set-Cookie", "session=alice"),), b"{}"))
    assert cache.get("cookie") is None
    # An answer that varies with request headers the key leaves out (here one gzipped for
    # a client that accepts gzip) would be replayed to clients that sent other ones.
    gzipped = (("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding"))
    cache.put("vary", CachedResponse(200, gzipped, b"\x1f\x8b"))
    assert cache.get("vary") is None
    cache.put("public", CachedResponse(200, (("cache-control", "max-age=60"),), b"{}"))
    assert cache.get("public") is not None


def test_json_nested_too_deep_to_parse_is_simply_not_cached() -> None:
    deep = b'{"temperature": 0, "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    assert ResponseCache.key_for("POST", "/v1/chat/completions", deep) is None


def test_cache_is_a_bounded_lru_with_ttl_that_keeps_only_200() -> None:
    now = [0.0]
    cache = ResponseCache(size=2, ttl=10, clock=lambda: now[0])
    ok = CachedResponse(200, (("Content-Type", "application/json"),), b"{}")
    cache.put("a", ok)
    cache.put("b", ok)
    assert cache.get("a") == ok  # a is now the most recent
    cache.put("c", ok)
    assert cache.get("b") is None
    assert cache.get("a") == ok
    cache.put("err", CachedResponse(500, (), b""))
    assert cache.get("err") is None
    now[0] = 10.0
    assert cache.get("a") is None
    assert len(cache) == 1


async def test_the_fast_path_takes_only_a_free_slot_nobody_waits_for() -> None:
    admission = Admission(max_in_flight=1, queue_size=4, queue_timeout=5)
    assert admission.try_acquire()
    assert admission.running == 1
    assert not await admission.wait_idle(0.01)  # a slot is held: not idle
    assert not admission.try_acquire()  # the limit holds on the fast path too
    waiter = asyncio.create_task(admission.acquire())
    await _until(lambda: admission.waiting == 1)
    admission.release(0.1)  # handed to the waiter, not freed
    await waiter
    assert admission.running == 1
    admission.release(0.1)
    assert admission.running == 0
    assert await admission.wait_idle(0.01)
    admission.draining = True
    assert not admission.try_acquire()  # draining: refused, and acquire() says why
    with pytest.raises(Rejected) as refused:
        await admission.acquire()
    assert refused.value.reason == "draining"


async def test_the_fast_path_never_overtakes_a_queued_request() -> None:
    admission = Admission(max_in_flight=2, queue_size=4, queue_timeout=5)
    assert admission.try_acquire()
    assert admission.try_acquire()
    waiter = asyncio.create_task(admission.acquire())
    await _until(lambda: admission.waiting == 1)
    admission.release(0.1)
    # The freed slot belongs to the waiter even before it runs again.
    assert not admission.try_acquire()
    await waiter
    assert admission.running == 2
