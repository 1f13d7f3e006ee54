"""Admission control: a hard in-flight limit with a bounded FIFO queue behind it.

Modelled on Knative's queue-proxy breaker: a request either takes one of
``max_in_flight`` slots at once, waits its turn in a bounded queue, or is
refused immediately when the queue is full. A slot is handed directly from the
request that frees it to the oldest waiter, so the order is FIFO and the
number of requests inside the model never exceeds the limit, not even for an
instant. A waiter that gives up (deadline passed, client gone) leaves the
queue at once and never holds a slot.

One exception to FIFO: a request on its last chance (its client says it has
retried :data:`~vlm_operator.contract.LAST_CHANCE_RETRIES` times) waits ahead
of every request with retries left (in arrival order among last chances), and
may take one of a few places kept beyond the bound
(:func:`~vlm_operator.contract.last_chance_places`). Refused now, it has
failed; the requests it passes have retries left and are told when to come
back. In the minute after a rise, while new pods load, the queues fill with
returning clients, and without this the ones refused a third time fail.

The answer to "when should I retry?" comes from what the gate has seen: an
exponentially weighted mean of service times (before the first answer, how
long its slots have been held without one), times the queue position, over
the number of slots, stretched by the overload (1 / (1 - the moving fraction
of arrivals refused)): see :func:`vlm_operator.contract.retry_after_seconds`.
A request refused because the queue is full gets it for a place at the back
of the queue, and so does one that waited its deadline: it has lost its
place, and the pods the autoscaler starts for the queue it was part of are
usually still loading, so "come back then" serves the client better than
"give up".

The gate reads every body whole before it passes it on, so the bodies it
holds at once (being read, queued, or not yet sent on to the model) are
bounded too: by :class:`BodyBudget`. A request whose body would take the gate
past that bound is refused as soon as its size is known, as for a full queue
(429 with the same advice): the pod is overloaded, in memory rather than in
slots, and the bound keeps the gate inside its container's memory limit where
a full queue of bodies at the largest size would not.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable

from vlm_operator.contract import (
    last_chance_places,
    moving_refused_fraction,
    moving_service_mean,
    retry_after_seconds,
)

#: What a draining gate tells a client it refuses.
DRAINING_MESSAGE = "the gate is draining; retry on another replica"


class Rejected(Exception):
    """The gate refuses the request; ``reason`` is a rejection-metric label."""

    def __init__(self, reason: str, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


class Admission:
    """The limiter and its queue. One instance per gate; single event loop."""

    def __init__(
        self,
        max_in_flight: int,
        queue_size: int,
        queue_timeout: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if queue_size < 0:
            raise ValueError(f"queue_size must be >= 0, got {queue_size}")
        if not queue_timeout > 0:
            raise ValueError(f"queue_timeout must be positive, got {queue_timeout}")
        self.max_in_flight = max_in_flight
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self.draining = False
        self._running = 0
        self._queue: deque[asyncio.Future[None]] = deque()
        # Requests on their last chance, served before ``_queue``, FIFO among themselves.
        self._first: deque[asyncio.Future[None]] = deque()
        self._service_ewma: float | None = None
        # When the slots last went from all free to one taken (None: all free now).
        self._busy_since: float | None = None
        self._clock = clock
        self._refused = 0.0  # moving fraction of arrivals that found the queue full
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def running(self) -> int:
        """Requests holding a slot (inside the model or being delivered)."""
        return self._running

    @property
    def waiting(self) -> int:
        """Requests in the queue."""
        return len(self._first) + len(self._queue)

    def retry_after(self, position: int) -> int:
        """Whole seconds until ``position`` in the queue is likely served (1 to 60).

        Before the first answer, how long the slots have been held without one
        stands for the mean: a new pod's queue fills within seconds of its first
        requests, and "1 s" would spend its clients' retries before any is served.
        """
        busy = self._clock() - self._busy_since if self._busy_since is not None else 0.0
        return retry_after_seconds(
            self._service_ewma, position, self.max_in_flight, self._refused, busy_seconds=busy
        )

    def try_acquire(self) -> bool:
        """Take a free slot at once if one is free and nobody waits; False otherwise.

        The common case costs no coroutine, future or timer; :meth:`acquire`
        handles everything else (refusals, the queue).
        """
        if (
            self._running < self.max_in_flight
            and not self._queue
            and not self._first
            and not self.draining
        ):
            self._running += 1
            if self._running == 1:
                self._idle.clear()
                self._busy_since = self._clock()
            if self._refused:
                self._refused = moving_refused_fraction(self._refused, False)
            return True
        return False

    def refusal_ahead(self, *, last_chance: bool = False) -> Rejected | None:
        """The refusal a request arriving now would get, without taking anything.

        For a client that waits for "100 Continue" before it sends the body:
        refused now, it never sends it. A refusal counts as :meth:`acquire`'s
        does; an answer of None promises nothing (the body may find the queue
        full when it arrives).
        """
        if self.draining:
            return Rejected("draining", DRAINING_MESSAGE, retry_after=1)
        if self._running < self.max_in_flight and not self._queue and not self._first:
            return None
        return self._full(last_chance)

    def _full(self, last_chance: bool) -> Rejected | None:
        """The queue-full refusal (counted) if no place is left for a request that must wait."""
        waiting = self.waiting
        bound = self.queue_size + (last_chance_places(self.queue_size) if last_chance else 0)
        if waiting < bound:
            return None
        self._refused = moving_refused_fraction(self._refused, True)
        return Rejected(
            "queue_full",
            f"{self._running} requests in flight and {waiting} queued "
            f"(queue size {self.queue_size})",
            retry_after=self.retry_after(waiting + 1),
        )

    def refused_for_memory(self, message: str) -> Rejected:
        """The queue-full refusal of a request whose body the gate cannot hold (counted
        as :meth:`acquire`'s refusals are, in the moving fraction of refused arrivals)."""
        self._refused = moving_refused_fraction(self._refused, True)
        return Rejected("queue_full", message, retry_after=self.retry_after(self.waiting + 1))

    async def acquire(self, *, last_chance: bool = False) -> None:
        """Take a slot, waiting in the queue if needed.

        Raises :class:`Rejected` when draining, when the queue is full, or when
        the queue deadline passes; cancellation leaves the queue at once. A
        request on its ``last_chance`` waits ahead of the others and may take a
        place beyond the bound.
        """
        if self.draining:
            raise Rejected("draining", DRAINING_MESSAGE, retry_after=1)
        if self.try_acquire():
            return
        full = self._full(last_chance)
        if full is not None:
            raise full
        self._refused = moving_refused_fraction(self._refused, False)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        (self._first if last_chance else self._queue).append(waiter)
        try:
            async with asyncio.timeout(self.queue_timeout):
                await waiter
        except TimeoutError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                return  # the slot arrived in the same instant as the deadline: keep it
            self._discard(waiter)
            raise Rejected(
                "deadline",
                f"waited {self.queue_timeout:g} s in the queue without a slot",
                retry_after=self.retry_after(self.waiting + 1),
            ) from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release(None)  # handed over while the client left: pass it on
            else:
                self._discard(waiter)
            raise

    def release(self, service_seconds: float | None) -> None:
        """Free a slot: hand it to the oldest waiter (last chances first), or give it back."""
        if service_seconds is not None:
            self._service_ewma = moving_service_mean(self._service_ewma, service_seconds)
        for queue in (self._first, self._queue):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # the slot moves; running stays the same
                    return
        self._running -= 1
        if self._running == 0:
            self._idle.set()
            self._busy_since = None

    def refuse_waiting(self) -> int:
        """Refuse every request still waiting, as a draining gate refuses new ones (the
        drain ran out of time: told so, they retry elsewhere, rather than being cut)."""
        refused = 0
        for queue in (self._first, self._queue):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_exception(Rejected("draining", DRAINING_MESSAGE, retry_after=1))
                    refused += 1
        return refused

    def _discard(self, waiter: asyncio.Future[None]) -> None:
        waiter.cancel()
        for queue in (self._first, self._queue):
            with contextlib.suppress(ValueError):
                queue.remove(waiter)
                return

    async def wait_idle(self, seconds: float) -> bool:
        """Wait until nothing runs or waits; False if ``seconds`` passed first."""
        try:
            async with asyncio.timeout(seconds):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


class BodyBudget:
    """The request-body bytes the gate holds at once, kept under ``limit``.

    A body is counted from the moment its size is known (its Content-Length,
    or each piece of a chunked body as it arrives) until the model's
    connection has sent it on or its request ends otherwise.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the body budget must be >= 1 byte, got {limit}")
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        """Count ``size`` more bytes held, if that stays within the limit."""
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        self.held -= size
