"""Bounded waiting for tests: poll a probe, run a step periodically, stop a child process.

Tests never sleep and hope: they poll with a deadline and, when it passes,
fail saying what they waited for, the last value seen and any context the
caller describes. Background steps (a stand-in kubelet, a trickle of
traffic, a sampler) run on a daemon thread between ``with`` and its end. A
child process gets SIGTERM and a grace period, then SIGKILL.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["Periodic", "terminate", "wait_for"]


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    *,
    interval: float = 0.1,
    describe: Callable[[], object] = lambda: "",
) -> T:
    """The first truthy value of ``probe()``; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what} (last: {last!r}) {describe()}"
    )


class Periodic:
    """Calls ``step()`` every ``interval`` seconds on a daemon thread while in ``with``."""

    def __init__(self, step: Callable[[], object], interval: float) -> None:
        self._callback = step
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._callback()

    def __enter__(self) -> Periodic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def terminate(process: subprocess.Popen[Any], *, grace_s: float) -> int:
    """SIGTERM, wait up to ``grace_s`` seconds, then SIGKILL; returns the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait(timeout=10)
