"""A real Prometheus server (Debian's /usr/bin/prometheus) for end-to-end tests.

It scrapes one file_sd job whose targets tests set at runtime, so the operator's queries run
against the real PromQL engine and real scrapes instead of canned answers. Target files are
written atomically (temp file + rename) because Prometheus re-reads them on its own schedule and
must never see half a file. The process is always stopped (SIGTERM, then SIGKILL after a
deadline), by ``stop()``, by the context manager, and at interpreter exit; when started from the
main thread it is also killed if the test process itself dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

#: The Prometheus on PATH, which is what the Makefile and the demo check for; Debian's
#: path when there is none (the error then names it).
PROMETHEUS_BINARY = shutil.which("prometheus") or "/usr/bin/prometheus"
_LIVE: weakref.WeakSet[PrometheusServer] = weakref.WeakSet()


class PrometheusError(RuntimeError):
    """Prometheus failed to start, answered an error, or a wait ran out of time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for programs that cannot bind port 0 themselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class PrometheusServer:
    """One Prometheus process with a file_sd job named ``vlm``; see the module docstring."""

    def __init__(
        self,
        workdir: str | Path,
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        *,
        binary: str = PROMETHEUS_BINARY,
        job_name: str = "vlm",
        rule_files: Iterable[str | Path] = (),
        honor_labels: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.binary = binary
        self.job_name = job_name
        self.rule_files = [str(Path(path).resolve()) for path in rule_files]
        #: Keep a scraped series' own labels over the target's (as the chart's PodMonitor
        #: of the operator does: its per-service series carry the service's namespace).
        self.honor_labels = honor_labels
        self.port = 0
        self.url = ""
        self.targets_file = self.workdir / "targets.json"
        self.log_file = self.workdir / "prometheus.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._client = httpx.Client(timeout=10.0)

    # -- lifecycle --------------------------------------------------------------------------

    def _write_config(self) -> Path:
        config = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "scrape_configs": [{
                "job_name": self.job_name,
                "honor_labels": self.honor_labels,
                "file_sd_configs": [{"files": [str(self.targets_file)], "refresh_interval": "1s"}],
            }],
        }  # fmt: skip
        if self.rule_files:
            config["rule_files"] = list(self.rule_files)
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        return path

    def start(self, *, ready_timeout: float = 30.0) -> PrometheusServer:
        """Start the process and wait until /-/ready answers; returns self.

        The port is picked free just before the process binds it; if another process took it
        in between, Prometheus exits at once and is started again on another port.
        """
        if self._process is not None:
            raise PrometheusError("already started")
        if not Path(self.binary).exists():
            raise PrometheusError(f"{self.binary} not found (apt-get install prometheus)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.targets_file.exists():
            self.set_targets([])
        config = self._write_config()
        for attempt in range(3):
            self._launch(config)
            try:
                self.wait_ready(ready_timeout)
                return self
            except PrometheusError:
                in_use = "address already in use" in self._log_tail()
                self.stop()
                if not in_use or attempt == 2:
                    raise
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _launch(self, config: Path) -> None:
        if self._client.is_closed:
            self._client = httpx.Client(timeout=10.0)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [
            self.binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=1d",
            "--log.level=warn",
        ]
        main_thread = threading.current_thread() is threading.main_thread()
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if main_thread else None,
            )
        _LIVE.add(self)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll /-/ready until it answers 200; raises PrometheusError with the log tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise PrometheusError(f"prometheus exited early:\n{self._log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if self._client.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.05)
        raise PrometheusError(f"prometheus not ready after {timeout}s:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; idempotent. A graceful stop flushes
        the write-ahead log (a restart then answers the last samples, as a cluster's
        Prometheus would), which a busy machine can take seconds over."""
        process, self._process = self._process, None
        _LIVE.discard(self)
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        self._client.close()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> PrometheusServer:
        return self.start() if self._process is None else self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- targets ----------------------------------------------------------------------------

    def set_targets(self, targets: Iterable[tuple[str, Mapping[str, str]]]) -> None:
        """Replace the scraped targets: ``[("127.0.0.1:8080", {"namespace": ..., ...}), ...]``."""
        groups = [{"targets": [host_port], "labels": dict(labels)} for host_port, labels in targets]
        self.workdir.mkdir(parents=True, exist_ok=True)
        temporary = self.targets_file.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
        temporary.write_text(json.dumps(groups))
        temporary.replace(self.targets_file)

    # -- queries ----------------------------------------------------------------------------

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; the ``data.result`` list (vector results) or raises PrometheusError."""
        try:
            response = self._client.get(f"{self.url}/api/v1/query", params={"query": promql})
            body = response.json()
        except (httpx.HTTPError, ValueError) as error:
            raise PrometheusError(f"query {promql!r} failed: {error}") from error
        if body.get("status") != "success":
            raise PrometheusError(f"query {promql!r} failed: {body.get('error', body)}")
        result = body["data"]["result"]
        return result if isinstance(result, list) else [{"metric": {}, "value": result}]

    def wait_for_series(
        self,
        query: str,
        timeout: float = 30.0,
        *,
        count: int = 1,
        where: Callable[[dict[tuple[tuple[str, str], ...], float]], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """Poll ``query`` until it returns at least ``count`` series (and, if given, until
        ``where`` accepts the values keyed by sorted label pairs); returns the result."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while True:
            result = self.query(query)
            if len(result) >= count and (where is None or where(values_by_labels(result))):
                return result
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        raise PrometheusError(
            f"{query!r} returned {len(result)} series after {timeout}s (wanted {count}"
            f"{' matching the condition' if where else ''}): {values_by_labels(result)}"
        )

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets with their health, from /api/v1/targets."""
        body = self._client.get(f"{self.url}/api/v1/targets").json()
        active: list[dict[str, Any]] = body["data"]["activeTargets"]
        return active


def values_by_labels(result: list[dict[str, Any]]) -> dict[tuple[tuple[str, str], ...], float]:
    """An instant vector as ``{((label, value), ...): float}`` (NaN stays NaN)."""
    return {tuple(sorted(s["metric"].items())): float(s["value"][1]) for s in result}


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop(timeout=5.0)
