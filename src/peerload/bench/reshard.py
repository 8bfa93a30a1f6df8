"""`peerload bench reshard`: resharding loads (TP=2 -> 1, 1 -> 2) against same-layout loads, side by side.

Two emulated hosts (root; `peerload.fleet`): host 0 runs the coordinator and the seeds of a
Llama-shaped synthetic checkpoint, at TP=1 (model name `.../s1`) and at TP=2 (both ranks,
`.../s2`); host 1 runs one fresh `peerload load` per case, rank 0:

| case | seeds | target | what it is |
|---|---|---|---|
| `2->1` | s2 | tp 1 | resharding: both seed ranks, half of each matrix from each |
| `1->1` | s1 | tp 1 | same layout, the baseline of `2->1` |
| `1->2` | s1 | tp 2 | resharding: the rank-0 boxes cut out of the full tensors |
| `2->2` | s2 | tp 2 | same layout, the baseline of `1->2` |

Rounds interleave the cases; per case the medians of the transfer phase's GB/s (the target's
bytes over its `transfer` seconds), the payload bytes the sources delivered and the bytes the
target's NIC received, each against the target's own bytes. Goals (issue 20): resharding at
>= 0.8x the speed of its same-layout baseline, wire bytes <= 1.05x the target's bytes.
"""

from __future__ import annotations

import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peerload._process import log_tail, peerload_cmd, stop_process, wait_ready_file
from peerload.errors import PeerloadError
from peerload.fleet import Fleet, start_coordinator
from peerload.fleet.roles import run_target
from peerload.synthetic import inventory, write_checkpoint

SEED_HOST, TARGET_HOST = 0, 1
NAME = "peerload-bench/reshard"
# (case, seeds' model-name suffix, target tp, its same-layout baseline)
CASES = (("2->1", "s2", 1, "1->1"), ("1->1", "s1", 1, ""), ("1->2", "s1", 2, "2->2"), ("2->2", "s2", 2, ""))
SPEED_GOAL = 0.8
WIRE_GOAL = 1.05


@dataclass
class ReshardBenchConfig:
    """What one resharding benchmark runs."""

    size_gib: float = 0.25
    tensors: int = 100
    repeats: int = 3
    nic_gbit: float | None = 2.0  # every NIC's cap; None: uncapped
    part_mib: int = 8
    transport: str = "nixl"
    out: Path = Path("bench/results")
    timeout_s: float = 300.0


def _start_seed(
    fleet: Fleet, model: Path, name: str, tp: int, rank: int, coordinator: str, workdir: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    tag = f"{name.rsplit('/', 1)[-1]}-r{rank}"
    ready, log = workdir / f"seed-{tag}.ready", workdir / f"seed-{tag}.log"
    cmd = peerload_cmd(
        "seed", str(model), "--model-name", name, "--coordinator", coordinator, "--ready-file", str(ready),
        "--tp-size", str(tp), "--tp-rank", str(rank),
    )  # fmt: skip
    proc = fleet.popen(SEED_HOST, cmd, log_path=log, env=env)
    try:
        wait_ready_file(proc, ready, timeout_s=180, what=f"seed {tag}")
    except PeerloadError as exc:
        stop_process(proc)
        raise PeerloadError(f"{exc}:\n{log_tail(log)}") from None
    return proc


def run_reshard(
    config: ReshardBenchConfig, workdir: Path, progress: Callable[[str], None] = lambda s: None
) -> dict[str, Any]:
    """Every case `config.repeats` times, interleaved; the reshard.json document."""
    specs = inventory(int(config.size_gib * (1 << 30)), config.tensors)
    cache = config.out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    model = write_checkpoint(cache / f"reshard-{sum(s.nbytes for s in specs)}-{len(specs)}.safetensors", specs)
    env = {"PEERLOAD_CHUNK_BYTES": str(config.part_mib << 20), "PEERLOAD_TRANSPORT": config.transport}
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case, *_ in CASES}
    with Fleet(2, nic_gbit=config.nic_gbit, max_seconds=3600) as fleet:
        coordinator = start_coordinator(fleet, SEED_HOST, workdir)
        seeds = [_start_seed(fleet, model, f"{NAME}/s1", 1, 0, coordinator, workdir, env)]
        seeds += [_start_seed(fleet, model, f"{NAME}/s2", 2, r, coordinator, workdir, env) for r in (0, 1)]
        try:
            for round_ in range(config.repeats):
                for case, seeds_of, tp, _ in CASES:
                    received = fleet.nic_bytes(TARGET_HOST)[0]
                    report = run_target(
                        fleet, TARGET_HOST, model, f"{NAME}/{seeds_of}", coordinator, workdir,
                        "--tp-size", str(tp), "--tp-rank", "0", "--no-fallback",
                        env=env, timeout_s=config.timeout_s,
                    )  # fmt: skip
                    one = _run(report, fleet.nic_bytes(TARGET_HOST)[0] - received)
                    runs[case].append(one)
                    progress(
                        f"round {round_ + 1}/{config.repeats} {case}: {one['gbps']:.3f} GB/s, "
                        f"payload {one['payload_ratio']:.3f}x and NIC {one['nic_ratio']:.3f}x the target's bytes"
                        + (f", resharded from {one['resharded_from']}" if one["resharded_from"] else "")
                    )
        finally:
            for proc in seeds:
                stop_process(proc)
    return summarize(config, runs, sum(s.nbytes for s in specs))


def _run(report: dict[str, Any], nic_received: int) -> dict[str, Any]:
    if report["source"] == "storage" or report.get("verified") is not True:
        raise PeerloadError(f"a benchmark load did not load verified from peers: {report['attempts']}")
    moved = report["seconds"]["transfer"]
    payload = sum(s["bytes"] for s in report["sources"])
    return {
        "bytes": report["bytes"],
        "transfer_s": moved,
        "gbps": report["bytes"] / moved / 1e9 if moved > 0 else 0.0,
        "payload_bytes": payload,
        "payload_ratio": payload / report["bytes"],
        "nic_bytes": nic_received,
        "nic_ratio": nic_received / report["bytes"],
        "sources": len([s for s in report["sources"] if s["bytes"]]),
        "resharded_from": report.get("resharded_from", ""),
        "total_s": report["seconds"]["total"],
    }


def summarize(
    config: ReshardBenchConfig, runs: dict[str, list[dict[str, Any]]], checkpoint_bytes: int
) -> dict[str, Any]:
    """Medians per case, ratios against the same-layout baselines, and the goals."""
    cases = {}
    for case, *_ in CASES:
        rs = runs[case]
        cases[case] = {
            "runs": rs,
            "bytes": rs[0]["bytes"],
            **{k: statistics.median(r[k] for r in rs) for k in ("gbps", "transfer_s", "payload_ratio", "nic_ratio")},
            "resharded_from": rs[0]["resharded_from"],
        }
    goals = {}
    for case, _, _, baseline in CASES:
        if not baseline:
            continue
        speed = cases[case]["gbps"] / cases[baseline]["gbps"] if cases[baseline]["gbps"] else 0.0
        goals[f"speed_{case}"] = {"value": round(speed, 4), "goal": SPEED_GOAL, "met": speed >= SPEED_GOAL}
        wire = cases[case]["payload_ratio"]
        goals[f"wire_{case}"] = {"value": round(wire, 4), "goal": WIRE_GOAL, "met": wire <= WIRE_GOAL}
        nic = cases[case]["nic_ratio"]
        goals[f"nic_{case}"] = {"value": round(nic, 4), "baseline": round(cases[baseline]["nic_ratio"], 4)}
    return {
        "config": {
            "checkpoint_bytes": checkpoint_bytes,
            "tensors": config.tensors,
            "repeats": config.repeats,
            "nic_gbit": config.nic_gbit,
            "part_mib": config.part_mib,
            "transport": config.transport,
        },
        "cases": cases,
        "goals": goals,
    }


def reshard_table(results: dict[str, Any]) -> Any:
    """The cases and goals as a rich table."""
    from rich.table import Table

    table = Table(title="resharding vs same-layout loads (rank 0 of the target)")
    for column in ("case", "GB/s", "transfer s", "payload / target bytes", "NIC / target bytes", "from"):
        table.add_column(column)
    for case, c in results["cases"].items():
        table.add_row(
            case, f"{c['gbps']:.3f}", f"{c['transfer_s']:.3f}", f"{c['payload_ratio']:.4f}", f"{c['nic_ratio']:.4f}",
            c["resharded_from"] or "same layout",
        )  # fmt: skip
    for name, g in results["goals"].items():
        if "goal" in g:
            table.add_row(name, f"{g['value']:.3f}", f"goal {g['goal']}", "met" if g["met"] else "NOT met", "", "")
    return table
