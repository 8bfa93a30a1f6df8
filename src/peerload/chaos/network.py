"""Network-fault trials on emulated hosts: packet loss and partitions between a target and a seed.

Host 0 runs the coordinator, hosts 1 and 2 a seed each, host 3 the target: a real `peerload load`
process whose report gives where the bytes came from and the sha256 of every tensor. Faults are
nftables drops in a host's namespace (`Fleet.loss`, `Fleet.partition`).
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

from peerload.adapters import hf
from peerload.chaos.trials import MODEL_NAME, Trial
from peerload.errors import PeerloadError
from peerload.fleet import Fleet, run_target, start_coordinator, start_seed
from peerload.tensors import sha256_of

COORDINATOR, TARGET = 0, 3
SEED_HOSTS = (1, 2)
NIC_GBIT = 0.2  # slow enough that a fault lands inside a transfer of the campaign's checkpoint
PART_TIMEOUT_S = 3.0
LOAD_TIMEOUT_S = 120.0
PARTITION_S = 10.0
HEAL_WAIT_S = 2.0  # after a partition heals: the seed's heartbeat (0.5 s) makes it READY again
ENV = {
    "PEERLOAD_CHUNK_BYTES": str(1 << 20),
    "PEERLOAD_PART_TIMEOUT_S": str(PART_TIMEOUT_S),
    "PEERLOAD_RPC_TIMEOUT_S": "3",
    "PEERLOAD_RPC_RETRIES": "1",
    "PEERLOAD_HEARTBEAT_INTERVAL_S": "0.5",
    "PEERLOAD_HEARTBEAT_TIMEOUT_S": "2",
}


class FleetCluster:
    """A coordinator and two NIXL seeds on emulated hosts, and a host to run targets on.

    Raises:
        FleetUnavailable: emulated hosts or network faults cannot be made here (says why).
    """

    def __init__(self, workdir: Path, checkpoint: Path) -> None:
        self.workdir = workdir / "fleet"
        self.workdir.mkdir(exist_ok=True)
        self.checkpoint = checkpoint
        self.expected = {n: sha256_of(t) for n, t in hf.read_checkpoint(checkpoint).items()}
        self.total = checkpoint.stat().st_size
        self.fleet = Fleet(TARGET + 1, nic_gbit=NIC_GBIT, max_seconds=3600)
        try:
            self.fleet.partition(TARGET, COORDINATOR)  # fails here, not mid-campaign, without nft
            self.fleet.heal()
            coordinator_args = ("--heartbeat-timeout", ENV["PEERLOAD_HEARTBEAT_TIMEOUT_S"])
            self.coordinator = start_coordinator(self.fleet, COORDINATOR, self.workdir, *coordinator_args)
            self.seeds = {
                h: start_seed(self.fleet, h, checkpoint, MODEL_NAME, self.coordinator, self.workdir, env=ENV)[1]
                for h in SEED_HOSTS
            }
        except BaseException:
            self.fleet.close()
            raise

    def load(self, trial: Trial) -> None:
        """Run one target to the end; record where its bytes came from and whether they are exact."""
        started = time.monotonic()
        try:
            report = run_target(
                self.fleet, TARGET, self.checkpoint, MODEL_NAME, self.coordinator, self.workdir, env=ENV,
                timeout_s=LOAD_TIMEOUT_S,
            )  # fmt: skip
        except PeerloadError as exc:  # the target process exited with an error: no model returned
            trial.outcome, trial.detail = "failed", f"{type(exc).__name__}: {exc}"
            return
        trial.outcome = "storage" if report["source"] == "storage" else "peer"
        dropped = [f"{s['worker_id']}: {s['error']}" for s in report["sources"] if s["error"]]
        trial.detail = "; ".join([*report["attempts"], *dropped])
        trial.corrupted = report["sha256"] != self.expected
        if trial.recover_s is None:
            trial.recover_s = time.monotonic() - started

    def close(self) -> None:
        self.fleet.close()


def packet_loss(cluster: FleetCluster, rng: random.Random) -> Trial:
    """5% loss each way between the target and one seed for a whole load."""
    trial = Trial(injected=True)
    cluster.fleet.loss(TARGET, 5, peer=rng.choice(SEED_HOSTS))
    try:
        cluster.load(trial)
    finally:
        cluster.fleet.heal()
    return trial


def partition(cluster: FleetCluster, rng: random.Random) -> Trial:
    """Cut one seed's host off from every host for 10 s, at a random point of a load."""
    trial = Trial()
    share = rng.uniform(0.1, 0.8)
    host = rng.choice(SEED_HOSTS)
    done = threading.Event()
    cut_at: list[float] = []

    def cut() -> None:
        start = cluster.fleet.nic_bytes(TARGET)[0]
        while cluster.fleet.nic_bytes(TARGET)[0] - start < share * cluster.total:
            if done.wait(0.005):
                return  # the load ended before the chosen point
        cluster.fleet.partition(host)
        cut_at.append(time.monotonic())
        trial.injected = True

    injector = threading.Thread(target=cut, name="chaos-partition", daemon=True)
    injector.start()
    try:
        cluster.load(trial)
        ended = time.monotonic()
    finally:
        done.set()
        injector.join()
        if cut_at:  # keep the partition for its full length, then give the seed time to beat again
            time.sleep(max(0.0, cut_at[0] + PARTITION_S - time.monotonic()))
        cluster.fleet.heal()
    # Recovery: seconds from the partition to a verified model (or the whole load if none was cut).
    trial.recover_s = ended - cut_at[0] if cut_at and trial.outcome != "failed" else trial.recover_s
    time.sleep(HEAL_WAIT_S)
    return trial
