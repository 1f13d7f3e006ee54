"""Child processes of the local cluster: each in its own process group, none left behind.

Every process the local cluster starts (API server, operator, gate, fake model) goes through
:func:`spawn`. Each child leads its own process group, so that stopping it also stops anything it
started, and it is registered until it is reaped, so that an ``atexit`` hook (and the SIGTERM /
SIGHUP handlers installed by :func:`install_signal_handlers`) can kill whatever is still running
when the parent leaves, even on failure. On Linux each child also asks the kernel to SIGKILL it
when the parent dies (``PR_SET_PDEATHSIG``), which covers the one exit ``atexit`` cannot see: the
parent being SIGKILLed itself.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

__all__ = [
    "install_signal_handlers",
    "kill_all",
    "signal_group",
    "spawn",
    "stop_process",
    "vlm_operator_argv",
]

_LIVE: set[int] = set()  # process group ids of children not yet reaped
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def vlm_operator_argv(command: Sequence[str]) -> list[str]:
    """A container command naming ``vlm-operator`` rewritten to this interpreter's module.

    Runs the same code as the console script without depending on PATH (a fresh venv may not be
    activated).
    """
    argv = list(command)
    if argv and Path(argv[0]).name == "vlm-operator":
        return [sys.executable, "-m", "vlm_operator", *argv[1:]]
    return argv


async def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    cwd: Path | None = None,
) -> asyncio.subprocess.Process:
    """Start ``argv`` in a new process group, output appended to ``log_path`` (or discarded)."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    target = os.devnull
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        target = str(log_path)
    out = os.open(
        target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
    )  # the child's, closed below
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=full_env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    finally:
        os.close(out)
    _LIVE.add(proc.pid)
    return proc


def signal_group(proc: asyncio.subprocess.Process, sig: int) -> None:
    """Send ``sig`` to the process group led by ``proc`` (ignored if it is gone)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


async def stop_process(proc: asyncio.subprocess.Process, *, grace_s: float) -> int:
    """SIGTERM the group, wait up to ``grace_s``, then SIGKILL; returns the exit status."""
    if proc.returncode is None:
        signal_group(proc, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(grace_s, 0.0)):  # not wait_for: cpython#86296
                await proc.wait()
    # The leader may be gone while something it started still holds the group.
    signal_group(proc, signal.SIGKILL)
    code = await proc.wait()
    _LIVE.discard(proc.pid)
    return code


def kill_all() -> None:
    """SIGKILL every process group still registered (atexit and signal handlers)."""
    for pgid in list(_LIVE):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        _LIVE.discard(pgid)


atexit.register(kill_all)


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    # Turn SIGTERM/SIGHUP into a normal exit so context managers and atexit run.
    raise SystemExit(128 + signum)


def install_signal_handlers() -> None:
    """Make SIGTERM and SIGHUP unwind like Ctrl-C does, and Ctrl-C work even when started in
    the background of a script (which ignores SIGINT). Main thread only."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)
