"""Clients of several `peerload serve --store redis` replicas over one real redis-server: killing
the replica a seed and a target use costs no READY record and no failed load, and the official
modelexpress client (one URL) works against any replica."""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from peerload._process import peerload_cmd, spawn, stop_process
from peerload.client import CoordinatorClient, SourceStatus
from peerload.tensors import sha256_of

pytestmark = pytest.mark.redis

NAME = "test/failover"
MX_SCENARIO = Path(__file__).resolve().parents[1] / "mx" / "client_scenario.py"
WAIT_S = 120  # bound on waiting for a heartbeat on a loaded machine; never reached when things work


class Replica:
    """A `peerload serve --store redis` child with its /metrics, to count the RPCs it answered."""

    def __init__(self, serve_process: Callable[..., Any], redis_url: str, free_port: Callable[[], int]) -> None:
        self.metrics_port = free_port()
        store = ("--store", "redis", "--redis-url", redis_url)
        self.server = serve_process(*store, "--metrics-port", str(self.metrics_port))
        self.address = self.server.address

    def answered(self, method: str) -> int:
        """How many `method` calls this replica answered OK (0 when it is gone)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as reply:
                text = reply.read().decode()
        except OSError:
            return 0
        found = re.search(rf'peerload_rpc_seconds_count\{{code="OK",method="{method}"\}} (\S+)', text)
        found = found or re.search(rf'peerload_rpc_seconds_count\{{method="{method}",code="OK"\}} (\S+)', text)
        return int(float(found.group(1))) if found else 0


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def checkpoint(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    gen = torch.Generator().manual_seed(22)
    tensors = {f"w{i}": torch.randn(256, 512, generator=gen) for i in range(4)}
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    return path, {n: sha256_of(t) for n, t in tensors.items()}


@pytest.mark.parametrize("fault", ["SIGKILL", "SIGSTOP"])  # a replica that dies, and one that hangs
def test_killing_the_replica_in_use_loses_no_ready_record_and_no_load(
    fault: str,
    redis_url: str,
    serve_process: Callable[..., Any],
    free_port: Callable[[], int],
    seed_process: Callable[..., dict[str, Any]],
    run_model_command: Callable[..., Any],
    checkpoint: tuple[Path, dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, expected = checkpoint
    replicas = [Replica(serve_process, redis_url, free_port) for _ in range(3)]
    first, survivors = replicas[0], replicas[1:]
    addresses = ",".join(r.address for r in replicas)
    monkeypatch.setenv("PEERLOAD_HEARTBEAT_INTERVAL_S", "1")
    monkeypatch.setenv("PEERLOAD_RPC_TIMEOUT_S", "5")  # how long the target waits on a hung replica
    seed = seed_process(model, addresses, name=NAME)
    # The seed uses the first replica in its list: its beats land there and nowhere else.
    wait_for(lambda: first.answered("UpdateStatus") >= 3, "the seed's beats on the first replica")
    assert [r.answered("UpdateStatus") for r in survivors] == [0, 0]

    # Meanwhile, every listing on the survivors must show the seed READY.
    missed: list[list[str]] = []
    listings = [0]
    stop = threading.Event()

    def watch() -> None:
        with CoordinatorClient(survivors[-1].address, timeout_s=10) as client:
            while not stop.is_set():
                ready = [r.worker_id for r in client.list_sources(status=SourceStatus.READY, model_name=NAME)]
                listings[0] += 1
                if seed["worker_id"] not in ready:  # (the target is listed too, once it is loaded)
                    missed.append(ready)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        wait_for(lambda: listings[0] >= 1, "the first listing")
        if fault == "SIGKILL":
            first.server.proc.kill()
            first.server.proc.wait(timeout=30)
        else:  # the beat under way waits out its deadline (one interval), then goes on
            first.server.proc.send_signal(signal.SIGSTOP)
        # Counting heartbeats: the next beat lands on the next replica in the list; three more
        # show the seed stays there.
        wait_for(lambda: survivors[0].answered("UpdateStatus") >= 4, "the seed's beats on the next replica")
        report_path = tmp_path / "load.json"
        out = run_model_command(
            "load", model, NAME, addresses, "--no-fallback", "--report", str(report_path), timeout=300
        )
        assert out.returncode == 0, out.stderr[-3000:]
    finally:
        stop.set()
        watcher.join(60)
    assert missed == [], "the seed was not READY on a survivor"
    assert listings[0] >= 2
    assert survivors[1].answered("UpdateStatus") == 0, "the seed's beats stay on the first replica that answers"
    log = seed["log"].read_text(errors="replace")
    assert "still serving peers" not in log and "refused" not in log, "a beat failed"
    assert f"using {survivors[0].address}" in log
    report = json.loads(report_path.read_text())
    assert report["source"] == seed["worker_id"] and report["storage_bytes"] == 0
    assert report["sha256"] == expected
    for replica in survivors:
        with CoordinatorClient(replica.address, timeout_s=10) as client:
            ready = {r.worker_id for r in client.list_sources(status=SourceStatus.READY, model_name=NAME)}
        assert seed["worker_id"] in ready


def test_killing_the_replica_in_use_during_a_load_fails_it_over_not_the_load(
    redis_url: str,
    serve_process: Callable[..., Any],
    free_port: Callable[[], int],
    seed_process: Callable[..., dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gen = torch.Generator().manual_seed(23)
    tensors = {f"w{i}": torch.randn(2048, 1024, generator=gen) for i in range(12)}  # 96 MiB
    model = tmp_path / "big.safetensors"
    save_file(tensors, str(model))
    expected = {n: sha256_of(t) for n, t in tensors.items()}
    first, second = (Replica(serve_process, redis_url, free_port) for _ in range(2))
    addresses = f"{first.address},{second.address}"
    monkeypatch.setenv("PEERLOAD_HEARTBEAT_INTERVAL_S", "0.5")
    seed = seed_process(model, addresses, name=NAME)
    report_path, log = tmp_path / "load.json", tmp_path / "load.log"
    args = ("load", str(model), "--model-name", NAME, "--coordinator", addresses, "--no-fallback", "--serve")
    import redis

    store = redis.Redis.from_url(redis_url)
    target = spawn(peerload_cmd(*args, "--report", str(report_path)), log)
    try:
        # The target publishes itself (INITIALIZING, serving the parts it verified) when its
        # transfer starts; from then on it heartbeats, then goes READY, then STALE at exit.
        # Frozen right then, it is mid-load when the replica it uses dies.
        wait_for(lambda: store.scard("peerload:workers") >= 2 or target.poll() is not None, "the target's publish")
        target.send_signal(signal.SIGSTOP)
        assert target.poll() is None, "the target finished before it could be frozen mid-load"
        first.server.proc.kill()
        first.server.proc.wait(timeout=30)
        target.send_signal(signal.SIGCONT)
        # Loaded, then READY as a new source (through the other replica), serving until stopped.
        wait_for(
            lambda: "serving as source" in log.read_text(errors="replace") or target.poll() is not None, "the load"
        )
        assert target.poll() is None, log.read_text(errors="replace")[-3000:]
        with CoordinatorClient(second.address, timeout_s=10) as client:
            ready = {r.worker_id for r in client.list_sources(status=SourceStatus.READY, model_name=NAME)}
        assert len(ready) == 2 and seed["worker_id"] in ready, "the target is READY beside the seed"
        assert stop_process(target, timeout_s=30) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        target.send_signal(signal.SIGCONT)
        stop_process(target, timeout_s=10)
        store.close()
    text = log.read_text(errors="replace")
    assert f"using {second.address}" in text, "the load's own calls went on to the second replica"
    report = json.loads(report_path.read_text())
    assert report["source"] == seed["worker_id"] and report["storage_bytes"] == 0
    assert report["sha256"] == expected


def test_the_official_client_with_one_url_against_each_replica(
    redis_url: str, serve_process: Callable[..., Any], free_port: Callable[[], int]
) -> None:
    if importlib.util.find_spec("modelexpress") is None:
        pytest.skip("modelexpress==0.7.0 is not installed; `make install` adds it")
    import redis

    replicas = [Replica(serve_process, redis_url, free_port) for _ in range(2)]
    store = redis.Redis.from_url(redis_url)
    try:
        for index, replica in enumerate(replicas):
            store.flushall()
            # The official client runs in its own process: its stubs and ours cannot share one.
            out = subprocess.run(
                [sys.executable, str(MX_SCENARIO), replica.address], capture_output=True, text=True, timeout=120
            )
            assert out.returncode == 0, out.stderr[-3000:]
            report = json.loads(out.stdout.strip().splitlines()[-1])
            assert report["published_ids"] == [report["expected_id"]]
            assert report["listed_all"] == ["mx-worker-0", "mx-worker-1"]
            assert report["listed_ready_before"] == [] and report["update_ok"] is True
            assert report["listed_ready_after"] == ["mx-worker-0"]
            assert report["get"]["found"] and report["get"]["tensors"] == ["w"]
            # What it wrote through one replica, the other lists the same.
            other = replicas[1 - index]
            with CoordinatorClient(other.address, timeout_s=10) as client:
                ready = client.list_sources(status=SourceStatus.READY, model_name="Qwen/Qwen3-0.6B")
            assert [r.worker_id for r in ready] == ["mx-worker-0"]
            assert [r.source_load for r in ready] == [0.25]
    finally:
        store.close()
    for replica in replicas:
        assert replica.server.stop() == 0
