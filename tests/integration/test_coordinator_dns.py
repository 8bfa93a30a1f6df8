"""A DNS name that resolves to two coordinator replicas over one Redis: clients given the name
keep every call answered while either replica is killed. Runs in a network namespace of its own,
whose /etc/hosts (`ip netns exec` mounts /etc/netns/NAME/hosts) gives the name both addresses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from peerload._process import peerload_cmd, spawn, stop_process
from peerload.errors import FleetUnavailable
from peerload.fleet import netns

pytestmark = pytest.mark.redis

NAME = "coordinators.test"
ADDRESSES = ("127.0.0.2", "127.0.0.3")
PORT = 18801  # inside the namespace only: nothing else listens there
REDIS_PORT = 16379
CLIENT = Path(__file__).resolve().parent / "dns_client.py"
WAIT_S = 120  # bound on waiting for a state that must come; no assertion is about time


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"plrep{os.getpid()}"
    try:
        netns.check_available(name)
    except FleetUnavailable as exc:
        pytest.skip(f"a network namespace is needed: {exc}")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    hosts = Path("/etc/netns") / name
    hosts.mkdir(parents=True)
    (hosts / "hosts").write_text("127.0.0.1 localhost\n" + "".join(f"{a} {NAME}\n" for a in ADDRESSES))
    netns.run("ip", "netns", "add", name)
    try:
        netns.run("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        netns.delete_namespace(name)
        shutil.rmtree(hosts)
        try:
            hosts.parent.rmdir()  # /etc/netns itself, when this test made it and nothing else is there
        except OSError:
            pass


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_name_of_two_replicas_keeps_answering_while_each_is_killed(namespace: str, tmp_path: Path) -> None:
    inside = ["ip", "netns", "exec", namespace]
    started: list[subprocess.Popen[bytes]] = []

    def start(cmd: list[str], log: str, **kw: Any) -> subprocess.Popen[bytes]:
        proc = spawn([*inside, *cmd], tmp_path / log, **kw)
        started.append(proc)
        return proc

    def serve(address: str, n: int) -> subprocess.Popen[bytes]:
        log = f"serve-{address}-{n}.log"
        args = ("--host", address, "--port", str(PORT), "--store", "redis", "--redis-url", redis_url)
        proc = start(peerload_cmd("serve", *args), log)
        wait_for(lambda: "listening on" in (tmp_path / log).read_text(errors="replace"), f"replica {address}")
        return proc

    progress = tmp_path / "progress.json"

    def counts() -> dict[str, Any]:
        return json.loads(progress.read_text()) if progress.exists() else {"calls": 0, "errors": 0}

    redis_url = f"redis://127.0.0.1:{REDIS_PORT}/0"
    try:
        redis_args = ["--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        start([shutil.which("redis-server") or "redis-server", *redis_args, "--dir", str(tmp_path)], "redis.log")
        replicas = {a: serve(a, 0) for a in ADDRESSES}
        client = start(
            [sys.executable, str(CLIENT), f"{NAME}:{PORT}", str(progress)], "client.log", stdin=subprocess.PIPE
        )
        wait_for(lambda: counts()["calls"] >= 20, "the client's first calls")
        for n, address in enumerate(ADDRESSES):
            # Kill one replica; the client goes on through the other (whichever it was using).
            replicas[address].kill()
            replicas[address].wait(timeout=30)
            before = counts()["calls"]
            wait_for(lambda b=before: counts()["calls"] >= b + 20, f"calls after killing {address}")
            replicas[address] = serve(address, n + 1)
        assert client.stdin is not None
        client.stdin.close()
        assert client.wait(timeout=60) == 0, (tmp_path / "client.log").read_text(errors="replace")[-3000:]
        final = counts()
        assert final["errors"] == 0, final
        assert final["not_ready"] == 0, final
    finally:
        for proc in reversed(started):
            stop_process(proc, timeout_s=10)
