"""`peerload bench fanout --targets 1,2,4,8`: N targets that start at once, from one seed.

Hosts: 0 runs the coordinator and one seed; 1..N run the targets. Each target process prepares
its model, then all start loading at the same moment. Per N: the time until the last target is
loaded (from the common start), and the bytes the seed served (summed from the targets' reports,
and as counted by the seed host's NIC).

The run first measures the machine's own ceiling: one target, then max(N) targets at once, with
no NIC caps, so what bounds them is the CPU every emulated host shares. The NIC cap of the
measured sweep is then `ceiling_share` x ceiling / max(N) (unless given), so that even max(N)
targets each at its full cap ask for at most that share of what the machine can carry: the NICs,
not the CPUs, are what binds, and the goals are judged there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peerload.bench import fanout_target
from peerload.errors import ConfigError, PeerloadError
from peerload.fleet import Fleet, start_coordinator, start_seed
from peerload.settings import Settings
from peerload.synthetic import inventory, write_checkpoint

SEED_HOST = 0
# Goals from the fan-out issue, at N=8.
FANOUT_GOAL = 1.5
ORIGIN_COPIES_GOAL = 2.0
# One target alone moving at this share of its NIC cap or more is NIC-bound (the rest is setup).
NIC_BOUND_SHARE = 0.7


@dataclass
class FanoutConfig:
    """What one fan-out measurement runs."""

    targets: Sequence[int] = (1, 2, 4, 8)
    size_gib: float = 0.25
    tensors: int = 200
    nic_gbit: float | None = None  # None: ceiling_share x the measured ceiling / max(targets)
    ceiling_share: float = 0.5
    part_mib: int = 8
    # Sources one target reads at once (PEERLOAD_MAX_PARALLEL_SOURCES); None: the targets' own
    # setting (the environment's, else the loader's default).
    max_sources: int | None = None
    transport: str = "nixl"
    out: Path = Path("bench/results")
    timeout_s: float = 300.0

    @property
    def total_bytes(self) -> int:
        return int(self.size_gib * (1 << 30))


@dataclass
class _Sweep:
    """What every sweep shares: the model, its size, the targets' environment, where logs go."""

    model: Path
    nbytes: int
    env: dict[str, str]
    workdir: Path
    timeout_s: float
    progress: Callable[[str], None]

    def run(self, nic_gbit: float | None, counts: Sequence[int], label: str) -> dict[str, Any]:
        """One fleet (every NIC at `nic_gbit`, None: uncapped), one seed; each N of `counts` once."""
        cases: dict[str, Any] = {}
        workdir = self.workdir / label
        workdir.mkdir(parents=True)
        with Fleet(max(counts) + 1, nic_gbit=nic_gbit, max_seconds=3600) as fleet:
            coordinator = start_coordinator(fleet, SEED_HOST, workdir)
            _, seed = start_seed(
                fleet, SEED_HOST, self.model, "peerload-bench/fanout", coordinator, workdir, env=self.env
            )
            for n in counts:
                sent_before = fleet.nic_bytes(SEED_HOST)[1]
                load1 = os.getloadavg()[0]
                reports, go_at = _swarm(fleet, self.model, coordinator, workdir / f"n{n}", n, self.env, self.timeout_s)
                seed_sent = fleet.nic_bytes(SEED_HOST)[1] - sent_before
                case = _case(reports, go_at, seed["worker_id"], self.nbytes, seed_sent)
                case["load1"] = load1
                cases[str(n)] = case
                self.progress(f"{label}: {n} target(s): last loaded after {case['last_s']:.2f} s, "
                              f"{case['aggregate_gbps']:.3f} GB/s in all, "
                              f"the seed served {case['origin_copies']:.2f} copies")  # fmt: skip
        return cases


def nic_cap_gbit(ceiling_gbps: float, targets: int, share: float) -> float:
    """The NIC cap (Gbit/s) at which `targets` NICs at full rate need `share` of the ceiling (GB/s)."""
    return share * ceiling_gbps * 8 / targets


def run_fanout(config: FanoutConfig, workdir: Path, progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """The ceiling (uncapped), then every N of `config.targets` under the NIC cap; the fanout.json document."""
    if not 0 < config.ceiling_share <= 1:
        raise ConfigError(f"ceiling_share must be in (0, 1], got {config.ceiling_share}")
    specs = inventory(config.total_bytes, config.tensors)
    nbytes = sum(s.nbytes for s in specs)
    cache = config.out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    model = write_checkpoint(cache / f"fleet-{nbytes}-{len(specs)}.safetensors", specs)
    env = {
        "PEERLOAD_CHUNK_BYTES": str(config.part_mib << 20),
        "PEERLOAD_TRANSPORT": config.transport,
        "PEERLOAD_LEASE_CLOSE_WAIT_S": "2",
    }
    if config.max_sources is not None:
        env["PEERLOAD_MAX_PARALLEL_SOURCES"] = str(config.max_sources)
    max_sources = Settings.load(env={**os.environ, **env}).max_parallel_sources
    top = max(config.targets)
    sweep = _Sweep(model, nbytes, env, workdir, config.timeout_s, progress)
    progress(f"ceiling: 1 and {top} target(s) at once, no NIC caps")
    ceiling_cases = sweep.run(None, sorted({1, top}), "ceiling")
    ceiling = {
        "targets": sorted({1, top}),
        "cases": ceiling_cases,
        "single_gbps": ceiling_cases["1"]["aggregate_gbps"],
        "aggregate_gbps": ceiling_cases[str(top)]["aggregate_gbps"],
    }
    auto = nic_cap_gbit(ceiling["aggregate_gbps"], top, config.ceiling_share)
    nic_gbit = config.nic_gbit or round(auto, 4)
    progress(f"ceiling {ceiling['aggregate_gbps']:.3f} GB/s with {top} targets: NICs at {nic_gbit:g} Gbit/s")
    cases = sweep.run(nic_gbit, config.targets, "capped")
    one = cases.get("1", {}).get("last_s")
    fanout = {n: c["last_s"] / one for n, c in cases.items()} if one else {}
    origin = {n: c["origin_copies"] for n, c in cases.items()}
    bound = where_bound(cases, ceiling, nic_gbit, top, nbytes)
    goals = {
        f"fanout_{top}": _goal(fanout.get(str(top)), FANOUT_GOAL),
        f"origin_copies_{top}": _goal(origin.get(str(top)), ORIGIN_COPIES_GOAL),
    }
    return {
        "config": {
            "targets": list(config.targets),
            "bytes": nbytes,
            "tensors": len(specs),
            "nic_gbit": nic_gbit,
            "nic_gbit_given": config.nic_gbit,
            "nic_rule": f"{config.ceiling_share:g} x ceiling / {top}" if config.nic_gbit is None else "given",
            "ceiling_share": config.ceiling_share,
            "part_bytes": config.part_mib << 20,
            "max_parallel_sources": max_sources,
            "transport": config.transport,
            "seeds": 1,
        },
        "ceiling": ceiling,
        "cases": cases,
        "fanout": fanout,
        "origin_copies": origin,
        "bound": bound,
        "goals": goals,
        "verdict": verdict(goals, bound, top),
    }


def where_bound(
    cases: dict[str, Any], ceiling: dict[str, Any], nic_gbit: float, top: int, nbytes: int
) -> dict[str, Any]:
    """Whether the capped sweep was bound by its NICs: the shares of the cap and of the ceiling it used."""
    cap_gbps = nic_gbit / 8
    demand = top * cap_gbps / ceiling["aggregate_gbps"] if ceiling["aggregate_gbps"] else None
    single = cases.get("1", {})
    single_share = single["aggregate_gbps"] / cap_gbps if single else None
    used = cases.get(str(top), {}).get("aggregate_gbps")
    nic_bound = demand is not None and demand <= 1 and single_share is not None and single_share >= NIC_BOUND_SHARE
    return {
        "nic_gbps": cap_gbps,
        "demand_share_of_ceiling": demand,  # top NICs at full rate, over what the machine carried
        "single_share_of_nic": single_share,  # one target alone, over its NIC cap
        "top_share_of_ceiling": used / ceiling["aggregate_gbps"] if used and ceiling["aggregate_gbps"] else None,
        "nic_bound": nic_bound,
        "rule": f"NIC-bound when {top} NICs at full rate need <= the ceiling and one target alone moves at "
        f">= {NIC_BOUND_SHARE:g} of its cap",
    }


def verdict(goals: dict[str, dict[str, Any]], bound: dict[str, Any], top: int) -> str:
    """One plain sentence: where the NICs bound, and whether each goal held there."""
    where = "the NICs bound" if bound["nic_bound"] else "the NICs did NOT bind (the figures are not the swarm's)"
    parts = []
    for name, g in goals.items():
        state = "not measured" if g["met"] is None else "met" if g["met"] else "NOT met"
        value = "-" if g["value"] is None else f"{g['value']:.2f}"
        parts.append(f"{name} = {value} (goal <= {g['goal']:g}): {state}")
    return f"At N={top}, {where}; " + "; ".join(parts)


def _goal(value: float | None, bound: float) -> dict[str, Any]:
    return {"value": value, "goal": bound, "met": None if value is None else value <= bound}


def _swarm(
    fleet: Fleet, model: Path, coordinator: str, workdir: Path, n: int, env: dict[str, str], timeout_s: float
) -> tuple[list[dict[str, Any]], float]:
    """Start n targets on hosts 1..n, release them together, collect reports, stop them."""
    workdir.mkdir(parents=True)
    go, hold = workdir / "go", workdir / "hold"
    procs: dict[int, subprocess.Popen[bytes]] = {}
    for h in range(1, n + 1):
        files = ["--prepared", str(workdir / f"t{h}.prepared"), "--go", str(go), "--hold", str(hold)]
        cmd = [sys.executable, "-m", fanout_target.__name__, str(model), "peerload-bench/fanout", coordinator,
               str(workdir / f"t{h}.json"), *files]  # fmt: skip
        procs[h] = fleet.popen(h, cmd, log_path=workdir / f"t{h}.log", env=env)
    try:
        _wait(lambda: all((workdir / f"t{h}.prepared").exists() for h in procs), procs, workdir, timeout_s)
        go_at = time.time()
        go.write_text("")
        _wait(lambda: all((workdir / f"t{h}.json").exists() for h in procs), procs, workdir, timeout_s)
    finally:
        hold.write_text("")
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return [json.loads((workdir / f"t{h}.json").read_text()) for h in procs], go_at


def _wait(done: Callable[[], bool], procs: dict[int, subprocess.Popen[bytes]], workdir: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        dead = [h for h, p in procs.items() if p.poll() is not None and not (workdir / f"t{h}.json").exists()]
        if dead or time.monotonic() > deadline:
            tail = (workdir / f"t{(dead or [1])[0]}.log").read_text(errors="replace")[-1500:]
            raise PeerloadError(f"fan-out targets {dead or 'all'} did not finish:\n{tail}")
        time.sleep(0.02)


def _case(reports: list[dict[str, Any]], go_at: float, seed: str, nbytes: int, seed_sent: int) -> dict[str, Any]:
    for r in reports:
        if r["storage_bytes"] or r["bytes"] != nbytes:
            raise PeerloadError(f"a fan-out target did not load everything from peers: {r['attempts']}")
    origin = sum(s["bytes"] for r in reports for s in r["sources"] if s["worker_id"] == seed)
    last_s = max(r["finished"] for r in reports) - go_at
    return {
        "last_s": last_s,
        "aggregate_gbps": len(reports) * nbytes / last_s / 1e9,
        "per_target_s": sorted(r["finished"] - r["started"] for r in reports),
        "origin_bytes": origin,
        "origin_copies": origin / nbytes,
        "seed_nic_sent_copies": seed_sent / nbytes,
        "restarted_bytes": sum(r["restarted_bytes"] for r in reports),
        "sources_per_target": [sum(1 for s in r["sources"] if s["bytes"]) for r in reports],
    }


def fanout_table(run: dict[str, Any]) -> Any:
    """A rich table: the uncapped ceiling, then per N the last target's time, the ratio, the seed's copies."""
    from rich.table import Table

    cfg = run["config"]
    t = Table(
        title=f"fan-out: {cfg['bytes'] / 2**30:.2f} GiB, 1 seed, NICs {cfg['nic_gbit']:g} Gbit/s "
        f"({cfg['nic_rule']}), {cfg['part_bytes'] >> 20} MiB parts, "
        f"{cfg.get('max_parallel_sources', '?')} sources per target, {cfg['transport']}",
        caption=run["verdict"],
    )
    for col in ("targets", "NIC cap", "last loaded s", "GB/s in all", "fanout", "origin copies", "seed NIC copies"):
        t.add_column(col)
    rows = [(n, "none", c, None) for n, c in run["ceiling"]["cases"].items()]
    rows += [(n, f"{cfg['nic_gbit']:g} Gbit/s", c, run["fanout"].get(n)) for n, c in run["cases"].items()]
    for n, cap, case, ratio in rows:
        t.add_row(n, cap, f"{case['last_s']:.2f}", f"{case['aggregate_gbps']:.3f}",
                  "-" if ratio is None else f"{ratio:.2f}", f"{case['origin_copies']:.2f}",
                  f"{case['seed_nic_sent_copies']:.2f}")  # fmt: skip
    return t


def plot_fanout(run: dict[str, Any], path: Path) -> Path:
    """fanout and origin copies against N, with the no-fan-out line (N) for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [int(n) for n in run["cases"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ns, [run["fanout"].get(str(n), 0) for n in ns], "o-", label="last target / one target")
    ax.plot(ns, [run["origin_copies"][str(n)] for n in ns], "s-", label="copies the seed served")
    ax.plot(ns, ns, ":", color="grey", label="every target from the seed (N)")
    ax.set_xlabel("targets started at once")
    ax.set_xticks(ns)
    ax.legend(fontsize=8)
    cfg = run["config"]
    ax.set_title(f"fan-out, {cfg['bytes'] / 2**30:.2f} GiB, NICs {cfg['nic_gbit']:g} Gbit/s ({cfg['nic_rule']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
