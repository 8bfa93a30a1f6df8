"""Helpers for the child processes peerload starts itself (demo, bench, tests): start, wait, stop."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peerload._address import free_port
from peerload.errors import PeerloadError


def peerload_cmd(*args: str) -> list[str]:
    """The command line of `peerload ARGS` run by this interpreter."""
    return [sys.executable, "-m", "peerload.cli.main", *args]


def spawn(
    cmd: list[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    stdin: Any = subprocess.DEVNULL,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `cmd` with its stdout and stderr written to `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdin=stdin, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)


def log_tail(log: Path, n: int = 1500) -> str:
    """The last `n` characters of a child's log, for error messages."""
    text = log.read_text(errors="replace").strip() if log.exists() else ""
    return text[-n:] if text else "(no output)"


def wait_until(proc: subprocess.Popen, ready: Callable[[], bool], what: str, timeout_s: float) -> None:
    """Poll `ready()` until it holds; raise PeerloadError if `proc` exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None:
            raise PeerloadError(f"{what} exited with code {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise PeerloadError(f"{what} was not ready within {timeout_s:.0f} s")
        time.sleep(0.05)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout_s: float = 20) -> None:
    """Wait until `proc` accepts connections on 127.0.0.1:port; kill it and raise if it never does."""
    try:
        wait_until(proc, lambda: _accepts(port), f"{what} on port {port}", timeout_s)
    except PeerloadError:
        proc.kill()
        proc.wait()
        raise


def write_ready_file(path: Path, info: Mapping[str, Any]) -> None:
    """Write `info` as JSON to `path` atomically, so a waiting reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(info))
    tmp.rename(path)


def wait_ready_file(proc: subprocess.Popen, ready: Path, timeout_s: float, what: str = "the seed") -> dict:
    """Wait for a child's ready file (`--ready-file` JSON); fail fast if the process dies first."""
    wait_until(proc, ready.exists, what, timeout_s)
    return json.loads(ready.read_text())


def stop_process(proc: subprocess.Popen, timeout_s: float = 10, *, close_stdin: bool = False) -> int | None:
    """SIGTERM (or, with `close_stdin`, close its stdin), then SIGKILL after `timeout_s`; the exit code."""
    if close_stdin:
        assert proc.stdin is not None
        proc.stdin.close()  # for children that serve until their stdin closes, and then exit cleanly
    elif proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@dataclass
class ServeProcess:
    """A `peerload serve` child; `address` is HOST:PORT."""

    proc: subprocess.Popen[bytes]
    address: str
    log: Path

    def stop(self, timeout_s: float = 15) -> int | None:
        """SIGTERM, SIGKILL after `timeout_s`; the exit code (0 after a clean shutdown)."""
        return stop_process(self.proc, timeout_s)


def start_serve(
    *args: str,
    log: Path,
    port: int | None = None,
    timeout_s: float = 30,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> ServeProcess:
    """`peerload serve --host 127.0.0.1 --port PORT ARGS` in its own process, once it listens."""
    port = port or free_port()
    proc = spawn(peerload_cmd("serve", "--host", "127.0.0.1", "--port", str(port), *args), log, env=env, cwd=cwd)
    server = ServeProcess(proc, f"127.0.0.1:{port}", log)
    # Its own "listening" line, not an open port: an old server may still hold a reused port.
    try:
        wait_until(proc, lambda: "listening on" in log.read_text(errors="replace"), "peerload serve", timeout_s)
    except PeerloadError as exc:
        server.stop()
        raise PeerloadError(f"{exc}:\n{log_tail(log)}") from None
    return server


def start_redis(port: int, workdir: Path, *, persistent: bool = False) -> subprocess.Popen[bytes]:
    """A redis-server on 127.0.0.1:`port`, once it accepts connections.

    No persistence by default; `persistent`: an append-only file in `workdir`, fsynced at every
    write, which a new server on the same `workdir` loads (a crash loses no acknowledged write).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError(
            "redis-server is not installed (Debian: apt-get install redis-server; "
            "`make install` runs scripts/install_system_deps.sh)"
        )
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else ["--appendonly", "no"]
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", *persistence]
    args += ["--dir", str(workdir), "--daemonize", "no", "--loglevel", "warning"]
    proc = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc, "redis-server", timeout_s=10)
    return proc


@contextmanager
def redis_server(port: int | None = None) -> Iterator[str]:
    """A throwaway redis-server (no persistence) on `port` (default: a free one); yields its URL."""
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="peerload-redis-") as workdir:
        proc = start_redis(port, Path(workdir))
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            stop_process(proc, timeout_s=5)
