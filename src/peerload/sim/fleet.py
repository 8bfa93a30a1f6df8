"""Discrete-time model of N targets loading one model at once from seeds and from each other.

Each target runs the loader's own `PartScheduler` (the code that picks parts and sources in a real
load), so the model and the loader cannot drift apart. What is modelled, and how:
- hosts have one NIC each, `nic_bps` bytes/s up and down; a part read runs at
  min(source up / its reads, target down / its reads), re-shared every step (`dt`);
- every part read costs `setup_s` before bytes flow, every load `start_s` before its first read;
- a source serves at most `seed_max_readers` targets (read leases); a target reads at most
  `max_sources` sources and `max_reading` parts per source at once;
- loading sources' holdings reach their readers every `poll_s`, new sources every `discover_s`;
- seeds may fail at given times: their reads in flight are lost and read again elsewhere;
- `fabric_bps` (0: none) caps all reads together, shared equally: emulated hosts on one small
  machine share its cores, which bound the sum of their transfers (calibration).
Not modelled: hashing time, coordinator latency, fair-share leftovers between flows.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from peerload.loader.schedule import PartScheduler
from peerload.loader.striping import DISCOVER_S, MAX_READING_PER_SOURCE, POLL_S
from peerload.settings import Settings

MODES = ("single", "striping", "swarm")  # one seed no fan-out | READY sources only | pipelined swarm
# A simulated target and seed behave as real ones with default settings unless told otherwise.
_DEFAULTS = Settings()


@dataclass(frozen=True)
class SimConfig:
    """One simulated scale-out.

    Args:
        targets: targets that start at time 0.
        mode: "single" (one source per target, READY only), "striping" (up to max_sources READY
            sources: seeds and finished targets) or "swarm" (READY and loading sources).
        seed_failures: (seed index, time s) pairs: that seed dies then.
    """

    targets: int
    mode: str = "swarm"
    seeds: int = 1
    model_bytes: int = 1 << 30
    part_bytes: int = _DEFAULTS.chunk_bytes
    nic_bps: float = 2e9 / 8
    fabric_bps: float = 0.0
    max_sources: int = _DEFAULTS.max_parallel_sources
    max_reading: int = MAX_READING_PER_SOURCE
    seed_max_readers: int = _DEFAULTS.seed_max_readers
    setup_s: float = 0.0
    start_s: float = 0.0
    poll_s: float = POLL_S
    discover_s: float = DISCOVER_S
    dt: float = 0.01
    seed_failures: Sequence[tuple[int, float]] = ()
    rng_seed: int = 0
    max_time_s: float = 100_000.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.targets < 1 or self.seeds < 1 or self.nic_bps <= 0 or self.dt <= 0:
            raise ValueError("targets and seeds must be >= 1, nic_bps and dt > 0")


@dataclass
class SimResult:
    """When each target finished (s) and how many bytes the original seeds served."""

    config: SimConfig
    finished: list[float]
    origin_bytes: int
    restarted_bytes: int

    @property
    def last_s(self) -> float:
        return max(self.finished)

    @property
    def origin_copies(self) -> float:
        return self.origin_bytes / self.config.model_bytes


@dataclass(eq=False)
class _Node:
    """A host that may serve: a seed (complete from the start) or a target."""

    name: str
    parts: int
    holds: set[int] | None = None  # None: every part
    alive: bool = True
    published_at: float = 0.0
    readers: int = 0
    done_at: float | None = None
    scheduler: PartScheduler | None = None  # targets only
    sources: dict[str, _Node] = field(default_factory=dict)
    next_discovery: float = 0.0


@dataclass(eq=False)
class _Read:
    source: _Node
    target: _Node
    part: int
    left: float
    setup_left: float


class _Fleet:
    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.rng_seed)
        count = -(-cfg.model_bytes // cfg.part_bytes)
        self.sizes = [cfg.part_bytes] * (count - 1) + [cfg.model_bytes - cfg.part_bytes * (count - 1)]
        self.seeds = [_Node(f"seed{i}", count) for i in range(cfg.seeds)]
        self.targets = [
            _Node(f"t{i}", count, holds=set(), published_at=cfg.start_s, next_discovery=cfg.start_s)
            for i in range(cfg.targets)
        ]
        for t in self.targets:
            t.scheduler = PartScheduler(self.sizes, max_reading=cfg.max_reading, shuffle=self.rng.randrange(1 << 32))
        self.reads: list[_Read] = []
        self.origin_bytes = 0
        self.dirty: set[_Node] = set()

    def run(self) -> SimResult:
        cfg, now = self.cfg, 0.0
        failures = sorted(cfg.seed_failures, key=lambda f: f[1])
        next_poll = 0.0
        loading = list(self.targets)
        while loading and now < cfg.max_time_s:
            while failures and failures[0][1] <= now:
                self._fail(self.seeds[failures.pop(0)[0]])
            waiting = [t for t in loading if t.next_discovery <= now and self._wants_sources(t)]
            if waiting:
                self._discover(waiting, now)
            if cfg.mode == "swarm" and now >= next_poll:
                next_poll = now + cfg.poll_s
                self._poll()
            for t in list(self.dirty):
                self._start_reads(t)
            self.dirty.clear()
            self._advance(now)
            now += cfg.dt
            loading = [t for t in loading if t.done_at is None]
        unfinished = [t.name for t in self.targets if t.done_at is None]
        if unfinished:
            raise RuntimeError(f"{len(unfinished)} target(s) unfinished after {cfg.max_time_s} s (stranded?)")
        restarted = sum(t.scheduler.restarted_bytes for t in self.targets if t.scheduler)
        return SimResult(cfg, [t.done_at or 0.0 for t in self.targets], self.origin_bytes, restarted)

    # -- sources -------------------------------------------------------------------------------

    def _wants_sources(self, t: _Node) -> bool:
        alive = sum(1 for s in t.sources.values() if s.alive)
        limit = 1 if self.cfg.mode == "single" else self.cfg.max_sources
        return alive < limit

    def _discover(self, waiting: list[_Node], now: float) -> None:
        """READY sources (least loaded first), then, in a swarm, published loading ones."""
        cap = self.cfg.seed_max_readers
        ready = [n for n in (*self.seeds, *self.targets) if n.alive and n.holds is None]
        partial = [n for n in self.targets if n.holds is not None and self.cfg.mode == "swarm"]
        partial = [n for n in partial if n.published_at <= now]
        for t in waiting:
            t.next_discovery = now + self.cfg.discover_s
            limit = 1 if self.cfg.mode == "single" else self.cfg.max_sources
            room = limit - sum(1 for s in t.sources.values() if s.alive)
            for group in (ready, partial):
                free = [n for n in group if n is not t and n.name not in t.sources and (not cap or n.readers < cap)]
                self.rng.shuffle(free)
                free.sort(key=lambda n: n.readers)
                for n in free[:room]:
                    self._join(t, n)
                    room -= 1
                if room <= 0:
                    break

    def _join(self, t: _Node, source: _Node) -> None:
        assert t.scheduler is not None
        t.sources[source.name] = source
        source.readers += 1
        held = {source.name: set(source.holds)} if source.holds is not None else None
        t.scheduler.add_sources([source.name], held)
        self.dirty.add(t)

    def _poll(self) -> None:
        for t in self.targets:
            if t.done_at is not None or t.scheduler is None:
                continue
            for name, s in t.sources.items():
                if s.alive and t.scheduler.sources[name].holds is not None:
                    pending = s.scheduler.in_flight() if s.scheduler and s.holds is not None else ()
                    t.scheduler.set_holdings(name, None if s.holds is None else set(s.holds), pending)
                    self.dirty.add(t)

    def _fail(self, seed: _Node) -> None:
        seed.alive = False
        for r in [r for r in self.reads if r.source is seed]:
            self.reads.remove(r)
        for t in self.targets:
            if seed.name in t.sources and t.scheduler is not None and t.done_at is None:
                t.scheduler.drop(seed.name)
                t.next_discovery = 0.0
                self.dirty.add(t)

    # -- reads ---------------------------------------------------------------------------------

    def _start_reads(self, t: _Node) -> None:
        assert t.scheduler is not None
        for name, source in t.sources.items():
            if not source.alive:
                continue
            while (part := t.scheduler.next_for(name)) is not None:
                self.reads.append(_Read(source, t, part, float(self.sizes[part]), self.cfg.setup_s))

    def _advance(self, now: float) -> None:
        dt, nic = self.cfg.dt, self.cfg.nic_bps
        up: dict[_Node, int] = {}
        down: dict[_Node, int] = {}
        for r in self.reads:
            if r.setup_left <= 0:
                up[r.source] = up.get(r.source, 0) + 1
                down[r.target] = down.get(r.target, 0) + 1
        flowing = sum(up.values())
        fabric = self.cfg.fabric_bps / flowing if self.cfg.fabric_bps and flowing else float("inf")
        finished = []
        for r in self.reads:
            if r.setup_left > 0:
                r.setup_left -= dt
                continue
            r.left -= min(nic / up[r.source], nic / down[r.target], fabric) * dt
            if r.left <= 0:
                finished.append(r)
        for r in finished:
            self.reads.remove(r)
            self._delivered(r, now + dt)

    def _delivered(self, r: _Read, now: float) -> None:
        t, sched = r.target, r.target.scheduler
        assert sched is not None and t.holds is not None
        sched.read_done(r.source.name, r.part)
        sched.done(r.source.name, r.part)
        t.holds.add(r.part)
        if r.source in self.seeds:
            self.origin_bytes += self.sizes[r.part]
        self.dirty.add(t)
        if sched.finished:
            t.done_at, t.holds = now, None
            for s in t.sources.values():
                s.readers -= 1


def simulate(config: SimConfig) -> SimResult:
    """Run one simulated scale-out (deterministic for a given `rng_seed`).

    Raises:
        RuntimeError: targets were still loading after `max_time_s` (e.g. every seed failed).
    """
    return _Fleet(config).run()
