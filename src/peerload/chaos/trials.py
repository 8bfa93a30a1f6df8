"""One trial of each fault: inject it into a real cluster around a real load, say what came out.

A load runs in this process (a real target: NIXL or Mooncake, verify, roll back, fall back); the
coordinator, Redis and the seeds are child processes, so they can be killed, stopped and restarted.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peerload._address import free_port
from peerload.adapters import hf
from peerload.chaos.cluster import CoordinatorProcess, RedisProcess, SeedProcess, seconds_until_ready
from peerload.client import CoordinatorClient
from peerload.errors import DestinationAbandoned, PeerloadError
from peerload.identity import SourceIdentity
from peerload.loader import Progress, load_into
from peerload.manifest import RegionEntry
from peerload.seed_client import fetch_manifest
from peerload.settings import Settings
from peerload.tensors import sha256_of

MODEL_NAME = "peerload-chaos/model"
# Seeds beat often and the coordinator forgets silent ones soon, so one trial's dead seed does
# not linger as READY into many later trials; GC is long so fuzzing's sentinel record stays.
HEARTBEAT_INTERVAL_S = 0.5
HEARTBEAT_TIMEOUT_S = 2.0
GC_TIMEOUT_S = 3600.0
CHUNK_BYTES = 1 << 20  # many progress calls per load: many points at which to inject a fault
READY_TIMEOUT_S = 30.0


@dataclass
class Trial:
    """What one trial did and what came out of it."""

    injected: bool = False  # the fault actually happened while it mattered
    outcome: str = "failed"  # "peer" | "storage" | "failed" (a clean error, nothing returned)
    corrupted: bool = False  # a returned model whose bytes differ from the checkpoint
    half_loaded: bool = False  # a failed load that left bytes in the destination (not rolled back)
    reader_died: bool = False  # the target process ended by a signal (abort, segfault), not by us
    servers_died: int = 0  # seeds that ended by themselves during the trial (a crash, not our kill)
    recover_s: float | None = None
    detail: str = ""  # the load's attempts, or its error
    notes: list[str] = field(default_factory=list)

    def saw(self) -> list[str]:
        """What the loader ran into on the way, by kind (counted per fault in the report)."""
        kinds = {
            "TransferTimeout": "transfer timed out, waited for it to stop writing",
            "TransportError": "source failed mid-transfer, rolled back",
            "ChecksumMismatch": "checksum mismatch caught, rolled back",
            "no READY source": "no READY source listed",
            "coordinator 127.0.0.1": "coordinator unreachable at the start",
        }
        return [event for marker, event in kinds.items() if marker in self.detail]


class Cluster:
    """A coordinator (memory or Redis store), `seeds` seeds of one transport, and one checkpoint."""

    def __init__(
        self, workdir: Path, checkpoint: Path, *, transport: str = "nixl", store: str = "memory", seeds: int = 2
    ) -> None:
        self.workdir = workdir
        self.checkpoint = checkpoint
        self.transport = transport
        self.want_seeds = seeds
        self.redis: RedisProcess | None = None
        serve_args = [
            "--store",
            store,
            "--heartbeat-timeout",
            str(HEARTBEAT_TIMEOUT_S),
            "--gc-timeout",
            str(GC_TIMEOUT_S),
        ]
        if store == "redis":
            self.redis = RedisProcess(free_port(), workdir)
            self.redis.start()
            serve_args += ["--redis-url", self.redis.url]
        self.coordinator = CoordinatorProcess(free_port(), workdir, *serve_args)
        self.seeds: list[SeedProcess] = []
        self.identity: SourceIdentity | None = None
        self.expected = {n: sha256_of(t) for n, t in hf.read_checkpoint(checkpoint).items()}
        try:
            self.coordinator.start()
            self.ensure_seeds()
        except BaseException:
            self.close()
            raise

    def ensure_seeds(self) -> list[SeedProcess]:
        """Replace dead seeds until `seeds` live ones are READY; returns the live ones."""
        self.seeds = [s for s in self.seeds if s.alive]
        env = {
            "PEERLOAD_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_INTERVAL_S),
            "PEERLOAD_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S),
        }
        while len(self.seeds) < self.want_seeds:
            seed = SeedProcess(
                self.checkpoint,
                MODEL_NAME,
                self.coordinator.address,
                self.workdir,
                "--transport",
                self.transport,
                env=env,
            )
            self.seeds.append(seed.start())
        if self.identity is None:
            with CoordinatorClient(self.coordinator.address, timeout_s=10) as client:
                record = client.get_metadata(self.seeds[0].source_id, self.seeds[0].worker_id)
            assert record is not None and record.identity is not None
            self.identity = record.identity
        return self.seeds

    def seconds_until_seeds_ready(self) -> float | None:
        """Seconds until every live seed is listed READY again."""
        assert self.identity is not None
        workers = {s.worker_id for s in self.seeds if s.alive}
        return seconds_until_ready(self.coordinator.address, self.identity, workers, READY_TIMEOUT_S)

    def load(self, trial: Trial, progress: Callable[[Progress], None] | None = None, **settings: object) -> None:
        """Load the model once into fresh zeroed tensors; record outcome, corruption, rollback."""
        assert self.identity is not None
        values: dict[str, Any] = {
            "coordinator": self.coordinator.address,
            "transport": self.transport,
            "chunk_bytes": CHUNK_BYTES,
            "rpc_timeout_s": 5.0,
            "rpc_retries": 1,
            "transfer_timeout_s": 30.0,
        }
        values.update(settings)
        destination, from_storage = hf.target_tensors(self.checkpoint, quantize=None, tp_size=1, tp_rank=0)
        assert isinstance(destination, dict)
        for t in destination.values():
            t.zero_()
        started = time.monotonic()
        try:
            result = load_into(
                destination,
                self.identity,
                settings=Settings.load(env={}, **values),
                fallback=from_storage,
                progress=progress,
                publish=False,
            )
        except DestinationAbandoned as exc:
            trial.outcome, trial.detail = "failed", f"destination given up: {exc}"
            return
        except PeerloadError as exc:
            trial.outcome, trial.detail = "failed", f"{type(exc).__name__}: {exc}"
            trial.half_loaded = any(bool(t.any()) for t in destination.values())
            self._note_crashes(trial)
            return
        self._note_crashes(trial)
        trial.outcome = "storage" if result.source == "storage" else "peer"
        trial.detail = "; ".join(result.attempts)
        trial.corrupted = {n: sha256_of(t) for n, t in destination.items()} != self.expected
        if trial.recover_s is None:
            trial.recover_s = time.monotonic() - started

    def _note_crashes(self, trial: Trial) -> None:
        """A seed that ended without our signal crashed: say so (the campaign counts it)."""
        for seed in self.seeds:
            code = seed.died_by_itself
            if code is not None:
                trial.servers_died += 1
                trial.notes.append(f"seed {seed.worker_id} exited by itself with code {code}")

    def close(self) -> None:
        for seed in self.seeds:
            seed.close()
        self.coordinator.close()
        if self.redis is not None:
            self.redis.close()


def _at_random_point(rng: random.Random, act: Callable[[Progress], None]) -> Callable[[Progress], None]:
    """A progress hook that calls `act` once, when a random share of the transfer has arrived."""
    share = rng.random()
    fired = threading.Event()

    def hook(event: Progress) -> None:
        if not fired.is_set() and event.done >= share * event.total and event.done < event.total:
            fired.set()
            act(event)

    return hook


def _seed_of(cluster: Cluster, worker_id: str) -> SeedProcess | None:
    return next((s for s in cluster.seeds if s.worker_id == worker_id), None)


def seed_sigkill(cluster: Cluster, rng: random.Random) -> Trial:
    """SIGKILL the seed being read at a random point of the transfer."""
    cluster.ensure_seeds()
    trial = Trial()

    def kill(event: Progress) -> None:
        seed = _seed_of(cluster, event.source)
        if seed is not None:
            seed.signal(signal.SIGKILL)
            trial.injected = True

    cluster.load(trial, _at_random_point(rng, kill))
    if trial.outcome != "peer":  # the other seed should have served it: say why it did not
        trial.notes.append(f"{trial.outcome}: {trial.detail[:300]}")
    return trial


def seed_sigstop(cluster: Cluster, rng: random.Random) -> Trial:
    """SIGSTOP the seed being read at a random point; SIGCONT it 0.5-4 s later (timeout is 2 s)."""
    cluster.ensure_seeds()
    trial = Trial()
    timers: list[threading.Timer] = []

    def stop(event: Progress) -> None:
        seed = _seed_of(cluster, event.source)
        if seed is not None:
            seed.signal(signal.SIGSTOP)
            trial.injected = True
            timer = threading.Timer(rng.uniform(0.5, 4.0), seed.signal, (signal.SIGCONT,))
            timer.start()
            timers.append(timer)

    try:
        cluster.load(trial, _at_random_point(rng, stop), transfer_timeout_s=2.0, settle_timeout_s=10.0)
    finally:
        for timer in timers:
            timer.join()
    return trial


def _restart_during_load(
    cluster: Cluster, rng: random.Random, restart: Callable[[], None], before_load_share: float
) -> Trial:
    """Run `restart` at a random point of a load (or just before it); time until seeds are READY."""
    cluster.ensure_seeds()
    trial = Trial()
    recovered: list[float | None] = []

    def run() -> None:
        restart()
        recovered.append(cluster.seconds_until_seeds_ready())

    worker = threading.Thread(target=run, name="chaos-restart")

    def inject(event: Progress | None = None) -> None:
        worker.start()
        trial.injected = True

    if rng.random() < before_load_share:  # the target starts while the service is gone or restarting
        inject()
        cluster.load(trial)
    else:
        cluster.load(trial, _at_random_point(rng, inject))
        if not trial.injected:  # the load finished before the chosen point: restart anyway
            inject()
    worker.join()
    trial.recover_s = recovered[0] if recovered else None
    if trial.recover_s is None:
        trial.notes.append("seeds not READY again within the bound")
    return trial


def coordinator_restart(cluster: Cluster, rng: random.Random) -> Trial:
    """SIGKILL the coordinator and start a new one on its port, before or during a load."""
    return _restart_during_load(cluster, rng, cluster.coordinator.restart, before_load_share=0.25)


def redis_restart(cluster: Cluster, rng: random.Random) -> Trial:
    """Replace the coordinator's redis-server with an empty one on its port, during a load."""
    assert cluster.redis is not None
    return _restart_during_load(cluster, rng, cluster.redis.restart, before_load_share=0.0)


def seed_regions(coordinator: str, seed: SeedProcess) -> list[RegionEntry]:
    """The memory regions `seed` serves, from its manifest (P2P-mode records carry no descriptors)."""
    with CoordinatorClient(coordinator, timeout_s=10) as client:
        record = client.get_metadata(seed.source_id, seed.worker_id)
    if record is None:
        raise PeerloadError(f"seed {seed.worker_id} is not registered at {coordinator}")
    return [r for r in fetch_manifest(record.manifest_endpoint, seed.worker_id, 10).regions if r.size]


def flip_byte(pid: int, addr: int) -> None:
    """XOR one byte of process `pid`'s memory at `addr` with 0xFF (a bit-flip in a seed's RAM)."""
    with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
        mem.seek(addr)
        byte = mem.read(1)
        mem.seek(addr)
        mem.write(bytes([byte[0] ^ 0xFF]))


def flipped_byte(cluster: Cluster, rng: random.Random) -> Trial:
    """Flip one random byte of every seed's published tensors, load, flip it back."""
    seeds = cluster.ensure_seeds()
    trial = Trial()
    flipped: list[tuple[int, int]] = []
    for seed in seeds:
        region = rng.choice(seed_regions(cluster.coordinator.address, seed))
        flipped.append((seed.pid, region.addr + rng.randrange(region.size)))
    for pid, addr in flipped:
        flip_byte(pid, addr)
    trial.injected = True
    try:
        cluster.load(trial)
    finally:
        for pid, addr in flipped:
            flip_byte(pid, addr)
    if "ChecksumMismatch" not in trial.detail:
        trial.notes.append("no checksum mismatch reported")
    return trial
