"""Real processes to inject faults into: `peerload serve` on a fixed port, `peerload seed` children.

Every wait is bounded; every process is stopped by `close()`, whatever happened to it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from peerload._process import stop_process, wait_port, wait_ready_file
from peerload.client import CoordinatorClient, SourceStatus
from peerload.errors import CoordinatorError
from peerload.identity import SourceIdentity


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "peerload.cli.main", *args]


class CoordinatorProcess:
    """`peerload serve` on 127.0.0.1:`port`; `restart()` kills it and starts a new one on that port."""

    def __init__(self, port: int, log_dir: Path, *, store: str = "memory", redis_url: str = "", **env: str) -> None:
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.store = store
        self.redis_url = redis_url
        self._log_dir = log_dir
        self._env = {**os.environ, **env}
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout_s: float = 30) -> None:
        """Start and wait until it accepts connections."""
        args = ["serve", "--host", "127.0.0.1", "--port", str(self.port), "--store", self.store]
        if self.redis_url:
            args += ["--redis-url", self.redis_url]
        log = open(self._log_dir / f"coordinator-{self.port}-{self.starts}.log", "wb")
        self._proc = subprocess.Popen(_cli(*args), stdout=log, stderr=subprocess.STDOUT, env=self._env)
        log.close()
        self.starts += 1
        wait_port(self.port, self._proc, "peerload serve", timeout_s)

    def kill(self) -> None:
        """SIGKILL: the coordinator loses whatever it held in memory."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def close(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, timeout_s=5)


class SeedProcess:
    """A `peerload seed PATH` child: READY once `start()` returns; signals go to its pid."""

    def __init__(self, path: Path, model_name: str, coordinator: str, log_dir: Path, *args: str, **env: str) -> None:
        self.path = path
        self.model_name = model_name
        self.coordinator = coordinator
        self._args = args
        self._log_dir = log_dir
        self._env = {**os.environ, **env}
        self._proc: subprocess.Popen[bytes] | None = None
        self.worker_id = ""
        self.source_id = ""
        self.pid = 0

    def start(self, timeout_s: float = 90) -> SeedProcess:
        ready = self._log_dir / f"seed-{time.monotonic_ns()}.ready"
        args = ["seed", str(self.path), "--model-name", self.model_name, "--coordinator", self.coordinator]
        log = open(ready.with_suffix(".log"), "wb")
        self._proc = subprocess.Popen(
            _cli(*args, "--ready-file", str(ready), *self._args), stdout=log, stderr=subprocess.STDOUT, env=self._env
        )
        log.close()
        info = wait_ready_file(self._proc, ready, timeout_s)
        self.worker_id, self.source_id, self.pid = info["worker_id"], info["source_id"], info["pid"]
        return self

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send `sig` if the process still runs (a kill racing its exit is not an error)."""
        if self.alive:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        if self._proc is None:
            return
        self.signal(signal.SIGCONT)  # a stopped seed cannot act on SIGTERM
        stop_process(self._proc, timeout_s=10)


def ready_workers(address: str, identity: SourceIdentity) -> set[str]:
    """Worker ids listed READY for `identity` (empty while the coordinator cannot answer)."""
    try:
        with CoordinatorClient(address, timeout_s=2, retries=0) as client:
            return {r.worker_id for r in client.list_sources(identity, status=SourceStatus.READY)}
    except CoordinatorError:
        return set()


def seconds_until_ready(address: str, identity: SourceIdentity, workers: set[str], timeout_s: float) -> float | None:
    """Seconds until every one of `workers` is listed READY; None if not within `timeout_s`."""
    started = time.monotonic()
    while not workers <= ready_workers(address, identity):
        if time.monotonic() - started > timeout_s:
            return None
        time.sleep(0.02)
    return time.monotonic() - started
