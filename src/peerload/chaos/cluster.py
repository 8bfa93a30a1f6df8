"""Real processes to inject faults into: `peerload serve` and redis-server on fixed ports, seeds.

Every wait is bounded; every process is stopped by `close()`, whatever happened to it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from peerload._process import ServeProcess, peerload_cmd, spawn, start_redis, start_serve, stop_process, wait_ready_file
from peerload.client import CoordinatorClient, SourceStatus
from peerload.errors import CoordinatorError
from peerload.identity import SourceIdentity


class CoordinatorProcess:
    """`peerload serve` on 127.0.0.1:`port`; `restart()` SIGKILLs it and starts a new one there."""

    def __init__(self, port: int, log_dir: Path, *serve_args: str, env: Mapping[str, str] | None = None) -> None:
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self._args = serve_args
        self._log_dir = log_dir
        self._env = {**os.environ, **(env or {})}
        self._serve: ServeProcess | None = None
        self.starts = 0

    def start(self) -> None:
        """Start it and wait until it listens."""
        log = self._log_dir / f"coordinator-{self.port}-{self.starts}.log"
        self.starts += 1
        self._serve = start_serve(*self._args, log=log, port=self.port, env=self._env)

    def kill(self) -> None:
        """SIGKILL: whatever it held in memory is lost."""
        if self._serve is not None and self._serve.proc.poll() is None:
            self._serve.proc.kill()
            self._serve.proc.wait(10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def close(self) -> None:
        if self._serve is not None:
            self._serve.stop(timeout_s=5)


class RedisProcess:
    """A redis-server on a fixed port; `restart()` replaces it with an empty one on that port, or,
    when `persistent`, with one that loads what the old one wrote (its append-only file)."""

    def __init__(self, port: int, workdir: Path, *, persistent: bool = False) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._workdir = workdir
        self._persistent = persistent
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = start_redis(self.port, self._workdir, persistent=self._persistent)

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, timeout_s=5)
            self._proc = None

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to save anything."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=10)
            self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    close = stop


class SeedProcess:
    """A `peerload seed PATH` child: READY once `start()` returns; signals go to its pid."""

    def __init__(
        self,
        path: Path,
        model_name: str,
        coordinator: str,
        log_dir: Path,
        *seed_args: str,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.path = path
        self.model_name = model_name
        self.coordinator = coordinator
        self._args = seed_args
        self._log_dir = log_dir
        self._env = {**os.environ, **(env or {})}
        self._proc: subprocess.Popen[bytes] | None = None
        self.worker_id = ""
        self.source_id = ""
        self.pid = 0
        self.signalled: set[int] = set()  # signals this campaign sent

    def start(self, timeout_s: float = 90) -> SeedProcess:
        ready = self._log_dir / f"seed-{time.monotonic_ns()}.ready"
        args = ["seed", str(self.path), "--model-name", self.model_name, "--coordinator", self.coordinator]
        cmd = peerload_cmd(*args, "--ready-file", str(ready), *self._args)
        self._proc = spawn(cmd, ready.with_suffix(".log"), env=self._env)
        info = wait_ready_file(self._proc, ready, timeout_s)
        self.worker_id, self.source_id, self.pid = info["worker_id"], info["source_id"], info["pid"]
        return self

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def died_by_itself(self) -> int | None:
        """The exit code of a seed that ended without being killed by us (a crash), else None."""
        if self._proc is None or self._proc.poll() is None or signal.SIGKILL in self.signalled:
            return None
        return self._proc.returncode

    def signal(self, sig: int) -> None:
        """Send `sig` if the process still runs (a kill racing its exit is not an error)."""
        if self.alive:
            self.signalled.add(sig)
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
