"""Trials on emulated hosts: packet loss, partitions and peers that vanish mid-read.

Host 0 runs the coordinator, hosts 1 and 2 a NIXL seed each, host 3 the target: a real `peerload
load` process whose report gives where the bytes came from and the sha256 of every tensor, and
whose exit code says whether it died (a signal: abort, segfault) or failed cleanly. Network faults
are nftables drops in a host's namespace (`Fleet.loss`, `Fleet.partition`); vanishing peers are
a seed SIGSTOPped for good, or a target SIGKILLed while the seeds serve it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from peerload._process import log_tail, peerload_cmd, stop_process
from peerload.adapters import hf
from peerload.chaos.trials import MODEL_NAME, Trial
from peerload.fleet import Fleet, start_coordinator, start_seed
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
            self.seeds: dict[int, subprocess.Popen[bytes]] = {}
            self._accounted: set[int] = set()  # seed pids a trial stopped or killed, or already counted
            self.ensure_seeds()
        except BaseException:
            self.fleet.close()
            raise

    def ensure_seeds(self) -> None:
        """Start a seed on every seed host whose seed is gone (killed by a trial, or crashed)."""
        for h in SEED_HOSTS:
            if h not in self.seeds or self.seeds[h].poll() is not None:
                self.seeds[h] = start_seed(
                    self.fleet, h, self.checkpoint, MODEL_NAME, self.coordinator, self.workdir, env=ENV
                )[0]

    def start_target(self) -> tuple[subprocess.Popen[bytes], Path]:
        """A `peerload load --report` process on the target host; returns it and its report path."""
        report = self.workdir / f"target-{time.monotonic_ns()}.json"
        cmd = peerload_cmd(
            "load", str(self.checkpoint), "--model-name", MODEL_NAME, "--coordinator", self.coordinator,
            "--report", str(report), "--no-progress",
        )  # fmt: skip
        return self.fleet.popen(TARGET, cmd, log_path=report.with_suffix(".log"), env=ENV), report

    def load(self, trial: Trial) -> None:
        """Run one target to the end; record where its bytes came from, whether they are exact, and
        whether the target or a seed died (a seed this trial stopped or killed is not counted)."""
        started = time.monotonic()
        proc, report_path = self.start_target()
        try:
            code = proc.wait(timeout=LOAD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            stop_process(proc, timeout_s=5)
            code = None
        self.count_crashes(trial)
        if code != 0 or not report_path.exists():
            tail = log_tail(report_path.with_suffix(".log"), 300)
            trial.outcome, trial.detail = "failed", f"target exit code {code}: {tail}"
            # An error exits 1 with a message; a signal (abort() in UCX, a segfault) is a death.
            if code is not None and code < 0:
                trial.reader_died = True
                trial.notes.append(f"target died with signal {-code}: {tail[-200:]}")
            return
        report = json.loads(report_path.read_text())
        trial.outcome = "storage" if report["source"] == "storage" else "peer"
        dropped = [f"{s['worker_id']}: {s['error']}" for s in report["sources"] if s["error"]]
        trial.detail = "; ".join([*report["attempts"], *dropped])
        trial.corrupted = report["sha256"] != self.expected
        if trial.recover_s is None:
            trial.recover_s = time.monotonic() - started

    def kill_seed(self, host: int) -> None:
        """Kill the seed on `host` (a trial's own doing: not counted as a crash)."""
        seed = self.seeds[host]
        self._accounted.add(seed.pid)
        seed.kill()
        seed.wait()

    def count_crashes(self, trial: Trial) -> None:
        """Count the seeds that ended by themselves since the last count."""
        for h, seed in self.seeds.items():
            if seed.poll() is not None and seed.pid not in self._accounted:
                self._accounted.add(seed.pid)
                trial.servers_died += 1
                log = self.workdir / f"seed-h{h}.log"
                trial.notes.append(f"seed on host {h} exited by itself with code {seed.returncode}: "
                                   f"{log_tail(log, 160)}")  # fmt: skip

    def close(self) -> None:
        self.fleet.close()


def _when_received(
    cluster: FleetCluster, share: float, done: threading.Event, act: Callable[[], None]
) -> threading.Thread:
    """A thread that calls `act` once `share` of the model has reached the target (not if `done` first)."""

    def wait() -> None:
        start = cluster.fleet.nic_bytes(TARGET)[0]
        while cluster.fleet.nic_bytes(TARGET)[0] - start < share * cluster.total:
            if done.wait(0.005):
                return  # the load ended before the chosen point
        act()

    thread = threading.Thread(target=wait, name="chaos-inject", daemon=True)
    thread.start()
    return thread


def packet_loss(cluster: FleetCluster, rng: random.Random) -> Trial:
    """5% loss each way between the target and one seed for a whole load."""
    cluster.ensure_seeds()
    trial = Trial(injected=True)
    cluster.fleet.loss(TARGET, 5, peer=rng.choice(SEED_HOSTS))
    try:
        cluster.load(trial)
    finally:
        cluster.fleet.heal()
    return trial


def partition(cluster: FleetCluster, rng: random.Random) -> Trial:
    """Cut one seed's host off from every host for 10 s, at a random point of a load."""
    cluster.ensure_seeds()
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
    cluster.count_crashes(trial)  # a seed that died once healed died of this partition
    return trial


def seed_vanishes(cluster: FleetCluster, rng: random.Random) -> Trial:
    """SIGSTOP one seed at a random point of a load and never resume it (a host that hangs for good);
    the target must finish from the other seed or storage. The seed is killed and replaced after."""
    cluster.ensure_seeds()
    trial = Trial()
    host = rng.choice(SEED_HOSTS)
    seed = cluster.seeds[host]
    done = threading.Event()
    stopped_at: list[float] = []

    def stop() -> None:
        os.kill(seed.pid, signal.SIGSTOP)  # its sockets stay open: it just stops answering
        stopped_at.append(time.monotonic())
        trial.injected = True

    injector = _when_received(cluster, rng.uniform(0.1, 0.8), done, stop)
    try:
        cluster.load(trial)
        ended = time.monotonic()
    finally:
        done.set()
        injector.join()
        cluster.kill_seed(host)  # never resumed: the fault is a host that hangs for good
    if stopped_at and trial.outcome != "failed":
        trial.recover_s = ended - stopped_at[0]
    return trial


def reader_vanishes(cluster: FleetCluster, rng: random.Random) -> Trial:
    """SIGKILL a target at a random point of its load, while the seeds serve it; then load again:
    the next target must come out right and no seed may have died with the reader it served."""
    cluster.ensure_seeds()
    trial = Trial()
    proc, _ = cluster.start_target()
    done = threading.Event()

    def kill() -> None:
        proc.kill()
        trial.injected = True

    injector = _when_received(cluster, rng.uniform(0.1, 0.8), done, kill)
    try:
        proc.wait(timeout=LOAD_TIMEOUT_S)
    finally:
        done.set()
        injector.join()
        stop_process(proc, timeout_s=5)
    cluster.load(trial)  # the next reader; counts seeds that died meanwhile
    return trial
