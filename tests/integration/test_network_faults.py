"""Network faults between emulated hosts: packet loss and partitions made with nftables drops in a
host's namespace (this kernel has no `sch_netem`). Real coordinator, seeds and targets on
different hosts; NIXL over UCX tcp and Mooncake tcp cross the emulated NICs; every load is
compared bit-exact with the checkpoint, and every test is bounded by the fleet's watchdog."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from peerload._process import peerload_cmd
from peerload.errors import FleetUnavailable
from peerload.fleet import Fleet, run_target, start_coordinator, start_seed
from peerload.tensors import sha256_of

NAME = "test/netfaults"
COORDINATOR, SEED_A, SEED_B, TARGET = 0, 1, 2, 3
# Small parts and a short part timeout: a partitioned seed is dropped within seconds.
ENV = {
    "PEERLOAD_CHUNK_BYTES": str(1 << 20),
    "PEERLOAD_PART_TIMEOUT_S": "3",
    "PEERLOAD_RPC_TIMEOUT_S": "3",
    "PEERLOAD_RPC_RETRIES": "1",
    "PEERLOAD_HEARTBEAT_INTERVAL_S": "0.5",
    "PEERLOAD_HEARTBEAT_TIMEOUT_S": "2",
}
LOAD_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], int]:
    gen = torch.Generator().manual_seed(13)
    tensors = {f"w{i}": torch.randn(1 << 20, generator=gen) for i in range(12)}  # 48 MiB
    path = tmp_path_factory.mktemp("netfaults") / "model.safetensors"
    save_file(tensors, str(path))
    return path, {n: sha256_of(t) for n, t in tensors.items()}, sum(t.nbytes for t in tensors.values())


def faulty_fleet(gbit: float) -> Fleet:
    """Four hosts (coordinator, two seeds, a target) whose faults can be injected, or a skip."""
    try:
        fleet = Fleet(4, nic_gbit=gbit, max_seconds=300)
    except FleetUnavailable as exc:
        pytest.skip(f"emulated hosts unavailable here: {exc}")
    try:
        fleet.partition(TARGET, COORDINATOR)  # probe: nft present and the kernel has nftables
        fleet.heal(TARGET)
    except FleetUnavailable as exc:
        fleet.close()
        pytest.skip(f"network faults unavailable here: {exc}")
    return fleet


def two_seeds(fleet: Fleet, model: Path, workdir: Path, transport: str) -> tuple[str, dict[int, str]]:
    coordinator = start_coordinator(fleet, COORDINATOR, workdir, "--heartbeat-timeout", "2")
    env = {**ENV, "PEERLOAD_TRANSPORT": transport}
    seeds = {h: start_seed(fleet, h, model, NAME, coordinator, workdir, env=env)[1]["worker_id"] for h in (1, 2)}
    return coordinator, seeds


def wait_until_ready(fleet: Fleet, coordinator: str, workdir: Path, workers: set[str]) -> None:
    """Until the coordinator lists every one of `workers` READY (asked from the target's host)."""
    listing = workdir / "sources.json"
    deadline = time.monotonic() + LOAD_TIMEOUT_S  # a bound on the wait only
    while True:
        proc = fleet.popen(TARGET, peerload_cmd("sources", "--coordinator", coordinator, "--json"), log_path=listing)
        ready: set[str] = set()
        if proc.wait(timeout=60) == 0:
            with contextlib.suppress(ValueError):
                ready = {r["worker_id"] for r in json.loads(listing.read_text()) if r["status"] == "READY"}
        if workers <= ready:
            return
        assert time.monotonic() < deadline, f"the seeds never heartbeat READY again: {ready} of {workers}"
        time.sleep(0.2)


class Background:
    """`run_target` in a thread, so the test can inject a fault while the target reads."""

    def __init__(self, fleet: Fleet, model: Path, coordinator: str, workdir: Path, transport: str) -> None:
        self.report: dict[str, Any] | None = None
        self.error: BaseException | None = None
        env = {**ENV, "PEERLOAD_TRANSPORT": transport}

        def run() -> None:
            try:
                self.report = run_target(
                    fleet, TARGET, model, NAME, coordinator, workdir, env=env, timeout_s=LOAD_TIMEOUT_S
                )
            except BaseException as exc:  # re-raised in the test's thread by result()
                self.error = exc

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def wait_for_received(self, fleet: Fleet, nbytes: int, timeout_s: float = 60) -> bool:
        """True once the target's NIC has received `nbytes` more (False if the load ended first)."""
        start = fleet.nic_bytes(TARGET)[0]
        deadline = time.monotonic() + timeout_s
        while fleet.nic_bytes(TARGET)[0] - start < nbytes:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def result(self) -> dict[str, Any]:
        self._thread.join(LOAD_TIMEOUT_S + 10)
        if self.error is not None:
            raise self.error
        assert self.report is not None
        return self.report


@pytest.mark.timeout(300)
@pytest.mark.parametrize("transport", ["nixl", "transfer_engine"])
def test_five_percent_loss_to_one_seed_still_loads_bit_exact(transport, checkpoint, tmp_path):
    model, expected, _ = checkpoint
    with faulty_fleet(1) as fleet:
        coordinator, seeds = two_seeds(fleet, model, tmp_path, transport)
        fleet.loss(TARGET, 5, peer=SEED_A)
        env = {**ENV, "PEERLOAD_TRANSPORT": transport}
        # run_target raises if the load is not done within LOAD_TIMEOUT_S (a bound on the wait only).
        report = run_target(fleet, TARGET, model, NAME, coordinator, tmp_path, env=env, timeout_s=LOAD_TIMEOUT_S)
    assert fleet.leftovers() == []
    assert report["sha256"] == expected, "a lossy link must never corrupt the model"
    assert report["source"] in (*seeds.values(), "storage")
    # The lossy seed was read (TCP retransmits under the loss), or dropped with a reason.
    lossy = next((s for s in report["sources"] if s["worker_id"] == seeds[SEED_A]), None)
    assert lossy is not None and (lossy["bytes"] > 0 or lossy["error"]), report["sources"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("transport", ["nixl", "transfer_engine"])
def test_a_seed_partitioned_mid_load_is_dropped_and_the_other_finishes(transport, checkpoint, tmp_path):
    model, expected, total = checkpoint
    with faulty_fleet(0.2) as fleet:
        coordinator, seeds = two_seeds(fleet, model, tmp_path, transport)
        target = Background(fleet, model, coordinator, tmp_path, transport)
        assert target.wait_for_received(fleet, total // 4), "the load ended before a quarter had arrived"
        fleet.partition(SEED_A)
        report = target.result()
    assert fleet.leftovers() == []
    assert report["sha256"] == expected, "a partition must never leave the model corrupted or half-loaded"
    by_worker = {s["worker_id"]: s for s in report["sources"]}
    assert by_worker[seeds[SEED_A]]["error"], f"the partitioned seed was not dropped: {by_worker}"
    # The rest came from the other seed (or storage for what no peer delivered).
    assert by_worker[seeds[SEED_B]]["bytes"] > 0 or report["storage_bytes"] > 0, report
    assert report["restarted_bytes"] <= total
    # Dropped by the part timeout (3 s), not left to the whole load's deadline.
    assert "within 3 s" in by_worker[seeds[SEED_A]]["error"] or "TransportError" in by_worker[seeds[SEED_A]]["error"], (
        by_worker[seeds[SEED_A]]
    )


@pytest.mark.timeout(300)
def test_a_partitioned_coordinator_does_not_stop_loads(checkpoint, tmp_path):
    model, expected, total = checkpoint
    with faulty_fleet(0.2) as fleet:
        coordinator, seeds = two_seeds(fleet, model, tmp_path, "nixl")
        # A target that already has the seeds' metadata reads on while the coordinator is cut off.
        target = Background(fleet, model, coordinator, tmp_path, "nixl")
        assert target.wait_for_received(fleet, total // 4), "the load ended before a quarter had arrived"
        fleet.partition(COORDINATOR)
        during = target.result()
        # A target that starts while the coordinator is cut off falls back to storage, bounded.
        cut_off = run_target(fleet, TARGET, model, NAME, coordinator, tmp_path, env=ENV, timeout_s=LOAD_TIMEOUT_S)
        # Healed: the seeds kept running and heartbeat again, so a peer-only load works.
        fleet.heal(COORDINATOR)
        wait_until_ready(fleet, coordinator, tmp_path, set(seeds.values()))
        after = run_target(fleet, TARGET, model, NAME, coordinator, tmp_path, "--no-fallback", env=ENV,
                           timeout_s=LOAD_TIMEOUT_S)  # fmt: skip
    assert fleet.leftovers() == []
    assert during["sha256"] == cut_off["sha256"] == after["sha256"] == expected
    assert during["source"] in seeds.values() and during["storage_bytes"] == 0, during
    # Bounded: it gave up on the coordinator after its one retry (PEERLOAD_RPC_RETRIES=1), not waiting.
    assert cut_off["source"] == "storage", cut_off["attempts"]
    assert any("after 2 attempts" in a or "DEADLINE_EXCEEDED" in a for a in cut_off["attempts"]), cut_off["attempts"]
    assert after["source"] in seeds.values(), after
