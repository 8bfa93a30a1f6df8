"""Helpers for the child processes peerload starts itself (demo, bench, tests): ports, stop, Redis."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from peerload.errors import PeerloadError


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout_s: float = 20) -> None:
    """Wait until `proc` accepts connections on 127.0.0.1:port; kill it and raise if it never does."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{what} did not start on port {port} (exit code {proc.poll()})") from None
            time.sleep(0.05)


def wait_ready_file(proc: subprocess.Popen, ready: Path, timeout_s: float) -> dict:
    """Wait for a seed's `--ready-file` JSON; fail fast if the process dies first."""
    deadline = time.monotonic() + timeout_s
    while not ready.exists():
        if proc.poll() is not None:
            raise PeerloadError(f"the seed process exited with code {proc.returncode} before becoming READY")
        if time.monotonic() > deadline:
            raise PeerloadError(f"the seed did not become READY within {timeout_s:.0f}s")
        time.sleep(0.05)
    return json.loads(ready.read_text())


def stop_process(proc: subprocess.Popen, timeout_s: float = 10) -> int | None:
    """SIGTERM, then SIGKILL after `timeout_s`; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@contextmanager
def redis_server(port: int | None = None) -> Iterator[str]:
    """A throwaway redis-server (no persistence) on `port` (default: a free one); yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError(
            "redis-server is not installed (Debian: apt-get install redis-server; "
            "`make install` runs scripts/install_system_deps.sh)"
        )
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="peerload-redis-") as workdir:
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(port, proc, "redis-server", timeout_s=10)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            stop_process(proc, timeout_s=5)
