"""`peerload bench --fleet --targets 1,2,4,8`: N targets that start at once, from one seed.

Hosts: 0 runs the coordinator and one seed; 1..N run the targets (every NIC capped at
`nic_gbit`). Each target process prepares its model, then all start loading at the same moment.
Per N: the time until the last target is loaded (from the common start), and the bytes the seed
served (summed from the targets' reports, and as counted by the seed host's NIC).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peerload.bench import fanout_target
from peerload.errors import PeerloadError
from peerload.fleet import Fleet, start_coordinator, start_seed
from peerload.synthetic import inventory, write_checkpoint

SEED_HOST = 0
# Goals from the fan-out issue, at N=8.
FANOUT_GOAL = 1.5
ORIGIN_COPIES_GOAL = 2.0


@dataclass
class FanoutConfig:
    """What one fan-out measurement runs."""

    targets: Sequence[int] = (1, 2, 4, 8)
    size_gib: float = 1.0
    tensors: int = 200
    nic_gbit: float = 2.0
    part_mib: int = 16
    transport: str = "nixl"
    out: Path = Path("bench/results")
    timeout_s: float = 300.0

    @property
    def total_bytes(self) -> int:
        return int(self.size_gib * (1 << 30))


def run_fanout(config: FanoutConfig, workdir: Path, progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Every N of `config.targets` once; the `fanout` section of fleet.json."""
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
    cases: dict[str, Any] = {}
    with Fleet(max(config.targets) + 1, nic_gbit=config.nic_gbit, max_seconds=3600) as fleet:
        coordinator = start_coordinator(fleet, SEED_HOST, workdir)
        _, seed = start_seed(fleet, SEED_HOST, model, "peerload-bench/fanout", coordinator, workdir, env=env)
        for n in config.targets:
            sent_before = fleet.nic_bytes(SEED_HOST)[1]
            reports, go_at = _swarm(fleet, model, coordinator, workdir / f"n{n}", n, env, config.timeout_s)
            seed_sent = fleet.nic_bytes(SEED_HOST)[1] - sent_before
            cases[str(n)] = _case(reports, go_at, seed["worker_id"], nbytes, seed_sent)
            progress(f"{n} target(s): last loaded after {cases[str(n)]['last_s']:.2f} s, "
                     f"the seed served {cases[str(n)]['origin_copies']:.2f} copies")  # fmt: skip
    one = cases.get("1", {}).get("last_s")
    fanout = {n: c["last_s"] / one for n, c in cases.items()} if one else {}
    origin = {n: c["origin_copies"] for n, c in cases.items()}
    top = str(max(config.targets))
    return {
        "config": {
            "targets": list(config.targets),
            "bytes": nbytes,
            "tensors": len(specs),
            "nic_gbit": config.nic_gbit,
            "part_bytes": config.part_mib << 20,
            "transport": config.transport,
            "seeds": 1,
        },
        "cases": cases,
        "fanout": fanout,
        "origin_copies": origin,
        "goals": {
            f"fanout_{top}": _goal(fanout.get(top), FANOUT_GOAL),
            f"origin_copies_{top}": _goal(origin.get(top), ORIGIN_COPIES_GOAL),
        },
    }


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
    return {
        "last_s": max(r["finished"] for r in reports) - go_at,
        "per_target_s": sorted(r["finished"] - r["started"] for r in reports),
        "origin_bytes": origin,
        "origin_copies": origin / nbytes,
        "seed_nic_sent_copies": seed_sent / nbytes,
        "restarted_bytes": sum(r["restarted_bytes"] for r in reports),
        "sources_per_target": [sum(1 for s in r["sources"] if s["bytes"]) for r in reports],
    }


def fanout_table(run: dict[str, Any]) -> Any:
    """A rich table: per N, the last target's time, the ratio to one target, the seed's copies."""
    from rich.table import Table

    cfg = run["config"]
    t = Table(
        title=f"fan-out: {cfg['bytes'] / 2**30:.2f} GiB, 1 seed, NICs {cfg['nic_gbit']} Gbit/s, {cfg['transport']}"
    )
    for col in ("targets", "last loaded s", "fanout", "origin copies", "seed NIC copies"):
        t.add_column(col)
    for n, case in run["cases"].items():
        ratio = run["fanout"].get(n)
        t.add_row(n, f"{case['last_s']:.2f}", "-" if ratio is None else f"{ratio:.2f}",
                  f"{case['origin_copies']:.2f}", f"{case['seed_nic_sent_copies']:.2f}")  # fmt: skip
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
    ax.set_title(f"fan-out, {run['config']['bytes'] / 2**30:.2f} GiB, NICs {run['config']['nic_gbit']} Gbit/s")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
