"""Peers that stop answering without closing their connections, on emulated hosts: a seed
SIGSTOPped while a target reads from it, and a partitioned seed whose endpoint times out while
the target that read from it goes on serving. Real coordinator, seeds and targets; NIXL over UCX
tcp and Mooncake tcp; every load compared bit-exact; every wait is on a state or a byte count."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from peerload._process import peerload_cmd, stop_process
from peerload.errors import FleetUnavailable
from peerload.fleet import Fleet, run_target, start_coordinator, start_seed
from peerload.tensors import sha256_of

NAME = "test/vanished"
ENV = {
    "PEERLOAD_CHUNK_BYTES": str(1 << 20),
    "PEERLOAD_PART_TIMEOUT_S": "3",
    "PEERLOAD_RPC_TIMEOUT_S": "3",
    "PEERLOAD_RPC_RETRIES": "1",
    "PEERLOAD_HEARTBEAT_INTERVAL_S": "0.5",
    "PEERLOAD_HEARTBEAT_TIMEOUT_S": "2",
}
# The reader's idle UCX connection to a partitioned seed times out after ~3 s, not ~16 s.
FAST_KEEPALIVE = {"UCX_TCP_KEEPIDLE": "1s", "UCX_TCP_KEEPINTVL": "1s", "UCX_TCP_KEEPCNT": "2"}
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], int]:
    gen = torch.Generator().manual_seed(17)
    tensors = {f"w{i}": torch.randn(1 << 20, generator=gen) for i in range(12)}  # 48 MiB
    path = tmp_path_factory.mktemp("vanished") / "model.safetensors"
    save_file(tensors, str(path))
    return path, {n: sha256_of(t) for n, t in tensors.items()}, sum(t.nbytes for t in tensors.values())


def fleet_with_faults(hosts: int, gbit: float) -> Fleet:
    try:
        fleet = Fleet(hosts, nic_gbit=gbit, max_seconds=300)
    except FleetUnavailable as exc:
        pytest.skip(f"emulated hosts unavailable here: {exc}")
    try:
        fleet.partition(1)  # probe: nft present and the kernel has nftables
        fleet.heal(1)
    except FleetUnavailable as exc:
        fleet.close()
        pytest.skip(f"network faults unavailable here: {exc}")
    return fleet


def wait_for(what: str, done, proc: subprocess.Popen | None = None, timeout_s: float = TIMEOUT_S) -> None:
    """Poll `done()` until it holds; fail naming `what` if `proc` exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert proc is None or proc.poll() is None, f"exited with code {proc.returncode} before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        time.sleep(0.01)


def connections(fleet: Fleet, host: int, peer: int) -> int:
    """Established TCP connections from host `host` to host `peer`."""
    out = subprocess.run(
        ["ip", "netns", "exec", fleet.hosts[host].netns, "ss", "-Htn", "state", "established",
         "dst", fleet.hosts[peer].address],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout  # fmt: skip
    return len(out.splitlines())


@pytest.mark.timeout(300)
@pytest.mark.parametrize("transport", ["nixl", "transfer_engine"])
def test_a_seed_stopped_while_read_is_dropped_and_the_reader_finishes(transport, checkpoint, tmp_path):
    model, expected, total = checkpoint
    coordinator_host, stopped_host, other_host, target_host = 0, 1, 2, 3
    env = {**ENV, "PEERLOAD_TRANSPORT": transport}
    with fleet_with_faults(4, 0.2) as fleet:
        coordinator = start_coordinator(fleet, coordinator_host, tmp_path, "--heartbeat-timeout", "2")
        seeds = {h: start_seed(fleet, h, model, NAME, coordinator, tmp_path, env=env) for h in (1, 2)}
        result: dict[str, Any] = {}

        def load() -> None:
            try:
                result["report"] = run_target(
                    fleet, target_host, model, NAME, coordinator, tmp_path, env=env, timeout_s=TIMEOUT_S
                )
            except BaseException as exc:  # re-raised below, in the test's thread
                result["error"] = exc

        reader = threading.Thread(target=load, daemon=True)
        start = fleet.nic_bytes(target_host)[0]
        reader.start()
        wait_for("a quarter of the model at the target", lambda: fleet.nic_bytes(target_host)[0] - start > total // 4)
        assert reader.is_alive(), "the load ended before a quarter had arrived"
        stopped = seeds[stopped_host][0]
        os.kill(stopped.pid, signal.SIGSTOP)  # keeps its sockets open: the peer just stops answering
        reader.join(TIMEOUT_S + 10)
        # Never resumed: a host that stopped for good (docs/transport.md says why not resumed).
        os.kill(stopped.pid, signal.SIGKILL)
        other_alive = seeds[other_host][0].poll() is None
    assert fleet.leftovers() == []
    if "error" in result:
        raise result["error"]
    report = result["report"]
    assert report["sha256"] == expected, "a stopped peer must never leave the model corrupted or half-loaded"
    by_worker = {s["worker_id"]: s for s in report["sources"]}
    assert by_worker[seeds[stopped_host][1]["worker_id"]]["error"], f"the stopped seed was not dropped: {by_worker}"
    assert by_worker[seeds[other_host][1]["worker_id"]]["bytes"] > 0 or report["storage_bytes"] > 0, report
    assert other_alive, "the seed that kept answering died"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("transport", ["nixl", "transfer_engine"])
def test_a_reader_serves_on_after_its_partitioned_source_times_out(transport, checkpoint, tmp_path):
    model, expected, total = checkpoint
    coordinator_host, seed_host, reader_host, late_host = 0, 1, 2, 3
    env = {**ENV, **FAST_KEEPALIVE, "PEERLOAD_TRANSPORT": transport}
    with fleet_with_faults(4, 1) as fleet:
        coordinator = start_coordinator(fleet, coordinator_host, tmp_path, "--heartbeat-timeout", "2")
        _, seed = start_seed(fleet, seed_host, model, NAME, coordinator, tmp_path, env=env)
        report_path = tmp_path / "reader.json"
        cmd = peerload_cmd(
            "load", str(model), "--model-name", NAME, "--coordinator", coordinator, "--report", str(report_path),
            "--no-progress", "--serve",
        )  # fmt: skip
        reader = fleet.popen(reader_host, cmd, log_path=tmp_path / "reader.log", env=env)
        wait_for("the reader's report", lambda: _parses(report_path), reader)
        before = connections(fleet, reader_host, seed_host)
        fleet.partition(seed_host)  # the seed's host vanishes: no FIN, no RST, nothing
        if transport == "nixl":
            # NIXL keeps its UCX endpoint to the seed; TCP keepalive fails it (an endpoint timeout).
            assert before > 0, "the reader holds no connection to its seed: nothing could time out"
            wait_for("endpoint timeout", lambda: connections(fleet, reader_host, seed_host) < before, reader)
        # The reader still serves: a new target loads from it alone (the seed is cut off).
        late = run_target(
            fleet, late_host, model, NAME, coordinator, tmp_path, "--no-fallback", env=env, timeout_s=TIMEOUT_S
        )
        reader_alive = reader.poll() is None
        stop_process(reader, timeout_s=10)
    assert fleet.leftovers() == []
    first = json.loads(report_path.read_text())
    assert first["sha256"] == expected and first["source"] == seed["worker_id"], first["attempts"]
    assert reader_alive, f"the reader died with its source:\n{(tmp_path / 'reader.log').read_text()[-2000:]}"
    assert late["sha256"] == expected and late["source"] == first["worker_id"], late["attempts"]


def _parses(path: Path) -> bool:
    """The file exists and holds all of its JSON (it is written while we poll)."""
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "transport",
    # NIXL passes because peerload readers ask for pushes (docs/transport.md#peer-failures): a READ
    # would leave queued GET requests that abort the resumed seed (UCX 1.23 tcp GET emulation).
    ["nixl", "transfer_engine"],
)
def test_a_seed_resumed_after_its_reader_gave_up_serves_on(transport, checkpoint, tmp_path):
    model, expected, total = checkpoint
    coordinator_host, seed_host, target_host = 0, 1, 2
    env = {**ENV, "PEERLOAD_TRANSPORT": transport}
    with fleet_with_faults(3, 0.2) as fleet:
        coordinator = start_coordinator(fleet, coordinator_host, tmp_path, "--heartbeat-timeout", "2")
        seed, info = start_seed(fleet, seed_host, model, NAME, coordinator, tmp_path, env=env)
        report_path = tmp_path / "first.json"
        cmd = peerload_cmd(
            "load", str(model), "--model-name", NAME, "--coordinator", coordinator, "--report", str(report_path),
            "--no-progress",
        )  # fmt: skip
        start = fleet.nic_bytes(target_host)[0]
        first = fleet.popen(target_host, cmd, log_path=tmp_path / "first.log", env=env)
        wait_for("a quarter of the model at the target", lambda: fleet.nic_bytes(target_host)[0] - start > total // 4)
        os.kill(seed.pid, signal.SIGSTOP)
        assert first.wait(timeout=TIMEOUT_S) == 0, (tmp_path / "first.log").read_text()[-2000:]
        os.kill(seed.pid, signal.SIGCONT)  # the reader gave up on it and left; the seed wakes up
        # It must serve the next target alone (no storage): a seed that aborted on waking cannot.
        try:
            late = run_target(
                fleet, target_host, model, NAME, coordinator, tmp_path, "--no-fallback", env=env, timeout_s=TIMEOUT_S
            )
        finally:
            seed_alive = seed.poll() is None
    assert fleet.leftovers() == []
    assert json.loads(report_path.read_text())["sha256"] == expected
    assert seed_alive, f"the seed died on waking:\n{(tmp_path / f'seed-h{seed_host}.log').read_text()[-1500:]}"
    assert late["sha256"] == expected and late["source"] == info["worker_id"], late["attempts"]
