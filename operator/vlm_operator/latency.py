"""The latency model of a CPU vision-language model pod.

One model process shares its cores between the requests inside it: with n
requests in flight each one progresses at ``1 / (1 + alpha * (n - 1))``
seconds of solo work per second (processor sharing with contention). A
request needs ``base * J`` seconds of solo work, J lognormal with sigma 0.1.
Calibrated on the measured Qwen3-VL-2B CPU table (6.2 s alone; 7.3 / 9.6 /
14.2 / 23.4 s at 2 / 4 / 8 / 16 in flight).

Two users share this module so that they cannot drift apart: the ``fake``
runtime (real processes answering real HTTP) and the discrete-event
simulator. :class:`ProcessorSharing` is an exact event engine for one pod. It
uses the virtual-time trick: every request inside the pod has attained the
same service since it entered, so one cumulative counter ``V`` (service per
request since the pod was last empty) plus each request's finish point
``V_admit + work`` orders the completions. Admit, remove and each completion
cost O(log n); nothing is rescanned when n changes.

The simulator runs this class's arithmetic inline, for speed
(:mod:`vlm_operator.simulator.engine`, ``_Pod``): a change here must be made
there too, and ``tests/test_simulator.py`` checks that both agree to the bit.

This module is pure: standard library only.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["LatencyModel", "ProcessorSharing"]

K = TypeVar("K", bound=Hashable)

# Completions computed from floating-point virtual time can land a few ulps
# after the instant the caller asks about; they count as finished.
_EPSILON = 1e-9
#: The widest spread of the work: exp(5 x 8 sigma-draws) is still a finite number of
#: seconds, where a spread of hundreds draws infinite work now and then.
MAX_SIGMA = 5.0


@dataclass(frozen=True)
class LatencyModel:
    """Solo work of a request and the slowdown of sharing a pod.

    ``time_scale`` divides every duration, so that tests and demos run the same
    scenario 10-50x faster.
    """

    base_seconds: float = 6.2
    alpha: float = 0.185
    sigma: float = 0.1
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.base_seconds > 0:
            raise ValueError(f"base_seconds must be positive, got {self.base_seconds}")
        if not self.alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if not 0 <= self.sigma <= MAX_SIGMA:
            raise ValueError(f"sigma must be from 0 to {MAX_SIGMA}, got {self.sigma}")
        if not self.time_scale > 0:
            raise ValueError(f"time_scale must be positive, got {self.time_scale}")
        if not math.isfinite(self.base_seconds / self.time_scale):
            raise ValueError(
                f"base_seconds / time_scale must be finite, got {self.base_seconds} / "
                f"{self.time_scale}"
            )

    def slowdown(self, n: int) -> float:
        """How much slower each of ``n`` concurrent requests runs than one alone."""
        if n <= 1:
            return 1.0
        return 1.0 + self.alpha * (n - 1)

    def mean_latency(self, n: int) -> float:
        """Latency of a median request when ``n`` stay in flight (scaled seconds)."""
        return self.base_seconds * self.slowdown(n) / self.time_scale

    def sample_work(self, rng: random.Random) -> float:
        """Seconds of solo work of one request, divided by the time scale."""
        jitter = rng.lognormvariate(0.0, self.sigma) if self.sigma > 0 else 1.0
        return self.base_seconds * jitter / self.time_scale

    def pod(self) -> ProcessorSharing[Hashable]:
        """A fresh, empty pod under this model."""
        return ProcessorSharing(self.alpha)


class ProcessorSharing(Generic[K]):
    """Exact event engine for one pod under processor sharing with contention.

    Time only moves forward: every call passes ``now`` no earlier than the last
    one. :meth:`advance` returns the keys that finished by ``now`` in finish
    order; :meth:`next_completion` says when the next one will finish if nobody
    enters or leaves before.
    """

    __slots__ = ("_active", "_alpha", "_heap", "_last", "_seq", "_virtual")

    def __init__(self, alpha: float = 0.185) -> None:
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self._alpha = alpha
        self._virtual = 0.0  # service attained by every request inside since empty
        self._last = 0.0  # wall time up to which ``_virtual`` is exact
        self._seq = 0
        self._heap: list[tuple[float, int, K]] = []  # (finish virtual time, seq, key)
        self._active: dict[K, int] = {}  # key → seq of its live heap entry

    def __len__(self) -> int:
        return len(self._active)

    def __contains__(self, key: object) -> bool:
        return key in self._active

    def _slowdown(self) -> float:
        n = len(self._active)
        return 1.0 + self._alpha * (n - 1) if n > 1 else 1.0

    def _top(self) -> tuple[float, int, K] | None:
        heap = self._heap
        active = self._active
        while heap:
            entry = heap[0]
            if active.get(entry[2]) == entry[1]:
                return entry
            heapq.heappop(heap)  # removed earlier: drop lazily
        return None

    def _move_to(self, now: float) -> None:
        if now < self._last:
            now = self._last  # never run backwards; callers pass monotonic time
        if self._active:
            self._virtual += (now - self._last) / self._slowdown()
        self._last = now

    def admit(self, key: K, work: float, now: float) -> None:
        """Start ``key`` with ``work`` seconds of solo work at ``now``."""
        if not (work >= 0 and math.isfinite(work)):
            raise ValueError(f"work must be finite and >= 0, got {work}")
        if key in self._active:
            raise KeyError(f"{key!r} is already inside the pod")
        self._move_to(now)
        if not self._active:
            # Restart virtual time when the pod is empty: a request alone then
            # finishes at exactly admit + work, without accumulated rounding.
            self._virtual = 0.0
            self._heap.clear()
        self._seq += 1
        self._active[key] = self._seq
        heapq.heappush(self._heap, (self._virtual + work, self._seq, key))

    def remove(self, key: K, now: float) -> bool:
        """Take ``key`` out (client gave up); False if it is not inside."""
        if key not in self._active:
            return False
        self._move_to(now)
        del self._active[key]
        if len(self._heap) > 2 * len(self._active) + 32:
            self._compact()
        return True

    def _compact(self) -> None:
        active = self._active
        self._heap = [e for e in self._heap if active.get(e[2]) == e[1]]
        heapq.heapify(self._heap)

    def next_completion(self) -> tuple[float, K] | None:
        """(wall time, key) of the next completion, or None when the pod is empty."""
        top = self._top()
        if top is None:
            return None
        remaining = top[0] - self._virtual
        return self._last + max(remaining, 0.0) * self._slowdown(), top[2]

    def advance(self, now: float) -> list[K]:
        """Move to ``now``; return the keys that finished by then, in finish order."""
        finished: list[K] = []
        while True:
            top = self._top()
            if top is None:
                break
            at = self._last + max(top[0] - self._virtual, 0.0) * self._slowdown()
            if at > now + _EPSILON:
                break
            # Exactly at the finish point: set virtual time to it (no drift).
            self._virtual = max(self._virtual, top[0])
            self._last = max(self._last, at)
            heapq.heappop(self._heap)
            del self._active[top[2]]
            finished.append(top[2])
        self._move_to(now)
        return finished
