"""Shared fixtures: free ports, a real redis-server, in-process coordinators, the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from peerload._process import ServeProcess, peerload_cmd, start_serve
from peerload._process import free_port as free_port_now
from peerload._process import redis_server as start_redis

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def free_port() -> Callable[[], int]:
    """A callable returning a currently free TCP port on 127.0.0.1."""
    return free_port_now


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """URL of a throwaway redis-server on a free loopback port (no persistence); skips without one."""
    if shutil.which("redis-server") is None:
        pytest.skip(
            "redis-server is not installed (Debian: apt-get install redis-server; "
            "`make install` runs scripts/install_system_deps.sh)"
        )
    with start_redis() as url:
        yield url


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session redis-server's URL, emptied for this test."""
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    return redis_server


@pytest.fixture
def coordinator_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """make(store="memory"|"redis", port=0, reap_interval_s=None, max_message_bytes=None, metrics_port=None,
    **settings) -> a running CoordinatorServer, stopped after the test."""
    from peerload.coordinator.server import serve
    from peerload.settings import Settings

    started: list[Any] = []

    def make(
        store: str = "memory",
        *,
        port: int = 0,
        reap_interval_s: float | None = None,
        max_message_bytes: int | None = None,
        metrics_port: int | None = None,
        **overrides: Any,
    ) -> Any:
        if store == "redis" and "redis_url" not in overrides:
            overrides["redis_url"] = request.getfixturevalue("redis_url")
        if "heartbeat_timeout_s" in overrides and "heartbeat_interval_s" not in overrides:
            overrides["heartbeat_interval_s"] = overrides["heartbeat_timeout_s"] / 2
        settings = Settings.load(env={}, host="127.0.0.1", store=store, **overrides)
        extra = {} if max_message_bytes is None else {"max_message_bytes": max_message_bytes}
        server = serve(settings, port=port, reap_interval_s=reap_interval_s, metrics_port=metrics_port, **extra)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop(grace_s=0)


@pytest.fixture
def coordinator(coordinator_factory: Callable[..., Any]) -> Any:
    """A running in-memory coordinator with default timeouts."""
    return coordinator_factory()


@pytest.fixture
def run_peerload() -> Callable[..., subprocess.CompletedProcess[str]]:
    """run(*args, env=None, timeout=60) -> CompletedProcess of `peerload ARGS` in a subprocess."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, **(env or {})}
        return subprocess.run(
            peerload_cmd(*args), check=False, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO
        )

    return run


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """start(*serve_args, port=None) -> ServeProcess (`peerload serve --host 127.0.0.1 ARGS`), ready to answer."""
    started: list[ServeProcess] = []

    def start(*args: str, port: int | None = None, timeout: float = 30) -> ServeProcess:
        log = tmp_path / f"serve-{len(started)}.log"
        server = start_serve(*args, log=log, port=port, timeout_s=timeout, cwd=REPO)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(timeout=10)
